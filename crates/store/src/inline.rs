//! [`InlineReader`]: point reads of the embedded SQLite file on the
//! calling thread.
//!
//! sqlx serves every SQLite connection from a worker thread of its own: a
//! query is a message to that thread and its rows a message back, two
//! hand-offs between OS threads that cost far more than the statement (a
//! primary-key lookup in the page cache takes microseconds; waking a
//! sleeping thread on a small VM takes tens of them). On a request's
//! critical path that difference is the request's latency, so the few
//! reads that sit there — a point lookup by a unique key, answered from
//! the page cache — may run here instead, on a read-only connection of the
//! same file, on the thread that asks.
//!
//! What keeps that sound:
//!
//! - The database is in WAL mode: a reader never waits for the writer, and
//!   sees every transaction committed before its statement started, as a
//!   pooled connection would. The connection is opened without `CREATE`
//!   and with `PRAGMA query_only`, so nothing can write through it.
//! - It never waits for a lock: its busy timeout is zero, and a statement
//!   SQLite answers `SQLITE_BUSY` or `SQLITE_LOCKED` (a WAL recovery or a
//!   restarting checkpoint of another process) is not an error but
//!   [`Inline::Unavailable`], on which the caller runs its query through the
//!   pool as before. So is a connection that cannot be opened, and a
//!   statement that fails for any other reason (the pool then reports the
//!   error as it always did).
//! - Only point reads belong here (a statement that can scan a table would
//!   hold an async runtime's thread for as long as it scans). Each caller
//!   says so where it uses this.
//!
//! The rows are read with the same column-by-column code as the pool's
//! ([`InlineRow::try_get`] has the shape of `sqlx::Row::try_get`), and a
//! value of an unexpected type is the same `sqlx::Error::ColumnDecode`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use rusqlite::types::FromSql;
use rusqlite::{Connection, ErrorCode, OpenFlags, params_from_iter};
use tracing::debug;

/// Connections kept open at most: more threads than this asking at the
/// same moment use the pool instead.
const MAX_IDLE: usize = 4;

/// Read-only connections to one SQLite file, used on the calling thread.
pub struct InlineReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Set by [`crate::Database::close`]: no read runs here any more.
    closed: AtomicBool,
}

/// What an inline read gave.
#[derive(Debug)]
pub enum Inline<T> {
    /// The statement ran here: what the caller's reading of its row gave.
    Done(Result<T, sqlx::Error>),
    /// It did not run here (it would have waited for a lock, no connection
    /// could be opened, the statement failed): run it through the pool.
    Unavailable,
}

/// One row of an inline read, read column by column as a pooled row is.
pub struct InlineRow<'a>(&'a rusqlite::Row<'a>);

impl InlineReader {
    /// Inline reads of the SQLite file at `path` (a database a
    /// [`crate::Database`] opened: in WAL mode). Connections open at the
    /// first read.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `sql` (a point read: at most one row, found by a unique key)
    /// with `params` bound to `$1`, `$2`, … (which must appear first in
    /// that order), and gives its first row (or `None`) to `read`.
    pub fn read_one<T>(
        &self,
        sql: &str,
        params: &[&str],
        read: impl FnOnce(Option<&InlineRow<'_>>) -> Result<T, sqlx::Error>,
    ) -> Inline<T> {
        let Some(conn) = self.take() else {
            return Inline::Unavailable;
        };
        match run(&conn, sql, params, read) {
            Ok(result) => {
                self.give_back(conn);
                Inline::Done(result)
            }
            // The statement failed before a row was read: the pool runs
            // it, and reports an error that is not a wait as it always
            // did. A connection that failed otherwise is not kept.
            Err(error) => {
                debug!(%error, "inline read did not run: the pool runs it");
                if would_wait(&error) {
                    self.give_back(conn);
                }
                Inline::Unavailable
            }
        }
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Option<Connection> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        if let Some(conn) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Some(conn);
        }
        match open(&self.path) {
            Ok(conn) => Some(conn),
            Err(error) => {
                debug!(%error, path = %self.path.display(), "no inline reader connection");
                None
            }
        }
    }

    /// Closes the idle connections; one in use closes when its read ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE && !self.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
    }
}

impl fmt::Debug for InlineReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl InlineRow<'_> {
    /// Column `index` as a `T`; an unexpected type or a missing column is
    /// `sqlx::Error::ColumnDecode` / `ColumnIndexOutOfBounds`, as for a
    /// pooled row.
    pub fn try_get<T: FromSql>(&self, index: usize) -> Result<T, sqlx::Error> {
        self.0.get(index).map_err(|error| match error {
            rusqlite::Error::InvalidColumnIndex(index) => sqlx::Error::ColumnIndexOutOfBounds {
                index,
                len: self.0.as_ref().column_count(),
            },
            other => sqlx::Error::ColumnDecode {
                index: index.to_string(),
                source: Box::new(other),
            },
        })
    }
}

impl fmt::Debug for InlineRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineRow").finish_non_exhaustive()
    }
}

/// Opens a read-only connection: no `CREATE`, `query_only`, no busy wait.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

fn run<T>(
    conn: &Connection,
    sql: &str,
    params: &[&str],
    read: impl FnOnce(Option<&InlineRow<'_>>) -> Result<T, sqlx::Error>,
) -> rusqlite::Result<Result<T, sqlx::Error>> {
    let mut statement = conn.prepare_cached(sql)?;
    // `$1`, `$2`, … must be the statement's parameters in this order, as
    // the pool binds them: anything else is refused before binding.
    let in_order = statement.parameter_count() == params.len()
        && (1..=params.len()).all(|i| {
            statement
                .parameter_name(i)
                .and_then(|name| name.strip_prefix('$'))
                .is_some_and(|n| n.parse() == Ok(i))
        });
    if !in_order {
        return Err(rusqlite::Error::InvalidParameterCount(
            statement.parameter_count(),
            params.len(),
        ));
    }
    let mut rows = statement.query(params_from_iter(params.iter()))?;
    let row = rows.next()?;
    Ok(read(row.map(InlineRow).as_ref()))
}

/// `SQLITE_BUSY` / `SQLITE_LOCKED`: the statement would have had to wait.
fn would_wait(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
