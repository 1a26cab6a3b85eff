//! The ledger writer's lease (PostgreSQL): a session-level advisory lock
//! held by the one PostgreSQL session every ledger write is committed on.
//!
//! Several Analytics instances may run on one database (an active one and a
//! standby); exactly one of them writes. The writer of each instance asks
//! for the lock with `pg_try_advisory_lock` (never waiting in the server:
//! it polls every [`POLL`]) on a session of its own, and the session that
//! got it is the only one its commits ever use. The lock lives as long as
//! that session and no longer, which is what makes it a fence and not only
//! a start-up gate:
//!
//! - a holder whose session died (its process killed, the PostgreSQL
//!   primary lost and the session with it, `pg_terminate_backend`) cannot
//!   commit anything more: its commits go to that session only, and fail;
//! - another instance gets the lock only once the holder's session is gone
//!   from the server, and with it any transaction it had open;
//! - an instance that lost its session stands by, asks for the lock again on
//!   a new session, and when it gets it, takes the ledger over as any new
//!   holder does ([`super::Committer::take_over`]): it reads the stored
//!   head, catches its authenticated view up with every leaf appended
//!   meanwhile (each leaf row's MAC checked), checks that the view's root is
//!   the head's, and only then appends again.
//!
//! A session on a server in recovery (a replica, reached during a failover)
//! never takes the lock: such a session could hold a lock another instance
//! also holds on the primary. The holder checks its session every
//! [`CHECK`] while idle (alive, and on a primary); any doubt drops the
//! session, which gives the lock up.
//!
//! The lock's key is [`KEY`], one bigint; in `pg_locks` it is the advisory
//! lock whose `classid` and `objid` are its high and low 32 bits. Locks are
//! per database, so Analytics deployments on distinct databases of one
//! server never meet.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::error::AnalyticsError;

/// The advisory lock's key: "SomaLedg" in ASCII.
pub(crate) const KEY: i64 = 0x536f_6d61_4c65_6467;

/// How often a standby asks for the lock.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// How often an idle holder checks its session.
pub(crate) const CHECK: Duration = Duration::from_secs(1);

/// The longest a connection attempt, or a check of the session, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The lease as one writer holds or waits for it.
pub(crate) struct Lease {
    options: PgConnectOptions,
    /// The session asking for the lock while standing by, kept between
    /// polls.
    waiting: Option<PgConnection>,
    /// The session holding the lock: the only one commits go to.
    held: Option<PgConnection>,
}

/// What one request for the lock found.
pub(crate) enum Asked {
    /// The lock is this writer's now, on the session now held.
    Got,
    /// Another session holds it.
    Taken,
    /// The server is in recovery (a replica): no lock taken there.
    Replica,
}

impl Lease {
    /// A lease to be asked for on sessions opened with `options`.
    pub(crate) fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            waiting: None,
            held: None,
        }
    }

    /// Whether the lock is held (on a session not yet found dead).
    pub(crate) fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Asks for the lock once, on the waiting session (opened first when
    /// there is none).
    pub(crate) async fn ask(&mut self) -> Result<Asked, AnalyticsError> {
        let mut session = match self.waiting.take() {
            Some(session) => session,
            None => tokio::time::timeout(TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| timed_out("connecting"))??,
        };
        // One statement: a server in recovery is never asked for the lock
        // (CASE evaluates only the branch it takes).
        let asked = tokio::time::timeout(
            TIMEOUT,
            sqlx::query(
                "SELECT pg_is_in_recovery() AS recovery, \
                 CASE WHEN pg_is_in_recovery() THEN false ELSE pg_try_advisory_lock($1) END AS got",
            )
            .bind(KEY)
            .fetch_one(&mut session),
        )
        .await
        .map_err(|_| timed_out("asking for the lock"))??;
        if asked.try_get::<bool, _>("recovery")? {
            // Dropped: the next poll connects anew, and is routed to the
            // primary once there is one.
            return Ok(Asked::Replica);
        }
        if asked.try_get::<bool, _>("got")? {
            self.held = Some(session);
            Ok(Asked::Got)
        } else {
            self.waiting = Some(session);
            Ok(Asked::Taken)
        }
    }

    /// The holding session, for one commit; `None` when the lock is not
    /// held. Hand it back with [`Lease::restore`] or give the lock up with
    /// [`Lease::drop_session`].
    pub(crate) fn take(&mut self) -> Option<PgConnection> {
        self.held.take()
    }

    /// The holding session after a commit that succeeded.
    pub(crate) fn restore(&mut self, session: PgConnection) {
        self.held = Some(session);
    }

    /// The holding session after a commit that failed: kept when it is
    /// alive and on a primary (the lock is still its own), dropped (the
    /// lock given up) otherwise. Returns whether it was kept.
    pub(crate) async fn restore_if_sound(&mut self, mut session: PgConnection) -> bool {
        if sound(&mut session).await {
            self.held = Some(session);
            true
        } else {
            Self::drop_session(session);
            false
        }
    }

    /// Checks the holding session (alive, on a primary); drops it when it
    /// is not. Returns whether the lock is still held.
    pub(crate) async fn check(&mut self) -> bool {
        let Some(session) = self.held.take() else {
            return false;
        };
        self.restore_if_sound(session).await
    }

    /// Gives the lock up: the holding session is closed, and the server
    /// releases the lock with it.
    pub(crate) fn release(&mut self) {
        if let Some(session) = self.held.take() {
            Self::drop_session(session);
        }
    }

    /// Drops a session without waiting for the server: a dead one cannot
    /// answer a goodbye, and a live one ends (and frees its locks) when its
    /// socket closes.
    fn drop_session(session: PgConnection) {
        drop(session);
    }
}

/// Whether `session` answers, from a server that is not in recovery.
async fn sound(session: &mut PgConnection) -> bool {
    let probe = tokio::time::timeout(
        TIMEOUT,
        sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&mut *session),
    )
    .await;
    matches!(probe, Ok(Ok(false)))
}

fn timed_out(what: &str) -> AnalyticsError {
    AnalyticsError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took more than {}s", TIMEOUT.as_secs()),
    )))
}
