#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Workload API over a real Unix socket, driven by the `spiffe` crate's
//! own client and by a raw tonic client.

mod common;

use std::time::Duration;

use soma_proto::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest, X509svidResponse,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use x509_parser::prelude::X509Certificate;

use common::{TestServer, raw_client, spiffe_id, split_der, verify_as_client, with_header};

/// Upper bound on any single wait, so that a broken server fails the test
/// instead of hanging it. Not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

const HOUR: Duration = Duration::from_secs(3600);

fn own_pid() -> u32 {
    std::process::id()
}

/// Leaf serial and validity of the one SVID in a response, after checking the
/// response's full-state shape.
struct Leaf {
    serial: Vec<u8>,
    not_before: i64,
    not_after: i64,
    key: Vec<u8>,
}

fn check_svid_message(message: &X509svidResponse, server: &TestServer, id: &str) -> Leaf {
    assert_eq!(message.svids.len(), 1);
    assert!(message.federated_bundles.is_empty());
    assert!(message.crl.is_empty());
    let svid = &message.svids[0];
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(svid.bundle, server.authority.bundle_der());
    let chain = split_der(&svid.x509_svid);
    assert_eq!(chain.len(), 1);
    verify_as_client(&svid.bundle, &chain[0]).unwrap();
    let parsed = spiffe::X509Svid::parse_from_der(&svid.x509_svid, &svid.x509_svid_key).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), id);
    let (_, leaf): (_, X509Certificate<'_>) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    Leaf {
        serial: leaf.tbs_certificate.serial.to_bytes_be(),
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        key: svid.x509_svid_key.clone(),
    }
}

#[tokio::test]
async fn spiffe_client_fetches_svid_and_bundle() {
    let mut server = TestServer::start(HOUR).await;
    let id = spiffe_id("/service/gateway");
    server.registry.register_pid(own_pid(), id.clone());

    let source = tokio::time::timeout(
        HANG_GUARD,
        spiffe::X509Source::builder()
            .endpoint(server.endpoint())
            .initial_sync_timeout(HANG_GUARD)
            .build(),
    )
    .await
    .unwrap()
    .unwrap();
    let svid = source.svid().unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://somastack.test/service/gateway"
    );
    let td = spiffe::TrustDomain::new("somastack.test").unwrap();
    let bundle = source
        .bundle_set()
        .unwrap()
        .get(&td)
        .expect("bundle of the own trust domain");
    assert_eq!(bundle.trust_domain(), &td);
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        server.authority.bundle_der().as_slice()
    );
    verify_as_client(bundle.authorities()[0].as_bytes(), svid.leaf().as_bytes()).unwrap();
    source.shutdown().await;

    // The one-shot client calls: FetchX509SVID and FetchX509Bundles.
    let client = spiffe::WorkloadApiClient::connect_to(server.endpoint())
        .await
        .unwrap();
    let fetched = client.fetch_x509_svid().await.unwrap();
    assert_eq!(fetched.spiffe_id().to_string(), id.to_string());
    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert_eq!(bundles.len(), 1);
    let bundle = bundles.get(&td).unwrap();
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        server.authority.bundle_der().as_slice()
    );
    drop(client);

    server.stop().await.unwrap();
}

/// A request carrying `workload.spiffe.io: <header>`, or no such metadata.
fn request_with<T>(message: T, header: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = header {
        request
            .metadata_mut()
            .insert("workload.spiffe.io", MetadataValue::try_from(value).unwrap());
    }
    request
}

