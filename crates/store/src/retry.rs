//! Riding out a lost database connection: which errors mean "the connection
//! died, the statement did not run or its outcome is unknown"
//! ([`is_connection_lost`]), and running an operation again on a freshly
//! acquired connection when they happen ([`Retrying`], [`retry!`](crate::retry!)).
//!
//! Why: after a PostgreSQL failover (Patroni behind HAProxy) or a restart,
//! every connection a pool holds is dead, and a statement that was in flight
//! when the server went away fails with an I/O error or a FATAL SQLSTATE.
//! The service itself is healthy; the next connection (once HAProxy points
//! at the new primary) works. Answering `UNAVAILABLE` for that would turn a
//! 4–10 s switch into failed requests for every client.
//!
//! What is deliberately *not* done here: deciding that a write is safe to
//! repeat. A retry runs the whole operation again, so only the caller knows
//! whether that can duplicate a row or report success for a write that was
//! not committed. Reads are always safe; a write is safe when it is
//! idempotent by a unique key and reads back what is stored. A transaction
//! whose connection died *before* its `COMMIT` was sent was rolled back by
//! the server (a session that ends aborts its open transaction), so it is
//! safe to run again; one whose connection died *during* `COMMIT` may or may
//! not have committed: [`commit`] reports that as
//! [`StoreError::CommitOutcomeUnknown`], which is never retried, so a
//! caller that cannot look its row up answers "unavailable" rather than
//! guess.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgDatabaseError;
use tracing::{debug, warn};

use crate::database::Database;
use crate::error::StoreError;
use crate::settings::Engine;

/// How an operation is retried after a lost connection.
///
/// The bound is both a number of attempts and a window: no attempt starts
/// later than `window` after the first one, so an operation gives up after
/// `window` plus the last attempt's own duration (which the pool's acquire
/// timeout bounds). A gRPC caller's deadline still applies on top: when the
/// client gives up, its call is cancelled and the handler's future, with
/// this retry loop, is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The pause before the second attempt; each later pause doubles.
    pub first_backoff: Duration,
    /// The longest pause between two attempts.
    pub max_backoff: Duration,
    /// No attempt starts later than this after the first one.
    pub window: Duration,
}

impl RetryPolicy {
    /// The services' policy: up to 6 attempts, pauses of 100 ms doubling
    /// to at most 1 s, within 3 s. Attempts then start at about 0, 0.1,
    /// 0.3, 0.7, 1.5 and 2.5 s: the first retry comes at once (100 ms) for
    /// the common case of one dead pooled connection after a restart or a
    /// terminated backend, and a longer outage (a Patroni switch takes 4–6 s
    /// for a killed postmaster) reaches the caller within about 3 s as
    /// `UNAVAILABLE`, to be sent again, rather than holding every caller's
    /// request for the whole switch: with a window as long as the switch,
    /// requests hung until the edge's own deadline (504) under load, and a
    /// client that waits on each request before sending the next one saw
    /// the outage — and the recovery — only then.
    pub const DEFAULT: Self = Self {
        max_attempts: 6,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        window: Duration::from_secs(3),
    };
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Whether an error means that the connection died, or the server is gone
/// or became read-only, so that the statement did not run or its outcome is
/// unknown — and the same operation on a newly opened connection may
/// succeed.
///
/// Implemented for the driver's and this crate's errors; each service
/// implements it for its own error type by delegating to the `sqlx::Error`
/// or [`StoreError`] it carries.
pub trait ConnectionLost {
    /// See the trait.
    fn is_connection_lost(&self) -> bool;
}

impl ConnectionLost for sqlx::Error {
    fn is_connection_lost(&self) -> bool {
        is_connection_lost(self)
    }
}

impl ConnectionLost for StoreError {
    fn is_connection_lost(&self) -> bool {
        match self {
            Self::Query { source } | Self::Connect { source, .. } => is_connection_lost(source),
            Self::ConnectTimeout { .. } => true,
            // Deliberately not: whether the commit happened is unknown, so
            // running the operation again could write it twice. Only a
            // caller that looks its row up may retry (see the module doc).
            Self::CommitOutcomeUnknown { .. } => false,
            _ => false,
        }
    }
}

/// The classification itself, for the driver's error.
///
/// Connection lost (`true`):
/// - [`sqlx::Error::Io`]: the socket failed (reset, broken pipe, unexpected
///   end of stream): the server went away mid-conversation.
/// - [`sqlx::Error::PoolTimedOut`]: no connection could be had within the
///   pool's acquire timeout (the server refused or did not answer): the
///   statement was never sent.
/// - A PostgreSQL error with SQLSTATE
///   - class `08` (connection exception: `08000`, `08003`, `08006`,
///     `08001`, `08004`, `08007` transaction resolution unknown, `08P01`);
///   - `57P01` admin_shutdown (the backend was terminated: a fast
///     shutdown, a failover, `pg_terminate_backend`);
///   - `57P02` crash_shutdown (another backend crashed and the postmaster
///     reset every session);
///   - `57P03` cannot_connect_now (the server is starting or in recovery);
///   - `57P05` idle_session_timeout (the server closed an idle session:
///     the connection is dead, nothing ran);
///   - `25006` read_only_sql_transaction (the server is a standby, e.g. a
///     former primary: the write was refused and did not run; a new
///     connection through the proxy reaches the new primary).
///
/// Everything else is `false` and must never be retried: constraint
/// violations, bad input, serialization failures, `57P04` database_dropped,
/// TLS and protocol errors, a closed pool, row decoding, and every SQLite
/// error (a SQLite database is a file of this process: there is no
/// connection to lose).
pub fn is_connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(database) => database
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| is_connection_lost_sqlstate(pg.code())),
        _ => false,
    }
}

