-- Persona regressions and anomaly scans (SQLite).
-- Times are Unix nanoseconds; MACs are raw bytes.

-- The current state of each persona regression: the one table whose rows
-- are updated. Every update bumps `version`, and the row MAC binds
-- `row_version` (= `version`), so an old row written back is caught.
CREATE TABLE persona_regressions (
    regression_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    persona TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'passed', 'failed', 'promoted', 'rolled_back', 'cancelled')),
    version BIGINT NOT NULL CHECK (version >= 1),
    -- Event id of the transition that produced this version.
    last_event_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    row_version BIGINT NOT NULL CHECK (row_version = version),
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL
);

-- The audit trace: one ledger-appended row per transition, never updated.
CREATE TABLE persona_regression_transitions (
    event_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    regression_id TEXT NOT NULL,
    persona TEXT NOT NULL,
    -- Empty for the transition that created the regression.
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    version BIGINT NOT NULL CHECK (version >= 1),
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    UNIQUE (regression_id, version)
);

-- One ledger-appended row per anomaly scan (its audit entry).
CREATE TABLE anomaly_scans (
    scan_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    window_from BIGINT NOT NULL,
    window_to BIGINT NOT NULL CHECK (window_to > window_from),
    threshold DOUBLE PRECISION NOT NULL,
    min_samples BIGINT NOT NULL,
    finding_count BIGINT NOT NULL CHECK (finding_count >= 0),
    -- SHA-256 (hex) of the canonical list of the scan's findings: the
    -- ledger leaf binds the findings through it.
    findings_digest TEXT NOT NULL,
    scanned_by TEXT NOT NULL,
    scanned_at BIGINT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL
);
CREATE INDEX anomaly_scans_tenant ON anomaly_scans (tenant, scanned_at);

-- Findings, written in the scan's transaction.
CREATE TABLE anomaly_findings (
    finding_id TEXT PRIMARY KEY,
    scan_id TEXT NOT NULL REFERENCES anomaly_scans (scan_id),
    tenant TEXT NOT NULL,
    metric TEXT NOT NULL,
    tool TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    baseline DOUBLE PRECISION NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    event_id TEXT NOT NULL,
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL
);
CREATE INDEX anomaly_findings_scan ON anomaly_findings (scan_id);
