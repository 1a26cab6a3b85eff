//! Errors of the mesh runtime.

use std::net::SocketAddr;

/// What went wrong while building or running a service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// A listener could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the identity.
    #[error("tls configuration")]
    Tls(#[source] soma_identity::IdentityError),
    /// The method policies could not be read from the descriptor set.
    #[error("method policies")]
    Policy(#[source] soma_proto::PolicyError),
    /// Server reflection could not be built from the descriptor set.
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("grpc server")]
    Transport(#[source] tonic::transport::Error),
    /// The admin listener failed.
    #[error("admin listener")]
    Admin(#[source] std::io::Error),
    /// A client channel could not be built.
    #[error("client channel to {target}: {reason}")]
    Channel {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
}
