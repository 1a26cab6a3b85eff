//! Analytics integrity without gaps, through the real service over mTLS on
//! SQLite and PostgreSQL, with the attacker of the threat model: write
//! access to the database, and nothing else.
//!
//! The integrity table, on every exported ledgered kind (billing events,
//! capsule runs, audit events): for each of {`ledger_index` changed, row
//! deleted, row duplicated at another index, leaf tenant changed, leaf
//! deleted}, the tenant's signed export is refused with `DATA_LOSS` naming the index (no
//! signature), the store sweep names the index, and the tenant's inclusion
//! proof is refused; the other tenant's export still verifies. Ids are per
//! tenant: the same event id recorded by two tenants is two records, each
//! verifying and exported to its own tenant only, another tenant's id
//! answers like an unknown one, and a row's tenant rewritten in SQL is
//! caught. Rows sealed before row-MAC scheme 2 stay verifiable and are
//! re-sealed at start-up, except one that fails, which is reported and left
//! as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{AnalyticsKeys, billing, blob, row_mac, start_analytics, tamper, ts};
use serde_json::{Value, json};
use soma_auth::ClaimsSigner;
use soma_ledger::{Checkpoint, CheckpointSigner, CompactTree, Hash, verify_inclusion};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_sign::{HmacKeyring, jcs};
use soma_store::Database;
use soma_testing::{Ca, Running, TD, exec, grpc_reason as reason, scalar_text as text, tenant_request};
use tonic::Code;
use tonic::transport::Channel;

/// The time of every seeded event (`common::billing`'s).
const T0: i64 = 1_790_000_000;

/// A service, its clients and the row keys (for sweeping the database
/// directly).
struct Env {
    ca: Ca,
    claims: ClaimsSigner,
    svc: Running,
    /// A second handle on the service's database, to tamper with it.
    db: Database,
    keys: HmacKeyring,
    registry: AnalyticsClient<Channel>,
    operator: AnalyticsClient<Channel>,
}

/// What an export stream delivered.
struct Export {
    bytes: Vec<u8>,
    signature: Option<pb::ExportSignature>,
    error: Option<tonic::Status>,
}

impl Export {
    fn document(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap()
    }

