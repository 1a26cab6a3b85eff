#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `InlineReader`: point reads of the SQLite file on the calling thread.
//! What the pool committed is read at once and decoded as the pool decodes
//! it; nothing is written through it; it never waits for a lock (the pool
//! runs what it cannot); a statement whose placeholders are not `$1`, `$2`,
//! … in order is not run; PostgreSQL has none.

use std::time::{Duration, Instant};

use soma_store::testing::engines;
use soma_store::{Database, Engine, Inline, InlineReader, Migration, Migrations, on_pool};
use sqlx::Row as _;

const ITEMS: Migration = Migration {
    version: 1,
    description: "items",
    sqlite: "CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT NOT NULL, n INTEGER NOT NULL, \
             mac BLOB NOT NULL, note TEXT);",
    postgres: "CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT NOT NULL, n BIGINT NOT NULL, \
               mac BYTEA NOT NULL, note TEXT);",
};

const SELECT: &str = "SELECT id, body, n, mac, note FROM items WHERE id = $1";

#[derive(Debug, PartialEq, Eq)]
struct Item {
    id: String,
    body: String,
    n: i64,
    mac: Vec<u8>,
    note: Option<String>,
}

/// Reads a row selected with [`SELECT`], for a pooled and an inline row
/// alike (a macro, as the services write theirs).
macro_rules! item_of {
    () => {
        |row| -> Result<Item, sqlx::Error> {
            Ok(Item {
                id: row.try_get(0)?,
                body: row.try_get(1)?,
                n: row.try_get(2)?,
                mac: row.try_get(3)?,
                note: row.try_get(4)?,
            })
        }
    };
}

async fn open_sqlite() -> (soma_store::testing::TestDb, Database) {
    let engine = engines("inline").await.into_iter().next().unwrap();
    assert_eq!(engine.label, "sqlite");
    let db = engine.connect().await;
    db.migrate(&Migrations(&[ITEMS])).await.unwrap();
    (engine, db)
}

