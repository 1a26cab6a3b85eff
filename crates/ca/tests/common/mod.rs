//! Helpers shared by the integration tests: a Workload API served on a real
//! Unix socket in a temp dir, a raw tonic client for it, and certificate
//! checks done by independent code (x509-parser, rustls/webpki).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use soma_ca::{Authority, AuthorityOptions, CaError, Registry, WorkloadApi, WorkloadApiConfig, bind_socket};
use soma_identity::{SpiffeId, TrustDomain};
use soma_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

/// The trust domain every test authority is created for.
pub const TRUST_DOMAIN: &str = "somastack.test";

pub fn trust_domain() -> TrustDomain {
    TrustDomain::parse(TRUST_DOMAIN).unwrap()
}

pub fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::from_parts(&trust_domain(), path).unwrap()
}

/// A Workload API served on a socket in its own temp dir.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub authority: Arc<Authority>,
    pub registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), CaError>>>,
}

impl TestServer {
    pub async fn start(svid_ttl: Duration) -> Self {
        Self::start_with(svid_ttl, AuthorityOptions::default()).await
    }

    /// A server whose authority has `options` (its root lifetime).
    pub async fn start_with(svid_ttl: Duration, options: AuthorityOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let authority =
            Arc::new(Authority::open_or_create_with(dir.path(), &trust_domain(), options).unwrap());
        let registry = Registry::new();
        let socket = dir.path().join("run").join("workload.sock");
        let listener = bind_socket(&socket).unwrap();
        let api = WorkloadApi::new(
            Arc::clone(&authority),
            registry.clone(),
            WorkloadApiConfig { svid_ttl },
        );
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(api.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            dir,
            socket,
            authority,
            registry,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// `unix:///abs/path`, the endpoint form SPIFFE clients take.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Signals shutdown and returns what `serve` returned.
    pub async fn stop(&mut self) -> Result<(), CaError> {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).unwrap();
        }
        let handle = self.handle.take().expect("stopped twice");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
    }
}

/// A raw tonic client over the server's Unix socket.
pub async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let path = socket.to_owned();
    // The URI is required by the Endpoint type but never dialled: the
    // connector opens the Unix socket instead.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

/// A request carrying `workload.spiffe.io: true`.
pub fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", MetadataValue::from_static("true"));
    request
}

/// A JWT-SVID for `audience` from `client` (the caller's own identity).
pub async fn jwt_svid(client: &mut SpiffeWorkloadApiClient<Channel>, audience: &str) -> String {
    client
        .fetch_jwtsvid(with_header(soma_proto::workload::JwtsvidRequest {
            audience: vec![audience.to_owned()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid
}

/// The certificates of a DER concatenation (the Workload API format).
pub fn split_der(mut concatenated: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !concatenated.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(concatenated).unwrap();
        let len = concatenated.len() - rest.len();
        out.push(concatenated[..len].to_vec());
        concatenated = rest;
    }
    out
}

/// Verifies `leaf` against `root` as a TLS client certificate, with webpki
/// (signature, validity, CA constraints, clientAuth EKU).
pub fn verify_as_client(root: &[u8], leaf: &[u8]) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&CertificateDer::from(leaf.to_vec()), &[], UnixTime::now())
        .map(|_| ())
}

/// Verifies `leaf` against `root` as a TLS server certificate for `name`
/// (a DNS name or an IP address), as a non-SPIFFE gRPC client would.
pub fn verify_as_server(root: &[u8], leaf: &[u8], name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}
