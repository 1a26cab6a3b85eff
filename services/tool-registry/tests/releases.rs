//! Releases through the registry's gRPC surface, on every engine: publish,
//! read, verify, execute and revoke a real adapter; the registry rules
//! (no re-publish with other bytes, no rollback, revocation final); the
//! manifest refusal table; publisher keys for operators only; a keyring
//! promote that keeps old releases verifying.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{GATEWAY, Harness, OPERATOR, Publisher, adapter, from_struct};
use serde_json::json;
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_testing::grpc_reason;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_published_verified_executed_and_revoked() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        let key = h.register(&publisher).await;
        assert_eq!(key.key_id, publisher.key_id);

        let module = adapter("text_stats");
        let release = h
            .publish(publisher.release("text-stats", "1.0.0", &module))
            .await
            .unwrap();
        assert_eq!(release.state, pb::ReleaseState::Active as i32, "{}", stores.label);
        assert_eq!(release.module_sha256, soma_sign::sha256(&module).to_vec());
        assert_eq!(release.module_size, module.len() as u64);
        assert_eq!(release.hmac_key_id, "registry-1");
        assert_eq!(release.ed25519_key_id, publisher.key_id);
        assert_eq!(release.published_by, "user@acme");
        let manifest = from_struct(release.manifest.as_ref().unwrap());
        assert_eq!(manifest["tool"], "text-stats");
        assert_eq!(manifest["limits"]["fuel"], json!(50_000_000.0));

        // Publishing the very same release again is an idempotent retry.
        let again = h.publish(publisher.release("text-stats", "1.0.0", &module)).await;
        // A new envelope has a new signature only if Ed25519 were randomized;
        // it is deterministic, so the retry is the same bytes.
        assert_eq!(again.unwrap().published_at, release.published_at);

        assert!(h.failures("text-stats", "1.0.0").await.is_empty());
        assert_eq!(
            h.registry.sandbox().counters().compiled,
            0,
            "verification alone compiles nothing"
        );

        let text = "Hello, wörld!\nsecond line";
        let run = h
            .execute("acme", "text-stats", "", json!({"text": text}))
            .await
            .unwrap();
        let output = from_struct(run.output.as_ref().unwrap());
        assert_eq!(
            output,
            json!({"characters": 25.0, "words": 4.0, "lines": 2.0, "bytes": 26.0}),
            "{}",
            stores.label
        );
        assert_eq!(run.version, "1.0.0");
        assert_eq!(run.module_sha256, soma_sign::sha256(&module).to_vec());
        assert!(run.fuel_consumed > 0);
        assert!(run.billing_event_id.starts_with("exec-"));
        assert_eq!(h.registry.sandbox().counters().compiled, 1);
        // A second run comes from the cache of verified releases.
        h.execute("acme", "text-stats", "1.0.0", json!({"text": "a b"}))
            .await
            .unwrap();
        assert_eq!(h.registry.sandbox().counters().compiled, 1);

        // Billing events and audit events wait in the outbox (no Analytics
        // here): two executions, one key registration, one publish.
        let (backlog, _) = h.registry.outbox_backlog().await.unwrap();
        assert_eq!(backlog, 4, "{}", stores.label);

        // Revocation is final and stops execution at once.
        let revoked = h
            .client(GATEWAY)
            .revoke_release(h.tenant(
                "acme",
                &["tools:revoke"],
                pb::RevokeReleaseRequest {
                    tool: "text-stats".into(),
                    version: "1.0.0".into(),
                    reason: "superseded".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revoked.state, pb::ReleaseState::Revoked as i32);
        assert_eq!(revoked.revocation_reason, "superseded");
        let refused = h
            .execute("acme", "text-stats", "1.0.0", json!({"text": "x"}))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), grpc_reason(&refused)),
            (Code::FailedPrecondition, "release_revoked")
        );
        let newest = h
            .execute("acme", "text-stats", "", json!({"text": "x"}))
            .await
            .unwrap_err();
        assert_eq!(
            (newest.code(), grpc_reason(&newest)),
            (Code::NotFound, "not_found")
        );
        let twice = h
            .client(GATEWAY)
            .revoke_release(h.tenant(
                "acme",
                &["tools:revoke"],
                pb::RevokeReleaseRequest {
                    tool: "text-stats".into(),
                    version: "1.0.0".into(),
                    reason: "again".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(grpc_reason(&twice), "release_revoked");
        assert_eq!(
            h.failures("text-stats", "1.0.0").await,
            vec!["revoked".to_owned()]
        );

        h.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_only_move_forward_and_never_change() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let echo = adapter("echo");
        let stats = adapter("text_stats");
        h.publish(publisher.release("tool", "1.2.0", &echo))
            .await
            .unwrap();

        struct Case {
            name: &'static str,
            version: &'static str,
            module: Vec<u8>,
            expected: Result<(), (Code, &'static str)>,
        }
        let cases = [
            Case {
                name: "the same version with other bytes",
                version: "1.2.0",
                module: stats.clone(),
                expected: Err((Code::AlreadyExists, "version_exists")),
            },
            Case {
                name: "a rollback",
                version: "1.1.9",
                module: echo.clone(),
                expected: Err((Code::FailedPrecondition, "version_not_greater")),
            },
            Case {
                name: "a pre-release of the published version (lower precedence)",
                version: "1.2.0-rc.1",
                module: echo.clone(),
                expected: Err((Code::FailedPrecondition, "version_not_greater")),
            },
            Case {
                name: "build metadata only (equal precedence)",
                version: "1.2.0+build.7",
                module: echo.clone(),
                expected: Err((Code::FailedPrecondition, "version_not_greater")),
            },
            Case {
                name: "a greater version",
                version: "1.10.0",
                module: stats.clone(),
                expected: Ok(()),
            },
            Case {
                name: "below the new highest",
                version: "1.3.0",
                module: echo.clone(),
                expected: Err((Code::FailedPrecondition, "version_not_greater")),
            },
        ];
        for case in cases {
            let got = h
                .publish(publisher.release("tool", case.version, &case.module))
                .await
                .map(|_| ())
                .map_err(|s| (s.code(), grpc_reason(&s).to_owned()));
            let expected = case.expected.map_err(|(c, r)| (c, r.to_owned()));
            assert_eq!(got, expected, "{}: {}", stores.label, case.name);
        }
        let list = h
            .client(GATEWAY)
            .list_releases(h.tenant(
                "acme",
                &["tools:read"],
                pb::ListReleasesRequest {
                    tool: "tool".into(),
                    page: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let versions: Vec<_> = list.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["1.10.0", "1.2.0"], "{}", stores.label);
        // The newest runs when no version is named.
        let run = h.execute("acme", "tool", "", json!({"text": "a"})).await.unwrap();
        assert_eq!(run.version, "1.10.0");
        h.stop().await;
        stores.cleanup().await;
    }
}

/// Each malformed manifest, signed by a registered publisher (so that the
/// refusal is the manifest's), is INVALID_ARGUMENT naming the problem, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_manifests_are_refused_with_their_reason_and_nothing_is_written() {
    let stores = soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await;
    for stores in stores {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let module = adapter("echo");
        let digest = hex(&soma_sign::sha256(&module));
        let size = module.len();
        let good = |extra: &str| {
            format!(
                r#"{{"description":"d","entrypoint":"run","limits":{{"deadline_ms":1000,"fuel":1000000,"memory_bytes":1048576}},"module_sha256":"{digest}","module_size":{size}{extra},"tool":"echo","version":"1.0.0"}}"#
            )
        };
        struct Case {
            name: &'static str,
            payload: Vec<u8>,
            module: Vec<u8>,
            reason: &'static str,
        }
        let cases = vec![
            Case {
                name: "duplicate key",
                payload: format!(r#"{{"description":"d","description":"e"{}"#, &good("")[16..]).into_bytes(),
                module: module.clone(),
                reason: "manifest_duplicate_key",
            },
            Case {
                name: "lone surrogate",
                payload: good("")
                    .replace(r#""description":"d""#, r#""description":"\ud800""#)
                    .into_bytes(),
                module: module.clone(),
                reason: "manifest_lone_surrogate",
            },
            Case {
                name: "number beyond 2^53",
                payload: good("")
                    .replace(r#""fuel":1000000"#, r#""fuel":9007199254740993"#)
                    .into_bytes(),
                module: module.clone(),
                reason: "manifest_number_out_of_range",
            },
            Case {
                name: "non-finite number",
                payload: good("")
                    .replace(r#""fuel":1000000"#, r#""fuel":1e400"#)
                    .into_bytes(),
                module: module.clone(),
                reason: "manifest_number_out_of_range",
            },
            Case {
                name: "missing field",
                payload: good("").replace(r#""entrypoint":"run","#, "").into_bytes(),
                module: module.clone(),
                reason: "manifest_missing_field",
            },
            Case {
                name: "extra field",
                payload: good(r#","owner":"me""#).into_bytes(),
                module: module.clone(),
                reason: "manifest_unknown_field",
            },
            Case {
                name: "wrong type",
                payload: good("")
                    .replace(r#""fuel":1000000"#, r#""fuel":"1000000""#)
                    .into_bytes(),
                module: module.clone(),
                reason: "manifest_wrong_type",
            },
            Case {
                name: "not canonical",
                payload: good("")
                    .replace(r#"{"description""#, r#"{ "description""#)
                    .into_bytes(),
                module: module.clone(),
                reason: "manifest_not_canonical",
            },
            Case {
                name: "module digest does not match",
                payload: good("").into_bytes(),
                module: {
                    let mut m = module.clone();
                    let last = m.len() - 1;
                    m[last] ^= 1;
                    m
                },
                reason: "module_digest_mismatch",
            },
            Case {
                name: "module size does not match",
                payload: good("").into_bytes(),
                module: [module.as_slice(), b"\0"].concat(),
                reason: "module_size_mismatch",
            },
            Case {
                name: "a module importing WASI",
                payload: {
                    let wasi = adapter("wasi_import");
                    good("")
                        .replace(&digest, &hex(&soma_sign::sha256(&wasi)))
                        .replace(
                            &format!(r#""module_size":{size}"#),
                            &format!(r#""module_size":{}"#, wasi.len()),
                        )
                        .into_bytes()
                },
                module: adapter("wasi_import"),
                reason: "module_imports_forbidden",
            },
        ];
        for case in cases {
            let request = common::request("echo", publisher.sign_payload(case.payload), case.module);
            let status = h.publish(request).await.unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                (Code::InvalidArgument, case.reason),
                "{}: {}: {status:?}",
                stores.label,
                case.name
            );
        }
        assert_eq!(
            soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM releases").await,
            0,
            "{}",
            stores.label
        );
        assert_eq!(
            soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM modules").await,
            0
        );
        // Only the key registration's audit event.
        assert_eq!(
            soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM outbox").await,
            1
        );
        h.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_keys_are_an_operators_and_a_retired_key_signs_nothing_new() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        let add = pb::AddPublisherKeyRequest {
            name: publisher.name.clone(),
            public_key_pem: publisher.public_pem.clone(),
        };
        // The gateway (a tenant's request) may not call it at all.
        let denied = h
            .client(GATEWAY)
            .add_publisher_key(h.tenant("acme", &["tools:publish"], add.clone()))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{}", stores.label);
        let key = h
            .client(OPERATOR)
            .add_publisher_key(add.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(key.added_by, "spiffe://somastack.test/operator/alice");
        let again = h.client(OPERATOR).add_publisher_key(add).await.unwrap_err();
        assert_eq!(
            (again.code(), grpc_reason(&again)),
            (Code::AlreadyExists, "publisher_key_exists")
        );
        let bad = h
            .client(OPERATOR)
            .add_publisher_key(pb::AddPublisherKeyRequest {
                name: "x".into(),
                public_key_pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (bad.code(), grpc_reason(&bad)),
            (Code::InvalidArgument, "public_key_invalid")
        );

        let module = adapter("echo");
        h.publish(publisher.release("echo", "1.0.0", &module))
            .await
            .unwrap();
        let retired = h
            .client(OPERATOR)
            .retire_publisher_key(pb::RetirePublisherKeyRequest {
                key_id: publisher.key_id.clone(),
                reason: "rotated".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(retired.retired_at.is_some());
        // Nothing new verifies under it…
        let status = h
            .publish(publisher.release("echo", "1.1.0", &module))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::PermissionDenied, "publisher_retired"),
            "{}",
            stores.label
        );
        // …what it published before keeps verifying and running.
        assert!(h.failures("echo", "1.0.0").await.is_empty());
        h.execute("acme", "echo", "1.0.0", json!({"a": 1})).await.unwrap();
        let keys = h
            .client(OPERATOR)
            .list_publisher_keys(pb::ListPublisherKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1);
        assert!(keys[0].retired_at.is_some());
        assert_eq!(keys[0].public_key_pem, publisher.public_pem);
        h.stop().await;
        stores.cleanup().await;
    }
}

/// A keyring promote (`soma release key promote`, then a restart) seals new
/// releases with the new key; old releases keep verifying and running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_releases_keep_verifying_after_a_key_promote() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let store = stores.of(ServiceKind::ToolRegistry);
        let h = Harness::start(store).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        h.publish(publisher.release("echo", "1.0.0", &adapter("echo")))
            .await
            .unwrap();
        let mut keys = soma_sign::HmacKeyring::from_json(&h.keys_json).unwrap();
        keys.add_generated("registry-2").unwrap();
        keys.promote("registry-2").unwrap();
        let h = h.restart(store, keys.to_json()).await;
        let second = h
            .publish(publisher.release("echo", "1.1.0", &adapter("echo")))
            .await
            .unwrap();
        assert_eq!(second.hmac_key_id, "registry-2");
        assert!(h.failures("echo", "1.0.0").await.is_empty(), "{}", stores.label);
        h.execute("acme", "echo", "1.0.0", json!({})).await.unwrap();

        // Retiring the old key: what it sealed no longer verifies, by name.
        keys.retire("registry-1").unwrap();
        let h = h.restart(store, keys.to_json()).await;
        let failures = h.failures("echo", "1.0.0").await;
        assert!(failures.contains(&"registry_hmac".to_owned()), "{failures:?}");
        assert!(h.failures("echo", "1.1.0").await.is_empty());
        h.stop().await;
        stores.cleanup().await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A message beyond the service's receive limit is refused by the message
/// limits before it is decoded: nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_is_refused_by_the_message_limit() {
    let stores = soma_testing::engine_stores(&[ServiceKind::ToolRegistry])
        .await
        .next()
        .unwrap();
    let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
    let publisher = Publisher::generate("acme-tools");
    h.register(&publisher).await;
    let limit = soma_mesh::Limits::default().max_recv_message_bytes;
    let mut request = publisher.release("big", "1.0.0", &adapter("echo"));
    request.module = vec![0; limit + 1];
    let status = h.publish(request).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert_eq!(
        soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM releases").await,
        0
    );
    h.stop().await;
    stores.cleanup().await;
}

/// A tool belongs to the tenant that published it first: another tenant's
/// valid token can neither publish a version of it nor revoke it; an
/// operator can revoke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_can_neither_publish_nor_revoke_a_tool_it_does_not_own() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("shared-publisher");
        h.register(&publisher).await;
        let module = adapter("echo");
        h.publish(publisher.release("echo", "1.0.0", &module))
            .await
            .unwrap();

        let takeover = h
            .client(GATEWAY)
            .publish_release(h.tenant(
                "globex",
                &["tools:publish"],
                publisher.release("echo", "9.0.0", &module),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (takeover.code(), grpc_reason(&takeover)),
            (Code::PermissionDenied, "tool_owned_by_another_tenant"),
            "{}",
            stores.label
        );
        let revoke = |tenant: &str| {
            h.tenant(
                tenant,
                &["tools:revoke"],
                pb::RevokeReleaseRequest {
                    tool: "echo".into(),
                    version: "1.0.0".into(),
                    reason: "not yours".into(),
                },
            )
        };
        let denied = h
            .client(GATEWAY)
            .revoke_release(revoke("globex"))
            .await
            .unwrap_err();
        assert_eq!(
            (denied.code(), grpc_reason(&denied)),
            (Code::PermissionDenied, "tool_owned_by_another_tenant")
        );
        // Every tenant may run it; nothing changed.
        h.execute("globex", "echo", "1.0.0", json!({"a": 1}))
            .await
            .unwrap();
        assert!(h.failures("echo", "1.0.0").await.is_empty());

        // An operator (claims sealed as an operator's) may revoke it.
        let operator = soma_testing::operator_claims_request(
            &h.claims,
            &h.running.id,
            "platform",
            &["tools:revoke"],
            pb::RevokeReleaseRequest {
                tool: "echo".into(),
                version: "1.0.0".into(),
                reason: "taken down".into(),
            },
        );
        let revoked = h
            .client(GATEWAY)
            .revoke_release(operator)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revoked.state, pb::ReleaseState::Revoked as i32);
        h.stop().await;
        stores.cleanup().await;
    }
}
