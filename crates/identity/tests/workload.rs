//! `WorkloadIdentity` against a Workload API server on a real Unix socket:
//! the `FetchX509SVID` stream of the SPIFFE Workload API spec, served with
//! tonic, carrying certificates minted at run time. The client side is the
//! real `spiffe` crate `X509Source`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Ca, Leaf, id};
use soma_identity::{IdentityError, SvidStore, WorkloadIdentity};
use soma_testing::CapturedLog;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::codegen::{BoxFuture, http};

/// `X509SVIDRequest` (workload.proto): no fields.
#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidRequest {}

/// `X509SVIDResponse` (workload.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    svids: Vec<X509SvidEntry>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "3")]
    federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID` (workload.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidEntry {
    #[prost(string, tag = "1")]
    spiffe_id: String,
    #[prost(bytes = "vec", tag = "2")]
    x509_svid: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    x509_svid_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    hint: String,
}

fn response(uri: &str, leaf: &Leaf, ca: &Ca) -> X509SvidResponse {
    X509SvidResponse {
        svids: vec![X509SvidEntry {
            spiffe_id: uri.to_owned(),
            x509_svid: leaf.chain_der(),
            x509_svid_key: leaf.key_der(),
            bundle: ca.cert.as_ref().to_vec(),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: HashMap::new(),
    }
}

/// The `SpiffeWorkloadAPI` service: `FetchX509SVID` streams the current
/// response and every later one.
#[derive(Clone)]
struct WorkloadApi {
    current: watch::Receiver<X509SvidResponse>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<X509SvidResponse, tonic::Status>> + Send>>;

struct FetchX509Svid {
    current: watch::Receiver<X509SvidResponse>,
}

impl tonic::server::ServerStreamingService<X509SvidRequest> for FetchX509Svid {
    type Response = X509SvidResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<tonic::Response<ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<X509SvidRequest>) -> Self::Future {
        // The spec requires the security header on every call.
        let has_header = request
            .metadata()
            .get("workload.spiffe.io")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        let updates = tokio_stream::wrappers::WatchStream::new(self.current.clone()).map(Ok);
        Box::pin(async move {
            if !has_header {
                return Err(tonic::Status::invalid_argument(
                    "security header missing from request",
                ));
            }
            Ok(tonic::Response::new(Box::pin(updates) as ResponseStream))
        })
    }
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for WorkloadApi {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == "/SpiffeWorkloadAPI/FetchX509SVID" {
            let method = FetchX509Svid {
                current: self.current.clone(),
            };
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(method, request).await)
            })
        } else {
            Box::pin(async { Ok(tonic::Status::unimplemented("not served here").into_http()) })
        }
    }
}

impl tonic::server::NamedService for WorkloadApi {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

/// Serves the Workload API on a Unix socket in `dir`; returns its endpoint URI.
async fn serve(
    dir: &tempfile::TempDir,
    first: X509SvidResponse,
) -> (String, watch::Sender<X509SvidResponse>) {
    let path = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (tx, rx) = watch::channel(first);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkloadApi { current: rx })
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    (format!("unix://{}", path.display()), tx)
}

/// Waits (without asserting on time) until `done` holds; gives up after a minute.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

const ID: &str = "spiffe://a.test/workload";

// Current-thread runtime: the source's and the updater's tasks log under
// this thread's capturing subscriber.
#[tokio::test(flavor = "current_thread")]
async fn the_store_follows_workload_api_updates_and_refuses_bad_ones() {
    let captured = CapturedLog::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("ca a");
    let first = ca.svid(ID);
    let (endpoint, updates) = serve(&dir, response(ID, &first, &ca)).await;

    let identity = WorkloadIdentity::connect(Some(&endpoint), Some(&id(ID)), Duration::from_secs(30))
        .await
        .unwrap();
    let store: Arc<SvidStore> = identity.store();
    assert_eq!(store.own_id(), &id(ID));
    assert_eq!(store.svid().chain(), first.chain().as_slice());
    assert_eq!(
        store.bundles().get(&common::td("a.test")).unwrap().roots(),
        std::slice::from_ref(&ca.cert)
    );

    // A rotation arrives: the store takes it.
    let second = ca.svid(ID);
    let second_serial = second.svid().serial();
    updates.send(response(ID, &second, &ca)).unwrap();
    wait_until("rotation to the second svid", || {
        store.current_serial() == second_serial
    })
    .await;

    // An update carrying another workload's SVID is refused; the second stays.
    let intruder = "spiffe://a.test/intruder";
    updates.send(response(intruder, &ca.svid(intruder), &ca)).unwrap();
    wait_until("refusal of the intruder svid", || {
        captured.text().contains("refused svid rotation")
    })
    .await;
    let reason = IdentityError::IdMismatch {
        expected: id(ID),
        found: id(intruder),
    }
    .to_string();
    assert!(
        captured.text().contains(&reason),
        "{} lacks {reason:?}",
        captured.text()
    );
    assert_eq!(store.current_serial(), second_serial);

    // An update from a CA the update's own bundle does not hold is refused too.
    let rogue = Ca::root("rogue ca");
    updates.send(response(ID, &rogue.svid(ID), &ca)).unwrap();
    wait_until("second refusal", || {
        captured.text().matches("refused svid rotation").count() == 2
    })
    .await;
    assert_eq!(store.current_serial(), second_serial);
    assert!(
        captured
            .text()
            .contains("chain does not lead to a root in the bundle of trust domain a.test")
    );

    // And a good one after the refusals is taken.
    let third = ca.svid(ID);
    let third_serial = third.svid().serial();
    updates.send(response(ID, &third, &ca)).unwrap();
    wait_until("rotation to the third svid", || {
        store.current_serial() == third_serial
    })
    .await;

    identity.shutdown().await;
}

#[tokio::test]
async fn connect_refuses_an_svid_that_is_not_the_expected_id() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("ca a");
    let (endpoint, _updates) = serve(&dir, response(ID, &ca.svid(ID), &ca)).await;
    let expected = id("spiffe://a.test/gateway");
    let err = WorkloadIdentity::connect(Some(&endpoint), Some(&expected), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::IdMismatch { expected: e, found } if *e == expected && *found == id(ID)),
        "{err}"
    );
}

#[tokio::test]
async fn no_svid_within_the_timeout_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A socket path where nothing listens: the source keeps retrying until the deadline.
    let endpoint = format!("unix://{}", dir.path().join("agent.sock").display());
    let err = WorkloadIdentity::connect(Some(&endpoint), None, Duration::from_millis(300))
        .await
        .unwrap_err();
    // The error says why: the Workload API's answer to one more request.
    assert!(
        matches!(&err, IdentityError::Timeout { endpoint: e, waited, answer }
            if *e == endpoint && *waited == Duration::from_millis(300)
                && answer.ends_with("No such file or directory (os error 2)")),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_endpoints_are_refused_before_connecting() {
    for endpoint in [
        "unix://relative/agent.sock",
        "/run/agent.sock",
        "http://127.0.0.1:1",
    ] {
        let err = WorkloadIdentity::connect(Some(endpoint), None, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::BadEndpoint { .. }),
            "{endpoint}: {err}"
        );
    }
}
