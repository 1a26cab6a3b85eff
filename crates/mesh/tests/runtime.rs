//! The mesh runtime serving each of SomaStack's services (their routes and
//! policies, with handlers that answer `UNIMPLEMENTED`: see `common`),
//! in-process on 127.0.0.1:0, over real mTLS: health and reflection on every
//! service, per-method authorization of the SPIFFE IDs a method's policy
//! lists (deny by default, handler never reached), the signed claims
//! envelope, client certificates refused in the handshake and a handshake
//! cut off at its timeout, counted on the admin listener; each on SQLite and
//! on PostgreSQL, since every service opens its database before it serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::start;
use soma_auth::{ClaimsSigner, ClaimsVerifier};
use soma_mesh::ServiceKind;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_proto::v1::{RecordBillingEventRequest, RecordCapsuleRunRequest, VerifiedClaims};
use soma_testing::{Ca, channel, engine_stores, health, http_get, reflection_list, reflection_list_v1alpha};
use tonic::Code;

const SERVING: i32 = 1;

#[tokio::test]
async fn every_service_is_serving_and_listed_by_reflection_v1_and_v1alpha() {
    for stores in engine_stores(&ServiceKind::ALL).await {
        let ca = Ca::new();
        let operator = ca.store("/operator/alice", Duration::from_secs(600));
        for kind in ServiceKind::ALL {
            let svc = start(&ca, kind, None, &[], stores.of(kind)).await;
            let ch = channel(operator.clone(), svc.addr, &svc.id);
            assert_eq!(health(ch.clone(), "").await.unwrap(), SERVING, "{kind}");
            assert_eq!(
                health(ch.clone(), kind.grpc_name()).await.unwrap(),
                SERVING,
                "{kind}"
            );
            for list in [
                reflection_list(ch.clone()).await,
                reflection_list_v1alpha(ch.clone()).await,
            ] {
                assert!(list.iter().any(|s| s == kind.grpc_name()), "{kind}: {list:?}");
                assert!(
                    list.iter().any(|s| s == "grpc.health.v1.Health"),
                    "{kind}: {list:?}"
                );
            }
            svc.stop().await;
        }
        stores.cleanup().await;
    }
}

const BILLING: &str = "/somastack.v1.Analytics/RecordBillingEvent";
const CAPSULE_RUN: &str = "/somastack.v1.Analytics/RecordCapsuleRun";

#[tokio::test]
async fn a_caller_not_listed_for_a_method_is_denied_and_the_handler_never_runs() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let svc = start(
            &ca,
            ServiceKind::Analytics,
            None,
            &[],
            stores.of(ServiceKind::Analytics),
        )
        .await;

        struct Case {
            name: &'static str,
            caller: &'static str,
            expected: Code,
            reason: Option<&'static str>,
        }
        let cases = [
            // RecordBillingEvent is callable by the tool registry only.
            Case {
                name: "capsule-repo",
                caller: "/svc/capsule-repo",
                expected: Code::PermissionDenied,
                reason: Some("caller_not_allowed"),
            },
            Case {
                name: "gateway",
                caller: "/svc/gateway",
                expected: Code::PermissionDenied,
                reason: Some("caller_not_allowed"),
            },
            Case {
                name: "operator",
                caller: "/operator/alice",
                expected: Code::PermissionDenied,
                reason: Some("caller_not_allowed"),
            },
            Case {
                name: "look-alike path",
                caller: "/svc/tool-registry2",
                expected: Code::PermissionDenied,
                reason: Some("caller_not_allowed"),
            },
            Case {
                name: "sub-path",
                caller: "/svc/tool-registry/x",
                expected: Code::PermissionDenied,
                reason: Some("caller_not_allowed"),
            },
            // The allowed caller reaches the handler, which answers
            // UNIMPLEMENTED: the counter moves, and the runtime refused
            // nothing, so the status carries no reason.
            Case {
                name: "tool-registry",
                caller: "/svc/tool-registry",
                expected: Code::Unimplemented,
                reason: None,
            },
        ];
        for c in cases {
            let before = svc.metrics.dispatched_count(BILLING);
            let client_id = ca.store(c.caller, Duration::from_secs(600));
            let mut client = AnalyticsClient::new(channel(client_id, svc.addr, &svc.id));
            let status = client
                .record_billing_event(RecordBillingEventRequest::default())
                .await
                .unwrap_err();
            assert_eq!(status.code(), c.expected, "{}: {status:?}", c.name);
            let reason = status
                .metadata()
                .get(soma_mesh::REASON_METADATA)
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(reason.as_deref(), c.reason, "{}", c.name);
            let ran = svc.metrics.dispatched_count(BILLING) - before;
            assert_eq!(
                ran,
                u64::from(c.reason.is_none()),
                "{}: handler runs = {ran}",
                c.name
            );
        }
        assert_eq!(svc.metrics.denied_count(BILLING, "caller_not_allowed"), 5);
        // Every RPC's end is counted by its gRPC code, refusals included,
        // and timed: six RPCs in the latency histogram.
        assert_eq!(svc.metrics.handled_count(BILLING, Code::PermissionDenied), 5);
        assert_eq!(svc.metrics.handled_count(BILLING, Code::Unimplemented), 1);
        assert_eq!(svc.metrics.handled_count(BILLING, Code::Ok), 0);
        for (series, value) in [
            (
                format!("soma_rpc_server_handled_total{{method=\"{BILLING}\",code=\"PERMISSION_DENIED\"}}"),
                5,
            ),
            (
                format!("soma_rpc_server_handled_total{{method=\"{BILLING}\",code=\"UNIMPLEMENTED\"}}"),
                1,
            ),
            (
                format!("soma_rpc_server_handled_total{{method=\"{BILLING}\",code=\"OK\"}}"),
                0,
            ),
            (
                format!("soma_rpc_server_handling_seconds_count{{method=\"{BILLING}\"}}"),
                6,
            ),
            (
                format!("soma_rpc_server_handling_seconds_bucket{{method=\"{BILLING}\",le=\"+Inf\"}}"),
                6,
            ),
        ] {
            assert_eq!(metric(svc.admin, &series).await, value, "{series}");
        }
        svc.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test]
