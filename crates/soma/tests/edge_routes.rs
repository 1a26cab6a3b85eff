//! The JSON edge against real backends over mTLS: every annotated route is
//! reachable and answered by its RPC, exports stream as NDJSON, wrong JSON
//! types name the field, duplicate member names and two spellings of one
//! field are refused with their reasons, 1000 concurrent requests of mixed tenants keep
//! their own context, and the size limits answer before any token is
//! verified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use soma_mesh::ServiceKind;

use common::analytics::{analytics_config, start_analytics};
use common::edge::{client, gateway_signer, now, send, start_edge};
use soma_testing::Ca;

const ALL_SCOPES: &str = "analytics:ingest drills:write drills:read analytics:export regressions:write \
    anomalies:scan ledger:read ops:store-verify identity:read capsules:run ops:killswitch tools:publish \
    tools:read tools:revoke tools:execute capsules:submit capsules:read capsules:review capsules:install \
    templates:import";

/// The `google.api.http` routes `proto/somastack/v1/tool_registry.proto`
/// declares that tenants may call (publish, list, get, revoke, verify,
/// execute releases; list publisher keys).
const TOOL_REGISTRY_ROUTES: usize = 7;
/// Its routes for operators only (add and retire publisher keys): the edge
/// refuses them to every token.
const TOOL_REGISTRY_OPERATOR_ROUTES: usize = 2;
/// The routes `proto/somastack/v1/capsule_repo.proto` declares (submit,
/// list, get and review submissions, review history; install, list, update
/// and roll back installations; import a template).
const CAPSULE_REPO_ROUTES: usize = 10;
/// Its routes for operators only (set a publisher's attestation threshold).
const CAPSULE_REPO_OPERATOR_ROUTES: usize = 1;

/// The sum of `metrics`' dispatch counters over every method of `service`.
fn dispatched(metrics: &soma_mesh::Metrics, service: &str) -> u64 {
    let pool = soma_proto::descriptor_pool().unwrap();
    let service = pool.get_service_by_name(service).unwrap();
    service
        .methods()
        .map(|m| metrics.dispatched_count(&format!("/{}/{}", service.full_name(), m.name())))
        .sum()
}

