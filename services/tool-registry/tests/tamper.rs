//! The tamper table (TUF's attacks, and an attacker with write access to
//! the database): each tampering is refused with its own reason, and the
//! sandbox's compile counter does not move — a tampered, unverified or
//! revoked release is never compiled nor instantiated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, Publisher, adapter};
use serde_json::json;
use soma_mesh::ServiceKind;
use soma_testing::{exec, grpc_reason};
use tonic::Code;

/// What a tampering is expected to produce.
enum Expected {
    /// Publishing is refused with this code and reason.
    Publish(Code, &'static str),
    /// Executing the release is refused with this code and reason, and
    /// `VerifyRelease` names exactly these failures.
    Execute(Code, &'static str, &'static [&'static str]),
}

struct Case {
    name: &'static str,
    expected: Expected,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampering_is_refused_with_its_reason_and_nothing_is_compiled() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let db = &h.db;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let stranger = Publisher::generate("stranger");
        let retired = Publisher::generate("retired");
        h.register(&retired).await;
        h.client(common::OPERATOR)
            .retire_publisher_key(soma_proto::v1::RetirePublisherKeyRequest {
                key_id: retired.key_id.clone(),
                reason: "compromised".into(),
            })
            .await
            .unwrap();

        let base_echo = adapter("echo");
        let stats = adapter("text_stats");
        let compiled = || h.registry.sandbox().counters().compiled;
        let instantiated = || h.registry.sandbox().counters().instantiated;

        for (i, case) in cases().into_iter().enumerate() {
            let tool = format!("tool-{i}");
            // Modules are stored by digest: each case gets a module of its
            // own, so that one case's tampering is not another's.
            let echo = with_custom_section(&base_echo, &tool);
            let label = format!("{}: {}", stores.label, case.name);
            let before = (compiled(), instantiated());
            match case.expected {
                Expected::Publish(code, reason) => {
                    let request = match case.name {
                        "manifest byte changed after signing" => {
                            let mut request = publisher.release(&tool, "1.0.0", &echo);
                            let envelope = request.envelope.as_mut().unwrap();
                            let at = envelope.payload.iter().position(|b| *b == b'a').unwrap();
                            envelope.payload[at] = b'b';
                            request
                        }
                        "module byte changed after signing" => {
                            let mut request = publisher.release(&tool, "1.0.0", &echo);
                            let last = request.module.len() - 1;
                            request.module[last] ^= 0x01;
                            request
                        }
                        "signature from an unregistered key" => stranger.release(&tool, "1.0.0", &echo),
                        "signature from a retired key" => retired.release(&tool, "1.0.0", &echo),
                        "mix-and-match: one release's manifest, another's module" => {
                            let mut request = publisher.release(&tool, "1.0.0", &echo);
                            request.module = publisher.release(&tool, "1.0.0", &stats).module;
                            request
                        }
                        "signature bytes changed" => {
                            let mut request = publisher.release(&tool, "1.0.0", &echo);
                            request.envelope.as_mut().unwrap().signatures[0].sig[0] ^= 0x80;
                            request
                        }
                        "version rollback" => {
                            h.publish(publisher.release(&tool, "2.0.0", &echo)).await.unwrap();
                            publisher.release(&tool, "1.9.9", &echo)
                        }
                        "re-publish with other bytes" => {
                            h.publish(publisher.release(&tool, "1.0.0", &echo)).await.unwrap();
                            publisher.release(&tool, "1.0.0", &stats)
                        }
                        other => panic!("no publish tampering {other}"),
                    };
                    let status = h.publish(request).await.unwrap_err();
                    assert_eq!(
                        (status.code(), grpc_reason(&status)),
                        (code, reason),
                        "{label}: {status:?}"
                    );
                }
                Expected::Execute(code, reason, failures) => {
                    // A release that was good when published, then tampered
                    // with in the database: never run, even from the cache.
                    h.publish(publisher.release(&tool, "1.0.0", &echo)).await.unwrap();
                    let at_rest = (compiled(), instantiated());
                    let sql = match case.name {
                        "stored module byte changed" => format!(
                            "UPDATE modules SET bytes = {} WHERE sha256 = (SELECT module_sha256 FROM releases WHERE tool = '{tool}')",
                            hex_literal(&flip_last(&echo), stores.label),
                        ),
                        "stored manifest changed" => format!(
                            "UPDATE releases SET manifest = {} WHERE tool = '{tool}'",
                            hex_literal(
                                &publisher
                                    .release(&tool, "1.0.0", &stats)
                                    .envelope
                                    .unwrap()
                                    .payload,
                                stores.label
                            ),
                        ),
                        "stored seal (HMAC) changed" => format!(
                            "UPDATE releases SET hmac = {} WHERE tool = '{tool}'",
                            hex_literal(&[0u8; 32], stores.label),
                        ),
                        "row edited in SQL: state of a revoked release" => {
                            // Revoked through the API, then flipped back by
                            // the attacker.
                            h.client(common::GATEWAY)
                                .revoke_release(h.tenant(
                                    "acme",
                                    &["tools:revoke"],
                                    soma_proto::v1::RevokeReleaseRequest {
                                        tool: tool.clone(),
                                        version: "1.0.0".into(),
                                        reason: "bad".into(),
                                    },
                                ))
                                .await
                                .unwrap();
                            format!("UPDATE releases SET state = 'active' WHERE tool = '{tool}'")
                        }
                        "stored mix-and-match: another release's module digest" => format!(
                            "UPDATE releases SET module_sha256 = {} WHERE tool = '{tool}'",
                            hex_literal(&soma_sign::sha256(&stats), stores.label),
                        ),
                        "publisher key row edited: retirement erased" => format!(
                            "UPDATE publisher_keys SET retired_at = NULL WHERE key_id = '{}'",
                            retired.key_id
                        ),
                        other => panic!("no stored tampering {other}"),
                    };
                    if case.name.contains("module digest") {
                        // The other module must exist for the foreign key.
                        h.publish(publisher.release(&format!("{tool}-other"), "1.0.0", &stats))
                            .await
                            .unwrap();
                    }
                    assert_eq!(exec(db, &sql).await, 1, "{label}: {sql}");
                    if case.name.starts_with("publisher key row") {
                        let keys = h
                            .client(common::OPERATOR)
                            .list_publisher_keys(soma_proto::v1::ListPublisherKeysRequest {})
                            .await
                            .unwrap_err();
                        assert_eq!(
                            (keys.code(), grpc_reason(&keys)),
                            (code, reason),
                            "{label}: {keys:?}"
                        );
                        continue;
                    }
                    let status = h
                        .execute("acme", &tool, "1.0.0", json!({"text": "x"}))
                        .await
                        .unwrap_err();
                    assert_eq!(
                        (status.code(), grpc_reason(&status)),
                        (code, reason),
                        "{label}: {status:?}"
                    );
                    let named = h.failures(&tool, "1.0.0").await;
                    assert_eq!(named, failures, "{label}");
                    assert_eq!((compiled(), instantiated()), at_rest, "{label}: compiled or ran");
                    continue;
                }
            }
            assert_eq!((compiled(), instantiated()), before, "{label}: compiled or ran");
        }
        // The good path still compiles and runs: the counters are live.
        h.publish(publisher.release("good", "1.0.0", &stats))
            .await
            .unwrap();
        h.execute("acme", "good", "1.0.0", json!({"text": "a b"}))
            .await
            .unwrap();
        assert_eq!(compiled(), 1, "{}", stores.label);
        h.stop().await;
        stores.cleanup().await;
    }
}

fn cases() -> Vec<Case> {
    use Code::{AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, PermissionDenied};
    vec![
        Case {
            name: "manifest byte changed after signing",
            expected: Expected::Publish(PermissionDenied, "signature_invalid"),
        },
        Case {
            name: "module byte changed after signing",
            expected: Expected::Publish(InvalidArgument, "module_digest_mismatch"),
        },
        Case {
            name: "signature bytes changed",
            expected: Expected::Publish(PermissionDenied, "signature_invalid"),
        },
        Case {
            name: "signature from an unregistered key",
            expected: Expected::Publish(PermissionDenied, "publisher_unknown"),
        },
        Case {
            name: "signature from a retired key",
            expected: Expected::Publish(PermissionDenied, "publisher_retired"),
        },
        Case {
            name: "mix-and-match: one release's manifest, another's module",
            expected: Expected::Publish(InvalidArgument, "module_size_mismatch"),
        },
        Case {
            name: "version rollback",
            expected: Expected::Publish(FailedPrecondition, "version_not_greater"),
        },
        Case {
            name: "re-publish with other bytes",
            expected: Expected::Publish(AlreadyExists, "version_exists"),
        },
        Case {
            name: "stored module byte changed",
            expected: Expected::Execute(FailedPrecondition, "release_unverified", &["module_digest"]),
        },
        Case {
            name: "stored manifest changed",
            expected: Expected::Execute(
                DataLoss,
                "row_integrity",
                &[
                    "row_mac",
                    "manifest_digest",
                    "registry_hmac",
                    "envelope_payload",
                    "module_size",
                    "module_digest",
                    "row_manifest_mismatch",
                ],
            ),
        },
        Case {
            name: "stored seal (HMAC) changed",
            expected: Expected::Execute(DataLoss, "row_integrity", &["row_mac", "registry_hmac"]),
        },
        Case {
            name: "row edited in SQL: state of a revoked release",
            expected: Expected::Execute(DataLoss, "row_integrity", &["row_mac"]),
        },
        Case {
            name: "stored mix-and-match: another release's module digest",
            expected: Expected::Execute(
                DataLoss,
                "row_integrity",
                &["row_mac", "module_size", "module_digest", "row_manifest_mismatch"],
            ),
        },
        Case {
            name: "publisher key row edited: retirement erased",
            expected: Expected::Execute(DataLoss, "row_integrity", &[]),
        },
    ]
}

/// `module` with a custom section `name` appended: another module, that
/// runs the same.
fn with_custom_section(module: &[u8], name: &str) -> Vec<u8> {
    let mut section = vec![u8::try_from(name.len()).unwrap()];
    section.extend_from_slice(name.as_bytes());
    let mut out = module.to_vec();
    out.push(0);
    out.push(u8::try_from(section.len()).unwrap());
    out.extend_from_slice(&section);
    out
}

fn flip_last(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    b
}

/// A blob literal of each engine's SQL.
fn hex_literal(bytes: &[u8], engine: &str) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match engine {
        "postgres" => format!("'\\x{hex}'::bytea"),
        _ => format!("X'{hex}'"),
    }
}

/// A release that already ran is re-read from the database at most
/// `REVALIDATE_AFTER` after its row was last checked: a row edited in SQL
/// (here, a revocation flipped back on by another replica's database
/// write, or any rewrite) stops it within that time, never later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_ran_is_checked_again_within_the_revalidation_time() {
    let stores = soma_testing::engine_stores(&[ServiceKind::ToolRegistry])
        .await
        .next()
        .unwrap();
    let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
    let publisher = Publisher::generate("acme-tools");
    h.register(&publisher).await;
    h.publish(publisher.release("echo", "1.0.0", &adapter("echo")))
        .await
        .unwrap();
    h.execute("acme", "echo", "", json!({"a": 1})).await.unwrap();
    // Another writer of the database changes the row (its MAC no longer
    // matches), after this replica verified and ran it.
    exec(
        &h.db,
        "UPDATE releases SET revocation_reason = 'x' WHERE tool = 'echo'",
    )
    .await;
    tokio::time::sleep(soma_tool_registry::REVALIDATE_AFTER + std::time::Duration::from_millis(100)).await;
    for version in ["", "1.0.0"] {
        let status = h
            .execute("acme", "echo", version, json!({"a": 1}))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::DataLoss, "row_integrity"),
            "version {version:?}: {status:?}"
        );
    }
    h.stop().await;
    stores.cleanup().await;
}
