//! Real TLS over TCP on 127.0.0.1 with tokio-rustls, using this crate's
//! `server_config` / `client_config`. Hostile clients are plain rustls
//! clients presenting the hostile chains; every refusal is asserted on the
//! side that refuses, by the reason in its handshake error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{Ca, KeyUsageSpec, Leaf, LeafSpec, bundles, id, now_secs};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use soma_identity::{
    ExpectedPeer, SpiffeId, SvidError, SvidStore, client_config, log_refused_handshake, peer_spiffe_id,
    server_config,
};
use soma_testing::CapturedLog;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SERVER_ID: &str = "spiffe://a.test/server";
const CLIENT_ID: &str = "spiffe://a.test/client";

/// Accepts one connection; on success returns the client's SPIFFE ID after
/// echoing four bytes, on failure the server-side handshake error.
async fn serve_once(config: Arc<rustls::ServerConfig>) -> (SocketAddr, JoinHandle<Result<SpiffeId, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let (_, conn) = tls.get_ref();
                assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
                let peer = peer_spiffe_id(conn.peer_certificates().unwrap()).map_err(|e| e.to_string())?;
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                tls.write_all(&buf).await.map_err(|e| e.to_string())?;
                tls.flush().await.map_err(|e| e.to_string())?;
                Ok(peer)
            }
            Err(err) => {
                log_refused_handshake(&err);
                Err(err.to_string())
            }
        }
    });
    (addr, handle)
}

