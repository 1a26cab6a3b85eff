-- Exports page through a tenant's window in (time, ledger_index) order:
-- index exactly that key, replacing the (tenant, time) indexes it extends.
CREATE INDEX billing_events_tenant_occurred_index ON billing_events (tenant, occurred_at, ledger_index);
DROP INDEX billing_events_tenant_occurred;
CREATE INDEX capsule_runs_tenant_started_index ON capsule_runs (tenant, started_at, ledger_index);
DROP INDEX capsule_runs_tenant_started;
