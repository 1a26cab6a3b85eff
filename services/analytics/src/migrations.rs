//! The service's migrations, one line each (version, description, file
//! stem under `migrations/sqlite/` and `migrations/postgres/`).

use soma_store::{Migration, Migrations};

macro_rules! migrations {
    ($(($version:literal, $description:literal, $file:literal)),* $(,)?) => {
        /// The service's migrations.
        pub static MIGRATIONS: Migrations = Migrations(&[$(Migration {
            version: $version,
            description: $description,
            sqlite: include_str!(concat!("../migrations/sqlite/", $file, ".sql")),
            postgres: include_str!(concat!("../migrations/postgres/", $file, ".sql")),
        }),*]);
    };
}

migrations!(
    (1, "ledger and events", "0001_ledger_and_events"),
    (2, "disaster-recovery drills and webhook outbox", "0002_drills"),
    (
        3,
        "persona regressions and anomaly scans",
        "0003_regressions_anomalies"
    ),
    (4, "export keyset indexes", "0004_export_keyset_indexes"),
    (5, "audit events", "0005_audit_events"),
    (
        6,
        "per-tenant ids, row-MAC scheme 2 and sealed ledger leaves",
        "0006_tenant_ids_mac_scheme"
    ),
    (
        7,
        "billing events carry the module digest and peak memory",
        "0007_billing_measurements"
    ),
    (
        8,
        "capsule runs carry their provenance",
        "0008_capsule_run_provenance"
    ),
);