async fn a_method_without_a_policy_is_denied_by_default() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let svc = start(
            &ca,
            ServiceKind::Analytics,
            None,
            &[],
            stores.of(ServiceKind::Analytics),
        )
        .await;
        // A path the service does not declare: the runtime denies it before
        // routing, whoever calls.
        let client_id = ca.store("/svc/tool-registry", Duration::from_secs(600));
        let ch = channel(client_id, svc.addr, &svc.id);
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<
            soma_proto::v1::VerifyStoreRequest,
            soma_proto::v1::VerifyStoreResponse,
        >::default();
        let path = http::uri::PathAndQuery::from_static("/somastack.v1.Analytics/DropAllTables");
        let status = grpc
            .unary(
                tonic::Request::new(soma_proto::v1::VerifyStoreRequest {}),
                path,
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.metadata().get(soma_mesh::REASON_METADATA).unwrap(),
            "no_policy"
        );
        svc.stop().await;
        stores.cleanup().await;
    }
}

fn claims(capability: &str) -> VerifiedClaims {
    VerifiedClaims {
        tenant: "acme".into(),
        subject: "user-1".into(),
        region: "eu-west-1".into(),
        capabilities: vec![capability.into()],
        mfa: false,
        request_id: "req-1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn claims_envelopes_are_accepted_only_when_signed_by_the_gateway_for_this_service() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let (signer, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let (forger, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let analytics_id = ca.id("/svc/analytics");
        let verifier = ClaimsVerifier::new(
            ca.id("/svc/gateway"),
            analytics_id.clone(),
            vec![("gateway-1".into(), signer.public_key())],
        );
        let svc = start(
            &ca,
            ServiceKind::Analytics,
            Some(verifier),
            &[],
            stores.of(ServiceKind::Analytics),
        )
        .await;
        let gateway = ca.store("/svc/gateway", Duration::from_secs(600));
        let tool_registry = ca.store("/svc/tool-registry", Duration::from_secs(600));
        let now = SystemTime::now();
        let ttl = Duration::from_secs(30);

        struct Case {
            name: &'static str,
            from_gateway: bool,
            envelope: soma_auth::SignedClaims,
            expected: Code,
        }
        let cases = [
            // Accepted: the handler runs, and answers UNIMPLEMENTED.
            Case {
                name: "valid envelope from the gateway",
                from_gateway: true,
                envelope: signer
                    .sign(claims("analytics:ingest"), &analytics_id, ttl, now)
                    .unwrap(),
                expected: Code::Unimplemented,
            },
            Case {
                name: "forged signature (another key, same key id)",
                from_gateway: true,
                envelope: forger
                    .sign(claims("analytics:ingest"), &analytics_id, ttl, now)
                    .unwrap(),
                expected: Code::Unauthenticated,
            },
            Case {
                name: "wrong audience",
                from_gateway: true,
                envelope: signer
                    .sign(claims("analytics:ingest"), &ca.id("/svc/capsule-repo"), ttl, now)
                    .unwrap(),
                expected: Code::Unauthenticated,
            },
            Case {
                name: "expired",
                from_gateway: true,
                envelope: signer
                    .sign(
                        claims("analytics:ingest"),
                        &analytics_id,
                        ttl,
                        now - Duration::from_secs(120),
                    )
                    .unwrap(),
                expected: Code::Unauthenticated,
            },
            Case {
                name: "valid envelope sent by a non-gateway peer",
                from_gateway: false,
                envelope: signer
                    .sign(claims("analytics:ingest"), &analytics_id, ttl, now)
                    .unwrap(),
                expected: Code::Unauthenticated,
            },
            Case {
                name: "valid envelope without the method's capability",
                from_gateway: true,
                envelope: signer
                    .sign(claims("analytics:export"), &analytics_id, ttl, now)
                    .unwrap(),
                expected: Code::PermissionDenied,
            },
        ];
        for c in cases {
            let before = svc.metrics.dispatched_count(CAPSULE_RUN);
            let peer = if c.from_gateway {
                gateway.clone()
            } else {
                tool_registry.clone()
            };
            let mut client = AnalyticsClient::new(channel(peer, svc.addr, &svc.id));
            let mut request = tonic::Request::new(RecordCapsuleRunRequest::default());
            c.envelope.insert_into(request.metadata_mut());
            let status = client.record_capsule_run(request).await.unwrap_err();
            assert_eq!(status.code(), c.expected, "{}: {status:?}", c.name);
            let ran = svc.metrics.dispatched_count(CAPSULE_RUN) - before;
            assert_eq!(ran, u64::from(c.expected == Code::Unimplemented), "{}", c.name);
        }
        svc.stop().await;
        stores.cleanup().await;
    }
}

