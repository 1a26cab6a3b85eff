//! Errors of the tool registry, and the one place they become
//! `tonic::Status`.

use soma_sign::SignError;
use soma_store::ConnectionLost;

/// What can go wrong in the tool registry.
///
/// Every refusal carries a stable machine-readable reason (sent as the
/// `soma-reason` metadata) beside a message that names the field or check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A request field, the manifest, the envelope or the module is
    /// malformed.
    #[error("{message}")]
    Invalid {
        /// Machine-readable reason, e.g. `manifest_duplicate_key`.
        reason: &'static str,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The release's signature or its publisher key is not acceptable.
    #[error("{message}")]
    Signature {
        /// `publisher_unknown`, `publisher_retired` or `signature_invalid`.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// The caller may not act on this (another tenant's tool).
    #[error("{message}")]
    Denied {
        /// Machine-readable reason, e.g. `tool_owned_by_another_tenant`.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The version exists with other bytes, or the key is registered.
    #[error("{message}")]
    AlreadyExists {
        /// `version_exists` or `publisher_key_exists`.
        reason: &'static str,
        /// Which.
        message: String,
    },
    /// The request is well formed but the registry's state forbids it: a
    /// version not above the tool's highest, a revoked release, a retired
    /// key retired again.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, e.g. `version_not_greater`.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// A stored release failed verification: it is never compiled nor run.
    #[error("release {release} failed verification: {}", failures.join(", "))]
    Unverified {
        /// `tool@version`.
        release: String,
        /// The names of the checks that failed.
        failures: Vec<String>,
    },
    /// A stored row failed its MAC check.
    #[error("row {table}/{key} failed its integrity check")]
    RowIntegrity {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
    },
    /// The adapter failed in the sandbox (fuel, deadline, memory, trap,
    /// output).
    #[error("the adapter failed: {message}")]
    Execution {
        /// The sandbox's reason, e.g. `fuel_exhausted`.
        reason: &'static str,
        /// What happened, with the limit and the measured value.
        message: String,
    },
    /// The call carries no tenant claims where a tenant is required.
    #[error("{0}")]
    ClaimsRequired(String),
    /// The caller is not an operator.
    #[error("{0}")]
    OperatorRequired(String),
    /// The request carries no verified caller (the mesh did not admit it).
    #[error("no verified caller")]
    Unauthenticated,
    /// Too many executions are running.
    #[error("the sandbox is busy: {0}")]
    Busy(String),
    /// A database error. One that means the connection was lost (see
    /// [`soma_store::is_connection_lost`]) is answered `UNAVAILABLE`
    /// `database_unavailable`: it was retried where that is safe, and the
    /// bound ran out. SQLite's writer lock held by others for longer than
    /// the busy timeout ([`soma_store::is_busy`]) is `UNAVAILABLE`
    /// `database_busy`: the statement had no effect.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// A signing or MAC error.
    #[error("signing")]
    Sign(#[from] SignError),
    /// The sandbox could not be set up.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// Configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A task running an execution failed.
    #[error("execution task: {0}")]
    Task(String),
}

impl RegistryError {
    /// An `INVALID_ARGUMENT` refusal.
    pub(crate) fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            reason,
            message: message.into(),
        }
    }

    /// A `FAILED_PRECONDITION` refusal.
    pub(crate) fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    /// Stable machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { reason, .. }
            | Self::Signature { reason, .. }
            | Self::AlreadyExists { reason, .. }
            | Self::FailedPrecondition { reason, .. }
            | Self::Denied { reason, .. }
            | Self::Execution { reason, .. } => reason,
            Self::NotFound(_) => "not_found",
            Self::Unverified { .. } => "release_unverified",
            Self::RowIntegrity { .. } => "row_integrity",
            Self::ClaimsRequired(_) => "claims_required",
            Self::OperatorRequired(_) => "operator_required",
            Self::Unauthenticated => "unauthenticated",
            Self::Busy(_) => "sandbox_busy",
            _ if self.database_unavailable() => "database_unavailable",
            Self::Database(e) if soma_store::is_busy(e) => "database_busy",
            Self::Database(_) | Self::Sign(_) | Self::Sandbox(_) | Self::Config(_) | Self::Task(_) => {
                "internal"
            }
        }
    }

    /// The database is out of reach: its connection was lost, and the
    /// retry, where one is safe, ran out.
    fn database_unavailable(&self) -> bool {
        matches!(self, Self::Database(e) if soma_store::is_connection_lost(e))
    }

    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Invalid { .. } => Code::InvalidArgument,
            Self::Signature { .. }
            | Self::Denied { .. }
            | Self::ClaimsRequired(_)
            | Self::OperatorRequired(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } | Self::Unverified { .. } => Code::FailedPrecondition,
            Self::RowIntegrity { .. } => Code::DataLoss,
            // A budget of the manifest ran out (fuel, memory, its deadline:
            // not the RPC's own deadline), or the adapter failed (a trap, a
            // bad output): the adapter's doing, never the server's.
            Self::Execution { reason, .. } => match *reason {
                "fuel_exhausted"
                | "memory_limit_exceeded"
                | "output_too_large"
                | "deadline_exceeded"
                | "stack_overflow" => Code::ResourceExhausted,
                "input_too_large" | "input_not_utf8" => Code::InvalidArgument,
                "sandbox_busy" => Code::Unavailable,
                _ => Code::Aborted,
            },
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Busy(_) => Code::ResourceExhausted,
            _ if self.database_unavailable() => Code::Unavailable,
            Self::Database(e) if soma_store::is_busy(e) => Code::Unavailable,
            Self::Database(_) | Self::Sign(_) | Self::Sandbox(_) | Self::Config(_) | Self::Task(_) => {
                Code::Internal
            }
        }
    }
}

impl ConnectionLost for RegistryError {
    fn is_connection_lost(&self) -> bool {
        match self {
            Self::Database(e) => e.is_connection_lost(),
            _ => false,
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        let code = err.code();
        let message = if code == tonic::Code::Internal {
            // Internal causes are logged here, once; the caller gets a safe message.
            tracing::error!(error = ?err, "tool registry internal error");
            "internal error".to_owned()
        } else if err.database_unavailable() {
            tracing::warn!(reason = err.reason(), error = ?err, "database unavailable");
            "the database is unavailable; the request may be sent again".to_owned()
        } else if err.reason() == "database_busy" {
            tracing::warn!(reason = err.reason(), error = ?err, "database busy");
            "the database is busy; nothing was written, the request may be sent again".to_owned()
        } else {
            tracing::warn!(reason = err.reason(), "{err}");
            err.to_string()
        };
        let mut status = Self::new(code, message);
        if let Ok(value) = err.reason().parse() {
            status.metadata_mut().insert(soma_mesh::REASON_METADATA, value);
        }
        status
    }
}