    /// The `(event_id, amount_micros)` of every exported row.
    fn rows(&self) -> Vec<(String, i64)> {
        self.document()["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["event_id"].as_str().unwrap().to_owned(),
                    r["amount_micros"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

/// A configuration over fresh keys, with a copy of the row keys.
fn keyed_config() -> (soma_analytics::AnalyticsConfig, HmacKeyring) {
    let keys = AnalyticsKeys::generate();
    (keys.config(), keys.row_keys())
}

/// Two configurations holding the same keys (two processes of one
/// deployment), with a copy of the row keys.
fn twin_configs() -> [(soma_analytics::AnalyticsConfig, HmacKeyring); 2] {
    let keys = AnalyticsKeys::generate();
    [(); 2].map(|()| (keys.config(), keys.row_keys()))
}

/// The ledgered, exported row kinds the integrity table runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Billing,
    CapsuleRuns,
    AuditEvents,
}

impl Kind {
    const ALL: [Self; 3] = [Self::Billing, Self::CapsuleRuns, Self::AuditEvents];

    fn table(self) -> &'static str {
        match self {
            Self::Billing => "billing_events",
            Self::CapsuleRuns => "capsule_runs",
            Self::AuditEvents => "audit_events",
        }
    }
}

impl Env {
    async fn start(db: &soma_store::testing::TestDb) -> Self {
        Self::start_with(db, keyed_config()).await
    }

    async fn start_with(
        db: &soma_store::testing::TestDb,
        (config, keys): (soma_analytics::AnalyticsConfig, HmacKeyring),
    ) -> Self {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let registry = common::client(&ca, &svc, "/svc/tool-registry");
        let sql = common::database(&db.settings).await;
        let operator = common::client(&ca, &svc, "/operator/auditor");
        Self {
            ca,
            claims,
            svc,
            db: sql,
            keys,
            registry,
            operator,
        }
    }

    /// Six events of acme at indices 0..6, then two of globex at 6 and 7,
    /// one at a time so that the indices are these.
    async fn seed(&mut self) {
        self.seed_kind(Kind::Billing).await;
    }

    /// Six events of `kind` of acme at indices 0..6, then two of globex at
    /// 6 and 7, one at a time so that the indices are these.
    async fn seed_kind(&mut self, kind: Kind) {
        for (i, (id, tenant)) in [
            ("a-0", "acme"),
            ("a-1", "acme"),
            ("a-2", "acme"),
            ("a-3", "acme"),
            ("a-4", "acme"),
            ("a-5", "acme"),
            ("g-0", "globex"),
            ("g-1", "globex"),
        ]
        .into_iter()
        .enumerate()
        {
            let recorded = match kind {
                Kind::Billing => {
                    self.registry
                        .record_billing_event(billing(id, tenant, 100 + i as i64))
                        .await
                }
                Kind::CapsuleRuns => {
                    self.registry
                        .record_capsule_run(common::capsule_run_of(id, tenant, "summarize", T0))
                        .await
                }
                Kind::AuditEvents => {
                    self.registry
                        .record_audit_event(common::audit(id, tenant, "release.publish", T0))
                        .await
                }
            }
            .unwrap()
            .into_inner();
            assert_eq!(recorded.ledger.unwrap().index, i as u64, "{kind:?} {id}");
        }
    }

    /// `tenant`'s export of `kind` over the whole seeded window, as an
    /// operator over mTLS asks for it.
    async fn export_kind(&self, kind: Kind, tenant: &str) -> Export {
        let request = pb::ExportRequest {
            tenant: tenant.to_owned(),
            from: ts(T0 - 1000),
            to: ts(T0 + 1000),
            tool: String::new(),
            service: String::new(),
        };
        let mut export = Export {
            bytes: Vec::new(),
            signature: None,
            error: None,
        };
        let mut operator = self.operator.clone();
        let opened = match kind {
            Kind::Billing => operator.export_billing_ledger(request).await,
            Kind::CapsuleRuns => operator.export_capsule_runs(request).await,
            Kind::AuditEvents => operator.export_audit_events(request).await,
        };
        let mut stream = match opened {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                export.error = Some(status);
                return export;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    assert!(export.signature.is_none(), "the signature comes last");
                    export.bytes.extend_from_slice(&chunk.data);
                    export.signature = chunk.signature;
                }
                Ok(None) => return export,
                Err(status) => {
                    export.error = Some(status);
                    return export;
                }
            }
        }
    }

    /// Checks an export's signature and that it is its tenant's; returns
    /// its rows, whole.
    async fn verified_rows(&self, export: &Export, tenant: &str) -> Vec<Value> {
        self.check_signed(export, tenant).await;
        export.document()["rows"].as_array().unwrap().clone()
    }

    /// `tenant`'s billing export over the whole seeded window, as an
    /// operator over mTLS asks for it.
    async fn export(&self, tenant: &str) -> Export {
        self.export_kind(Kind::Billing, tenant).await
    }

