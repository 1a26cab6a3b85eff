//! Errors of the capsule repository, and the one place they become
//! `tonic::Status`.

use soma_sign::SignError;

/// What can go wrong in the capsule repository.
///
/// Every refusal carries a stable machine-readable reason (sent as the
/// `soma-reason` metadata) beside a message that names the field or check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// A request field, the bundle or the run input is malformed, or the
    /// attestation is not of an acceptable shape.
    #[error("{message}")]
    Invalid {
        /// Machine-readable reason, e.g. `bundle_not_canonical`.
        reason: &'static str,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The attestation's signatures, keys or threshold do not admit it, or
    /// the caller may not act on this (its own submission, a reviewer of
    /// another tenant).
    #[error("{message}")]
    Denied {
        /// Machine-readable reason, e.g. `attestation_below_threshold`,
        /// `self_review`.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// The thing asked for does not exist for this caller (another
    /// tenant's is answered the same).
    #[error("{message}")]
    NotFound {
        /// `submission_not_found`, `installation_not_found`,
        /// `capsule_not_installed`.
        reason: &'static str,
        /// Which.
        message: String,
    },
    /// It exists already.
    #[error("{message}")]
    AlreadyExists {
        /// `submission_exists` or `installation_exists`.
        reason: &'static str,
        /// Which.
        message: String,
    },
    /// Well formed, but the state forbids it: an invalid review
    /// transition, a submission not approved, a release missing, revoked
    /// or of another module.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, e.g. `invalid_transition`.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// Another writer moved the row first (optimistic concurrency).
    #[error("{message}")]
    Aborted {
        /// `revision_conflict` or `concurrent_review`.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// A stored row failed its MAC check, or a history chain is broken.
    #[error("row {table}/{key} failed its integrity check")]
    RowIntegrity {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
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
    /// The ToolRegistry could not be asked.
    #[error("tool registry: {0}")]
    Registry(String),
    /// A database error. One that means the connection was lost (see
    /// [`soma_store::is_connection_lost`]) is answered `UNAVAILABLE`
    /// `database_unavailable`: it was retried where that is safe, and the
    /// bound ran out.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// A signing or MAC error.
    #[error("signing")]
    Sign(#[from] SignError),
    /// Configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl RepoError {
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

    /// A `NOT_FOUND` answer.
    pub(crate) fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            reason,
            message: message.into(),
        }
    }

    /// Stable machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { reason, .. }
            | Self::Denied { reason, .. }
            | Self::NotFound { reason, .. }
            | Self::AlreadyExists { reason, .. }
            | Self::FailedPrecondition { reason, .. }
            | Self::Aborted { reason, .. } => reason,
            Self::RowIntegrity { .. } => "row_integrity",
            Self::ClaimsRequired(_) => "claims_required",
            Self::OperatorRequired(_) => "operator_required",
            Self::Unauthenticated => "unauthenticated",
            Self::Registry(_) => "registry_unavailable",
            Self::Database(e) if soma_store::is_connection_lost(e) => "database_unavailable",
            Self::Database(e) if soma_store::is_busy(e) => "database_busy",
            Self::Database(_) | Self::Sign(_) | Self::Config(_) => "internal",
        }
    }

    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Invalid { .. } => Code::InvalidArgument,
            Self::Denied { .. } | Self::ClaimsRequired(_) | Self::OperatorRequired(_) => {
                Code::PermissionDenied
            }
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Aborted { .. } => Code::Aborted,
            Self::RowIntegrity { .. } => Code::DataLoss,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Registry(_) => Code::Unavailable,
            Self::Database(e) if soma_store::is_connection_lost(e) || soma_store::is_busy(e) => {
                Code::Unavailable
            }
            Self::Database(_) | Self::Sign(_) | Self::Config(_) => Code::Internal,
        }
    }
}

impl soma_store::ConnectionLost for RepoError {
    fn is_connection_lost(&self) -> bool {
        matches!(self, Self::Database(e) if soma_store::is_connection_lost(e))
    }
}

impl From<RepoError> for tonic::Status {
    fn from(err: RepoError) -> Self {
        let code = err.code();
        let message = if code == tonic::Code::Internal {
            // Internal causes are logged here, once; the caller gets a safe message.
            tracing::error!(error = ?err, "capsule repository internal error");
            "internal error".to_owned()
        } else if err.reason() == "database_unavailable" {
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
