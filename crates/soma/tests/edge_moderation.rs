//! Moderation of the final message: what a backend receives is built from
//! the path, the query and the body, and moderation runs on exactly that
//! message — at the JSON edge and at the gRPC ingress alike — so a finding
//! hidden in a path or query parameter is refused like one in the body.
//! Clean messages reach the real backend (ToolRegistry over mTLS). On
//! SQLite and on PostgreSQL: each refusal is written to the gateway's
//! `moderation_rejections` table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};
use soma_mesh::{Peers, ServiceKind};
use soma_proto::v1::gateway_client::GatewayClient;
use soma_proto::v1::tool_registry_client::ToolRegistryClient;
use soma_proto::v1::{ExecuteToolRequest, RunCapsuleRequest};
use tonic::metadata::MetadataValue;

use common::edge::{client, gateway_signer, send, start_edge_with_peers};
use common::start;
use soma_testing::{Ca, grpc_reason};

const CARD: &str = "4111111111111111";
const EMAIL: &str = "jane.doe@example.com";
const IBAN: &str = "GB82WEST12345698765432";

const EXECUTE: &str = "/somastack.v1.ToolRegistry/ExecuteTool";

fn note(text: &str) -> prost_types::Struct {
    let mut input = prost_types::Struct::default();
    input.fields.insert(
        "note".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
        },
    );
    input
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_in_path_query_and_body_are_refused_for_json_and_grpc() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::ToolRegistry]).await {
        let ca = Ca::new();
        let signer = gateway_signer();
        let verifier = soma_auth::ClaimsVerifier::new(
            ca.id("/svc/gateway"),
            ca.id("/svc/tool-registry"),
            vec![(signer.key_id().to_owned(), signer.public_key())],
        );
        let tools = start(
            &ca,
            ServiceKind::ToolRegistry,
            Some(verifier),
            stores.of(ServiceKind::ToolRegistry),
        )
        .await;
        let peers = Peers {
            tool_registry: Some(tools.addr.into()),
            ..Default::default()
        };
        let edge = start_edge_with_peers(&ca, peers, stores.of(ServiceKind::Gateway), |_| {}).await;
        let token = edge.token(json!({"tenant": "acme", "scope": "capsules:run tools:execute"}));
        let http = client();

        // JSON: (name, path and query, body, expected status, reason, findings
        // as (reason, field)).
        struct Case {
            name: &'static str,
            target: String,
            body: &'static str,
            status: u16,
            reason: &'static str,
            findings: Vec<(&'static str, &'static str)>,
        }
        let refused = |name, target: String, body, findings| Case {
            name,
            target,
            body,
            status: 422,
            reason: "moderation_rejected",
            findings,
        };
        let cases = [
            refused(
                "card number in RunCapsule's path",
                format!("/v1/capsules/{CARD}:run"),
                "{}",
                vec![("pii_card_number", "input.capsuleId")],
            ),
            refused(
                "e-mail address in RunCapsule's path",
                format!("/v1/capsules/{EMAIL}:run"),
                "{}",
                vec![("pii_email_address", "input.capsuleId")],
            ),
            refused(
                "IBAN in RunCapsule's path",
                format!("/v1/capsules/{IBAN}:run"),
                "{}",
                vec![("pii_iban", "input.capsuleId")],
            ),
            refused(
                "card number in RunCapsule's body",
                "/v1/capsules/c1:run".to_owned(),
                r#"{"input": {"note": "4111 1111 1111 1111"}}"#,
                vec![("pii_card_number", "input.input.note")],
            ),
            refused(
                "card number in ExecuteTool's path",
                format!("/v1/tools/{CARD}:execute"),
                "{}",
                vec![("pii_card_number", "input.tool")],
            ),
            refused(
                "card number in ExecuteTool's query",
                format!("/v1/tools/pdf-reader:execute?run_id={CARD}"),
                "{}",
                vec![("pii_card_number", "input.runId")],
            ),
            refused(
                "e-mail address in ExecuteTool's query",
                format!("/v1/tools/pdf-reader:execute?version={EMAIL}"),
                "{}",
                vec![("pii_email_address", "input.version")],
            ),
            refused(
                "IBAN in ExecuteTool's body (the adapter's input)",
                "/v1/tools/pdf-reader:execute".to_owned(),
                r#"{"note": "pay GB82 WEST 1234 5698 7654 32"}"#,
                vec![("pii_iban", "input.input.note")],
            ),
            refused(
                "one finding in each of path, query and body",
                format!("/v1/tools/{CARD}:execute?version={EMAIL}"),
                r#"{"note": "GB82WEST12345698765432"}"#,
                // Document order of the message's JSON form (members sorted).
                vec![
                    ("pii_iban", "input.input.note"),
                    ("pii_card_number", "input.tool"),
                    ("pii_email_address", "input.version"),
                ],
            ),
            Case {
                name: "clean RunCapsule passes moderation and reaches the orchestration (no CapsuleRepo here)",
                target: "/v1/capsules/c1:run".to_owned(),
                body: r#"{"environment": "production", "input": {"note": "hello"}}"#,
                status: 503,
                reason: "backend_not_configured",
                findings: vec![],
            },
            Case {
                name: "clean ExecuteTool reaches ToolRegistry (which has no such release)",
                target: "/v1/tools/pdf-reader:execute?version=1.2.3&run_id=run-1".to_owned(),
                body: r#"{"note": "hello"}"#,
                status: 404,
                reason: "not_found",
                findings: vec![],
            },
        ];
        let mut reached = 0;
        for case in &cases {
            let before = tools.metrics.dispatched_count(EXECUTE);
            let url = format!("{}{}", edge.url, case.target);
            let r = send(&http, "POST", &url, Some(&token), Some(case.body), &[]).await;
            assert_eq!(
                (r.status, r.reason().as_str()),
                (case.status, case.reason),
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&r.body)
            );
            let findings: Vec<(String, String)> = r.json()["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["reason"].as_str().unwrap().to_owned(),
                        f["field"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            let expected: Vec<(String, String)> = case
                .findings
                .iter()
                .map(|(r, f)| ((*r).to_owned(), (*f).to_owned()))
                .collect();
            assert_eq!(findings, expected, "{}", case.name);
            // The matched text is never echoed.
            let text = String::from_utf8_lossy(&r.body);
            for secret in [CARD, EMAIL, IBAN] {
                assert!(
                    !text.contains(secret),
                    "{}: the answer echoes {secret}",
                    case.name
                );
            }
            let delta = tools.metrics.dispatched_count(EXECUTE) - before;
            if case.findings.is_empty() && case.target.starts_with("/v1/tools/") {
                assert_eq!(delta, 1, "{}: a clean message reaches the backend", case.name);
                reached += 1;
            } else {
                assert_eq!(
                    delta, 0,
                    "{}: a refused message never reaches the backend",
                    case.name
                );
            }
        }
        assert_eq!(reached, 1);
        // Every rejection was audited, with its findings.
        let audited = soma_testing::scalar(&edge.db, "SELECT COUNT(*) FROM moderation_rejections").await;
        assert_eq!(audited, 9);

        // gRPC: the message as sent, every field moderated.
        let channel = tonic::transport::Endpoint::from_shared(edge.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        fn authorized<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.metadata_mut().insert("authorization", bearer.clone());
            request
        }
        let mut gateway = GatewayClient::new(channel.clone());
        let mut registry = ToolRegistryClient::new(channel);
        let run = |capsule_id: &str, input: Option<prost_types::Struct>| RunCapsuleRequest {
            capsule_id: capsule_id.to_owned(),
            environment: "production".to_owned(),
            input,
        };
        let execute = |tool: &str, version: &str, run_id: &str, input| ExecuteToolRequest {
            tool: tool.to_owned(),
            version: version.to_owned(),
            input: Some(input),
            run_id: run_id.to_owned(),
        };
        let grpc_cases: [(&str, Result<(), tonic::Status>, &str); 8] = [
            (
                "card number in RunCapsule's capsule_id",
                gateway
                    .run_capsule(authorized(run(CARD, None), &bearer))
                    .await
                    .map(|_| ()),
                "moderation_rejected",
            ),
            (
                "e-mail address in RunCapsule's input",
                gateway
                    .run_capsule(authorized(run("c1", Some(note(EMAIL))), &bearer))
                    .await
                    .map(|_| ()),
                "moderation_rejected",
            ),
            (
                "IBAN in ExecuteTool's tool",
                registry
                    .execute_tool(authorized(execute(IBAN, "", "", note("hi")), &bearer))
                    .await
                    .map(|_| ()),
                "moderation_rejected",
            ),
            (
                "card number in ExecuteTool's version",
                registry
                    .execute_tool(authorized(execute("pdf-reader", CARD, "", note("hi")), &bearer))
                    .await
                    .map(|_| ()),
                "moderation_rejected",
            ),
            (
                "e-mail address in ExecuteTool's run_id",
                registry
                    .execute_tool(authorized(execute("pdf-reader", "", EMAIL, note("hi")), &bearer))
                    .await
                    .map(|_| ()),
                "moderation_rejected",
            ),
            (
                "card number in ExecuteTool's input",
                registry
                    .execute_tool(authorized(execute("pdf-reader", "", "", note(CARD)), &bearer))
                    .await
                    .map(|_| ()),
                "moderation_rejected",
            ),
            (
                "clean RunCapsule",
                gateway
                    .run_capsule(authorized(run("c1", Some(note("hello"))), &bearer))
                    .await
                    .map(|_| ()),
                "",
            ),
            (
                "clean ExecuteTool reaches ToolRegistry",
                registry
                    .execute_tool(authorized(
                        execute("pdf-reader", "1.2.3", "run-1", note("hello")),
                        &bearer,
                    ))
                    .await
                    .map(|_| ()),
                "",
            ),
        ];
        for (name, result, expected) in grpc_cases {
            let status = result.expect_err(name);
            if expected.is_empty() {
                // Past moderation: RunCapsule's orchestration finds no
                // CapsuleRepo configured here; ToolRegistry has no such
                // release.
                let answered = if name.contains("ExecuteTool") {
                    tonic::Code::NotFound
                } else {
                    tonic::Code::Unavailable
                };
                assert_eq!(status.code(), answered, "{name}: {status:?}");
            } else {
                assert_eq!(
                    (status.code(), grpc_reason(&status)),
                    (tonic::Code::InvalidArgument, expected),
                    "{name}: {status:?}"
                );
                for secret in [CARD, EMAIL, IBAN] {
                    assert!(!status.message().contains(secret), "{name}: echoes {secret}");
                }
            }
        }
        // Of the gRPC calls, only the clean ExecuteTool reached the backend.
        assert_eq!(tools.metrics.dispatched_count(EXECUTE), 2);
        let audited: Value =
            json!(soma_testing::scalar(&edge.db, "SELECT COUNT(*) FROM moderation_rejections").await);
        assert_eq!(audited, json!(15));

        edge.stop().await;
        tools.stop().await;
        stores.cleanup().await;
    }
}