fn rfc3339(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A verifier of the test gateway's envelopes for the service `path`.
fn verifier(ca: &Ca, path: &str) -> soma_auth::ClaimsVerifier {
    let signer = gateway_signer();
    soma_auth::ClaimsVerifier::new(
        ca.id("/svc/gateway"),
        ca.id(path),
        vec![(signer.key_id().to_owned(), signer.public_key())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_annotated_route_is_answered_by_its_rpc_and_exports_stream_as_ndjson() {
    for stores in soma_testing::engine_stores(&[
        ServiceKind::Gateway,
        ServiceKind::Analytics,
        ServiceKind::ToolRegistry,
        ServiceKind::CapsuleRepo,
    ])
    .await
    {
        let ca = Ca::new();
        let signer = gateway_signer();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&signer),
        )
        .await;
        let tools = common::start(
            &ca,
            ServiceKind::ToolRegistry,
            Some(verifier(&ca, "/svc/tool-registry")),
            stores.of(ServiceKind::ToolRegistry),
        )
        .await;
        let capsules = common::start(
            &ca,
            ServiceKind::CapsuleRepo,
            Some(verifier(&ca, "/svc/capsule-repo")),
            stores.of(ServiceKind::CapsuleRepo),
        )
        .await;
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |_| {}).await;
        let http = client();
        let url = |p: &str| format!("{}{p}", edge.url);
        let token = edge.token(json!({"tenant": "acme", "scope": ALL_SCOPES, "amr": ["pwd", "otp"]}));
        let t0 = now() - 60;

        // (method, path, body, expected status, expected reason or "")
        let analytics_routes: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
            (
                "POST",
                "/v1/capsule-runs".into(),
                Some(
                    json!({"eventId": "run-1", "capsuleId": "c1", "runId": "r1", "outcome": "RUN_OUTCOME_SUCCEEDED", "startedAt": rfc3339(t0), "duration": "1.5s"}),
                ),
                200,
                "",
            ),
            (
                "POST",
                "/v1/drills/disaster".into(),
                Some(
                    json!({"eventId": "drill-1", "region": "local", "scenario": "primary-db-loss", "startedAt": rfc3339(t0), "failoverCompletedAt": rfc3339(t0 + 5), "restoredAt": rfc3339(t0 + 10), "lastDurableWriteAt": rfc3339(t0 - 1), "steps": [{"name": "fence", "outcome": "STEP_OUTCOME_PASSED"}]}),
                ),
                200,
                "",
            ),
            (
                "GET",
                "/v1/drills/disaster/summary?region=local".into(),
                None,
                200,
                "",
            ),
            ("GET", "/v1/exports/keys".into(), None, 200, ""),
            (
                "POST",
                "/v1/persona-regressions/transition".into(),
                Some(
                    json!({"regressionId": "reg-1", "persona": "support-agent", "to": "REGRESSION_STATE_QUEUED", "reason": "nightly"}),
                ),
                200,
                "",
            ),
            (
                "POST",
                "/v1/anomalies/scan".into(),
                Some(json!({"from": rfc3339(t0 - 3600), "to": rfc3339(t0 + 3600)})),
                200,
                "",
            ),
            ("GET", "/v1/ledger/checkpoint".into(), None, 200, ""),
            (
                "GET",
                "/v1/ledger/inclusion-proof?eventId=run-1&treeSize=2".into(),
                None,
                200,
                "",
            ),
            (
                "GET",
                "/v1/ledger/consistency-proof?fromSize=1&toSize=2".into(),
                None,
                200,
                "",
            ),
            // Tenants may not call it (no capability in its policy).
            (
                "POST",
                "/v1/billing-events".into(),
                Some(json!({})),
                403,
                "not_tenant_callable",
            ),
            // Operators only: the backend's own authorization refuses the gateway.
            (
                "POST",
                "/v1/admin/store:verify".into(),
                Some(json!({})),
                403,
                "caller_not_allowed",
            ),
        ];
        for (method, path, body, status, reason) in &analytics_routes {
            let body = body.as_ref().map(Value::to_string);
            let r = send(&http, method, &url(path), Some(&token), body.as_deref(), &[]).await;
            assert_eq!(
                r.status,
                *status,
                "{method} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            if !reason.is_empty() {
                assert_eq!(r.reason(), *reason, "{method} {path}");
            }
            if r.status == 200 {
                assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
            }
        }
        let inclusion = send(
            &http,
            "GET",
            &url("/v1/ledger/inclusion-proof?eventId=run-1&treeSize=2"),
            Some(&token),
            None,
            &[],
        )
        .await;
        // proto3 JSON leaves default values out: leaf index 0 is absent.
        let proof = inclusion.json();
        assert!(proof.get("leafIndex").is_none_or(|i| i == "0"), "{proof}");
        assert_eq!(proof["treeSize"], "2", "{proof}");

        // Exports stream as NDJSON: one JSON object per line, each an ExportChunk.
        for path in ["/v1/exports/capsule-runs", "/v1/exports/billing-ledger"] {
            let q = format!("{path}?from={}&to={}", rfc3339(t0 - 60), rfc3339(now() + 60));
            let r = send(&http, "GET", &url(&q), Some(&token), None, &[]).await;
            assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("content-type").as_deref(), Some("application/x-ndjson"));
            let text = String::from_utf8(r.body.to_vec()).unwrap();
            assert!(text.ends_with('\n'), "{path}: {text}");
            let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert!(!lines.is_empty(), "{path}");
            assert!(lines.iter().all(|l| l.get("error").is_none()), "{path}: {text}");
            if path.ends_with("capsule-runs") {
                use base64::Engine as _;
                let data: Vec<u8> = lines
                    .iter()
                    .filter_map(|l| l["data"].as_str())
                    .flat_map(|d| base64::engine::general_purpose::STANDARD.decode(d).unwrap())
                    .collect();
                let document: Value = serde_json::from_slice(&data).unwrap();
                assert_eq!(document["rows"][0]["event_id"], "run-1", "{document}");
                assert_eq!(document["tenant"], "acme");
            }
        }

        // Every other annotated route reaches its backend, which answers for
        // itself.
        let edge2 = start_edge_all(
            &ca,
            &analytics,
            &tools,
            &capsules,
            stores.of(ServiceKind::Gateway),
        )
        .await;
        let table = soma_gateway::routes::RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
        // Every capability any policy names.
        let every: std::collections::BTreeSet<&str> = table
            .iter()
            .filter_map(|r| r.policy.as_ref().map(|p| p.capability.as_str()))
            .filter(|c| !c.is_empty())
            .collect();
        let every = every.into_iter().collect::<Vec<_>>().join(" ");
        let token2 = edge2.token(json!({"tenant": "acme", "scope": every, "amr": ["pwd", "otp"]}));
        let mut reached = 0;
        let mut operator_only = 0;
        for route in table.iter() {
            let backend = match route.service.as_str() {
                "somastack.v1.ToolRegistry" => &tools,
                "somastack.v1.CapsuleRepo" => &capsules,
                _ => continue,
            };
            let before = backend.metrics.dispatched_count(&route.grpc_path);
            let path = route
                .template
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        seg.split_once('}')
                            .map_or("x".to_owned(), |(_, rest)| format!("x{rest}"))
                    } else {
                        seg.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let body = (route.http_method != http::Method::GET).then(|| "{}".to_owned());
            let r = send(
                &http,
                route.http_method.as_str(),
                &format!("{}{path}", edge2.url),
                Some(&token2),
                body.as_deref(),
                &[],
            )
            .await;
            if route.policy.as_ref().is_some_and(|p| p.capability.is_empty()) {
                // Operators only: refused before any backend is contacted.
                assert_eq!(
                    (r.status, r.reason().as_str()),
                    (403, "not_tenant_callable"),
                    "{} {path}",
                    route.http_method
                );
                assert_eq!(backend.metrics.dispatched_count(&route.grpc_path), before);
                operator_only += 1;
                continue;
            }
            // Built: the backend answers for itself (no such tool, release,
            // submission or installation, a missing field, empty lists),
            // never with a server error.
            assert!(
                r.status < 500 && r.reason() != "unimplemented",
                "{} {path}: {} {}",
                route.http_method,
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            // Answered by this route's own RPC, once.
            assert_eq!(
                backend.metrics.dispatched_count(&route.grpc_path),
                before + 1,
                "{} {path} -> {}",
                route.http_method,
                route.grpc_path
            );
            reached += 1;
        }
        // Every route the protos annotate on the two backends, each once.
        assert_eq!(reached, TOOL_REGISTRY_ROUTES + CAPSULE_REPO_ROUTES);
        assert_eq!(
            operator_only,
            TOOL_REGISTRY_OPERATOR_ROUTES + CAPSULE_REPO_OPERATOR_ROUTES
        );
        // The backends' own counters saw those calls and nothing else.
        assert_eq!(
            dispatched(&tools.metrics, "somastack.v1.ToolRegistry"),
            TOOL_REGISTRY_ROUTES as u64
        );
        assert_eq!(
            dispatched(&capsules.metrics, "somastack.v1.CapsuleRepo"),
            CAPSULE_REPO_ROUTES as u64
        );

        // Gateway routes, served in-process.
        let who = send(
            &http,
            "GET",
            &url("/v1/whoami"),
            Some(&token),
            None,
            &[("x-request-id", "req-abc.1")],
        )
        .await;
        assert_eq!(who.status, 200);
        let who = who.json();
        assert_eq!(
            (
                who["tenant"].as_str(),
                who["region"].as_str(),
                who["requestId"].as_str()
            ),
            (Some("acme"), Some("local"), Some("req-abc.1"))
        );
        assert_eq!(who["mfa"], true);
        // A malformed request id is replaced by a fresh one, never echoed.
        let r = send(
            &http,
            "GET",
            &url("/v1/whoami"),
            Some(&token),
            None,
            &[("x-request-id", "bad id; DROP TABLE")],
        )
        .await;
        let minted = r.json()["requestId"].as_str().unwrap().to_owned();
        assert!(minted.starts_with("req_") && minted.len() == 36, "{minted}");
        assert_eq!(r.header("x-request-id").as_deref(), Some(minted.as_str()));

        edge2.stop().await;
        edge.stop().await;
        tools.stop().await;
        capsules.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

async fn start_edge_all(
    ca: &Ca,
    analytics: &soma_testing::Running,
    tools: &soma_testing::Running,
    capsules: &soma_testing::Running,
    db: &soma_store::StoreSettings,
) -> common::edge::Edge {
    common::edge::start_edge_with_peers(
        ca,
        soma_mesh::Peers {
            analytics: Some(analytics.addr.into()),
            tool_registry: Some(tools.addr.into()),
            capsule_repo: Some(capsules.addr.into()),
            ..Default::default()
        },
        db,
        |_| {},
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_json_types_are_invalid_argument_naming_the_field_and_nothing_is_written() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let signer = gateway_signer();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&signer),
        )
        .await;
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |_| {}).await;
        let http = client();
        let token = edge.token(json!({"tenant": "acme", "scope": "analytics:ingest drills:write"}));
        let cases = [
            (json!({"eventId": 7, "capsuleId": "c"}), "eventId"),
            (json!({"eventId": "e", "capsuleId": ["c"]}), "capsuleId"),
            (json!({"eventId": "e", "outcome": true}), "outcome"),
            (json!({"eventId": "e", "startedAt": 12}), "startedAt"),
            (json!({"eventId": "e", "duration": {"seconds": 1}}), "duration"),
            (json!({"eventId": "e", "bogus": 1}), "bogus"),
            (json!([1, 2]), "(body)"),
        ];
        for (body, field) in cases {
            let r = send(
                &http,
                "POST",
                &format!("{}/v1/capsule-runs", edge.url),
                Some(&token),
                Some(&body.to_string()),
                &[],
            )
            .await;
            assert_eq!(r.status, 400, "{body}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.reason(), "invalid_argument");
            let message = r.json()["message"].as_str().unwrap().to_owned();
            assert!(message.starts_with(&format!("{field}:")), "{body}: {message}");
        }
        let nested = json!({"eventId": "d", "region": "local", "steps": [{"name": "a", "outcome": 5.5}]});
        let r = send(
            &http,
            "POST",
            &format!("{}/v1/drills/disaster", edge.url),
            Some(&token),
            Some(&nested.to_string()),
            &[],
        )
        .await;
        assert_eq!(r.status, 400);
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("steps[0].outcome:"),
            "{}",
            r.json()
        );
        assert_eq!(
            analytics
                .metrics
                .dispatched_count("/somastack.v1.Analytics/RecordCapsuleRun"),
            0
        );
        assert_eq!(
            analytics
                .metrics
                .dispatched_count("/somastack.v1.Analytics/RecordDisasterDrill"),
            0
        );
        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

/// Strict JSON through a live edge (RFC 7493 I-JSON §2.3): a member named
/// twice, at the top level or in an object inside an array, and one field
/// named by both its spellings are refused with 400 and their reason, and
/// reach no backend; the same request without the duplicate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_and_two_spellings_of_a_field_are_refused_with_their_reason() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let signer = gateway_signer();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&signer),
        )
        .await;
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |_| {}).await;
        let http = client();
        let token = edge.token(json!({"tenant": "acme", "scope": "analytics:ingest drills:write"}));
        let started = rfc3339(now() - 5);
        // (name, path, body, reason, text the message must hold)
        let cases = [
            (
                "member named twice at the top level",
                "/v1/capsule-runs",
                format!(
                    r#"{{"eventId":"dup-1","capsuleId":"c","runId":"r","outcome":"RUN_OUTCOME_SUCCEEDED","startedAt":"{started}","duration":"1s","eventId":"dup-2"}}"#
                ),
                "duplicate_json_key",
                r#"duplicate member name "eventId" in the object at JSON pointer """#,
            ),
            (
                "member named twice (once escaped) in an object inside an array",
                "/v1/drills/disaster",
                r#"{"eventId":"drill-dup","region":"local","steps":[{"name":"fence"},{"name":"promote","n\u0061me":"noop"}]}"#.to_owned(),
                "duplicate_json_key",
                r#"duplicate member name "name" in the object at JSON pointer "/steps/1""#,
            ),
            (
                "eventId and event_id in one object",
                "/v1/capsule-runs",
                format!(
                    r#"{{"eventId":"dup-3","event_id":"dup-4","capsuleId":"c","runId":"r","outcome":"RUN_OUTCOME_SUCCEEDED","startedAt":"{started}","duration":"1s"}}"#
                ),
                "duplicate_field",
                r#"(body): "eventId" and "event_id" are two spellings of one field; send one"#,
            ),
        ];
        for (name, path, body, reason, message) in &cases {
            let r = send(
                &http,
                "POST",
                &format!("{}{path}", edge.url),
                Some(&token),
                Some(body),
                &[],
            )
            .await;
            assert_eq!(
                (r.status, r.reason().as_str()),
                (400, *reason),
                "{name}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.json()["message"].as_str(), Some(*message), "{name}");
        }
        for path in ["RecordCapsuleRun", "RecordDisasterDrill"] {
            assert_eq!(
                analytics
                    .metrics
                    .dispatched_count(&format!("/somastack.v1.Analytics/{path}")),
                0,
                "{path}"
            );
        }
        // The same request with one spelling, once, is served.
        let body = format!(
            r#"{{"eventId":"dup-5","capsuleId":"c","runId":"r","outcome":"RUN_OUTCOME_SUCCEEDED","startedAt":"{started}","duration":"1s"}}"#
        );
        let r = send(
            &http,
            "POST",
            &format!("{}/v1/capsule-runs", edge.url),
            Some(&token),
            Some(&body),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_of_mixed_tenants_each_keep_their_own_context() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let signer = gateway_signer();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&signer),
        )
        .await;
        let edge = Arc::new(
            start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |c| {
                c.rate_limit.requests_per_second = 10_000.0;
                c.rate_limit.burst = 10_000;
            })
            .await,
        );
        let http = client();
        let tenants: Vec<String> = (0..10).map(|i| format!("tenant-{i}")).collect();
        let mut tasks = Vec::new();
        for i in 0..1000usize {
            let tenant = tenants[i % tenants.len()].clone();
            let token = edge.token(json!({"tenant": tenant, "sub": format!("user-{i}@{tenant}"), "scope": "analytics:ingest identity:read"}));
            let http = http.clone();
            let url = edge.url.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let r = send(&http, "GET", &format!("{url}/v1/whoami"), Some(&token), None, &[]).await;
                    assert_eq!(r.status, 200);
                    let who = r.json();
                    assert_eq!(who["tenant"].as_str(), Some(tenant.as_str()), "request {i}");
                    assert_eq!(who["subject"].as_str().map(str::to_owned), Some(format!("user-{i}@{tenant}")));
                } else {
                    let body = json!({"eventId": format!("iso-{tenant}-{i}"), "capsuleId": "c", "runId": format!("r{i}"), "outcome": "RUN_OUTCOME_SUCCEEDED", "startedAt": rfc3339(now() - 5), "duration": "1s"});
                    let r = send(&http, "POST", &format!("{url}/v1/capsule-runs"), Some(&token), Some(&body.to_string()), &[]).await;
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Every row the backend stored carries the tenant of the request that
        // wrote it (the tenant is part of each event id).
        let db = soma_store::Database::connect(stores.of(ServiceKind::Analytics), "analytics")
            .await
            .unwrap();
        let total = soma_testing::scalar(&db, "SELECT COUNT(*) FROM capsule_runs").await;
        assert_eq!(total, 500);
        let mismatched = soma_testing::scalar(
            &db,
            "SELECT COUNT(*) FROM capsule_runs WHERE event_id NOT LIKE 'iso-' || tenant || '-%'",
        )
        .await;
        assert_eq!(mismatched, 0);
        match Arc::try_unwrap(edge) {
            Ok(edge) => edge.stop().await,
            Err(_) => panic!("edge still shared"),
        }
        analytics.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_before_the_token_and_bodies_are_read_only_after_it() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let ca = Ca::new();
        let edge = start_edge(&ca, None, stores.of(ServiceKind::Gateway), |c| {
            c.limits.max_body_bytes = 4096;
            c.limits.max_header_bytes = 2048;
            c.limits.max_json_depth = 8;
        })
        .await;
        let http = client();
        let url = format!("{}/v1/capsule-runs", edge.url);
        // What the head says is refused before any token is verified: a token
        // that would be refused (bad signature) does not decide these answers.
        let bad = format!("{}x", edge.token(json!({"scope": "analytics:ingest"})));
        let good = edge.token(json!({"scope": "analytics:ingest"}));
        let big = format!("{{\"eventId\":\"{}\"}}", "a".repeat(5000));
        let r = send(&http, "POST", &url, Some(&bad), Some(&big), &[]).await;
        assert_eq!((r.status, r.reason().as_str()), (413, "body_too_large"));
        assert_eq!(
            r.header("connection").as_deref(),
            Some("close"),
            "the unread body is not drained"
        );
        let long = "b".repeat(3000);
        let r = send(
            &http,
            "POST",
            &url,
            Some(&bad),
            Some("{}"),
            &[("x-padding", &long)],
        )
        .await;
        assert_eq!((r.status, r.reason().as_str()), (431, "headers_too_large"));
        // The body is read only once the head is admitted: too deep a body
        // under a refused token is answered by the token, with the connection
        // closed instead of the body read ...
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(9), "]".repeat(9));
        let r = send(&http, "POST", &url, Some(&bad), Some(&deep), &[]).await;
        assert_eq!((r.status, r.reason().as_str()), (401, "bad_signature"));
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        // ... and under a valid one by its depth.
        let r = send(&http, "POST", &url, Some(&good), Some(&deep), &[]).await;
        assert_eq!((r.status, r.reason().as_str()), (400, "json_too_deep"));
        // A chunked body declares no length: its size is enforced while it is
        // read, after admission.
        for (token, expected) in [(&bad, "401 "), (&good, "413 ")] {
            let mut tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
            let head = format!(
                "POST /v1/capsule-runs HTTP/1.1\r\nhost: edge\r\nauthorization: Bearer {token}\r\n\
                 content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            tcp.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("1000\r\n{}\r\n", "a".repeat(0x1000));
            // Two chunks: 8 KiB, over the 4 KiB limit. A refused head may close
            // the connection before they are all written.
            for _ in 0..2 {
                if tcp.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
            }
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut reply)).await;
            let reply = String::from_utf8_lossy(&reply);
            assert!(
                reply.starts_with(&format!("HTTP/1.1 {expected}")),
                "chunked body, expected {expected}: {reply}"
            );
        }
        // Within the limits, the same token is what refuses.
        let r = send(&http, "POST", &url, Some(&bad), Some("{}"), &[]).await;
        assert_eq!((r.status, r.reason().as_str()), (401, "bad_signature"));
        edge.stop().await;
        stores.cleanup().await;
    }
}