/// Whether `error` is SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED` (any of
/// their extended codes): the statement waited out the busy timeout for
/// another connection's lock, or could not take it at all, and had no
/// effect (a transaction it was part of is rolled back when dropped). An
/// overload of the one writer a SQLite file has, never a client's mistake
/// nor a broken database: services answer it `UNAVAILABLE`
/// `database_busy`, which the caller may send again. PostgreSQL errors are
/// never this.
pub fn is_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i64 = 5;
    const SQLITE_LOCKED: i64 = 6;
    match error {
        sqlx::Error::Database(database) => {
            database.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                && database
                    .code()
                    .and_then(|code| code.parse::<i64>().ok())
                    .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
        }
        _ => false,
    }
}

/// The SQLSTATEs of [`is_connection_lost`].
fn is_connection_lost_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "57P05" | "25006")
}

/// Commits `tx`, telling a lost connection during the commit apart: the
/// server may or may not have committed, so that is
/// [`StoreError::CommitOutcomeUnknown`] (never retried), while any other
/// failure is [`StoreError::Query`].
pub async fn commit<DB: sqlx::Database>(tx: sqlx::Transaction<'_, DB>) -> Result<(), StoreError> {
    tx.commit().await.map_err(|source| {
        if is_connection_lost(&source) {
            StoreError::CommitOutcomeUnknown { source }
        } else {
            StoreError::Query { source }
        }
    })
}

/// Marks the pooled connections opened before a lost connection was seen,
/// so that the pool closes them instead of handing them out.
///
/// Why: a connection to a server that became read-only (`25006`) still
/// answers the pool's ping, and after a failover every connection the pool
/// holds is dead; without this, a retry could be given one of them again.
/// Checked in the pool's `before_acquire` hook: no round trip, one atomic
/// load.
#[derive(Debug)]
pub(crate) struct Staleness {
    /// The pool's creation: times are kept as microseconds since then.
    origin: Instant,
    /// Connections created before this (µs since `origin`) are closed.
    stale_before_us: AtomicU64,
}

