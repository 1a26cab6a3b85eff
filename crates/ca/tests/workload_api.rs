#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Workload API over a real Unix socket, driven by the `spiffe` crate's
//! own client and by a raw tonic client.

mod common;

use std::time::Duration;

use soma_proto::workload::{X509BundlesRequest, X509svidRequest, X509svidResponse};
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
                Code::PermissionDenied => {
                    Some("no identity issued: the caller matches no registration entry")
                }
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

/// How far the authority backdates `not_before` (`soma_ca`'s `BACKDATE`):
/// an SVID was issued at `not_before + BACKDATE_SECS`, to the second.
const BACKDATE_SECS: i64 = 10;

/// Unix time now, in whole seconds (certificate times are whole seconds).
fn unix_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

/// The stream's first message is the current SVID, sent without waiting for
/// a change. With a one-hour lifetime the earliest rotation is 27 minutes
/// away (half-life minus 10 % jitter), so a server that held the first
/// message back until a rotation cannot meet the liveness bound
/// ([`HANG_GUARD`], 30 s): the bound decides, not the measured figure, which
/// is only printed.
#[tokio::test]
async fn svid_stream_starts_at_once() {
    let mut server = TestServer::start(HOUR).await;
    let id = "spiffe://somastack.test/service/analytics";
    server
        .registry
        .register_pid(own_pid(), spiffe_id("/service/analytics"));
    let mut client = raw_client(&server.socket).await;
    let opened = std::time::Instant::now();
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(HANG_GUARD, stream.message())
        .await
        .expect("the first svid must not wait for a rotation")
        .unwrap()
        .expect("the stream ended before its first message");
    eprintln!("first svid after {:?}", opened.elapsed());
    let first = check_svid_message(&first, &server, id);
    assert_eq!(first.not_after - first.not_before, 3600 + BACKDATE_SECS);
    drop(stream);
    drop(client);
    server.stop().await.unwrap();
}

/// One message per rotation, each the full state with a new SVID (new serial,
/// new key), issued after the previous one and received while the previous
/// one was still valid: rotation happens before expiry, which is the whole
/// point of it. No upper bound on the gap between rotations (that would be a
/// timing, and a loaded machine stretches it); the lower bound is
/// deterministic, since the rotation task sleeps at least 90 % of half the
/// remaining lifetime before issuing.
#[tokio::test]
async fn svid_stream_pushes_rotations_before_expiry() {
    // 6 s: rotation at about 3 s, so each new SVID has about 3 s of slack
    // before the previous one expires, even on a loaded machine.
    const TTL_SECS: i64 = 6;
    let mut server = TestServer::start(Duration::from_secs(TTL_SECS.unsigned_abs())).await;
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
    let first = tokio::time::timeout(HANG_GUARD, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = check_svid_message(&first, &server, id);
    assert_eq!(first.not_after - first.not_before, TTL_SECS + BACKDATE_SECS);

    let mut previous = first;
    for rotation in 1..=2 {
        let next = tokio::time::timeout(HANG_GUARD, stream.message())
            .await
            .unwrap_or_else(|_| panic!("rotation {rotation}: no new svid within {HANG_GUARD:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("rotation {rotation}: the stream ended"));
        let received = unix_now();
        let next = check_svid_message(&next, &server, id);
        assert_ne!(next.serial, previous.serial, "rotation {rotation}: a new serial");
        assert_ne!(next.key, previous.key, "rotation {rotation}: a fresh key");
        assert_eq!(
            next.not_after - next.not_before,
            TTL_SECS + BACKDATE_SECS,
            "rotation {rotation}"
        );
        // Issued at least 90 % of 3 s (2.7 s) after the previous SVID: at
        // least 2 whole seconds later. An SVID re-sent early, or a rotation
        // loop that does not wait, fails here.
        let gap = next.not_before - previous.not_before;
        eprintln!("rotation {rotation}: issued {gap} s after the previous svid");
        assert!(
            gap >= 2,
            "rotation {rotation}: issued only {gap} s after the previous svid"
        );
        // The new SVID arrived while the previous one was still valid.
        assert!(
            received < previous.not_after,
            "rotation {rotation}: received at {received}, but the previous svid expired at {}",
            previous.not_after
        );
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
    assert_eq!(
        status.message(),
        "no identity issued: the caller matches no registration entry"
    );
    drop(stream);
    drop(client);
    server.stop().await.unwrap();
}
