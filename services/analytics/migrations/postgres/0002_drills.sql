-- Disaster-recovery drills and the webhook outbox (PostgreSQL).
-- Times are Unix nanoseconds; MACs are raw bytes.

-- One row per recorded drill, appended to the ledger in the same
-- transaction. RTO, RPO and the verdict are computed by the server; the
-- objectives applied are kept with the row (NULL: none configured).
CREATE TABLE disaster_drills (
    event_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    region TEXT NOT NULL,
    scenario TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    failover_completed_at BIGINT NOT NULL CHECK (failover_completed_at >= started_at),
    restored_at BIGINT NOT NULL CHECK (restored_at >= failover_completed_at),
    last_durable_write_at BIGINT NOT NULL CHECK (last_durable_write_at <= started_at),
    rto_nanos BIGINT NOT NULL CHECK (rto_nanos >= 0),
    rpo_nanos BIGINT NOT NULL CHECK (rpo_nanos >= 0),
    objective_rto_nanos BIGINT,
    objective_rpo_nanos BIGINT,
    passed BOOLEAN NOT NULL,
    -- RFC 8785 canonical JSON arrays.
    failure_reasons TEXT NOT NULL,
    steps TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BYTEA NOT NULL
);
CREATE INDEX disaster_drills_region_started ON disaster_drills (region, started_at);

-- Transactional outbox: one row per (failed drill, webhook URL), written in
-- the drill's transaction. The MAC covers the immutable columns (id, drill,
-- URL, exact body, creation time); the delivery state columns change.
CREATE TABLE webhook_outbox (
    delivery_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES disaster_drills (event_id),
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_error TEXT,
    delivered_at BIGINT,
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BYTEA NOT NULL,
    UNIQUE (event_id, url)
);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL;
