//! SQL on either engine, to look at a service's rows or to tamper with them.

use soma_store::Database;
use sqlx::Row as _;

/// Runs one SQL statement; the rows it affected.
pub async fn exec(db: &Database, sql: &str) -> u64 {
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        (None, Some(pool)) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// The one i64 `sql` selects.
pub async fn scalar(db: &Database, sql: &str) -> i64 {
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql).fetch_one(pool).await.unwrap().get::<i64, _>(0),
        (None, Some(pool)) => sqlx::query(sql).fetch_one(pool).await.unwrap().get::<i64, _>(0),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// The one text value `sql` selects.
pub async fn scalar_text(db: &Database, sql: &str) -> String {
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql)
            .fetch_one(pool)
            .await
            .unwrap()
            .get::<String, _>(0),
        (None, Some(pool)) => sqlx::query(sql)
            .fetch_one(pool)
            .await
            .unwrap()
            .get::<String, _>(0),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// SQLite's one writer lock on the file at `path`, taken by a connection of
/// its own (`BEGIN IMMEDIATE`) and held until [`release`](Self::release):
/// a service's write then waits out its busy timeout and fails busy.
#[derive(Debug)]
pub struct SqliteWriterLock(sqlx::SqliteConnection);

impl SqliteWriterLock {
    /// Takes the lock; the file must exist.
    pub async fn hold(path: &std::path::Path) -> Self {
        use sqlx::Connection as _;
        assert!(path.exists(), "no SQLite file at {}", path.display());
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        let mut connection = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut connection)
            .await
            .unwrap();
        Self(connection)
    }

    /// Rolls the lock's empty transaction back and closes its connection.
    pub async fn release(mut self) {
        use sqlx::Connection as _;
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
        self.0.close().await.unwrap();
    }
}
