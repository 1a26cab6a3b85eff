//! The verified caller of an RPC, as handlers see it.

use std::net::SocketAddr;
use std::sync::Arc;

use soma_identity::SpiffeId;
use soma_proto::v1::VerifiedClaims;

/// The SPIFFE ID paths of operators (`spiffe://TD/operator/<name>`), as a
/// policy pattern.
pub const OPERATOR_PATH_PATTERN: &str = "/operator/*";

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

    /// Whether this caller is an operator principal: either an operator
    /// SVID (path under `/operator/`) calling with no tenant claims, or
    /// claims that the gateway sealed with `operator` set (a token of an
    /// operator issuer). A peer that forwards claims speaks for those claims
    /// only, so its own SPIFFE ID never makes a tenant's request an
    /// operator's.
    pub fn is_operator(&self) -> bool {
        match &self.claims {
            Some(claims) => claims.operator,
            None => soma_proto::pattern_matches(OPERATOR_PATH_PATTERN, self.peer.spiffe_id.path()),
        }
    }
}
