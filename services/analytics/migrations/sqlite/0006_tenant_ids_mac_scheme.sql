-- Per-tenant ids, row-MAC scheme 2 and sealed ledger leaves (SQLite).
--
-- Ids (events, regressions, scans, findings) are scoped per tenant: every
-- primary key, the ledger's unique event id and the foreign keys between
-- tables gain `tenant`, so the same id in two tenants is two records.
-- SQLite cannot change a primary key in place, so each table is rebuilt:
-- the old one is renamed away first (the references of other tables follow
-- the rename), the new one is created under the name and filled from it,
-- and the old ones are dropped, children first, before the indexes are
-- created again.
--
-- `mac_scheme` says which row-MAC scheme sealed a row: 1 for every row
-- written before this migration, 2 after it (the MAC then also binds the
-- scheme and the ledger index). The service re-seals scheme-1 rows at
-- start-up, each one only after it verifies under scheme 1.
--
-- Ledger leaves gain their event's time and a MAC of their own (scheme 2;
-- NULL until sealed) over index, event id, tenant, kind, time and hash, so
-- that the tenant a leaf row names is authenticated.

ALTER TABLE ledger_leaves RENAME TO ledger_leaves_v1;
ALTER TABLE capsule_runs RENAME TO capsule_runs_v1;
ALTER TABLE billing_events RENAME TO billing_events_v1;
ALTER TABLE disaster_drills RENAME TO disaster_drills_v1;
ALTER TABLE webhook_outbox RENAME TO webhook_outbox_v1;
ALTER TABLE persona_regressions RENAME TO persona_regressions_v1;
ALTER TABLE persona_regression_transitions RENAME TO persona_regression_transitions_v1;
ALTER TABLE anomaly_scans RENAME TO anomaly_scans_v1;
ALTER TABLE anomaly_findings RENAME TO anomaly_findings_v1;
ALTER TABLE audit_events RENAME TO audit_events_v1;

-- Leaves: indices are unique (primary key) and assigned under the head's
-- lock; a tenant's event id is appended once (a retry finds its index).
CREATE TABLE ledger_leaves (
    leaf_index BIGINT PRIMARY KEY CHECK (leaf_index >= 0),
    event_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    appended_at BIGINT NOT NULL,
    -- The event's own time (its table's time column); NULL until sealed.
    event_time BIGINT,
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    mac_key_id TEXT,
    mac BLOB,
    -- Event id first: an operator's proof request may name the id alone.
    UNIQUE (event_id, tenant)
);
INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at)
SELECT leaf_index, event_id, tenant, kind, leaf_hash, appended_at FROM ledger_leaves_v1;

CREATE TABLE capsule_runs (
    event_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    capsule_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    run_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_nanos BIGINT NOT NULL CHECK (duration_nanos >= 0),
    recorded_by TEXT NOT NULL,
    ledger_index BIGINT NOT NULL UNIQUE REFERENCES ledger_leaves (leaf_index),
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
INSERT INTO capsule_runs (event_id, tenant, capsule_id, tool, run_id, outcome, started_at, duration_nanos,
    recorded_by, ledger_index, row_version, mac_key_id, mac)
SELECT event_id, tenant, capsule_id, tool, run_id, outcome, started_at, duration_nanos,
    recorded_by, ledger_index, row_version, mac_key_id, mac FROM capsule_runs_v1;

CREATE TABLE billing_events (
    event_id TEXT NOT NULL,
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
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
INSERT INTO billing_events (event_id, tenant, tool, tool_version, currency, amount_micros, fuel_consumed,
    duration_micros, occurred_at, run_id, recorded_by, ledger_index, row_version, mac_key_id, mac)
SELECT event_id, tenant, tool, tool_version, currency, amount_micros, fuel_consumed,
    duration_micros, occurred_at, run_id, recorded_by, ledger_index, row_version, mac_key_id, mac
FROM billing_events_v1;

CREATE TABLE disaster_drills (
    event_id TEXT NOT NULL,
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
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
INSERT INTO disaster_drills (event_id, tenant, region, scenario, started_at, failover_completed_at, restored_at,
    last_durable_write_at, rto_nanos, rpo_nanos, objective_rto_nanos, objective_rpo_nanos, passed,
    failure_reasons, steps, recorded_by, ledger_index, row_version, mac_key_id, mac)
SELECT event_id, tenant, region, scenario, started_at, failover_completed_at, restored_at,
    last_durable_write_at, rto_nanos, rpo_nanos, objective_rto_nanos, objective_rpo_nanos, passed,
    failure_reasons, steps, recorded_by, ledger_index, row_version, mac_key_id, mac
FROM disaster_drills_v1;

-- Delivery ids are derived from the tenant, the drill and the URL: unique
-- on their own.
CREATE TABLE webhook_outbox (
    delivery_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_error TEXT,
    delivered_at BIGINT,
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    UNIQUE (tenant, event_id, url),
    FOREIGN KEY (tenant, event_id) REFERENCES disaster_drills (tenant, event_id)
);
INSERT INTO webhook_outbox (delivery_id, event_id, tenant, url, body, created_at, attempts, next_attempt_at,
    last_attempt_at, last_error, delivered_at, row_version, mac_key_id, mac)
SELECT delivery_id, event_id, tenant, url, body, created_at, attempts, next_attempt_at,
    last_attempt_at, last_error, delivered_at, row_version, mac_key_id, mac
FROM webhook_outbox_v1;

CREATE TABLE persona_regressions (
    regression_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    persona TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'passed', 'failed', 'promoted', 'rolled_back', 'cancelled')),
    version BIGINT NOT NULL CHECK (version >= 1),
    -- Event id of the transition that produced this version.
    last_event_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL CHECK (row_version = version),
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, regression_id)
);
INSERT INTO persona_regressions (regression_id, tenant, persona, state, version, last_event_id, updated_at,
    row_version, mac_key_id, mac)