impl Staleness {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            stale_before_us: AtomicU64::new(0),
        })
    }

    /// Every connection opened up to now is to be closed.
    pub(crate) fn mark(&self) {
        let now = self.micros(Instant::now());
        self.stale_before_us.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether a connection of this age is older than the last mark.
    pub(crate) fn is_stale(&self, age: Duration) -> bool {
        let stale_before = self.stale_before_us.load(Ordering::Relaxed);
        if stale_before == 0 {
            return false;
        }
        // A creation time before `origin` (not representable) is older than
        // any mark.
        match Instant::now().checked_sub(age) {
            Some(created) if created >= self.origin => self.micros(created) < stale_before,
            _ => true,
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }
}

impl Database {
    /// A retry loop's state for `operation` under [`RetryPolicy::DEFAULT`]:
    /// see [`Retrying`] and the [`retry!`](crate::retry!) macro that drives
    /// it.
    pub fn retrying(&self, operation: &'static str) -> Retrying<'_> {
        self.retrying_with(RetryPolicy::DEFAULT, operation)
    }

    /// [`Database::retrying`] under `policy`.
    pub fn retrying_with(&self, policy: RetryPolicy, operation: &'static str) -> Retrying<'_> {
        Retrying {
            db: self,
            policy,
            operation,
            started: Instant::now(),
            backoff: policy.first_backoff,
            attempts: 0,
        }
    }
}

/// One retried operation: after each attempt, [`Retrying::next`] says
/// whether to run it again.
///
/// An attempt runs again only when it failed with an error that
/// [`ConnectionLost::is_connection_lost`], within the [`RetryPolicy`]; any
/// other outcome, and the last error when the bound is reached, is final.
///
/// Each attempt must take its connection from the pool itself (a query on
/// the pool, or `pool.begin()`), so that it runs on a newly acquired
/// connection: sqlx pings a connection when it comes back to the pool and
/// closes it when that fails, and before the next attempt every connection
/// opened before the failure is marked stale, so the pool closes it instead
/// of handing it out.
///
/// Only safe for reads and for writes that running twice cannot duplicate
/// or wrongly report (see the module doc). On SQLite there is nothing to
/// retry: the first outcome is final.
///
/// A loop rather than a function taking a closure: an async closure's
/// future cannot be proven `Send` for every lifetime (rustc's
/// higher-ranked `AsyncFnMut` limitation), and the services' handlers must
/// be `Send`; the [`retry!`](crate::retry!) macro writes the loop.
#[derive(Debug)]
pub struct Retrying<'a> {
    db: &'a Database,
    policy: RetryPolicy,
    operation: &'static str,
    started: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Retrying<'_> {
    /// Takes the outcome of one attempt: `Break` with the final outcome,
    /// or `Continue` (after the backoff pause) to run the attempt again.
    pub async fn next<T, E>(&mut self, outcome: Result<T, E>) -> ControlFlow<Result<T, E>>
    where
        E: ConnectionLost + std::fmt::Display,
    {
        self.attempts += 1;
        let operation = self.operation;
        let attempts = self.attempts;
        let error = match outcome {
            Ok(value) => {
                if attempts > 1 {
                    debug!(operation, attempts, "succeeded on a new connection");
                }
                return ControlFlow::Break(Ok(value));
            }
            Err(error) => error,
        };
        if self.db.engine() == Engine::Sqlite || !error.is_connection_lost() {
            return ControlFlow::Break(Err(error));
        }
        self.db.mark_connections_stale();
        let next_start = self.started.elapsed() + self.backoff;
        if attempts >= self.policy.max_attempts || next_start > self.policy.window {
            warn!(operation, attempts, %error, "database connection lost; giving up");
            return ControlFlow::Break(Err(error));
        }
        warn!(operation, attempt = attempts, %error, "database connection lost; retrying on a new connection");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        ControlFlow::Continue(())
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        input: &'static str,
        expected: bool,
    }

    #[test]
    fn sqlstates_of_a_lost_connection() {
        let cases = [
            Case {
                name: "connection_exception",
                input: "08000",
                expected: true,
            },
            Case {
                name: "connection_does_not_exist",
                input: "08003",
                expected: true,
            },
            Case {
                name: "connection_failure",
                input: "08006",
                expected: true,
            },
            Case {
                name: "sqlclient_unable_to_establish_sqlconnection",
                input: "08001",
                expected: true,
            },
            Case {
                name: "sqlserver_rejected_establishment_of_sqlconnection",
                input: "08004",
                expected: true,
            },
            Case {
                name: "transaction_resolution_unknown",
                input: "08007",
                expected: true,
            },
            Case {
                name: "protocol_violation",
                input: "08P01",
                expected: true,
            },
            Case {
                name: "admin_shutdown",
                input: "57P01",
                expected: true,
            },
            Case {
                name: "crash_shutdown",
                input: "57P02",
                expected: true,
            },
            Case {
                name: "cannot_connect_now",
                input: "57P03",
                expected: true,
            },
            Case {
                name: "idle_session_timeout",
                input: "57P05",
                expected: true,
            },
            Case {
                name: "read_only_sql_transaction",
                input: "25006",
                expected: true,
            },
            Case {
                name: "database_dropped",
                input: "57P04",
                expected: false,
            },
            Case {
                name: "query_canceled",
                input: "57014",
                expected: false,
            },
            Case {
                name: "unique_violation",
                input: "23505",
                expected: false,
            },
            Case {
                name: "foreign_key_violation",
                input: "23503",
                expected: false,
            },
            Case {
                name: "check_violation",
                input: "23514",
                expected: false,
            },
            Case {
                name: "serialization_failure",
                input: "40001",
                expected: false,
            },
            Case {
                name: "deadlock_detected",
                input: "40P01",
                expected: false,
            },
            Case {
                name: "syntax_error",
                input: "42601",
                expected: false,
            },
            Case {
                name: "invalid_text_representation",
                input: "22P02",
                expected: false,
            },
            Case {
                name: "in_failed_sql_transaction",
                input: "25P02",
                expected: false,
            },
            Case {
                name: "too_many_connections",
                input: "53300",
                expected: false,
            },
            Case {
                name: "invalid_password",
                input: "28P01",
                expected: false,
            },
        ];
        for case in cases {
            assert_eq!(
                is_connection_lost_sqlstate(case.input),
                case.expected,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn driver_errors_of_a_lost_connection() {
        use std::io::{Error, ErrorKind};
        struct Case {
            name: &'static str,
            input: sqlx::Error,
            expected: bool,
        }
        let cases = [
            Case {
                name: "connection reset",
                input: sqlx::Error::Io(Error::from(ErrorKind::ConnectionReset)),
                expected: true,
            },
            Case {
                name: "unexpected eof",
                input: sqlx::Error::Io(Error::from(ErrorKind::UnexpectedEof)),
                expected: true,
            },
            Case {
                name: "broken pipe",
                input: sqlx::Error::Io(Error::from(ErrorKind::BrokenPipe)),
                expected: true,
            },
            Case {
                name: "pool timed out",
                input: sqlx::Error::PoolTimedOut,
                expected: true,
            },
            Case {
                name: "pool closed",
                input: sqlx::Error::PoolClosed,
                expected: false,
            },
            Case {
                name: "row not found",
                input: sqlx::Error::RowNotFound,
                expected: false,
            },
            Case {
                name: "protocol",
                input: sqlx::Error::Protocol("unexpected message".into()),
                expected: false,
            },
            Case {
                name: "tls",
                input: sqlx::Error::Tls("bad certificate".into()),
                expected: false,
            },
            Case {
                name: "configuration",
                input: sqlx::Error::Configuration("bad url".into()),
                expected: false,
            },
            Case {
                name: "column not found",
                input: sqlx::Error::ColumnNotFound("mac".into()),
                expected: false,
            },
        ];
        for case in cases {
            assert_eq!(is_connection_lost(&case.input), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn store_errors_of_a_lost_connection() {
        use std::io::{Error, ErrorKind};
        let io = || sqlx::Error::Io(Error::from(ErrorKind::ConnectionReset));
        assert!(StoreError::Query { source: io() }.is_connection_lost());
        assert!(
            StoreError::ConnectTimeout {
                engine: Engine::Postgres,
                target: "h:5432/d".into(),
                timeout: Duration::from_secs(10)
            }
            .is_connection_lost()
        );
        // The commit may have happened: never retried blindly.
        assert!(!StoreError::CommitOutcomeUnknown { source: io() }.is_connection_lost());
        assert!(
            !StoreError::Query {
                source: sqlx::Error::RowNotFound
            }
            .is_connection_lost()
        );
    }

    #[test]
    fn staleness_marks_only_older_connections() {
        let staleness = Staleness::new();
        // Nothing marked: nothing stale, however old.
        assert!(!staleness.is_stale(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(5));
        staleness.mark();
        // Opened long before the mark (and before the pool's origin).
        assert!(staleness.is_stale(Duration::from_secs(3600)));
        // Opened now, after the mark.
        assert!(!staleness.is_stale(Duration::ZERO));
    }
}
