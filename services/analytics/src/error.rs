//! Errors of the Analytics service, and the one place they become
//! `tonic::Status`.

use soma_ledger::LedgerError;
use soma_sign::SignError;

/// What can go wrong in Analytics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyticsError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the proto.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The caller may not act on this tenant's data.
    #[error("{0}")]
    PermissionDenied(String),
    /// The action reaches beyond the caller's tenant and the caller is not
    /// an operator; no tenant scope makes it one.
    #[error("{0}")]
    OperatorRequired(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An event id was reused for different content.
    #[error("event {event_id} was already recorded with different content")]
    EventIdConflict {
        /// The event id.
        event_id: String,
    },
    /// The ledger failed its integrity check; writes are refused.
    #[error("ledger integrity check failed at index {first_bad_index}: {reason}")]
    LedgerCorrupt {
        /// The first index found bad.
        first_bad_index: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A stored row failed its MAC check.
    #[error("row {table}/{primary_key} failed its integrity check")]
    RowIntegrity {
        /// The table.
        table: &'static str,
        /// The row's primary key.
        primary_key: String,
    },
    /// A stored row at a ledger index failed its integrity check.
    #[error("row {table}/{primary_key} at ledger index {index} failed its integrity check")]
    RowIntegrityAt {
        /// The table.
        table: &'static str,
        /// The row's key (within its tenant).
        primary_key: String,
        /// The ledger index the row claims.
        index: i64,
    },
    /// A leaf of the ledger lacks its intact row where it should have it:
    /// the row was deleted, or moved to another index, tenant or time.
    #[error("ledger index {index}: {detail}")]
    LedgerRowMissing {
        /// The leaf's index.
        index: u64,
        /// What is missing.
        detail: String,
    },
    /// A stored leaf row, or a row's claim on a leaf, is not what the
    /// ledger appended: a leaf row deleted or rewritten, a row copied to
    /// another index.
    #[error("ledger index {index}: {detail}")]
    LedgerLeafMismatch {
        /// The index at stake.
        index: u64,
        /// What does not match.
        detail: String,
    },
    /// The ledger writer is gone (shutting down), or its commit failed
    /// with its session (nothing is acknowledged; a retry with the same
    /// event id is answered with the stored record if it was committed).
    #[error("the ledger writer is not running")]
    WriterStopped,
    /// This instance stands by: another Analytics instance holds the ledger
    /// writer's lease. Nothing was written.
    #[error("this Analytics instance is a standby: another instance holds the ledger writer's lease")]
    Standby,
    /// The ledger writer's commit failed because its database connection
    /// was lost (a failover, a restart, a terminated backend): the writer
    /// gives its lease up and asks for it again on a new session. Whether
    /// the batch committed is unknown; appends are idempotent by event id,
    /// so it is sent again ([`crate::ledger::Ledger::append`]).
    #[error("the ledger writer lost its database connection")]
    WriterConnectionLost,
    /// SQLite's one writer lock was held by another connection past the
    /// busy timeout (see [`soma_store::is_busy`]) when the ledger writer
    /// committed a batch: the batch's transaction was rolled back, nothing
    /// of it was written, and the append may be sent again. Answered
    /// `UNAVAILABLE` `database_busy`, as a busy [`Self::Database`] error is.
    #[error("the database is busy; nothing was written")]
    WriterBusy,
    /// A database error. One that means the connection was lost (see
    /// [`soma_store::is_connection_lost`]) is answered `UNAVAILABLE`
    /// `database_unavailable`: it was retried where that is safe, and the
    /// bound ran out. One that means SQLite's writer lock was held past the
    /// busy timeout ([`soma_store::is_busy`]: the statement had no effect)
    /// is `UNAVAILABLE` `database_busy`.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// A Merkle ledger error.
    #[error("ledger")]
    Ledger(#[from] LedgerError),
    /// A signing or MAC error.
    #[error("signing")]
    Sign(#[from] SignError),
    /// Configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A persona regression cannot move from its current state to the one asked for.
    #[error("regression {regression_id} is in state {current}: {current} -> {to} is not allowed")]
    IllegalTransition {
        /// The regression.
        regression_id: String,
        /// Its current state.
        current: &'static str,
        /// The state asked for.
        to: &'static str,
    },
    /// The caller's expected state or version of a regression is not the stored one.
    #[error("regression {regression_id} is in state {state} at version {version}")]
    StaleRegression {
        /// The regression.
        regression_id: String,
        /// Its current state.
        state: &'static str,
        /// Its current version.
        version: u64,
    },
    /// The request carries no verified caller (the mesh did not admit it).
    #[error("no verified caller")]
    Unauthenticated,
}

impl AnalyticsError {
    /// Stable machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::PermissionDenied(_) => "tenant_denied",
            Self::OperatorRequired(_) => "operator_required",
            Self::NotFound(_) => "not_found",
            Self::EventIdConflict { .. } => "event_id_conflict",
            Self::LedgerCorrupt { .. } => "ledger_integrity",
            Self::RowIntegrity { .. } | Self::RowIntegrityAt { .. } => "row_integrity",
            Self::LedgerRowMissing { .. } => "ledger_row_missing",
            Self::LedgerLeafMismatch { .. } => "ledger_leaf_mismatch",
            Self::WriterStopped => "unavailable",
            Self::Standby => crate::ledger::STANDBY,
            Self::IllegalTransition { .. } => "illegal_transition",
            Self::StaleRegression { .. } => "stale_version",
            Self::Unauthenticated => "unauthenticated",
            Self::Database(e) if soma_store::is_connection_lost(e) => "database_unavailable",
            Self::WriterConnectionLost => "database_unavailable",
            Self::Database(_) if self.database_busy() => "database_busy",
            Self::WriterBusy => "database_busy",
            Self::Database(_) | Self::Ledger(_) | Self::Sign(_) | Self::Config(_) => "internal",
        }
    }
}

impl AnalyticsError {
    /// Whether SQLite's writer lock, held by another connection past the
    /// busy timeout, refused the write ([`soma_store::is_busy`]): nothing
    /// was written, and the request may be sent again.
    pub(crate) fn database_busy(&self) -> bool {
        match self {
            Self::Database(e) => soma_store::is_busy(e),
            Self::WriterBusy => true,
            _ => false,
        }
    }
}

impl soma_store::ConnectionLost for AnalyticsError {
    fn is_connection_lost(&self) -> bool {
        match self {
            Self::Database(e) => soma_store::is_connection_lost(e),
            Self::WriterConnectionLost => true,
            _ => false,
        }
    }
}

impl From<AnalyticsError> for tonic::Status {
    fn from(err: AnalyticsError) -> Self {
        use tonic::Code;
        let code = match &err {
            AnalyticsError::InvalidArgument { .. } => Code::InvalidArgument,
            AnalyticsError::PermissionDenied(_) | AnalyticsError::OperatorRequired(_) => {
                Code::PermissionDenied
            }
            AnalyticsError::NotFound(_) => Code::NotFound,
            AnalyticsError::EventIdConflict { .. } => Code::AlreadyExists,
            AnalyticsError::LedgerCorrupt { .. } => Code::FailedPrecondition,
            AnalyticsError::RowIntegrity { .. }
            | AnalyticsError::RowIntegrityAt { .. }
            | AnalyticsError::LedgerRowMissing { .. }
            | AnalyticsError::LedgerLeafMismatch { .. } => Code::DataLoss,
            AnalyticsError::WriterStopped
            | AnalyticsError::Standby
            | AnalyticsError::WriterConnectionLost
            | AnalyticsError::WriterBusy => Code::Unavailable,
            AnalyticsError::IllegalTransition { .. } => Code::FailedPrecondition,
            AnalyticsError::StaleRegression { .. } => Code::Aborted,
            AnalyticsError::Unauthenticated => Code::Unauthenticated,
            AnalyticsError::Database(e) if soma_store::is_connection_lost(e) => Code::Unavailable,
            AnalyticsError::Database(_) if err.database_busy() => Code::Unavailable,
            AnalyticsError::Database(_)
            | AnalyticsError::Ledger(_)
            | AnalyticsError::Sign(_)
            | AnalyticsError::Config(_) => Code::Internal,
        };
        let message = if code == Code::Internal {
            // Internal causes are logged here, once; the caller gets a safe message.
            tracing::error!(error = ?err, "analytics internal error");
            "internal error".to_owned()
        } else if err.database_busy() {
            tracing::warn!(reason = err.reason(), error = ?err, "database busy");
            "the database is busy; nothing was written, the request may be sent again".to_owned()
        } else if matches!(&err, AnalyticsError::Database(_)) {
            // A lost connection that outlived the retry, where one is safe.
            tracing::warn!(reason = err.reason(), error = ?err, "database unavailable");
            "the database is unavailable; the request may be sent again".to_owned()
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