SELECT regression_id, tenant, persona, state, version, last_event_id, updated_at,
    row_version, mac_key_id, mac
FROM persona_regressions_v1;

CREATE TABLE persona_regression_transitions (
    event_id TEXT NOT NULL,
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
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, event_id),
    UNIQUE (tenant, regression_id, version)
);
INSERT INTO persona_regression_transitions (event_id, tenant, regression_id, persona, from_state, to_state,
    version, actor, reason, occurred_at, ledger_index, row_version, mac_key_id, mac)
SELECT event_id, tenant, regression_id, persona, from_state, to_state,
    version, actor, reason, occurred_at, ledger_index, row_version, mac_key_id, mac
FROM persona_regression_transitions_v1;

CREATE TABLE anomaly_scans (
    scan_id TEXT NOT NULL,
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
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, scan_id)
);
INSERT INTO anomaly_scans (scan_id, tenant, window_from, window_to, threshold, min_samples, finding_count,
    findings_digest, scanned_by, scanned_at, ledger_index, row_version, mac_key_id, mac)
SELECT scan_id, tenant, window_from, window_to, threshold, min_samples, finding_count,
    findings_digest, scanned_by, scanned_at, ledger_index, row_version, mac_key_id, mac
FROM anomaly_scans_v1;

CREATE TABLE anomaly_findings (
    finding_id TEXT NOT NULL,
    scan_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    metric TEXT NOT NULL,
    tool TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    baseline DOUBLE PRECISION NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    event_id TEXT NOT NULL,
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, finding_id),
    FOREIGN KEY (tenant, scan_id) REFERENCES anomaly_scans (tenant, scan_id)
);
INSERT INTO anomaly_findings (finding_id, scan_id, tenant, metric, tool, value, baseline, score, event_id,
    row_version, mac_key_id, mac)
SELECT finding_id, scan_id, tenant, metric, tool, value, baseline, score, event_id,
    row_version, mac_key_id, mac
FROM anomaly_findings_v1;

CREATE TABLE audit_events (
    event_id TEXT NOT NULL,
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
    mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2)),
    row_version BIGINT NOT NULL,
    mac_key_id TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
INSERT INTO audit_events (event_id, tenant, actor, action, subject, details, occurred_at, recorded_by,
    ledger_index, row_version, mac_key_id, mac)
SELECT event_id, tenant, actor, action, subject, details, occurred_at, recorded_by,
    ledger_index, row_version, mac_key_id, mac
FROM audit_events_v1;

DROP TABLE webhook_outbox_v1;
DROP TABLE disaster_drills_v1;
DROP TABLE anomaly_findings_v1;
DROP TABLE anomaly_scans_v1;
DROP TABLE persona_regressions_v1;
DROP TABLE persona_regression_transitions_v1;
DROP TABLE capsule_runs_v1;
DROP TABLE billing_events_v1;
DROP TABLE audit_events_v1;
DROP TABLE ledger_leaves_v1;

-- Exports page through a tenant's window in (time, ledger_index) order.
CREATE INDEX billing_events_tenant_occurred_index ON billing_events (tenant, occurred_at, ledger_index);
CREATE INDEX capsule_runs_tenant_started_index ON capsule_runs (tenant, started_at, ledger_index);
CREATE INDEX audit_events_tenant_occurred_index ON audit_events (tenant, occurred_at, ledger_index);
CREATE INDEX disaster_drills_region_started ON disaster_drills (region, started_at);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX anomaly_scans_tenant ON anomaly_scans (tenant, scanned_at);
CREATE INDEX anomaly_findings_scan ON anomaly_findings (tenant, scan_id);
-- The start-up re-seal finds what is left to seal.
CREATE INDEX ledger_leaves_unsealed ON ledger_leaves (leaf_index) WHERE mac_scheme = 1;

-- What the start-up re-seal has left to do (empty once it has run).
CREATE INDEX capsule_runs_scheme_1 ON capsule_runs (ledger_index) WHERE mac_scheme = 1;
CREATE INDEX billing_events_scheme_1 ON billing_events (ledger_index) WHERE mac_scheme = 1;
CREATE INDEX disaster_drills_scheme_1 ON disaster_drills (ledger_index) WHERE mac_scheme = 1;
CREATE INDEX webhook_outbox_scheme_1 ON webhook_outbox (delivery_id) WHERE mac_scheme = 1;
CREATE INDEX persona_regressions_scheme_1 ON persona_regressions (tenant, regression_id) WHERE mac_scheme = 1;
CREATE INDEX persona_regression_transitions_scheme_1 ON persona_regression_transitions (ledger_index) WHERE mac_scheme = 1;
CREATE INDEX anomaly_scans_scheme_1 ON anomaly_scans (ledger_index) WHERE mac_scheme = 1;
CREATE INDEX anomaly_findings_scheme_1 ON anomaly_findings (tenant, finding_id) WHERE mac_scheme = 1;
CREATE INDEX audit_events_scheme_1 ON audit_events (ledger_index) WHERE mac_scheme = 1;
