//! SVID rotation: refused SVIDs leave the current one in place; an accepted
//! one is presented by every new handshake while established connections
//! keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{Ca, LeafSpec, bundles, id, now_secs};
use rustls::pki_types::{CertificateDer, ServerName};
use soma_identity::{
    ExpectedPeer, IdentityError, SvidError, SvidStore, client_config, peer_spiffe_id, server_config,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SERVER_ID: &str = "spiffe://a.test/server";
const CLIENT_ID: &str = "spiffe://a.test/client";

#[test]
fn rotate_refuses_bad_svids_and_keeps_the_current_one() {
    let ca = Ca::root("ca a");
    let unknown = Ca::root("unknown ca");
    let set = || bundles(vec![ca.bundle("a.test")]);
    let first = ca.svid(SERVER_ID).svid();
    let store = SvidStore::new(id(SERVER_ID), first.clone(), set()).unwrap();
    assert_eq!(store.current_serial(), first.serial());

    // Another SPIFFE ID, validly issued.
    let err = store
        .rotate(ca.svid("spiffe://a.test/intruder").svid(), set())
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::IdMismatch { expected, found }
            if *expected == id(SERVER_ID) && *found == id("spiffe://a.test/intruder")),
        "{err}"
    );
    assert_eq!(store.current_serial(), first.serial());

    // The right ID from a CA that is not in the new bundle set.
    let err = store.rotate(unknown.svid(SERVER_ID).svid(), set()).unwrap_err();
    assert!(
        matches!(&err, IdentityError::Svid(SvidError::UnknownIssuer { trust_domain }) if trust_domain.name() == "a.test"),
        "{err}"
    );
    assert_eq!(store.current_serial(), first.serial());

    // The right ID and CA, but expired.
    let mut spec = LeafSpec::svid(SERVER_ID);
    spec.not_before = now_secs() - 7200;
    spec.not_after = now_secs() - 60;
    let err = store.rotate(ca.issue(&spec).svid(), set()).unwrap_err();
    assert!(
        matches!(&err, IdentityError::Svid(SvidError::Expired { .. })),
        "{err}"
    );
    assert_eq!(store.current_serial(), first.serial());
    assert_eq!(store.svid().chain(), first.chain());

    // A valid SVID with a bundle set that no longer holds its CA.
    let err = store
        .rotate(ca.svid(SERVER_ID).svid(), bundles(vec![unknown.bundle("a.test")]))
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Svid(SvidError::UnknownIssuer { .. })),
        "{err}"
    );
    assert_eq!(
        store.bundles().get(&common::td("a.test")).unwrap().roots(),
        std::slice::from_ref(&ca.cert)
    );

    // A valid one is taken, with its bundles.
    let next = ca.svid(SERVER_ID).svid();
    store.rotate(next.clone(), set()).unwrap();
    assert_eq!(store.current_serial(), next.serial());
    assert_ne!(next.serial(), first.serial());

    // The CA itself rotates: the new SVID from the new CA comes with the new bundle.
    let ca2 = Ca::root("ca a next");
    let rotated_ca = ca2.svid(SERVER_ID).svid();
    store
        .rotate(rotated_ca.clone(), bundles(vec![ca2.bundle("a.test")]))
        .unwrap();
    assert_eq!(store.current_serial(), rotated_ca.serial());
}

#[test]
fn new_refuses_an_svid_that_is_not_the_workloads_own() {
    let ca = Ca::root("ca a");
    let err = SvidStore::new(
        id(SERVER_ID),
        ca.svid(CLIENT_ID).svid(),
        bundles(vec![ca.bundle("a.test")]),
    )
    .unwrap_err();
    assert!(matches!(err, IdentityError::IdMismatch { .. }), "{err}");
    let err = SvidStore::new(id(SERVER_ID), ca.svid(SERVER_ID).svid(), bundles(vec![])).unwrap_err();
    assert!(
        matches!(err, IdentityError::Svid(SvidError::NoBundle { .. })),
        "{err}"
    );
}

/// Serves echo connections until the test ends, reporting each client's ID.
async fn echo_server(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let certs = tls.get_ref().1.peer_certificates().unwrap();
                let peer = peer_spiffe_id(certs).unwrap();
                let _ = tx.send((peer.to_string(), serial_of(&certs[0])));
                let mut buf = [0u8; 64];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn echo(tls: &mut TlsStream<TcpStream>, message: &[u8]) {
    tls.write_all(message).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; message.len()];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, message);
}

fn server_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn after_rotation_new_handshakes_present_the_new_svid_and_old_connections_live_on() {
    let ca = Ca::root("ca a");
    let set = || bundles(vec![ca.bundle("a.test")]);
    let server_first = ca.svid(SERVER_ID).svid();
    let server = SvidStore::new(id(SERVER_ID), server_first.clone(), set()).unwrap();
    let client_first = ca.svid(CLIENT_ID).svid();
    let client = SvidStore::new(id(CLIENT_ID), client_first.clone(), set()).unwrap();
    let (addr, mut seen) = echo_server(server_config(Arc::clone(&server)).unwrap()).await;
    let client_tls = client_config(Arc::clone(&client), ExpectedPeer::Exact(id(SERVER_ID))).unwrap();

    let mut before = connect(addr, Arc::clone(&client_tls)).await;
    echo(&mut before, b"before rotation").await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (CLIENT_ID.to_owned(), client_first.serial())
    );
    assert_eq!(server_leaf(&before), server_first.chain()[0]);

    let server_next = ca.svid(SERVER_ID).svid();
    server.rotate(server_next.clone(), set()).unwrap();
    assert_eq!(server.current_serial(), server_next.serial());
    assert_ne!(server_next.serial(), server_first.serial());

    // A new handshake presents the new SVID, with the new serial.
    let mut after = connect(addr, Arc::clone(&client_tls)).await;
    echo(&mut after, b"after rotation").await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (CLIENT_ID.to_owned(), client_first.serial())
    );
    let leaf = server_leaf(&after);
    assert_eq!(leaf, server_next.chain()[0]);
    assert_eq!(serial_of(&leaf), server_next.serial());

    // The connection made before the rotation still carries traffic.
    echo(&mut before, b"still alive after rotation").await;
    assert_eq!(server_leaf(&before), server_first.chain()[0]);

    // The client side rotates too: the server sees the same ID, with the new
    // client serial, on the next handshake.
    let client_next = ca.svid(CLIENT_ID).svid();
    client.rotate(client_next.clone(), set()).unwrap();
    let mut third = connect(addr, Arc::clone(&client_tls)).await;
    echo(&mut third, b"third").await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (CLIENT_ID.to_owned(), client_next.serial())
    );
    assert_ne!(client_next.serial(), client_first.serial());
    echo(&mut before, b"and still alive").await;
}

/// The serial of a DER certificate, as encoded.
fn serial_of(der: &CertificateDer<'_>) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.raw_serial().to_vec()
}
