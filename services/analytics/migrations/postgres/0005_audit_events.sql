-- Audit events from every service (releases, reviews, installs, key
-- rotations), each a ledger leaf (PostgreSQL). Times are Unix nanoseconds.
CREATE TABLE audit_events (
    event_id TEXT PRIMARY KEY,
    -- Empty for a platform-wide event.
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    -- RFC 8785 canonical JSON object.
    details TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    recorded_by TEXT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BYTEA NOT NULL
);
-- Exports page through a tenant's window in (time, ledger_index) order.
CREATE INDEX audit_events_tenant_occurred_index ON audit_events (tenant, occurred_at, ledger_index);
