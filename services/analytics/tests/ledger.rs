//! Analytics' ledger and row integrity, on SQLite and on PostgreSQL, through
//! the real service over mTLS: proofs that verify offline, idempotent
//! appends, tampering caught on read, by the sweep and at start-up,
//! contiguous indices under concurrent writers, tenancy, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    AnalyticsKeys, analytics_config, billing, capsule_run, client, inclusion_proof, leaf_hashes,
    start_analytics, verify_proof,
};
use soma_auth::ClaimsSigner;
use soma_ledger::{CheckpointVerifier, Hash, verify_consistency};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_testing::{Ca, Running, exec, http_get, scalar, tenant_request};
use tonic::Code;
use tonic::transport::Channel;

/// The verifier of the service's checkpoints, from the config's key.
fn checkpoint_verifier(config: &soma_analytics::AnalyticsConfig) -> CheckpointVerifier {
    let signer = soma_sign::Ed25519Signer::from_pkcs8_pem(
        soma_sign::KeyId::new("analytics-1").unwrap(),
        &config.signing_key_pem,
    )
    .unwrap();
    CheckpointVerifier::new(config.ledger_origin.clone(), &signer.public_key()).unwrap()
}

fn hash(bytes: &[u8]) -> Hash {
    Hash::from_slice(bytes).unwrap()
}

struct Clients {
    gateway: AnalyticsClient<Channel>,
    tool_registry: AnalyticsClient<Channel>,
    operator: AnalyticsClient<Channel>,
}

fn clients(ca: &Ca, svc: &Running) -> Clients {
    Clients {
        gateway: client(ca, svc, "/svc/gateway"),
        tool_registry: client(ca, svc, "/svc/tool-registry"),
        operator: client(ca, svc, "/operator/auditor"),
    }
}

