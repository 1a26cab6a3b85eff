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
