//! Storage plumbing of SomaStack: one sqlx-based [`Database`] handle over an
//! embedded SQLite file or a PostgreSQL server, and the running of each
//! service's own [`Migrations`].
//!
//! It deliberately owns no tables: each service keeps its schema as
//! migrations, one SQL text per engine, and runs its own queries on the pool
//! ([`Database::as_sqlite`], [`Database::as_postgres`]).
//!
//! On SQLite, a few point reads on a request's critical path may run on the
//! calling thread instead of sqlx's worker thread ([`InlineReader`]).
//!
//! A connection that dies under a query (a PostgreSQL failover or restart)
//! is told apart from every other failure ([`is_connection_lost`]), and
//! [`retry!`] runs an operation again on a new connection when the
//! caller knows that is safe; a commit whose outcome is unknown is never
//! retried blindly ([`commit`]).
//!
//! Security-relevant defaults: the SQLite data directory is created with mode
//! 0700; SQLite enforces foreign keys; an applied migration whose text has
//! changed is refused, never skipped; connection URLs (which may carry a
//! password) never appear in errors or `Debug` output.

mod database;
mod error;
mod inline;
mod migrations;
mod retry;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use database::{Database, ensure_postgres_database, with_database};
pub use error::StoreError;
pub use inline::{Inline, InlineReader, InlineRow};
pub use migrations::{Migration, Migrations};
pub use retry::{ConnectionLost, RetryPolicy, Retrying, commit, is_busy, is_connection_lost};
pub use settings::{Engine, StoreSettings};

/// Runs `$body` with `$pool` bound to the SQLite or the PostgreSQL pool of
/// `$db` (a [`Database`]).
///
/// Every query is written once, with `$N` placeholders (which both SQLite
/// and PostgreSQL accept through sqlx); the macro expands the code once per
/// engine, so the two never drift apart.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match ($db.as_sqlite(), $db.as_postgres()) {
            (Some($pool), _) => $body,
            (None, Some($pool)) => $body,
            (None, None) => unreachable!("a database is either SQLite or PostgreSQL"),
        }
    };
}

/// Runs `$body` (an expression of type `Result<_, $error>`, in which `?`
/// converts into `$error`) and runs it again while it fails because its
/// connection was lost (PostgreSQL; on SQLite once), within the default
/// [`RetryPolicy`] or the one given as `policy: P,` first. Evaluates to the
/// final `Result<_, $error>`; `$error` must implement [`ConnectionLost`]
/// and `Display`. See [`Retrying`].
///
/// Only for reads and for writes that running twice cannot duplicate or
/// wrongly report. `$operation` names it in log lines.
#[macro_export]
macro_rules! retry {
    (policy: $policy:expr, $db:expr, $operation:expr, $error:ty, $body:expr) => {{
        let mut retrying = $db.retrying_with($policy, $operation);
        loop {
            let outcome: ::std::result::Result<_, $error> = async { $body }.await;
            match retrying.next(outcome).await {
                ::std::ops::ControlFlow::Break(outcome) => break outcome,
                ::std::ops::ControlFlow::Continue(()) => {}
            }
        }
    }};
    ($db:expr, $operation:expr, $error:ty, $body:expr) => {
        $crate::retry!(policy: $crate::RetryPolicy::DEFAULT, $db, $operation, $error, $body)
    };
}

/// [`on_pool!`] through [`retry!`]: `$body` runs with `$pool` bound to the
/// pool of `$db`, again on a new connection while it fails because its
/// connection was lost. Evaluates to `Result<_, $error>`; inside `$body`,
/// `?` converts into `$error`.
#[macro_export]
macro_rules! retry_on_pool {
    ($db:expr, $operation:expr, $error:ty, $pool:ident => $body:expr) => {
        $crate::retry!($db, $operation, $error, ::std::result::Result::Ok($crate::on_pool!($db, $pool => $body)))
    };
}
