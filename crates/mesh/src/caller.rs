//! The verified caller of an RPC, as handlers see it.

use std::net::SocketAddr;
use std::sync::Arc;

use soma_identity::SpiffeId;
use soma_proto::v1::VerifiedClaims;

/// The mTLS peer of a connection, established by the handshake.
///
/// Inserted into every request's extensions by the runtime, as an
/// `Arc<PeerInfo>` shared by every request of the connection (tonic's
/// connect-info mechanism); never parsed from anything the client sends.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's SPIFFE ID, from its verified X.509-SVID.
    pub spiffe_id: SpiffeId,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
}

/// Who is calling: the mTLS peer, and the tenant claims the gateway verified
/// and signed, if the call carries them.
///
/// Put into request extensions by [`crate::AuthzLayer`] only after the peer
/// was authorized for the method and the claims envelope verified.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The authorized mTLS peer.
    pub peer: Arc<PeerInfo>,
    /// Verified tenant claims, when the gateway forwarded a tenant request.
    pub claims: Option<VerifiedClaims>,
}

impl Caller {
    /// The caller of a request; `None` only if the request did not pass
    /// through the runtime (which never happens for a served method).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Self> {
        request.extensions().get::<Self>()
    }
}