    /// `tenant`'s inclusion proof of `event_id`, asked with its own claims
    /// through the gateway, at the latest checkpoint.
    async fn proof(&self, tenant: &str, event_id: &str) -> Result<pb::InclusionProofResponse, tonic::Status> {
        let request = tenant_request(
            &self.claims,
            &self.svc.id,
            tenant,
            &["ledger:read"],
            pb::InclusionProofRequest {
                event_id: event_id.to_owned(),
                tree_size: 0,
            },
        );
        common::client(&self.ca, &self.svc, "/svc/gateway")
            .inclusion_proof(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The tool registry records a billing event of `tenant` (the only
    /// caller `RecordBillingEvent` admits; the tenant is the body's).
    async fn record_for(
        &self,
        tenant: &str,
        id: &str,
        micros: i64,
    ) -> Result<pb::RecordResponse, tonic::Status> {
        self.registry
            .clone()
            .record_billing_event(billing(id, tenant, micros))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn sweep(&self) -> soma_analytics::StoreReport {
        soma_analytics::verify_store(&self.db, &self.keys).await.unwrap()
    }

    /// Checks a billing export's signature and that it is its tenant's;
    /// returns its rows' `(event_id, amount_micros)`.
    async fn verified(&self, export: &Export, tenant: &str) -> Vec<(String, i64)> {
        self.check_signed(export, tenant).await;
        export.rows()
    }

    /// Checks an export's signature and that it is its tenant's.
    async fn check_signed(&self, export: &Export, tenant: &str) {
        assert!(export.error.is_none(), "{tenant}: {:?}", export.error);
        let signature = export.signature.as_ref().expect("a signature");
        let keys = self
            .operator
            .clone()
            .list_verification_keys(pb::ListVerificationKeysRequest {})
            .await
            .unwrap()
            .into_inner();
        let key = soma_sign::ed25519_public_key_from_pem(&keys.keys[0].public_key_pem).unwrap();
        soma_sign::verify_ed25519_strict(&key, &export.bytes, &signature.signature).unwrap();
        assert_eq!(export.document()["tenant"], tenant);
    }
}

/// The integrity table, on every ledgered kind an export covers: billing
/// events, capsule runs and audit events.
#[tokio::test]
async fn the_integrity_table_export_sweep_and_proof_each_refuse_naming_the_index() {
    struct Case {
        name: &'static str,
        /// The tampering, in SQL; `{t}` is the kind's table.
        sql: &'static str,
        /// The ledger index each refusal must name.
        index: u64,
        /// Other tenants' proof requests of the victim event that must be
        /// refused too.
        also_asked_by: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "ledger_index changed past the tree size",
            sql: "UPDATE {t} SET ledger_index = 1000 WHERE event_id = 'a-2'",
            index: 2,
            also_asked_by: &[],
        },
        Case {
            name: "row deleted",
            sql: "DELETE FROM {t} WHERE event_id = 'a-2'",
            index: 2,
            also_asked_by: &[],
        },
        Case {
            // The copy keeps every column of the row (whatever the table
            // holds) but its index.
            name: "row duplicated at another index (the key constraint dropped)",
            sql: "CREATE TABLE t_copy AS SELECT * FROM {t}; \
                  DROP TABLE {t}; \
                  ALTER TABLE t_copy RENAME TO {t}; \
                  CREATE TABLE t_dup AS SELECT * FROM {t} WHERE event_id = 'a-2'; \
                  UPDATE t_dup SET ledger_index = 6; \
                  INSERT INTO {t} SELECT * FROM t_dup; \
                  DROP TABLE t_dup",
            index: 6,
            also_asked_by: &[],
        },
        Case {
            name: "leaf tenant changed",
            sql: "UPDATE ledger_leaves SET tenant = 'globex' WHERE leaf_index = 2",
            index: 2,
            also_asked_by: &["globex"],
        },
        Case {
            name: "leaf deleted",
            sql: "DELETE FROM ledger_leaves WHERE leaf_index = 2",
            index: 2,
            also_asked_by: &[],
        },
    ];
    for kind in Kind::ALL {
        for case in &cases {
            for db in soma_store::testing::engines("analytics_integrity_table").await {
                let label = format!("{}: {kind:?}: {}", db.label, case.name);
                let mut env = Env::start(&db).await;
                env.seed_kind(kind).await;
                // Sound first: both exports verify, the sweep is clean.
                let acme = env
                    .verified_rows(&env.export_kind(kind, "acme").await, "acme")
                    .await;
                assert_eq!(acme.len(), 6, "{label}");
                let globex_before = env
                    .verified_rows(&env.export_kind(kind, "globex").await, "globex")
                    .await;
                assert_eq!(globex_before.len(), 2, "{label}");
                assert!(env.sweep().await.failures.is_empty(), "{label}");

                tamper(&env.db, &case.sql.replace("{t}", kind.table())).await;
                let named = format!("ledger index {}", case.index);

                let export = env.export_kind(kind, "acme").await;
                let status = export
                    .error
                    .as_ref()
                    .unwrap_or_else(|| panic!("{label}: the export must be refused"));
                assert_eq!(status.code(), Code::DataLoss, "{label}: {status:?}");
                assert!(status.message().contains(&named), "{label}: {}", status.message());
                assert!(
                    ["ledger_row_missing", "ledger_leaf_mismatch"].contains(&reason(status)),
                    "{label}: {}",
                    reason(status)
                );
                assert!(export.signature.is_none(), "{label}: no signature");

                let report = env.sweep().await;
                assert!(
                    report.failures.iter().any(|f| f.reason.contains(&named)),
                    "{label}: {:?}",
                    report.failures
                );

                for tenant in std::iter::once(&"acme").chain(case.also_asked_by) {
                    let refused = env.proof(tenant, "a-2").await.unwrap_err();
                    assert_eq!(refused.code(), Code::DataLoss, "{label}: {tenant}: {refused:?}");
                    assert!(
                        refused.message().contains(&named),
                        "{label}: {tenant}: {}",
                        refused.message()
                    );
                }

                // Globex's rows and leaves are intact: its export still
                // verifies and holds exactly the rows it held before.
                let globex = env
                    .verified_rows(&env.export_kind(kind, "globex").await, "globex")
                    .await;
                assert_eq!(globex, globex_before, "{label}");
                env.svc.stop().await;
                db.cleanup().await;
            }
        }
    }
}

#[tokio::test]
async fn ids_are_scoped_per_tenant_and_a_row_moved_to_another_tenant_is_caught() {
    for db in soma_store::testing::engines("analytics_tenant_ids").await {
        let label = db.label;
        let mut env = Env::start(&db).await;
        env.seed().await;

        // The same id, recorded by each tenant with its own content: two
        // records, each acknowledged at its own index.
        let acme = env.record_for("acme", "shared-1", 5_000).await.unwrap();
        let globex = env.record_for("globex", "shared-1", 7_000).await.unwrap();
        let (acme, globex) = (acme.ledger.unwrap(), globex.ledger.unwrap());
        assert_eq!((acme.index, globex.index), (8, 9), "{label}");
        // A retry is idempotent within the tenant; other content under the
        // same id is still a conflict there.
        let again = env.record_for("globex", "shared-1", 7_000).await.unwrap();
        assert_eq!(again.ledger.unwrap().index, 9, "{label}");
        let conflict = env.record_for("globex", "shared-1", 7_001).await.unwrap_err();
        assert_eq!(conflict.code(), Code::AlreadyExists, "{label}");

        // Each record verifies and is exported to its own tenant only.
        let acme_rows = env.verified(&env.export("acme").await, "acme").await;
        assert!(
            acme_rows.contains(&("shared-1".to_owned(), 5_000)),
            "{label}: {acme_rows:?}"
        );
        assert!(!acme_rows.contains(&("shared-1".to_owned(), 7_000)), "{label}");
        let globex_rows = env.verified(&env.export("globex").await, "globex").await;
        assert_eq!(
            globex_rows,
            [
                ("g-0".to_owned(), 106),
                ("g-1".to_owned(), 107),
                ("shared-1".to_owned(), 7_000)
            ],
            "{label}"
        );
        let latest = env
            .operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        let root = Hash::from_slice(&latest.root_hash).unwrap();
        for (tenant, entry) in [("acme", &acme), ("globex", &globex)] {
            let proof = env.proof(tenant, "shared-1").await.unwrap();
            assert_eq!(
                (proof.leaf_index, &proof.leaf_hash),
                (entry.index, &entry.leaf_hash),
                "{label}: {tenant}"
            );
            let path: Vec<Hash> = proof.proof.iter().map(|h| Hash::from_slice(h).unwrap()).collect();
            verify_inclusion(
                &Hash::from_slice(&proof.leaf_hash).unwrap(),
                proof.leaf_index,
                proof.tree_size,
                &path,
                &root,
            )
            .unwrap();
        }
        // An operator without claims names one of them as <tenant>/<id>.
        let ambiguous = env
            .operator
            .inclusion_proof(pb::InclusionProofRequest {
                event_id: "shared-1".to_owned(),
                tree_size: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(ambiguous.code(), Code::InvalidArgument, "{label}");
        let named = env
            .operator
            .inclusion_proof(pb::InclusionProofRequest {
                event_id: "globex/shared-1".to_owned(),
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(named.leaf_index, 9, "{label}");
        assert!(env.sweep().await.failures.is_empty(), "{label}");

        // No oracle: another tenant's id answers exactly like an id nobody
        // used, and the tenant/id form does not reach across tenants.
        let theirs = env.proof("globex", "a-0").await.unwrap_err();
        let nobodys = env.proof("globex", "never-used").await.unwrap_err();
        assert_eq!(
            (theirs.code(), reason(&theirs)),
            (Code::NotFound, "not_found"),
            "{label}"
        );
        assert_eq!(
            (nobodys.code(), reason(&nobodys)),
            (Code::NotFound, "not_found"),
            "{label}"
        );
        assert_eq!(
            theirs.message().replace("a-0", "ID"),
            nobodys.message().replace("never-used", "ID"),
            "{label}"
        );
        let qualified = env.proof("globex", "acme/a-0").await.unwrap_err();
        assert_eq!(qualified.code(), Code::NotFound, "{label}");
        // Nor can a tenant squat an id so that another tenant's own record
        // of it is refused: globex recording a-1 is globex's a-1.
        let squat = env.record_for("globex", "a-1", 1).await.unwrap();
        assert_eq!(squat.ledger.unwrap().index, 10, "{label}");

        // Rewritten in SQL onto an id the other tenant holds, a row collides
        // with that tenant's key and the database refuses it...
        let collide =
            "UPDATE billing_events SET tenant = 'globex' WHERE tenant = 'acme' AND event_id = 'shared-1'";
        let refused = match (env.db.as_sqlite(), env.db.as_postgres()) {
            (Some(pool), _) => sqlx::query(collide).execute(pool).await.is_err(),
            (None, Some(pool)) => sqlx::query(collide).execute(pool).await.is_err(),
            _ => unreachable!(),
        };
        assert!(
            refused,
            "{label}: the key (tenant, event_id) refuses the collision"
        );
        // ...and onto an id it does not hold, the row is caught everywhere:
        // acme's leaf lacks its row, globex holds a row no leaf of its has.
        assert_eq!(
            exec(
                &env.db,
                "UPDATE billing_events SET tenant = 'globex' WHERE tenant = 'acme' AND event_id = 'a-3'"
            )
            .await,
            1
        );
        for tenant in ["acme", "globex"] {
            let export = env.export(tenant).await;
            let status = export.error.expect("the export must be refused");
            assert_eq!(status.code(), Code::DataLoss, "{label}: {tenant}: {status:?}");
            assert!(
                status.message().contains("ledger index 3"),
                "{label}: {tenant}: {}",
                status.message()
            );
            assert!(export.signature.is_none());
            let refused = env.proof(tenant, "a-3").await.unwrap_err();
            assert_eq!(refused.code(), Code::DataLoss, "{label}: {tenant}: {refused:?}");
            assert!(
                refused.message().contains("ledger index 3"),
                "{label}: {}",
                refused.message()
            );
        }
        let report = env.sweep().await;
        assert_eq!(report.failures.len(), 1, "{label}: {:?}", report.failures);
        assert_eq!(
            (
                report.failures[0].table.as_str(),
                report.failures[0].primary_key.as_str()
            ),
            ("billing_events", "a-3"),
            "{label}"
        );
        assert!(
            report.failures[0].reason.starts_with("row mac: ")
                && report.failures[0]
                    .reason
                    .contains("tenant \"globex\", ledger index 3"),
            "{label}: {}",
            report.failures[0].reason
        );
        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn rows_sealed_before_scheme_2_are_resealed_at_start_up_unless_they_fail() {
    for db in soma_store::testing::engines("analytics_reseal").await {
        let label = db.label;
        let (config, keys) = keyed_config();
        // A database as the service left it before scheme 2: migrations 1
        // to 5, four billing events of acme sealed under scheme 1, their
        // leaves, head and signed checkpoint.
        let old = Database::connect(&db.settings, "analytics").await.unwrap();
        old.migrate(&soma_store::Migrations(&soma_analytics::MIGRATIONS.0[..5]))
            .await
            .unwrap();
        let recorder = format!("spiffe://{}/svc/tool-registry", TD);
        let mut hashes = Vec::new();
        for i in 0..4i64 {
            let event_id = format!("old-{i}");
            let content = json!({
                "tool": "summarize",
                "tool_version": "1.2.0",
                "currency": "EUR",
                "amount_micros": (100 + i).to_string(),
                "fuel_consumed": "1000",
                "duration_micros": "2500",
                "occurred_at": (T0 * 1_000_000_000).to_string(),
                "run_id": format!("run-{event_id}"),
                "recorded_by": recorder,
            });
            let leaf = soma_ledger::leaf_hash(
                &jcs::canonicalize(&json!({
                    "kind": "billing_event",
                    "event_id": event_id,
                    "tenant": "acme",
                    "content": content,
                }))
                .unwrap(),
            );
            hashes.push(leaf);
            // Scheme 1, as rows were sealed before scheme 2.
            let mac = row_mac(&keys, ("billing_events", &event_id, "acme"), 1, None, &content);
            exec(
                &old,
                &format!(
                    "INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at) \
                     VALUES ({i}, '{event_id}', 'acme', 'billing_event', {}, 1)",
                    blob(&old, leaf.as_bytes())
                ),
            )
            .await;
            exec(
                &old,
                &format!(
                    "INSERT INTO billing_events (event_id, tenant, tool, tool_version, currency, amount_micros, \
                     fuel_consumed, duration_micros, occurred_at, run_id, recorded_by, ledger_index, row_version, \
                     mac_key_id, mac) VALUES ('{event_id}', 'acme', 'summarize', '1.2.0', 'EUR', {}, 1000, 2500, \
                     {}, 'run-{event_id}', '{recorder}', {i}, 1, 'row-1', {})",
                    100 + i,
                    T0 * 1_000_000_000,
                    blob(&old, &mac)
                ),
            )
            .await;
        }
        let tree = CompactTree::from_leaves(&hashes).unwrap();
        let frontier: Vec<u8> = tree
            .frontier()
            .iter()
            .flat_map(|h| h.as_bytes().to_vec())
            .collect();
        let signer =
            CheckpointSigner::from_pkcs8_pem(config.ledger_origin.clone(), &config.signing_key_pem).unwrap();
        let note = signer.sign(&Checkpoint::new(config.ledger_origin.clone(), 4, tree.root()).unwrap());
        exec(
            &old,
            &format!(
                "UPDATE ledger_head SET tree_size = 4, root = {}, frontier = {} WHERE id = 1",
                blob(&old, tree.root().as_bytes()),
                blob(&old, &frontier)
            ),
        )
        .await;
        exec(
            &old,
            &format!(
                "INSERT INTO ledger_checkpoints (tree_size, root, note, key_id, created_at) \
                 VALUES (4, {}, '{note}', 'analytics-1', 1)",
                blob(&old, tree.root().as_bytes())
            ),
        )
        .await;
        // Before the upgrade, someone raises one amount in SQL.
        exec(
            &old,
            "UPDATE billing_events SET amount_micros = 999999 WHERE event_id = 'old-3'",
        )
        .await;

        // The new schema alone: the old rows still verify under scheme 1
        // (the tampered one aside), nothing is lost.
        old.migrate(&soma_analytics::MIGRATIONS).await.unwrap();
        let before = soma_analytics::verify_store(&old, &keys).await.unwrap();
        assert_eq!(before.rows_checked, 4, "{label}");
        let failed: Vec<&str> = before.failures.iter().map(|f| f.primary_key.as_str()).collect();
        assert_eq!(failed, ["old-3"], "{label}: {:?}", before.failures);
        old.close().await;

        // The service re-seals at start-up: every row that verifies, and its
        // leaf; the failing row is left under scheme 1 and still reported.
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let sql = common::database(&db.settings).await;
        let schemes = text(
            &sql,
            "SELECT CAST(COUNT(*) AS TEXT) || ':' || CAST(SUM(mac_scheme) AS TEXT) FROM billing_events \
             WHERE event_id <> 'old-3'",
        )
        .await;
        assert_eq!(schemes, "3:6", "{label}: three rows, all scheme 2");
        assert_eq!(
            text(
                &sql,
                "SELECT CAST(mac_scheme AS TEXT) FROM billing_events WHERE event_id = 'old-3'"
            )
            .await,
            "1",
            "{label}: the failing row is never re-sealed"
        );
        assert_eq!(
            text(
                &sql,
                "SELECT CAST(COUNT(*) AS TEXT) FROM ledger_leaves WHERE mac_scheme = 2 AND mac IS NOT NULL"
            )
            .await,
            "3",
            "{label}: leaf 3 stays unsealed"
        );
        let after = soma_analytics::verify_store(&sql, &keys).await.unwrap();
        let failed: Vec<&str> = after.failures.iter().map(|f| f.primary_key.as_str()).collect();
        assert_eq!(failed, ["old-3"], "{label}: {:?}", after.failures);

        // The re-sealed rows prove as before, against the old checkpoint.
        let mut operator = common::client(&ca, &svc, "/operator/auditor");
        let proof = operator
            .inclusion_proof(pb::InclusionProofRequest {
                event_id: "old-1".to_owned(),
                tree_size: 4,
            })
            .await
            .unwrap()
            .into_inner();
        let path: Vec<Hash> = proof.proof.iter().map(|h| Hash::from_slice(h).unwrap()).collect();
        verify_inclusion(&hashes[1], 1, 4, &path, &tree.root()).unwrap();
        // The unverifiable row is not served, and no export of the window can
        // be proven complete while its leaf is unaccounted for.
        let refused = operator
            .inclusion_proof(pb::InclusionProofRequest {
                event_id: "old-3".to_owned(),
                tree_size: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{label}: {refused:?}");
        let mut stream = operator
            .export_billing_ledger(pb::ExportRequest {
                tenant: "acme".to_owned(),
                from: ts(T0 - 1),
                to: ts(T0 + 1),
                tool: String::new(),
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let status = loop {
            match stream.message().await {
                Ok(Some(chunk)) => assert!(chunk.signature.is_none(), "{label}: no signature"),
                Ok(None) => panic!("{label}: the export must be refused"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::DataLoss, "{label}: {status:?}");
        assert!(
            status.message().contains("ledger index 3"),
            "{label}: {}",
            status.message()
        );

        // New appends carry scheme 2 from the start.
        let mut registry = common::client(&ca, &svc, "/svc/tool-registry");
        let recorded = registry
            .record_billing_event(billing("new-0", "acme", 1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(recorded.ledger.unwrap().index, 4, "{label}");
        assert_eq!(
            text(
                &sql,
                "SELECT CAST(mac_scheme AS TEXT) FROM billing_events WHERE event_id = 'new-0'"
            )
            .await,
            "2",
            "{label}"
        );
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_replica_trusts_a_leaf_another_wrote_only_once_its_mac_verifies() {
    for db in soma_store::testing::engines("analytics_replica_leaves").await {
        let label = db.label;
        // Two processes on one database: `writer` appends, `reader` has
        // loaded none of it and catches up from the database.
        let [first, second] = twin_configs();
        let mut writer = Env::start_with(&db, first).await;
        let reader = Env::start_with(&db, second).await;
        writer.seed().await;
        let rows = reader.verified(&reader.export("acme").await, "acme").await;
        assert_eq!(
            rows.len(),
            6,
            "{label}: the reader caught up with the writer's leaves"
        );

        // A leaf appended by the writer is rewritten to another tenant before
        // the reader reads it: its MAC fails, so the reader cannot tell whose
        // it is and proves no export complete, naming it.
        writer.record_for("acme", "late-1", 1).await.unwrap();
        exec(
            &writer.db,
            "UPDATE ledger_leaves SET tenant = 'globex' WHERE leaf_index = 8",
        )
        .await;
        for tenant in ["acme", "globex"] {
            let export = reader.export(tenant).await;
            let status = export.error.expect("the export must be refused");
            assert_eq!(status.code(), Code::DataLoss, "{label}: {tenant}: {status:?}");
            assert_eq!(reason(&status), "ledger_leaf_mismatch", "{label}: {tenant}");
            assert!(
                status.message().contains("ledger index 8"),
                "{label}: {}",
                status.message()
            );
            assert!(export.signature.is_none());
        }
        let refused = reader.proof("globex", "late-1").await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{label}: {refused:?}");
        writer.svc.stop().await;
        reader.svc.stop().await;
        db.cleanup().await;
    }
}
