//! Client channels between services: present the own SVID (the newest one
//! at every handshake), and accept the server only if its SVID verifies and
//! carries the expected SPIFFE ID. DNS names play no part.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use soma_identity::{ExpectedPeer, SpiffeId, SvidStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::error::MeshError;
use crate::settings::PeerAddr;

/// A channel to one SomaStack service over mTLS.
pub type MeshChannel = Channel;

/// A lazily connecting channel to `addr` (`host:port`, resolved at each
/// connect) whose server must be `expected`.
///
/// Every new connection dials TCP, runs the TLS handshake with the client's
/// current SVID, and verifies the server's SVID and SPIFFE ID; an
/// established HTTP/2 connection is reused for every call.
pub fn channel(
    store: Arc<SvidStore>,
    addr: impl Into<PeerAddr>,
    expected: SpiffeId,
) -> Result<MeshChannel, MeshError> {
    let addr: PeerAddr = addr.into();
    let target = format!("{expected} at {addr}");
    let config = soma_identity::client_config(store, ExpectedPeer::Exact(expected)).map_err(|e| {
        MeshError::Channel {
            target: target.clone(),
            reason: e.to_string(),
        }
    })?;
    let connector = TlsConnector::from(config);
    // The URI only names the :authority; the connector below decides where
    // the bytes go and how the peer is authenticated.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| MeshError::Channel {
            target: target.clone(),
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let service = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            // SPIFFE authenticates the server by the URI SAN in its SVID;
            // this name is only sent as SNI.
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
                .to_owned();
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}