#[tokio::test]
async fn appends_are_idempotent_and_proofs_verify_offline() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let config = analytics_config();
        let verifier = checkpoint_verifier(&config);
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let mut c = clients(&ca, &svc);

        let mut recorded = Vec::new();
        for i in 0..23 {
            let r = if i % 2 == 0 {
                c.tool_registry
                    .record_billing_event(billing(&format!("bill-{i}"), "acme", 1000 + i))
                    .await
            } else {
                let req = tenant_request(
                    &claims,
                    &svc.id,
                    "acme",
                    &["analytics:ingest"],
                    capsule_run(&format!("run-{i}"), ""),
                );
                c.gateway.record_capsule_run(req).await
            };
            let r = r.unwrap().into_inner();
            assert_eq!(r.ledger.as_ref().unwrap().index, i as u64, "{}", db.label);
            recorded.push(r);
        }
        let early = c
            .operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(early.tree_size, 23);
        for i in 23..40 {
            c.tool_registry
                .record_billing_event(billing(&format!("bill-{i}"), "globex", 7))
                .await
                .unwrap();
        }

        // A retry returns the same index; other content under the same id
        // is refused and writes nothing.
        let again = c
            .tool_registry
            .record_billing_event(billing("bill-4", "acme", 1004))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.ledger.unwrap().index, 4);
        let conflict = c
            .tool_registry
            .record_billing_event(billing("bill-4", "acme", 9999))
            .await
            .unwrap_err();
        assert_eq!(conflict.code(), Code::AlreadyExists);

        let latest = c
            .operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(latest.tree_size, 40, "{}", db.label);
        let parsed = verifier.verify(&latest.note).unwrap();
        assert_eq!(parsed.tree_size(), 40);
        assert_eq!(parsed.root().as_bytes().as_slice(), latest.root_hash.as_slice());
        verifier.verify(&early.note).unwrap();

        for r in &recorded {
            let proof = inclusion_proof(&mut c.operator, &r.event_id, 0).await;
            assert_eq!(proof.leaf_hash, r.ledger.as_ref().unwrap().leaf_hash);
            verify_proof(&proof, proof.tree_size, &latest.root_hash);
            // And at the earlier checkpoint's size.
            let at_early = inclusion_proof(&mut c.operator, &r.event_id, 23).await;
            verify_proof(&at_early, 23, &early.root_hash);
        }
        let consistency = c
            .operator
            .consistency_proof(pb::ConsistencyProofRequest {
                from_size: 23,
                to_size: 40,
            })
            .await
            .unwrap()
            .into_inner();
        let path: Vec<Hash> = consistency.proof.iter().map(|p| hash(p)).collect();
        verify_consistency(23, 40, &path, &hash(&early.root_hash), &hash(&latest.root_hash)).unwrap();

        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn tampered_rows_are_caught_on_read_and_by_the_sweep() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, &db.settings, analytics_config(), Some(&claims)).await;
        let mut c = clients(&ca, &svc);
        for i in 0..6 {
            c.tool_registry
                .record_billing_event(billing(&format!("bill-{i}"), "acme", 100))
                .await
                .unwrap();
        }
        let req = tenant_request(
            &claims,
            &svc.id,
            "acme",
            &["analytics:ingest"],
            capsule_run("run-x", ""),
        );
        c.gateway.record_capsule_run(req).await.unwrap();
        let clean = c
            .operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((clean.rows_checked, clean.failures.len()), (7, 0), "{}", db.label);

        let sql = db.connect().await;
        // Someone with SQL access raises an amount...
        assert_eq!(
            exec(
                &sql,
                "UPDATE billing_events SET amount_micros = 100000000 WHERE event_id = 'bill-2'"
            )
            .await,
            1
        );
        // ...and moves a valid row to another tenant.
        assert_eq!(
            exec(
                &sql,
                "UPDATE capsule_runs SET tenant = 'globex' WHERE event_id = 'run-x'"
            )
            .await,
            1
        );

        let swept = c
            .operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut failed: Vec<(String, String)> = swept
            .failures
            .iter()
            .map(|f| (f.table.clone(), f.primary_key.clone()))
            .collect();
        failed.sort();
        assert_eq!(
            failed,
            [
                ("billing_events".to_owned(), "bill-2".to_owned()),
                ("capsule_runs".to_owned(), "run-x".to_owned())
            ],
            "{}",
            db.label
        );
        // On read: the tampered row is never served as valid.
        for event_id in ["bill-2", "run-x"] {
            let err = c
                .operator
                .inclusion_proof(pb::InclusionProofRequest {
                    event_id: event_id.to_owned(),
                    tree_size: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::DataLoss, "{} {event_id}: {err:?}", db.label);
        }
        // Untouched rows still are.
        c.operator
            .inclusion_proof(pb::InclusionProofRequest {
                event_id: "bill-3".to_owned(),
                tree_size: 0,
            })
            .await
            .unwrap();
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_deleted_leaf_or_a_rolled_back_head_is_detected_at_start_up_and_writes_are_refused() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let mut c = clients(&ca, &svc);
        for i in 0..10 {
            c.tool_registry
                .record_billing_event(billing(&format!("bill-{i}"), "acme", 5))
                .await
                .unwrap();
        }
        svc.stop().await;

        // Delete leaf 4 (and its row, which references it).
        let sql = db.connect().await;
        exec(&sql, "DELETE FROM billing_events WHERE ledger_index = 4").await;
        assert_eq!(
            exec(&sql, "DELETE FROM ledger_leaves WHERE leaf_index = 4").await,
            1
        );

        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let mut c = clients(&ca, &svc);
        let err = c
            .tool_registry
            .record_billing_event(billing("bill-new", "acme", 5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", db.label);
        assert!(
            err.message().contains("index 4"),
            "{}: {}",
            db.label,
            err.message()
        );
        let ready = http_get(svc.admin, "/ready").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        svc.stop().await;
        sql.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_head_rolled_back_below_its_latest_checkpoint_is_refused() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let mut c = clients(&ca, &svc);
        for i in 0..5 {
            c.tool_registry
                .record_billing_event(billing(&format!("bill-{i}"), "acme", 5))
                .await
                .unwrap();
        }
        svc.stop().await;
        // Roll the head back to an earlier, smaller size (as a restore of an
        // old backup of that one table would), leaving later checkpoints.
        let sql = db.connect().await;
        exec(&sql, "DELETE FROM billing_events WHERE ledger_index >= 3").await;
        exec(&sql, "DELETE FROM ledger_leaves WHERE leaf_index >= 3").await;
        let root3: Vec<u8> = {
            use sqlx::Row as _;
            match (sql.as_sqlite(), sql.as_postgres()) {
                (Some(p), _) => sqlx::query("SELECT root FROM ledger_checkpoints WHERE tree_size = 3")
                    .fetch_one(p)
                    .await
                    .unwrap()
                    .get(0),
                (None, Some(p)) => sqlx::query("SELECT root FROM ledger_checkpoints WHERE tree_size = 3")
                    .fetch_one(p)
                    .await
                    .unwrap()
                    .get(0),
                _ => unreachable!(),
            }
        };
        let hex: String = root3.iter().map(|b| format!("{b:02x}")).collect();
        let literal = if sql.as_sqlite().is_some() {
            format!("X'{hex}'")
        } else {
            format!("'\\x{hex}'::bytea")
        };
        exec(
            &sql,
            &format!("UPDATE ledger_head SET tree_size = 3, root = {literal} WHERE id = 1"),
        )
        .await;
        assert_eq!(
            scalar(&sql, "SELECT MAX(tree_size) FROM ledger_checkpoints").await,
            5
        );

        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let mut c = clients(&ca, &svc);
        let err = c
            .tool_registry
            .record_billing_event(billing("bill-9", "acme", 5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", db.label);
        assert!(err.message().contains("beyond the head"), "{}", err.message());
        svc.stop().await;
        sql.close().await;
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_writers_get_contiguous_unique_indices() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let config = analytics_config();
        let verifier = checkpoint_verifier(&config);
        let svc = start_analytics(&ca, &db.settings, config, None).await;
        let client = clients(&ca, &svc).tool_registry;
        let mut writers = Vec::new();
        for w in 0..16 {
            let mut client = client.clone();
            writers.push(tokio::spawn(async move {
                let mut indices = Vec::with_capacity(1000);
                for i in 0..1000 {
                    let r = client
                        .record_billing_event(billing(&format!("w{w}-e{i}"), "acme", i))
                        .await
                        .unwrap();
                    indices.push(r.into_inner().ledger.unwrap().index);
                }
                indices
            }));
        }
        let mut all = Vec::new();
        for w in writers {
            all.extend(w.await.unwrap());
        }
        all.sort_unstable();
        let expected: Vec<u64> = (0..16_000).collect();
        assert_eq!(all, expected, "{}: indices are not exactly 0..16000", db.label);

        let sql = db.connect().await;
        assert_eq!(scalar(&sql, "SELECT COUNT(*) FROM ledger_leaves").await, 16_000);
        assert_eq!(
            scalar(&sql, "SELECT MAX(leaf_index) FROM ledger_leaves").await,
            15_999
        );
        // The root recomputed from the stored leaves is the signed one.
        let leaves = leaf_hashes(&sql).await;
        let mut c = clients(&ca, &svc);
        let latest = c
            .operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        let note = verifier.verify(&latest.note).unwrap();
        assert_eq!(note.tree_size(), 16_000);
        assert_eq!(soma_ledger::root(&leaves), *note.root());

        // Every checkpoint the batches signed verifies as the one stored at
        // its size, and no two share a nonce (on PostgreSQL each batch's
        // nonce was drawn while the previous statement was in flight).
        let notes = checkpoint_notes(&sql).await;
        assert!(notes.len() > 1, "{}: {} checkpoints", db.label, notes.len());
        let mut nonces = std::collections::HashSet::new();
        let mut tree = soma_ledger::CompactTree::new();
        let mut leaf = leaves.iter();
        for (size, text) in &notes {
            let checkpoint = verifier.verify(text).unwrap();
            assert_eq!(checkpoint.tree_size(), u64::try_from(*size).unwrap());
            while tree.size() < checkpoint.tree_size() {
                tree.append(*leaf.next().unwrap()).unwrap();
            }
            assert_eq!(
                *checkpoint.root(),
                tree.root(),
                "{}: checkpoint at {size}",
                db.label
            );
            assert!(
                nonces.insert(signature_nonce(text)),
                "{}: the checkpoint at {size} reuses a nonce",
                db.label
            );
        }
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

/// Every stored checkpoint: (tree size, signed note).
async fn checkpoint_notes(sql: &soma_store::Database) -> Vec<(i64, String)> {
    use sqlx::Row as _;
    let query = "SELECT tree_size, note FROM ledger_checkpoints ORDER BY tree_size";
    soma_store::on_pool!(sql, pool => sqlx::query(query)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The key id and `R` (the nonce's commitment) of a note's one signature,
/// as they are written: the signature line's base64 payload is key id (4
/// bytes) ‖ R (32) ‖ S (32), and its first 48 characters encode exactly
/// the first 36 bytes.
fn signature_nonce(note: &str) -> String {
    let line = note.lines().last().unwrap();
    let payload = line.rsplit(' ').next().unwrap();
    payload[..48].to_owned()
}

/// Two Analytics replicas on one SQLite database, each with its own ledger
/// writer: every commit of one moves the head under the other, which must
/// notice (the head it expects is gone), re-read it under the lock and
/// carry on. Retries of events first recorded on the other replica get the
/// other replica's index back. On PostgreSQL two instances never write at
/// once: the second stands by (the writer's lease, `tests/standby.rs`), and
/// refuses the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_database_share_one_contiguous_ledger() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let verifier = checkpoint_verifier(&keys.config());
        let a = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let b = start_analytics(&ca, &db.settings, keys.config(), None).await;
        if db.label == "postgres" {
            let refused = clients(&ca, &b)
                .tool_registry
                .record_billing_event(billing("on-b", "acme", 1))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
            assert_eq!(soma_testing::grpc_reason(&refused), "standby");
            let recorded = clients(&ca, &a)
                .tool_registry
                .record_billing_event(billing("on-a", "acme", 1))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(recorded.ledger.unwrap().index, 0);
            a.stop().await;
            b.stop().await;
            db.cleanup().await;
            continue;
        }
        let writers_of = [clients(&ca, &a).tool_registry, clients(&ca, &b).tool_registry];
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut client = writers_of[w % 2].clone();
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::with_capacity(250);
                for i in 0..250 {
                    let id = format!("w{w}-e{i}");
                    let r = client
                        .record_billing_event(billing(&id, "acme", i))
                        .await
                        .unwrap();
                    acked.push((id, r.into_inner().ledger.unwrap().index));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        let mut indices: Vec<u64> = acked.iter().map(|(_, i)| *i).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..2000).collect::<Vec<u64>>(), "{}", db.label);

        // A retry through the other replica answers with the stored index,
        // whichever path its batch takes, and appends nothing.
        for (n, (id, index)) in acked.iter().step_by(97).enumerate() {
            let w: usize = id[1..id.find('-').unwrap()].parse().unwrap();
            let i: i64 = id[id.find('e').unwrap() + 1..].parse().unwrap();
            // Same id, other content: a conflict, never a second leaf.
            let r = writers_of[n % 2]
                .clone()
                .record_billing_event(billing(id, "acme", i + 1_000_000))
                .await;
            assert_eq!(r.unwrap_err().code(), Code::AlreadyExists, "{}: {id}", db.label);
            let again = writers_of[(w + 1) % 2]
                .clone()
                .record_billing_event(billing(id, "acme", i))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(again.ledger.unwrap().index, *index, "{}: {id}", db.label);
        }
        // Both replicas append after the retries, each on a head the other moved.
        for (n, client) in writers_of.iter().enumerate() {
            let r = client
                .clone()
                .record_billing_event(billing(&format!("late-{n}"), "acme", 1))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.ledger.unwrap().index, 2000 + n as u64, "{}", db.label);
        }

        let sql = db.connect().await;
        assert_eq!(scalar(&sql, "SELECT COUNT(*) FROM ledger_leaves").await, 2002);
        assert_eq!(scalar(&sql, "SELECT COUNT(*) FROM billing_events").await, 2002);
        let leaves = leaf_hashes(&sql).await;
        for svc in [&a, &b] {
            let latest = clients(&ca, svc)
                .operator
                .ledger_checkpoint(pb::LedgerCheckpointRequest {})
                .await
                .unwrap()
                .into_inner();
            let note = verifier.verify(&latest.note).unwrap();
            assert_eq!(note.tree_size(), 2002, "{}", db.label);
            assert_eq!(soma_ledger::root(&leaves), *note.root(), "{}", db.label);
        }
        sql.close().await;
        a.stop().await;
        b.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_tenant_cannot_get_proofs_of_another_tenants_leaves() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, &db.settings, analytics_config(), Some(&claims)).await;
        let mut c = clients(&ca, &svc);
        c.tool_registry
            .record_billing_event(billing("a-1", "acme", 1))
            .await
            .unwrap();
        c.tool_registry
            .record_billing_event(billing("b-1", "globex", 1))
            .await
            .unwrap();
        let ask = |tenant: &str, event: &str, caps: &[&str]| {
            tenant_request(
                &claims,
                &svc.id,
                tenant,
                caps,
                pb::InclusionProofRequest {
                    event_id: event.to_owned(),
                    tree_size: 0,
                },
            )
        };
        c.gateway
            .inclusion_proof(ask("acme", "a-1", &["ledger:read"]))
            .await
            .unwrap();
        let denied = c
            .gateway
            .inclusion_proof(ask("acme", "b-1", &["ledger:read"]))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::NotFound, "{}", db.label);
        // A tenant cannot record an event for another tenant either.
        let mut run = capsule_run("run-evil", "");
        run.tenant = "globex".to_owned();
        let req = tenant_request(&claims, &svc.id, "acme", &["analytics:ingest"], run);
        assert_eq!(
            c.gateway.record_capsule_run(req).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_writes_nothing() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let svc = start_analytics(&ca, &db.settings, analytics_config(), None).await;
        let mut c = clients(&ca, &svc);
        struct Case {
            name: &'static str,
            request: pb::RecordBillingEventRequest,
            field: &'static str,
        }
        let with = |f: fn(&mut pb::RecordBillingEventRequest)| {
            let mut r = billing("bad-1", "acme", 10);
            f(&mut r);
            r
        };
        let cases = [
            Case {
                name: "negative amount",
                request: with(|r| r.amount.as_mut().unwrap().micros = -1),
                field: "amount.micros",
            },
            Case {
                name: "no amount",
                request: with(|r| r.amount = None),
                field: "amount",
            },
            Case {
                name: "bad currency",
                request: with(|r| r.amount.as_mut().unwrap().currency = "eur".into()),
                field: "amount.currency",
            },
            Case {
                name: "nanos out of range",
                request: with(|r| r.occurred_at.as_mut().unwrap().nanos = 2_000_000_000),
                field: "occurred_at",
            },
            Case {
                name: "negative nanos",
                request: with(|r| r.occurred_at.as_mut().unwrap().nanos = -1),
                field: "occurred_at",
            },
            Case {
                name: "year 9999",
                request: with(|r| r.occurred_at.as_mut().unwrap().seconds = 253_402_300_799),
                field: "occurred_at",
            },
            Case {
                name: "missing timestamp",
                request: with(|r| r.occurred_at = None),
                field: "occurred_at",
            },
            Case {
                name: "empty event id",
                request: with(|r| r.event_id.clear()),
                field: "event_id",
            },
            Case {
                name: "event id with a slash",
                request: with(|r| r.event_id = "a/b".into()),
                field: "event_id",
            },
            Case {
                name: "empty tenant",
                request: with(|r| r.tenant.clear()),
                field: "tenant",
            },
            Case {
                name: "fuel beyond i64",
                request: with(|r| r.fuel_consumed = u64::MAX),
                field: "fuel_consumed",
            },
        ];
        for case in cases {
            let err = c
                .tool_registry
                .record_billing_event(case.request)
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{}: {}",
                case.name,
                err.message()
            );
            assert!(
                err.message().starts_with(&format!("{}:", case.field)),
                "{}: {}",
                case.name,
                err.message()
            );
        }
        // An unknown enum value on the wire.
        let mut run = capsule_run("bad-run", "");
        run.tenant = "acme".into();
        run.outcome = 99;
        let err = c.tool_registry.record_capsule_run(run).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("outcome:"), "{}", err.message());

        let latest = c
            .operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(latest.tree_size, 0, "{}: something was written", db.label);
        let sql = db.connect().await;
        assert_eq!(scalar(&sql, "SELECT COUNT(*) FROM billing_events").await, 0);
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

/// `name`'s value in a `/metrics` response, as written.
fn metric<'a>(exposition: &'a str, name: &str) -> Option<&'a str> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
}

/// Decimal seconds as written on `/metrics`, in nanoseconds, exactly.
fn nanos_of(seconds: &str) -> i64 {
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    assert!(fraction.len() <= 9, "{seconds}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + format!("{fraction:0<9}").parse::<i64>().unwrap()
}

/// The newest stored checkpoint: (tree size, when it was signed).
async fn stored_checkpoint(sql: &soma_store::Database) -> (i64, i64) {
    let newest = "FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1";
    (
        scalar(sql, &format!("SELECT tree_size {newest}")).await,
        scalar(sql, &format!("SELECT created_at {newest}")).await,
    )
}

#[tokio::test]
async fn the_latest_checkpoint_on_metrics_is_the_stored_one_and_moves_with_each_append() {
    const STAMP: &str = "soma_ledger_last_checkpoint_timestamp_seconds";
    const SIZE: &str = "soma_ledger_last_checkpoint_tree_size";
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let sql = db.connect().await;
        // An empty ledger has no checkpoint: the series are described, not
        // sampled.
        let exposition = http_get(svc.admin, "/metrics").await;
        assert!(
            exposition.contains(&format!("# TYPE {STAMP} gauge\n")),
            "{exposition}"
        );
        assert_eq!(metric(&exposition, STAMP), None, "{}", db.label);
        assert_eq!(metric(&exposition, SIZE), None, "{}", db.label);

        let mut c = clients(&ca, &svc);
        let mut previous = 0;
        for i in 0..3 {
            c.tool_registry
                .record_billing_event(billing(&format!("bill-{i}"), "acme", 5))
                .await
                .unwrap();
            let (size, signed_at) = stored_checkpoint(&sql).await;
            assert_eq!(size, i + 1, "{}", db.label);
            assert!(signed_at > previous, "{}: the checkpoint did not move", db.label);
            previous = signed_at;
            let exposition = http_get(svc.admin, "/metrics").await;
            assert_eq!(
                metric(&exposition, STAMP).map(nanos_of),
                Some(signed_at),
                "{}: {exposition}",
                db.label
            );
            assert_eq!(
                metric(&exposition, SIZE),
                Some(size.to_string().as_str()),
                "{}",
                db.label
            );
        }
        // A retry appends nothing and signs no checkpoint.
        c.tool_registry
            .record_billing_event(billing("bill-2", "acme", 5))
            .await
            .unwrap();
        let exposition = http_get(svc.admin, "/metrics").await;
        assert_eq!(metric(&exposition, STAMP).map(nanos_of), Some(previous));
        svc.stop().await;

        // After a restart, the stored checkpoint is the one shown.
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let exposition = http_get(svc.admin, "/metrics").await;
        assert_eq!(
            metric(&exposition, STAMP).map(nanos_of),
            Some(previous),
            "{}",
            db.label
        );
        assert_eq!(metric(&exposition, SIZE), Some("3"), "{}", db.label);
        svc.stop().await;
        sql.close().await;
        db.cleanup().await;
    }
}
