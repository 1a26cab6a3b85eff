-- The provenance of a capsule run (PostgreSQL): the capsule version and
-- bundle digest that ran, the installation's environment and revision, and
-- the moderation decision that admitted the run's input.
--
-- All five are NULL on every row written before this migration: those rows
-- were sealed, appended to the ledger and exported without them, and keep
-- verifying as they were (row version 1). A run recorded with its
-- provenance carries all five, sealed at row version 2 (see the service's
-- `tables::capsule_runs`). Adding nullable columns without a default
-- rewrites no row.
ALTER TABLE capsule_runs ADD COLUMN capsule_version TEXT;
ALTER TABLE capsule_runs ADD COLUMN bundle_sha256 BYTEA CHECK (octet_length(bundle_sha256) = 32);
ALTER TABLE capsule_runs ADD COLUMN environment TEXT;
ALTER TABLE capsule_runs ADD COLUMN installation_revision BIGINT CHECK (installation_revision >= 1);
ALTER TABLE capsule_runs ADD COLUMN moderation_decision_id TEXT;