#[tokio::test]
async fn callers_without_header_or_identity_are_refused() {
    struct Case {
        name: &'static str,
        header: Option<&'static str>,
        /// Register the test process, then (when false) unregister it again.
        stays_registered: bool,
        expected: Code,
    }
    let cases = [
        Case {
            name: "no header",
            header: None,
            stays_registered: true,
            expected: Code::InvalidArgument,
        },
        Case {
            name: "header false",
            header: Some("false"),
            stays_registered: true,
            expected: Code::InvalidArgument,
        },
        Case {
            name: "header uppercase",
            header: Some("TRUE"),
            stays_registered: true,
            expected: Code::InvalidArgument,
        },
        Case {
            name: "header empty",
            header: Some(""),
            stays_registered: true,
            expected: Code::InvalidArgument,
        },
        Case {
            name: "no header, unregistered",
            header: None,
            stays_registered: false,
            expected: Code::InvalidArgument,
        },
        Case {
            name: "unregistered pid",
            header: Some("true"),
            stays_registered: false,
            expected: Code::PermissionDenied,
        },
        Case {
            name: "registered pid",
            header: Some("true"),
            stays_registered: true,
            expected: Code::Ok,
        },
    ];
    for case in cases {
        let mut server = TestServer::start(HOUR).await;
        server.registry.register_pid(own_pid(), spiffe_id("/svc"));
        if !case.stays_registered {
            server.registry.unregister_pid(own_pid());
        }
        let mut client = raw_client(&server.socket).await;
        let svid = client
            .fetch_x509svid(request_with(X509svidRequest {}, case.header))
            .await;
        let bundles = client
            .fetch_x509_bundles(request_with(X509BundlesRequest {}, case.header))
            .await;
        for (rpc, code, message) in [
            (
                "FetchX509SVID",
                svid.as_ref().err().map(|s| s.code()),
                svid.as_ref().err().map(|s| s.message()),
            ),
            (
                "FetchX509Bundles",
                bundles.as_ref().err().map(|s| s.code()),
                bundles.as_ref().err().map(|s| s.message()),
            ),
        ] {
            assert_eq!(code.unwrap_or(Code::Ok), case.expected, "{}: {rpc}", case.name);
            let expected_message = match case.expected {
                Code::InvalidArgument => Some("security header missing from request"),
                Code::PermissionDenied => Some("no identity issued"),
                _ => None,
            };
            assert_eq!(message, expected_message, "{}: {rpc}", case.name);
        }
        if case.expected == Code::Ok {
            let first = svid.unwrap().into_inner().message().await.unwrap().unwrap();
            check_svid_message(&first, &server, "spiffe://somastack.test/svc");
        }
        drop(client);
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn svid_stream_starts_at_once_and_pushes_rotations() {
    let ttl = Duration::from_secs(4);
    let mut server = TestServer::start(ttl).await;
    let id = "spiffe://somastack.test/service/analytics";
    server
        .registry
        .register_pid(own_pid(), spiffe_id("/service/analytics"));
    let mut client = raw_client(&server.socket).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();

    // The first SVID is due without delay: well before the earliest rotation
    // (half of 4 s, minus 10 % jitter = 1.8 s) could have produced one.
    let first = tokio::time::timeout(Duration::from_millis(1500), stream.message())
        .await
        .expect("first message not sent at once")
        .unwrap()
        .unwrap();
    let first = check_svid_message(&first, &server, id);
    assert_eq!(first.not_after - first.not_before, 4 + 10);

    // Then one message per rotation, each the full state with a new SVID.
    let mut previous = first;
    for rotation in 1..=2 {
        let next = tokio::time::timeout(HANG_GUARD, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let next = check_svid_message(&next, &server, id);
        assert_ne!(next.serial, previous.serial, "rotation {rotation}");
        assert_ne!(next.key, previous.key, "rotation {rotation}: a fresh key");
        // Issued at half-life ±10 % (1.8 s to 2.2 s) after the previous one;
        // whole-second certificate times turn that into 1, 2 or 3 seconds.
        let gap = next.not_before - previous.not_before;
        assert!(
            (1..=3).contains(&gap),
            "rotation {rotation}: {gap} s after the previous svid"
        );
        // The previous SVID was still valid when it was replaced.
        assert!(previous.not_after > next.not_before + 10, "rotation {rotation}");
        previous = next;
    }
    drop(stream);
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn spiffe_source_sees_rotations() {
    let mut server = TestServer::start(Duration::from_secs(4)).await;
    server
        .registry
        .register_pid(own_pid(), spiffe_id("/service/capsule-repo"));
    let source = tokio::time::timeout(
        HANG_GUARD,
        spiffe::X509Source::builder()
            .endpoint(server.endpoint())
            .initial_sync_timeout(HANG_GUARD)
            .build(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut updates = source.updated();
    let before = source.svid().unwrap();
    tokio::time::timeout(HANG_GUARD, updates.changed())
        .await
        .unwrap()
        .unwrap();
    let after = source.svid().unwrap();
    assert_eq!(after.spiffe_id(), before.spiffe_id());
    let serial = |svid: &spiffe::X509Svid| {
        let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
        leaf.tbs_certificate.serial.to_bytes_be()
    };
    assert_ne!(serial(&after), serial(&before));
    source.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn callers_of_one_identity_share_one_svid() {
    let mut server = TestServer::start(HOUR).await;
    let id = "spiffe://somastack.test/service/tool-registry";
    server
        .registry
        .register_pid(own_pid(), spiffe_id("/service/tool-registry"));
    let mut a = raw_client(&server.socket).await;
    let mut b = raw_client(&server.socket).await;
    let mut stream_a = a
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut stream_b = b
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first_a = check_svid_message(&stream_a.message().await.unwrap().unwrap(), &server, id);
    let first_b = check_svid_message(&stream_b.message().await.unwrap().unwrap(), &server, id);
    assert_eq!(first_a.serial, first_b.serial);
    assert_eq!(first_a.key, first_b.key);
    drop((stream_a, stream_b, a, b));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bundles_stream_carries_the_trust_domain_bundle() {
    let mut server = TestServer::start(HOUR).await;
    server.registry.register_pid(own_pid(), spiffe_id("/svc"));
    let mut client = raw_client(&server.socket).await;
    let mut stream = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let message = tokio::time::timeout(HANG_GUARD, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(message.crl.is_empty());
    assert_eq!(message.bundles.len(), 1);
    assert_eq!(
        message.bundles.get("spiffe://somastack.test"),
        Some(&server.authority.bundle_der())
    );
    drop(stream);
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn jwt_methods_are_unimplemented() {
    let mut server = TestServer::start(HOUR).await;
    server.registry.register_pid(own_pid(), spiffe_id("/svc"));
    let mut client = raw_client(&server.socket).await;
    let fetch = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".to_owned()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(fetch.code(), Code::Unimplemented);
    let validate = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".to_owned(),
            svid: "x.y.z".to_owned(),
        }))
        .await
        .unwrap_err();
    assert_eq!(validate.code(), Code::Unimplemented);
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let mut server = TestServer::start(HOUR).await;
    server.registry.register_pid(own_pid(), spiffe_id("/svc"));
    let mut client = raw_client(&server.socket).await;
    let mut svids = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    svids.message().await.unwrap().unwrap();
    bundles.message().await.unwrap().unwrap();

    // `stop` fails the test if serve does not return; both streams must then
    // have ended cleanly (end of stream, status OK).
    server.stop().await.unwrap();
    assert!(
        tokio::time::timeout(HANG_GUARD, svids.message())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    assert!(
        tokio::time::timeout(HANG_GUARD, bundles.message())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_caller_that_loses_its_identity_is_cut_off_at_rotation() {
    let mut server = TestServer::start(Duration::from_secs(4)).await;
    server.registry.register_pid(own_pid(), spiffe_id("/svc"));
    let mut client = raw_client(&server.socket).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    check_svid_message(
        &stream.message().await.unwrap().unwrap(),
        &server,
        "spiffe://somastack.test/svc",
    );

    server.registry.unregister_pid(own_pid());
    let status = tokio::time::timeout(HANG_GUARD, stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
    drop(stream);
    drop(client);
    server.stop().await.unwrap();
}
