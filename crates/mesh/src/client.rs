//! Client channels between services: present the own SVID (the newest one
//! at every handshake), and accept the server only if its SVID verifies and
//! carries the expected SPIFFE ID. DNS names play no part. A peer with
//! several instances is reached through [`crate::MeshChannel`], whose
//! channel to each instance is one of these.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use soma_identity::{ExpectedPeer, SpiffeId, SvidStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::MeshError;
use crate::settings::PeerAddr;

/// Dials one peer over mTLS: TCP with `TCP_NODELAY`, then the TLS handshake
/// with the client's current SVID, accepting the server only if its SVID
/// verifies and carries the expected SPIFFE ID.
///
/// The address is resolved at each dial (so a Kubernetes Service name
/// works); the name sent as SNI plays no part in authentication.
#[derive(Clone)]
pub struct MeshConnector {
    connector: TlsConnector,
    addr: PeerAddr,
    expected: SpiffeId,
}

impl MeshConnector {
    /// A connector to `addr` whose server must be `expected`.
    pub fn new(
        store: Arc<SvidStore>,
        addr: impl Into<PeerAddr>,
        expected: SpiffeId,
    ) -> Result<Self, MeshError> {
        let addr: PeerAddr = addr.into();
        let config =
            soma_identity::client_config(store, ExpectedPeer::Exact(expected.clone())).map_err(|e| {
                MeshError::Channel {
                    target: format!("{expected} at {addr}"),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            connector: TlsConnector::from(config),
            addr,
            expected,
        })
    }

    /// Where the peer listens.
    pub fn addr(&self) -> &PeerAddr {
        &self.addr
    }

    /// The SPIFFE ID the peer must present.
    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }

    /// A [`MeshError::Channel`] naming this peer.
    pub fn channel_error(&self, reason: impl std::fmt::Display) -> MeshError {
        MeshError::Channel {
            target: format!("{} at {}", self.expected, self.addr),
            reason: reason.to_string(),
        }
    }

    /// One new authenticated connection.
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr.as_str()).await?;
        tcp.set_nodelay(true)?;
        // SPIFFE authenticates the server by the URI SAN in its SVID; this
        // name is only sent as SNI.
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            .to_owned();
        self.connector.connect(name, tcp).await
    }
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector")
            .field("addr", &self.addr)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// A lazily connecting channel to `addr` (`host:port`, resolved at each
/// connect) whose server must be `expected`.
///
/// Every new connection is dialed by a [`MeshConnector`]; an established
/// HTTP/2 connection is reused for every call.
pub fn channel(
    store: Arc<SvidStore>,
    addr: impl Into<PeerAddr>,
    expected: SpiffeId,
) -> Result<Channel, MeshError> {
    let connector = MeshConnector::new(store, addr, expected)?;
    // The URI only names the :authority; the connector decides where the
    // bytes go and how the peer is authenticated.
    let endpoint = Endpoint::from_shared(format!("http://{}", connector.addr))
        .map_err(|e| connector.channel_error(e))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let service = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(connector.connect().await?)) }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}