async fn insert(db: &Database, id: &str, body: &str, n: i64, note: Option<&str>) {
    on_pool!(db, pool => sqlx::query("INSERT INTO items (id, body, n, mac, note) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(body)
        .bind(n)
        .bind(vec![0u8, 0xff, 7])
        .bind(note)
        .execute(pool)
        .await
        .map(drop)
        .unwrap());
}

fn read(reader: &InlineReader, id: &str) -> Inline<Option<Item>> {
    reader.read_one(SELECT, &[id], |row| row.map(item_of!()).transpose())
}

/// A row committed through the pool is read inline at once, decoded
/// exactly as the pool decodes it (text, integer, blob, NULL); a missing
/// key is `None`; an update committed through the pool is seen by the next
/// read.
#[tokio::test]
async fn a_committed_row_is_read_at_once_and_decoded_as_the_pool_decodes_it() {
    let (engine, db) = open_sqlite().await;
    let reader = db.inline_reader().expect("a SQLite database reads inline");
    insert(&db, "a", "first", i64::MAX, None).await;
    insert(&db, "b", "sécond ✓", -3, Some("noted")).await;

    for id in ["a", "b"] {
        let pooled = on_pool!(db, pool => sqlx::query(SELECT).bind(id).fetch_all(pool).await.unwrap()
            .first().map(item_of!()).transpose().unwrap());
        let Inline::Done(inline) = read(reader, id) else {
            panic!("the read of {id} did not run inline");
        };
        assert_eq!(inline.unwrap(), pooled, "{id}");
    }
    let Inline::Done(missing) = read(reader, "nope") else {
        panic!("the read of a missing key did not run inline");
    };
    assert_eq!(missing.unwrap(), None);

    on_pool!(db, pool => sqlx::query("UPDATE items SET body = 'changed' WHERE id = 'a'")
        .execute(pool).await.map(drop).unwrap());
    let Inline::Done(after) = read(reader, "a") else {
        panic!("not inline");
    };
    assert_eq!(after.unwrap().unwrap().body, "changed");
    db.close().await;
    engine.cleanup().await;
}

/// A column of another type than the reader expects is the pool's
/// `ColumnDecode` error, not a panic and not a fallback.
#[tokio::test]
async fn a_value_of_another_type_is_a_column_decode_error() {
    let (engine, db) = open_sqlite().await;
    let reader = db.inline_reader().unwrap();
    insert(&db, "a", "text", 1, None).await;
    let outcome = reader.read_one("SELECT body FROM items WHERE id = $1", &["a"], |row| {
        row.map(|row| row.try_get::<i64>(0)).transpose()
    });
    let Inline::Done(Err(error)) = outcome else {
        panic!("expected a decode error, got {outcome:?}");
    };
    assert!(matches!(error, sqlx::Error::ColumnDecode { .. }), "{error:?}");
    db.close().await;
    engine.cleanup().await;
}

/// Nothing is written through an inline reader: a write statement does not
/// run there (the caller's pool would run it), and the table is unchanged.
#[tokio::test]
async fn nothing_is_written_through_it() {
    let (engine, db) = open_sqlite().await;
    let reader = db.inline_reader().unwrap();
    insert(&db, "a", "kept", 1, None).await;
    let outcome = reader.read_one(
        "UPDATE items SET body = 'overwritten' WHERE id = $1 RETURNING id",
        &["a"],
        |row| row.map(|row| row.try_get::<String>(0)).transpose(),
    );
    assert!(matches!(outcome, Inline::Unavailable), "{outcome:?}");
    let Inline::Done(item) = read(reader, "a") else {
        panic!("not inline");
    };
    assert_eq!(item.unwrap().unwrap().body, "kept");
    db.close().await;
    engine.cleanup().await;
}

/// A statement whose placeholders are not `$1`, `$2`, … in order of first
/// appearance (which the pool binds positionally) is not run: it would
/// bind the values to the wrong columns.
#[tokio::test]
async fn placeholders_out_of_order_or_miscounted_are_not_run() {
    let (engine, db) = open_sqlite().await;
    let reader = db.inline_reader().unwrap();
    insert(&db, "a", "x", 1, None).await;
    let cases: [(&str, &[&str]); 4] = [
        ("SELECT id FROM items WHERE body = $2 AND id = $1", &["a", "x"]),
        ("SELECT id FROM items WHERE id = ?", &["a"]),
        ("SELECT id FROM items WHERE id = $1", &["a", "x"]),
        ("SELECT id FROM items WHERE id = $1 AND body = $2", &["a"]),
    ];
    for (sql, params) in cases {
        let outcome = reader.read_one(sql, params, |row| {
            row.map(|row| row.try_get::<String>(0)).transpose()
        });
        assert!(matches!(outcome, Inline::Unavailable), "{sql}: {outcome:?}");
    }
    db.close().await;
    engine.cleanup().await;
}

/// While another connection holds the file exclusively (WAL in exclusive
/// locking mode; a WAL recovery locks readers out the same way), an inline
/// read does not wait for it — not the pool's 5 s busy timeout, not at all:
/// it says `Unavailable` at once, and the caller's pool runs the statement.
#[tokio::test]
async fn it_never_waits_for_a_lock() {
    let (engine, db) = open_sqlite().await;
    insert(&db, "a", "x", 1, None).await;
    // Every connection of a WAL database holds a shared lock on its file:
    // the pool's are closed, so that the exclusive one can be taken.
    db.close().await;
    let path = engine.settings.data_dir.join("inline.db");
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.pragma_update(None, "locking_mode", "EXCLUSIVE").unwrap();
    holder
        .execute_batch("BEGIN EXCLUSIVE; UPDATE items SET n = 2;")
        .unwrap();

    let reader = InlineReader::new(&path);
    let started = Instant::now();
    let outcome = read(&reader, "a");
    assert!(matches!(outcome, Inline::Unavailable), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it waited {:?}",
        started.elapsed()
    );

    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    let Inline::Done(item) = read(&reader, "a") else {
        panic!("not inline once the lock is gone");
    };
    assert_eq!(item.unwrap().unwrap().n, 1);
    engine.cleanup().await;
}

/// After `Database::close`, nothing runs inline any more.
#[tokio::test]
async fn a_closed_database_reads_nothing_inline() {
    let (engine, db) = open_sqlite().await;
    insert(&db, "a", "x", 1, None).await;
    assert!(matches!(
        read(db.inline_reader().unwrap(), "a"),
        Inline::Done(Ok(Some(_)))
    ));
    db.close().await;
    assert!(matches!(
        read(db.inline_reader().unwrap(), "a"),
        Inline::Unavailable
    ));
    engine.cleanup().await;
}

/// PostgreSQL has no inline reader: every read goes through its pool.
#[tokio::test]
async fn postgres_has_none() {
    for engine in engines("inline").await {
        let db = engine.connect().await;
        assert_eq!(
            db.inline_reader().is_some(),
            db.engine() == Engine::Sqlite,
            "{}",
            engine.label
        );
        db.close().await;
        engine.cleanup().await;
    }
}
