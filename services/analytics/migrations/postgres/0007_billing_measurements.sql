-- The sandbox's measurements on billing events (PostgreSQL): the SHA-256 of
-- the WebAssembly module that ran and the execution's peak linear memory.
--
-- Both are NULL on every row written before this migration: those rows were
-- sealed, appended to the ledger and exported without them, and keep
-- verifying as they were (row version 1). Rows written after it carry both,
-- sealed at row version 2, whose MAC and leaf cover them (see the service's
-- `tables::billing`). Adding nullable columns without a default rewrites no
-- row.
ALTER TABLE billing_events ADD COLUMN module_sha256 BYTEA CHECK (octet_length(module_sha256) = 32);
ALTER TABLE billing_events ADD COLUMN peak_memory_bytes BIGINT CHECK (peak_memory_bytes >= 0);
