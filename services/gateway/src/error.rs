//! The gateway's errors: configuration (exit 64 in the binary) and the
//! runtime failures of its own store.

use std::path::PathBuf;

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
    /// A database operation failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row holds a value the gateway never writes.
    #[error("corrupt kill switch row: {0}")]
    CorruptRow(String),
}
