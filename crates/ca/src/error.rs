//! The one error type of the crate.

use std::path::PathBuf;

use soma_identity::{SpiffeId, TrustDomain};

/// Everything that can go wrong while opening the authority, issuing an SVID
/// or serving the Workload API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file or directory could not be read, written, created or removed.
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The persisted root (certificate or key) is not what this authority writes.
    #[error("invalid ca root in {path}: {reason}")]
    InvalidRoot {
        /// The file that was refused.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// An activation was asked for, but no slot is prepared.
    #[error("no prepared root beside {path}: run `soma ca prepare` first")]
    NothingPrepared {
        /// The active root.
        path: PathBuf,
    },

    /// A preparation was asked for, but a slot is prepared already.
    #[error("a root is prepared already (serial {serial}): activate it first")]
    AlreadyPrepared {
        /// Its serial, lowercase hex.
        serial: String,
    },

    /// The persisted root certificate has expired: the directory must be
    /// cleared so that a new root is created.
    #[error("ca root in {path} expired; `soma up` or `soma ca init` replaces it")]
    RootExpired {
        /// The root certificate file.
        path: PathBuf,
    },
    /// The directory holds the root of another trust domain.
    #[error("ca root in {path} belongs to trust domain {found}, not {expected}")]
    TrustDomainMismatch {
        /// The trust domain that was asked for.
        expected: TrustDomain,
        /// The trust domain of the persisted root.
        found: String,
        /// The root certificate file.
        path: PathBuf,
    },
    /// An SVID was asked for an identity outside the authority's trust domain.
    #[error("{id} is not in trust domain {trust_domain}")]
    ForeignIdentity {
        /// The identity that was asked for.
        id: SpiffeId,
        /// The authority's trust domain.
        trust_domain: TrustDomain,
    },
    /// An SVID was asked for the trust domain itself (an ID with no path),
    /// which the X509-SVID specification forbids for leaf certificates.
    #[error("{id} has no path; a leaf svid must name a workload")]
    TrustDomainIdentity {
        /// The identity that was asked for.
        id: SpiffeId,
    },
    /// A lifetime of zero, or one that does not fit in a certificate.
    #[error("invalid lifetime: {reason}")]
    InvalidTtl {
        /// Why the lifetime was refused.
        reason: &'static str,
    },
    /// Key generation, certificate encoding or signing failed.
    #[error("cannot {action}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The socket path is already served by a live process.
    #[error("socket {path} is in use by a running server")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket path exists and is not a socket; it is left alone.
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The registration entries file is not what this authority writes.
    #[error("invalid registration entries in {path}: {reason}")]
    InvalidEntries {
        /// The entries file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A JWT-SVID was refused by validation.
    #[error("invalid jwt-svid: {reason}")]
    InvalidJwtSvid {
        /// Why it was refused.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("workload api server failed")]
    Serve(#[source] tonic::transport::Error),
}

impl CaError {
    /// Builds an [`CaError::Io`] for `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { action, path, source }
    }
}