/// Connects with `config` and exchanges four bytes.
async fn talk(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// A plain rustls client trusting `server_ca` for `localhost`, presenting
/// `client` (or no certificate).
fn plain_client(
    server_ca: &Ca,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.cert.clone()).unwrap();
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                leaf.chain(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

struct Pki {
    ca_a: Ca,
    ca_b: Ca,
    server: Arc<SvidStore>,
}

fn pki() -> Pki {
    let ca_a = Ca::root("ca a");
    let ca_b = Ca::root("ca b");
    let set = bundles(vec![ca_a.bundle("a.test"), ca_b.bundle("b.test")]);
    let server = SvidStore::new(id(SERVER_ID), ca_a.svid(SERVER_ID).svid(), set).unwrap();
    Pki { ca_a, ca_b, server }
}

#[tokio::test]
async fn a_valid_client_connects_and_the_server_sees_its_spiffe_id() {
    let pki = pki();
    let client = SvidStore::new(
        id(CLIENT_ID),
        pki.ca_a.svid(CLIENT_ID).svid(),
        bundles(vec![pki.ca_a.bundle("a.test")]),
    )
    .unwrap();

    for expected in [
        ExpectedPeer::Exact(id(SERVER_ID)),
        ExpectedPeer::AnyOf(vec![id("spiffe://a.test/elsewhere"), id(SERVER_ID)]),
        ExpectedPeer::AnyInTrustDomain,
    ] {
        let (addr, server) = serve_once(server_config(Arc::clone(&pki.server)).unwrap()).await;
        talk(
            addr,
            client_config(Arc::clone(&client), expected.clone()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(server.await.unwrap(), Ok(id(CLIENT_ID)), "{expected:?}");
    }
}

#[tokio::test]
async fn tls12_and_tls13_are_both_served() {
    let pki = pki();
    let leaf = pki.ca_a.svid(CLIENT_ID);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (addr, server) = serve_once(server_config(Arc::clone(&pki.server)).unwrap()).await;
        talk(addr, plain_client(&pki.ca_a, Some(&leaf), &[version]))
            .await
            .unwrap();
        assert_eq!(server.await.unwrap(), Ok(id(CLIENT_ID)), "{version:?}");
    }
}

/// The verifiers put the `SvidError` itself inside the rustls error
/// (`CertificateError::Other`), which rustls prints with `Debug`.
trait DebugString {
    fn debug(&self) -> String;
}

impl DebugString for SvidError {
    fn debug(&self) -> String {
        format!("{self:?}")
    }
}

struct Case {
    name: &'static str,
    client: Option<Leaf>,
    expected: String,
}

#[tokio::test]
async fn hostile_clients_are_refused_in_the_handshake_with_the_reason() {
    let pki = pki();
    let now = now_secs();
    let rogue = Ca::root("rogue ca");
    let spec = |f: &dyn Fn(&mut LeafSpec)| {
        let mut spec = LeafSpec::svid(CLIENT_ID);
        f(&mut spec);
        spec
    };
    let cases = vec![
        Case {
            name: "no client certificate",
            client: None,
            expected: "peer sent no certificates".into(),
        },
        Case {
            name: "chain to another ca",
            client: Some(rogue.svid(CLIENT_ID)),
            expected: SvidError::UnknownIssuer {
                trust_domain: common::td("a.test"),
            }
            .debug(),
        },
        Case {
            name: "expired svid",
            client: Some(pki.ca_a.issue(&spec(&|s| {
                s.not_before = now - 7200;
                s.not_after = now - 60;
            }))),
            expected: format!("Expired {{ not_after: {}, now: ", now - 60),
        },
        Case {
            name: "two uri sans",
            client: Some(
                pki.ca_a
                    .issue(&spec(&|s| s.uris.push("spiffe://a.test/other".into()))),
            ),
            expected: SvidError::MultipleUriSans { count: 2 }.debug(),
        },
        Case {
            name: "ca certificate as leaf",
            client: Some(pki.ca_a.issue(&spec(&|s| s.is_ca = true))),
            expected: SvidError::LeafIsCa.debug(),
        },
        Case {
            name: "leaf without digitalSignature",
            client: Some(
                pki.ca_a
                    .issue(&spec(&|s| s.key_usage = KeyUsageSpec::NoDigitalSignature)),
            ),
            expected: SvidError::MissingDigitalSignature.debug(),
        },
        Case {
            name: "svid from another trust domain",
            client: Some(pki.ca_b.svid("spiffe://b.test/client")),
            expected: SvidError::TrustDomainNotAllowed {
                trust_domain: common::td("b.test"),
            }
            .debug(),
        },
        Case {
            name: "svid of another trust domain from this trust domain's ca",
            client: Some(pki.ca_a.svid("spiffe://b.test/client")),
            expected: SvidError::TrustDomainNotAllowed {
                trust_domain: common::td("b.test"),
            }
            .debug(),
        },
    ];

    for case in cases {
        let (addr, server) = serve_once(server_config(Arc::clone(&pki.server)).unwrap()).await;
        // In TLS 1.3 the client may finish its side before the server's
        // verdict arrives; the refusal is asserted where it is decided.
        let _client_side = talk(
            addr,
            plain_client(&pki.ca_a, case.client.as_ref(), rustls::DEFAULT_VERSIONS),
        )
        .await;
        let server_side = server.await.unwrap();
        match server_side {
            Ok(peer) => panic!("case {:?}: accepted as {peer}", case.name),
            Err(err) => assert!(
                err.contains(&case.expected),
                "case {:?}: {err:?} lacks {:?}",
                case.name,
                case.expected
            ),
        }
    }
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_not_the_expected_peer() {
    let pki = pki();
    let client = SvidStore::new(
        id(CLIENT_ID),
        pki.ca_a.svid(CLIENT_ID).svid(),
        bundles(vec![pki.ca_a.bundle("a.test"), pki.ca_b.bundle("b.test")]),
    )
    .unwrap();

    // A valid SVID of the right trust domain, but another workload.
    let (addr, _server) = serve_once(server_config(Arc::clone(&pki.server)).unwrap()).await;
    let err = talk(
        addr,
        client_config(
            Arc::clone(&client),
            ExpectedPeer::Exact(id("spiffe://a.test/gateway")),
        )
        .unwrap(),
    )
    .await
    .unwrap_err();
    let reason = SvidError::UnexpectedPeer { id: id(SERVER_ID) }.debug();
    assert!(err.contains(&reason), "{err:?} lacks {reason:?}");

    let (addr, _server) = serve_once(server_config(Arc::clone(&pki.server)).unwrap()).await;
    let err = talk(
        addr,
        client_config(
            Arc::clone(&client),
            ExpectedPeer::AnyOf(vec![id("spiffe://a.test/x")]),
        )
        .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.contains(&reason), "{err:?} lacks {reason:?}");

    // A server claiming an ID of trust domain b with a certificate from a's
    // CA: b's bundle holds another CA, and bundles are never pooled.
    let impostor_id = "spiffe://b.test/server";
    let impostor = SvidStore::new(
        id(impostor_id),
        pki.ca_a.svid(impostor_id).svid(),
        bundles(vec![pki.ca_a.bundle("a.test"), pki.ca_a.bundle("b.test")]),
    )
    .unwrap();
    let (addr, _server) = serve_once(server_config(impostor).unwrap()).await;
    let err = talk(
        addr,
        client_config(Arc::clone(&client), ExpectedPeer::Exact(id(impostor_id))).unwrap(),
    )
    .await
    .unwrap_err();
    let reason = SvidError::UnknownIssuer {
        trust_domain: common::td("b.test"),
    }
    .debug();
    assert!(err.contains(&reason), "{err:?} lacks {reason:?}");
}

// A current-thread runtime: the server task runs on this thread, under the
// thread's capturing subscriber.
#[tokio::test(flavor = "current_thread")]
async fn each_refusal_is_logged_once_with_its_reason() {
    let captured = CapturedLog::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = pki();
    let mut ca_leaf = LeafSpec::svid(CLIENT_ID);
    ca_leaf.is_ca = true;
    let cases = [
        (Some(pki.ca_a.issue(&ca_leaf)), SvidError::LeafIsCa.to_string()),
        (None, "peer presented no certificate".to_owned()),
    ];
    for (client, reason) in cases {
        let (addr, server) = serve_once(server_config(Arc::clone(&pki.server)).unwrap()).await;
        let _client_side = talk(
            addr,
            plain_client(&pki.ca_a, client.as_ref(), rustls::DEFAULT_VERSIONS),
        )
        .await;
        assert!(server.await.unwrap().is_err());
        let logs = captured.take();
        assert_eq!(logs.matches("refused peer svid").count(), 1, "{logs}");
        assert!(
            logs.contains(&format!("reason={reason}")),
            "{logs} lacks {reason:?}"
        );
    }
}
