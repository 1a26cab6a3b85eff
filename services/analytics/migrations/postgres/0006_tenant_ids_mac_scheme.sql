-- Per-tenant ids, row-MAC scheme 2 and sealed ledger leaves (PostgreSQL).
--
-- Ids (events, regressions, scans, findings) are scoped per tenant: every
-- primary key, the ledger's unique event id and the foreign keys between
-- tables gain `tenant`, so the same id in two tenants is two records.
--
-- `mac_scheme` says which row-MAC scheme sealed a row: 1 for every row
-- written before this migration, 2 after it (the MAC then also binds the
-- scheme and the ledger index). The service re-seals scheme-1 rows at
-- start-up, each one only after it verifies under scheme 1.
--
-- Ledger leaves gain their event's time and a MAC of their own (scheme 2;
-- NULL until sealed) over index, event id, tenant, kind, time and hash, so
-- that the tenant a leaf row names is authenticated.

-- The foreign keys on single ids go first: they depend on the keys replaced.
ALTER TABLE webhook_outbox DROP CONSTRAINT webhook_outbox_event_id_fkey;
ALTER TABLE anomaly_findings DROP CONSTRAINT anomaly_findings_scan_id_fkey;

ALTER TABLE ledger_leaves DROP CONSTRAINT ledger_leaves_event_id_key;
-- Event id first: an operator's proof request may name the id alone.
ALTER TABLE ledger_leaves ADD CONSTRAINT ledger_leaves_event_id_tenant_key UNIQUE (event_id, tenant);
-- The event's own time (its table's time column); NULL until sealed.
ALTER TABLE ledger_leaves ADD COLUMN event_time BIGINT;
ALTER TABLE ledger_leaves ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));
ALTER TABLE ledger_leaves ADD COLUMN mac_key_id TEXT;
ALTER TABLE ledger_leaves ADD COLUMN mac BYTEA;
-- The start-up re-seal finds what is left to seal.
CREATE INDEX ledger_leaves_unsealed ON ledger_leaves (leaf_index) WHERE mac_scheme = 1;

ALTER TABLE capsule_runs DROP CONSTRAINT capsule_runs_pkey;
ALTER TABLE capsule_runs ADD PRIMARY KEY (tenant, event_id);
ALTER TABLE capsule_runs ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

ALTER TABLE billing_events DROP CONSTRAINT billing_events_pkey;
ALTER TABLE billing_events ADD PRIMARY KEY (tenant, event_id);
ALTER TABLE billing_events ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

ALTER TABLE disaster_drills DROP CONSTRAINT disaster_drills_pkey;
ALTER TABLE disaster_drills ADD PRIMARY KEY (tenant, event_id);
ALTER TABLE disaster_drills ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

-- Delivery ids are derived from the tenant, the drill and the URL: unique
-- on their own.
ALTER TABLE webhook_outbox DROP CONSTRAINT webhook_outbox_event_id_url_key;
ALTER TABLE webhook_outbox ADD CONSTRAINT webhook_outbox_tenant_event_id_url_key UNIQUE (tenant, event_id, url);
ALTER TABLE webhook_outbox ADD CONSTRAINT webhook_outbox_tenant_event_id_fkey
    FOREIGN KEY (tenant, event_id) REFERENCES disaster_drills (tenant, event_id);
ALTER TABLE webhook_outbox ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

ALTER TABLE persona_regressions DROP CONSTRAINT persona_regressions_pkey;
ALTER TABLE persona_regressions ADD PRIMARY KEY (tenant, regression_id);
ALTER TABLE persona_regressions ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

ALTER TABLE persona_regression_transitions DROP CONSTRAINT persona_regression_transitions_pkey;
ALTER TABLE persona_regression_transitions ADD PRIMARY KEY (tenant, event_id);
ALTER TABLE persona_regression_transitions DROP CONSTRAINT persona_regression_transitions_regression_id_version_key;
ALTER TABLE persona_regression_transitions ADD CONSTRAINT persona_regression_transitions_tenant_regression_id_version_key
    UNIQUE (tenant, regression_id, version);
ALTER TABLE persona_regression_transitions ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

ALTER TABLE anomaly_scans DROP CONSTRAINT anomaly_scans_pkey;
ALTER TABLE anomaly_scans ADD PRIMARY KEY (tenant, scan_id);
ALTER TABLE anomaly_scans ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

ALTER TABLE anomaly_findings DROP CONSTRAINT anomaly_findings_pkey;
ALTER TABLE anomaly_findings ADD PRIMARY KEY (tenant, finding_id);
ALTER TABLE anomaly_findings ADD CONSTRAINT anomaly_findings_tenant_scan_id_fkey
    FOREIGN KEY (tenant, scan_id) REFERENCES anomaly_scans (tenant, scan_id);
ALTER TABLE anomaly_findings ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));
DROP INDEX anomaly_findings_scan;
CREATE INDEX anomaly_findings_scan ON anomaly_findings (tenant, scan_id);

ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey;
ALTER TABLE audit_events ADD PRIMARY KEY (tenant, event_id);
ALTER TABLE audit_events ADD COLUMN mac_scheme BIGINT NOT NULL DEFAULT 1 CHECK (mac_scheme IN (1, 2));

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
