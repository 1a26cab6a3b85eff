//! SomaStack identity: SPIFFE IDs, X.509-SVIDs, trust bundles, SVID
//! validation, rustls server/client configurations for SPIFFE mutual TLS, and
//! the workload's live SVID (from the Workload API) with safe rotation.
//!
//! What it does not do: authorization. A verified peer SPIFFE ID is handed
//! on ([`peer_spiffe_id`]); deciding what that ID may call belongs to the mesh.
//! It issues no certificates either (that is `soma-ca`).
//!
//! Security-relevant defaults: a peer is accepted only from the local trust
//! domain unless the caller names others; a chain is verified only against
//! the bundle of its leaf's own trust domain, never a pool of bundles; client
//! certificates are mandatory on the server side; the DNS server name is
//! ignored in favour of the URI SAN; every refusal is logged with its reason.

mod bundle;
mod error;
mod spiffe_id;
mod store;
mod svid;
mod tls;
mod validate;
mod workload;

pub use bundle::{Bundle, BundleSet};
pub use error::{IdentityError, SvidError};
pub use spiffe_id::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain};
pub use store::SvidStore;
pub use svid::Svid;
pub use tls::{ExpectedPeer, client_config, log_refused_handshake, peer_went_away, server_config};
pub use validate::{AllowedTrustDomains, PeerRole, peer_spiffe_id, validate_svid};
pub use workload::WorkloadIdentity;
