-- The Merkle ledger and the event tables of Analytics (PostgreSQL).
-- Times are Unix nanoseconds (i64: 1677..2262); hashes and MACs are raw bytes.

-- One row: the tree head every append moves forward under its row lock.
CREATE TABLE ledger_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tree_size BIGINT NOT NULL CHECK (tree_size >= 0),
    root BYTEA NOT NULL CHECK (octet_length(root) = 32),
    -- The compact-range frontier (concatenated 32-byte hashes): any
    -- process continues the tree from here in O(log n).
    frontier BYTEA NOT NULL
);
INSERT INTO ledger_head (id, tree_size, root, frontier)
VALUES (1, 0, '\xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'::bytea, ''::bytea);

-- Leaves: indices are unique (primary key) and assigned under the head's
-- lock; an event id is appended once (a retry finds its index).
CREATE TABLE ledger_leaves (
    leaf_index BIGINT PRIMARY KEY CHECK (leaf_index >= 0),
    event_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    leaf_hash BYTEA NOT NULL CHECK (octet_length(leaf_hash) = 32),
    appended_at BIGINT NOT NULL
);

-- Signed checkpoints, one per committed batch; sizes only grow.
CREATE TABLE ledger_checkpoints (
    tree_size BIGINT PRIMARY KEY CHECK (tree_size > 0),
    root BYTEA NOT NULL CHECK (octet_length(root) = 32),
    note TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE capsule_runs (
    event_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    capsule_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    run_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_nanos BIGINT NOT NULL CHECK (duration_nanos >= 0),
    recorded_by TEXT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BYTEA NOT NULL
);
CREATE INDEX capsule_runs_tenant_started ON capsule_runs (tenant, started_at);

CREATE TABLE billing_events (
    event_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    tool TEXT NOT NULL,
    tool_version TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
    fuel_consumed BIGINT NOT NULL CHECK (fuel_consumed >= 0),
    duration_micros BIGINT NOT NULL CHECK (duration_micros >= 0),
    occurred_at BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BYTEA NOT NULL
);
CREATE INDEX billing_events_tenant_occurred ON billing_events (tenant, occurred_at);
