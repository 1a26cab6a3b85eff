//! The gateway's errors: configuration (exit 64 in the binary), assembly,
//! and the runtime failures of its own store — and the one place such a
//! failure becomes a caller's answer (a [`Refusal`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::refusal::Refusal;

/// Why the gateway's settings are unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayConfigError {
    /// The config file could not be read.
    #[error("cannot read gateway config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("gateway config {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A setting has an invalid value.
    #[error("setting {key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// A failure of the gateway's own state (kill switches, audit).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A database operation failed. One that means the connection was lost
    /// (see [`soma_store::is_connection_lost`]) was retried where that is
    /// safe, and the bound ran out.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A storage error of `soma-store`: a kill switch change whose commit
    /// lost its connection, so that whether it was stored is unknown.
    #[error("database: {0}")]
    Store(#[from] soma_store::StoreError),
    /// A stored row holds a value the gateway never writes.
    #[error("corrupt kill switch row: {0}")]
    CorruptRow(String),
}

impl GatewayError {
    /// The database is out of reach: its connection was lost (and the
    /// retry, where one is safe, ran out), or a commit's outcome is unknown.
    pub fn database_unavailable(&self) -> bool {
        match self {
            Self::Database(e) => soma_store::is_connection_lost(e),
            Self::Store(soma_store::StoreError::CommitOutcomeUnknown { .. }) => true,
            Self::Store(e) => soma_store::ConnectionLost::is_connection_lost(e),
            Self::CorruptRow(_) => false,
        }
    }

    /// SQLite's writer lock was held by another connection past the busy
    /// timeout (see [`soma_store::is_busy`]): the statement had no effect.
    pub fn database_busy(&self) -> bool {
        matches!(self, Self::Database(e) if soma_store::is_busy(e))
    }
}

impl soma_store::ConnectionLost for GatewayError {
    fn is_connection_lost(&self) -> bool {
        match self {
            Self::Database(e) => soma_store::is_connection_lost(e),
            Self::Store(e) => e.is_connection_lost(),
            Self::CorruptRow(_) => false,
        }
    }
}

impl From<GatewayError> for Refusal {
    /// The kill switch store failed a change: the cause is logged here,
    /// once; the caller gets `UNAVAILABLE` and a safe message — with the
    /// reason `database_unavailable` when the database was out of reach
    /// (the change may be sent again: setting a switch to the state it has
    /// is harmless), and `database_busy` when SQLite's one writer lock was
    /// held elsewhere past the busy timeout (nothing was written; the same).
    fn from(e: GatewayError) -> Self {
        tracing::error!(error = %e, "kill switch not stored");
        if e.database_unavailable() {
            Self::new(
                tonic::Code::Unavailable,
                "database_unavailable",
                "the kill switch could not be stored: the database is unavailable; the change may be sent again",
            )
        } else if e.database_busy() {
            Self::new(
                tonic::Code::Unavailable,
                "database_busy",
                "the kill switch could not be stored: the database is busy and nothing was written; the change may be sent again",
            )
        } else {
            Self::without_reason(tonic::Code::Unavailable, "the kill switch could not be stored")
        }
    }
}

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A token issuer's keys could not be loaded.
    #[error("token issuers: {0}")]
    Jwt(String),
    /// The moderation policy file is unusable.
    #[error("moderation policy: {0}")]
    Moderation(String),
    /// The route table could not be built from the descriptors.
    #[error("routes: {0}")]
    Routes(String),
    /// The kill switches could not be read.
    #[error("kill switches: {0}")]
    KillSwitches(#[from] GatewayError),
    /// A backend channel could not be made.
    #[error("backends: {0}")]
    Mesh(#[from] soma_mesh::MeshError),
    /// The edge's certificate or key is unusable.
    #[error("edge TLS: {0}")]
    Tls(String),
    /// The edge listener could not be bound.
    #[error("cannot bind the edge on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
