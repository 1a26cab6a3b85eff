//! Running the same SQL on either engine.
//!
//! Every query here is written once, with `$N` placeholders (which both
//! SQLite and PostgreSQL accept through sqlx), and [`on_pool!`] expands the
//! code once per engine, so the two never drift apart.

/// Runs `$body` with `$pool` bound to the SQLite or the PostgreSQL pool of
/// `$db` (a `soma_store::Database`).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match ($db.as_sqlite(), $db.as_postgres()) {
            (Some($pool), _) => $body,
            (None, Some($pool)) => $body,
            (None, None) => unreachable!("a database is either SQLite or PostgreSQL"),
        }
    };
}

pub(crate) use on_pool;