/// Upper bound on any single wait (a metric reaching its value, a server
/// closing a connection), so that a broken server fails the test instead of
/// hanging it. Not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

const HANDSHAKES_FAILED: &str = "soma_tls_handshakes_total{outcome=\"failed\"}";
const HANDSHAKES_TIMED_OUT: &str = "soma_tls_handshakes_total{outcome=\"timed_out\"}";
const HANDSHAKES_OK: &str = "soma_tls_handshakes_total{outcome=\"ok\"}";

/// A client configuration that verifies the server exactly as a mesh client
/// does (SPIFFE verification against `ca`'s bundle, server ID `server`), but
/// presents whatever client certificate `presented` resolves, or none. So any
/// refusal of the handshake is the server's judgement of that certificate,
/// never the client's judgement of the server.
fn client_presenting(
    ca: &Ca,
    server: &soma_identity::SpiffeId,
    presented: Option<&soma_ca::IssuedSvid>,
) -> std::sync::Arc<rustls::ClientConfig> {
    let honest = ca.store("/svc/tool-registry", Duration::from_secs(600));
    let mut config =
        (*soma_identity::client_config(honest, soma_identity::ExpectedPeer::Exact(server.clone())).unwrap())
            .clone();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty());
    // Only the certificate resolver of this throw-away configuration is kept.
    let presenting = match presented {
        Some(svid) => builder
            .with_client_auth_cert(
                svid.chain_der
                    .iter()
                    .map(|der| rustls::pki_types::CertificateDer::from(der.clone()))
                    .collect(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(svid.key_pkcs8_der.clone().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.client_auth_cert_resolver = presenting.client_auth_cert_resolver.clone();
    std::sync::Arc::new(config)
}

/// Connects with `config`, requires the client side of the handshake to
/// succeed (the client accepted the server), then sends the HTTP/2 preface
/// and returns the alert the server answers with. In TLS 1.3 the client
/// finishes first, so the server's verdict on the client certificate arrives
/// as an alert on the first read.
async fn server_alert(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> rustls::AlertDescription {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(HANG_GUARD, connector.connect(name, tcp))
        .await
        .expect("handshake hung")
        .expect("the client must accept the server: the refusal under test is the server's");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(HANG_GUARD, async {
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        tls.read(&mut buf).await
    })
    .await
    .expect("the server neither answered nor closed");
    let error = read.expect_err("the server must refuse the client certificate");
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        _ => panic!("expected a TLS alert from the server, got {error:?}"),
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_or_from_another_authority_is_refused_in_the_handshake() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let svc = start(
            &ca,
            ServiceKind::Analytics,
            None,
            &[],
            stores.of(ServiceKind::Analytics),
        )
        .await;
        let failed_before = metric(svc.admin, HANDSHAKES_FAILED).await;
        let ok_before = metric(svc.admin, HANDSHAKES_OK).await;

        // 1. A client certificate from another authority of the same trust
        // domain name, for an ID that may call RecordBillingEvent: its SVID does
        // not chain to this service's bundle, so the server refuses it. The
        // client trusts the real authority, so it is the server that decides.
        let rogue = Ca::new();
        let rogue_svid = rogue
            .authority
            .issue(
                &rogue.id("/svc/tool-registry"),
                Duration::from_secs(600),
                soma_ca::IssueOptions::default(),
            )
            .unwrap();
        let alert = server_alert(client_presenting(&ca, &svc.id, Some(&rogue_svid)), svc.addr).await;
        // The SPIFFE verifier refuses with its own reason (logged by the server),
        // which rustls sends as certificate_unknown.
        assert_eq!(alert, rustls::AlertDescription::CertificateUnknown);
        let failed = metric_at_least(svc.admin, HANDSHAKES_FAILED, failed_before + 1).await;
        assert_eq!(
            failed,
            failed_before + 1,
            "one refused rogue handshake, one count"
        );
        assert_eq!(
            metric(
                svc.admin,
                "soma_tls_handshake_failures_total{reason=\"invalid_certificate\"}"
            )
            .await,
            1
        );
        assert_eq!(svc.metrics.dispatched_count(BILLING), 0);

        // 2. A TLS client with no certificate at all: refused, counted once.
        let alert = server_alert(client_presenting(&ca, &svc.id, None), svc.addr).await;
        assert_eq!(alert, rustls::AlertDescription::CertificateRequired);
        let failed = metric_at_least(svc.admin, HANDSHAKES_FAILED, failed_before + 2).await;
        assert_eq!(
            failed,
            failed_before + 2,
            "one refused anonymous handshake, one count"
        );
        assert_eq!(
            metric(
                svc.admin,
                "soma_tls_handshake_failures_total{reason=\"no_client_certificate\"}"
            )
            .await,
            1
        );
        assert_eq!(svc.metrics.dispatched_count(BILLING), 0);

        // 3. The same client configuration presenting an SVID of the real
        // authority is accepted: the refusals above were the certificates',
        // not the configuration's.
        let honest_svid = ca
            .authority
            .issue(
                &ca.id("/svc/tool-registry"),
                Duration::from_secs(600),
                soma_ca::IssueOptions::default(),
            )
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_presenting(&ca, &svc.id, Some(&honest_svid)));
        let tcp = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let ok = metric_at_least(svc.admin, HANDSHAKES_OK, ok_before + 1).await;
        assert_eq!(ok, ok_before + 1);
        assert_eq!(metric(svc.admin, HANDSHAKES_FAILED).await, failed_before + 2);
        drop(tls);
        svc.stop().await;
        stores.cleanup().await;
    }
}

/// The value of one counter series (`name{labels}`) in the admin /metrics.
async fn metric(admin: std::net::SocketAddr, series: &str) -> u64 {
    let metrics = reqwest_metrics(admin).await;
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
        .parse()
        .unwrap()
}

/// Polls `series` until it reaches `at_least` and returns the value seen
/// (which may be higher: the caller asserts the exact figure). The server
/// counts a handshake on its own task, after the peer may already have seen
/// the outcome, so a single read right after would race with it.
async fn metric_at_least(admin: std::net::SocketAddr, series: &str, at_least: u64) -> u64 {
    let started = std::time::Instant::now();
    loop {
        let value = metric(admin, series).await;
        if value >= at_least {
            return value;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "{series} stayed at {value}, below {at_least}, for {HANG_GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET /metrics from the admin listener, over a plain TCP HTTP/1.1 exchange.
async fn reqwest_metrics(admin: std::net::SocketAddr) -> String {
    let body = http_get(admin, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_cut_off_at_the_handshake_timeout() {
    for stores in engine_stores(&[ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let svc = start(
            &ca,
            ServiceKind::Analytics,
            None,
            &[("SOMA_HANDSHAKE_TIMEOUT", "300ms")],
            stores.of(ServiceKind::Analytics),
        )
        .await;
        use tokio::io::AsyncReadExt;
        let mut tcp = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
        // Send nothing: the server must close the connection by itself.
        let mut buf = [0u8; 16];
        let silent_since = std::time::Instant::now();
        let read = tokio::time::timeout(HANG_GUARD, tcp.read(&mut buf))
            .await
            .expect("the server never cut off a client that sends nothing");
        eprintln!("silent client cut off after {:?}", silent_since.elapsed());
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // The close and the count happen on the server's task in an order the
        // client cannot observe: wait for the count, then require exactly one.
        let timed_out = metric_at_least(svc.admin, HANDSHAKES_TIMED_OUT, 1).await;
        assert_eq!(timed_out, 1);
        assert_eq!(
            metric(svc.admin, HANDSHAKES_FAILED).await,
            0,
            "a timeout is not a failure"
        );
        svc.stop().await;
        stores.cleanup().await;
    }
}
