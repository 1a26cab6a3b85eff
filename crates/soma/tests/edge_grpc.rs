//! Tenant gRPC through the edge: the same admission pipeline with the
//! bearer token in the `authorization` metadata, from a Rust (tonic) and a
//! Python (grpcio) client; and kill switches shared by gateway replicas
//! through their database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use soma_mesh::ServiceKind;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_proto::v1::gateway_client::GatewayClient;
use tonic::metadata::MetadataValue;

use common::analytics::{AnalyticsKeys, analytics_config, start_analytics};
use common::edge::{client, gateway_signer, send, start_edge};
use soma_testing::{Ca, grpc_reason};

/// Capsule runs recorded before the export: more than one export chunk.
const RUNS: usize = 240;
/// Largest data message of an export stream the service promises.
const EXPORT_CHUNK_BYTES: usize = 32 * 1024;

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(t) = token {
        let value: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_pass_the_same_admission_with_a_bearer_token() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let config = keys.config();
        // The export key, from the configured signing key (not from the
        // service), and the ledger origin its checkpoints are signed for.
        let export_key = soma_sign::Ed25519Signer::from_pkcs8_pem(
            soma_sign::KeyId::new(&config.signing_key_id).unwrap(),
            &config.signing_key_pem,
        )
        .unwrap()
        .public_key();
        let origin = config.ledger_origin.clone();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            config,
            Some(&gateway_signer()),
        )
        .await;
        // The export below is of RUNS runs recorded at once: no rate limit
        // in the way.
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |c| {
            c.rate_limit.requests_per_second = 10_000.0;
            c.rate_limit.burst = 10_000;
        })
        .await;
        let channel = tonic::transport::Endpoint::from_shared(edge.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut gateway = GatewayClient::new(channel.clone());
        let mut analytics_client = AnalyticsClient::new(channel);
        let token = edge.token(json!({"tenant": "acme", "sub": "grpc@acme", "scope": "identity:read ledger:read analytics:export analytics:ingest capsules:run"}));

        // Admitted: the gateway's own method, and a forwarded one.
        let who = gateway
            .who_am_i(with_token(soma_proto::v1::WhoAmIRequest {}, Some(&token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((who.tenant.as_str(), who.subject.as_str()), ("acme", "grpc@acme"));
        let checkpoint = analytics_client
            .ledger_checkpoint(with_token(
                soma_proto::v1::LedgerCheckpointRequest {},
                Some(&token),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(checkpoint.tree_size, 0);
        // The client's own deadline travels with the call.
        let mut request = with_token(soma_proto::v1::LedgerCheckpointRequest {}, Some(&token));
        request.set_timeout(Duration::from_secs(5));
        let checkpoint = analytics_client
            .ledger_checkpoint(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(checkpoint.tree_size, 0);
        assert_eq!(
            analytics
                .metrics
                .dispatched_count("/somastack.v1.Analytics/LedgerCheckpoint"),
            2
        );

        // A server stream relayed message by message: an export of more
        // runs than one 32 KiB chunk holds, recorded through the edge.
        let now = common::edge::now();
        let run_ids: Vec<String> = (0..RUNS).map(|i| format!("grpc-run-{i:03}")).collect();
        let mut recorded = tokio::task::JoinSet::new();
        for (i, id) in run_ids.iter().enumerate() {
            let mut client = analytics_client.clone();
            let request = with_token(
                soma_proto::v1::RecordCapsuleRunRequest {
                    event_id: id.clone(),
                    capsule_id: "capsule-with-a-long-enough-name".to_owned(),
                    tool: "summarize".to_owned(),
                    run_id: format!("run-{i}"),
                    outcome: soma_proto::v1::RunOutcome::Succeeded.into(),
                    // One second apart, so the export's time order is the
                    // order of `run_ids`.
                    started_at: Some(prost_types::Timestamp {
                        seconds: now - 1000 + i as i64,
                        nanos: 0,
                    }),
                    duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                    ..Default::default()
                },
                Some(&token),
            );
            recorded.spawn(async move { client.record_capsule_run(request).await });
            // A few calls in flight at a time.
            if recorded.len() == 8 {
                recorded.join_next().await.unwrap().unwrap().unwrap();
            }
        }
        while let Some(done) = recorded.join_next().await {
            done.unwrap().unwrap();
        }
        let mut stream = analytics_client
            .export_capsule_runs(with_token(
                soma_proto::v1::ExportRequest {
                    from: Some(prost_types::Timestamp {
                        seconds: now - 3600,
                        nanos: 0,
                    }),
                    to: Some(prost_types::Timestamp {
                        seconds: now + 60,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                Some(&token),
            ))
            .await
            .unwrap()
            .into_inner();
        let mut data: Vec<Vec<u8>> = Vec::new();
        let mut signature = None;
        while let Some(chunk) = stream.message().await.unwrap() {
            assert!(signature.is_none(), "a message after the signature");
            match chunk.signature {
                Some(sig) => {
                    assert!(chunk.data.is_empty(), "the signature comes alone");
                    signature = Some(sig);
                }
                None => {
                    assert!(!chunk.data.is_empty(), "an empty data message");
                    assert!(
                        chunk.data.len() <= EXPORT_CHUNK_BYTES,
                        "{} bytes",
                        chunk.data.len()
                    );
                    data.push(chunk.data);
                }
            }
        }
        let signature = signature.expect("the last message carries the signature");
        let bytes = data.concat();
        // Bigger than one chunk, so the relay had several messages to pass.
        assert!(bytes.len() > EXPORT_CHUNK_BYTES, "{} bytes", bytes.len());
        assert!(data.len() >= 2, "{} data messages", data.len());
        // The data: exactly acme's runs, in time order.
        let document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(document["kind"], "capsule_runs", "{}", stores.label);
        assert_eq!(document["tenant"], "acme");
        let exported: Vec<&str> = document["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(exported, run_ids);
        // The signature: over exactly these bytes, with the export key.
        assert_eq!(signature.key_id, "analytics-1");
        assert_eq!(signature.sha256, soma_sign::sha256(&bytes).to_vec());
        soma_sign::verify_ed25519_strict(&export_key, &bytes, &signature.signature).unwrap();
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x01;
        assert!(soma_sign::verify_ed25519_strict(&export_key, &flipped, &signature.signature).is_err());
        // Cut at a checkpoint signed with the same key, over every run.
        let checkpoint = signature.checkpoint.unwrap();
        let verified = soma_ledger::CheckpointVerifier::new(origin.clone(), &export_key)
            .unwrap()
            .verify(&checkpoint.note)
            .unwrap();
        assert_eq!(verified.tree_size(), checkpoint.tree_size);
        assert_eq!(checkpoint.tree_size, RUNS as u64);

        // Refused: exact code and reason, and the backend never called.
        let before = analytics
            .metrics
            .dispatched_count("/somastack.v1.Analytics/LedgerCheckpoint");
        let cases: Vec<(Option<String>, tonic::Code, &str)> = vec![
            (None, tonic::Code::Unauthenticated, "token_missing"),
            (
                Some(format!("{token}x")),
                tonic::Code::Unauthenticated,
                "bad_signature",
            ),
            (
                Some(edge.token(json!({"tenant": "t", "region": "mars-1", "scope": "ledger:read"}))),
                tonic::Code::PermissionDenied,
                "residency_denied",
            ),
            (
                Some(edge.token(json!({"tenant": "t", "scope": "identity:read"}))),
                tonic::Code::PermissionDenied,
                "insufficient_scope",
            ),
        ];
        for (t, code, why) in cases {
            let err = analytics_client
                .ledger_checkpoint(with_token(
                    soma_proto::v1::LedgerCheckpointRequest {},
                    t.as_deref(),
                ))
                .await
                .unwrap_err();
            assert_eq!((err.code(), grpc_reason(&err)), (code, why), "{err:?}");
            if code == tonic::Code::Unauthenticated {
                assert!(err.metadata().get("www-authenticate").is_some());
            }
        }
        // A grpc-timeout that is not one (nine digits, no unit, a lowercase
        // unit) is refused as gRPC servers refuse it, before admission.
        for bad in ["123456789m", "10", "5s"] {
            let mut request = with_token(soma_proto::v1::LedgerCheckpointRequest {}, Some(&token));
            request
                .metadata_mut()
                .insert("grpc-timeout", bad.parse().unwrap());
            let err = analytics_client.ledger_checkpoint(request).await.unwrap_err();
            assert_eq!(
                (err.code(), grpc_reason(&err)),
                (tonic::Code::Internal, "malformed_grpc_timeout"),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            analytics
                .metrics
                .dispatched_count("/somastack.v1.Analytics/LedgerCheckpoint"),
            before
        );

        // Moderation applies to gRPC input too.
        let mut input = prost_types::Struct::default();
        input.fields.insert(
            "note".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    "mail me at jane.doe@example.com".to_owned(),
                )),
            },
        );
        let err = gateway
            .run_capsule(with_token(
                soma_proto::v1::RunCapsuleRequest {
                    capsule_id: "c1".to_owned(),
                    environment: "production".to_owned(),
                    input: Some(input),
                },
                Some(&token),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), grpc_reason(&err)),
            (tonic::Code::InvalidArgument, "moderation_rejected"),
            "{err:?}"
        );

        // An independent gRPC stack: Python grpcio, raw bytes, bearer metadata.
        let script = r#"
import sys, grpc
target, token, reason_key = sys.argv[1], sys.argv[2], sys.argv[3]
channel = grpc.insecure_channel(target)
call = channel.unary_unary("/somastack.v1.Gateway/WhoAmI", request_serializer=lambda b: b, response_deserializer=lambda b: b)
reply = call(b"", metadata=(("authorization", "Bearer " + token),), timeout=10)
assert b"acme" in reply and b"grpc@acme" in reply, reply
try:
    call(b"", timeout=10)
    sys.exit("admitted without a token")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
    assert dict(e.trailing_metadata()).get(reason_key) == "token_missing", e.trailing_metadata()
print("ok")
"#;
        let out = std::process::Command::new(soma_testing::python())
            .args(["-c", script])
            .arg(edge.addr.to_string())
            .arg(&token)
            .arg(soma_mesh::REASON_METADATA)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python grpcio: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_set_on_one_replica_stops_requests_on_another() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&gateway_signer()),
        )
        .await;
        let a = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |_| {}).await;
        let b = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |_| {}).await;
        let http = client();
        // Another tenant's switch needs an operator: a token of the operator issuer.
        let operator = a.operator_token(
            json!({"tenant": "ops", "sub": "bob@ops", "scope": "ops:killswitch", "amr": ["otp"]}),
        );
        // Both replicas share the development issuer only by configuration:
        // each has its own key, so each mints its own tokens.
        let victim = b.token(json!({"tenant": "noisy", "scope": "ledger:read"}));
        let url = format!("{}/v1/ledger/checkpoint", b.url);
        assert_eq!(
            send(&http, "GET", &url, Some(&victim), None, &[]).await.status,
            200,
            "{}",
            stores.label
        );

        let set = json!({"scope": "KILL_SWITCH_SCOPE_TENANT", "target": "noisy", "engaged": true, "reason": "abuse report 7"});
        let r = send(
            &http,
            "POST",
            &format!("{}/v1/kill-switches", a.url),
            Some(&operator),
            Some(&set.to_string()),
            &[],
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{}: {}",
            stores.label,
            String::from_utf8_lossy(&r.body)
        );

        // Replica B re-reads the switches every 500 ms (at most 2 s by
        // configuration); a generous deadline keeps this a liveness check.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = send(&http, "GET", &url, Some(&victim), None, &[]).await;
            if r.status == 503 {
                assert_eq!(r.reason(), "kill_switch_engaged");
                break;
            }
            assert_eq!(r.status, 200);
            assert!(
                Instant::now() < deadline,
                "{}: replica B never saw the switch",
                stores.label
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The audit row says who, why and when.
        let who =
            soma_testing::scalar_text(&b.db, "SELECT set_by || '|' || reason FROM kill_switch_audit").await;
        assert_eq!(who, "bob@ops|abuse report 7");

        a.stop().await;
        b.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_speaks_https_over_http1_and_http2_when_a_certificate_is_configured() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let ca = Ca::new();
        let certs = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_file, key_file) = (certs.path().join("edge.pem"), certs.path().join("edge.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let edge = start_edge(&ca, None, stores.of(ServiceKind::Gateway), |c| {
            c.edge_tls_cert_file = Some(cert_file.clone());
            c.edge_tls_key_file = Some(key_file.clone());
        })
        .await;
        let token = edge.token(json!({"tenant": "acme", "scope": "identity:read"}));
        let url = format!("https://localhost:{}/v1/whoami", edge.addr.port());
        for version in ["--http1.1", "--http2"] {
            let out = std::process::Command::new("curl")
                .args(["-sS", version, "--cacert"])
                .arg(&cert_file)
                .args(["--resolve", &format!("localhost:{}:127.0.0.1", edge.addr.port())])
                .args(["-H", &format!("authorization: Bearer {token}")])
                .args(["-w", "\n%{http_version} %{http_code}", &url])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "curl {version}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (body, status) = text.rsplit_once('\n').unwrap();
            let expected = if version == "--http2" { "2 200" } else { "1.1 200" };
            assert_eq!(status, expected, "{body}");
            let who: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(who["tenant"], "acme");
        }
        // Plaintext HTTP to the TLS port is not served.
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            client().get(
                format!("http://127.0.0.1:{}/v1/whoami", edge.addr.port())
                    .parse()
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert!(r.is_err(), "plaintext answered on the TLS port");
        edge.stop().await;
        stores.cleanup().await;
    }
}

/// One raw gRPC call over HTTP/2 to `path` with `body` as the whole
/// request body (framing included) and `extra` headers: its `grpc-status`
/// and `soma-reason`, from the trailers-only head or the trailers.
async fn raw_grpc(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let (response, mut send) = client.send_request(request.body(()).unwrap(), false).unwrap();
    send.send_data(bytes::Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    let pick = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            (
                s.to_str().unwrap().to_owned(),
                h.get(soma_mesh::REASON_METADATA)
                    .map(|r| r.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
            )
        })
    };
    if let Some(found) = pick(response.headers()) {
        return found;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("no trailers");
    pick(&trailers).expect("no grpc-status in the trailers")
}

/// A gRPC message frame: uncompressed flag, big-endian length, bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_oversized_grpc_messages_are_refused_with_their_reasons() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&gateway_signer()),
        )
        .await;
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |c| {
            c.limits.max_body_bytes = 64 * 1024;
        })
        .await;
        let token = edge.token(json!({"scope": "ledger:read"}));
        const PROOF: &str = "/somastack.v1.Analytics/InclusionProof";

        struct Case {
            name: &'static str,
            extra: &'static [(&'static str, &'static str)],
            body: Vec<u8>,
            status: &'static str,
            reason: &'static str,
        }
        let case = |name, body, status, reason| Case {
            name,
            extra: &[],
            body,
            status,
            reason,
        };
        // 3: INVALID_ARGUMENT, 8: RESOURCE_EXHAUSTED, 12: UNIMPLEMENTED.
        let cases = [
            case(
                "a tag that is a truncated varint",
                frame(&[0xff]),
                "3",
                "malformed_message",
            ),
            case(
                "field 1 (a string) sent as a varint",
                frame(&[0x08, 0x01]),
                "3",
                "malformed_message",
            ),
            case(
                "a length-delimited field longer than the message",
                frame(&[0x0a, 0x05, b'a']),
                "3",
                "malformed_message",
            ),
            case(
                "a string field that is not UTF-8",
                frame(&[0x0a, 0x02, 0xc3, 0x28]),
                "3",
                "malformed_message",
            ),
            case("field number 0", frame(&[0x02, 0x00]), "3", "malformed_message"),
            case(
                "a frame whose message ends early",
                {
                    let mut b = frame(b"\x0a\x03abc");
                    b.truncate(7);
                    b
                },
                "3",
                "truncated_message",
            ),
            case("a prefix cut short", vec![0, 0, 0], "3", "truncated_message"),
            case("no message at all", Vec::new(), "3", "missing_message"),
            case(
                "two messages for a unary method",
                [frame(b""), frame(b"")].concat(),
                "3",
                "extra_message",
            ),
            case(
                "compressed flag 2",
                {
                    let mut b = frame(b"");
                    b[0] = 2;
                    b
                },
                "3",
                "malformed_frame",
            ),
            case(
                "compressed flag without an encoding",
                {
                    let mut b = frame(b"");
                    b[0] = 1;
                    b
                },
                "12",
                "encoding_unsupported",
            ),
            Case {
                name: "a gzip grpc-encoding",
                extra: &[("grpc-encoding", "gzip")],
                body: frame(b""),
                status: "12",
                reason: "encoding_unsupported",
            },
            case(
                "a message announcing more than the body limit",
                {
                    let mut b = vec![0u8];
                    b.extend_from_slice(&(64 * 1024 + 1u32).to_be_bytes());
                    b.extend_from_slice(&[0; 100]);
                    b
                },
                "8",
                "body_too_large",
            ),
        ];
        let before = analytics.metrics.dispatched_count(PROOF);
        for c in cases {
            let (status, reason) = raw_grpc(edge.addr, PROOF, &token, c.extra, c.body).await;
            assert_eq!(
                (status.as_str(), reason.as_str()),
                (c.status, c.reason),
                "{}",
                c.name
            );
        }
        assert_eq!(
            analytics.metrics.dispatched_count(PROOF),
            before,
            "no refused message reached the backend"
        );
        // A well-formed message goes through (and the backend answers it).
        let good = frame(&[0x0a, 0x03, b'e', b'v', b'1']);
        let (status, reason) = raw_grpc(edge.addr, PROOF, &token, &[], good).await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("5", "not_found"),
            "NOT_FOUND from Analytics"
        );
        assert_eq!(analytics.metrics.dispatched_count(PROOF), before + 1);

        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}
