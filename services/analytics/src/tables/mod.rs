//! One module per table: each owns its row type, its column list (spelled
//! once, here as a list of [`Column`]s), its seal, its row mapping, its
//! inserts and its reads, for SQLite and PostgreSQL alike.
//!
//! Three traits connect them to the rest of the service without anyone
//! naming a row kind:
//! - [`Table`]: a stored row: columns, values, mapping from a database row.
//!   Reads ([`find`], [`all`], [`window`], [`export_page`]) are written
//!   once, over any table.
//! - [`Ledgered`] (and its object-safe face [`Entry`]): a row appended to the
//!   Merkle ledger; the writer inserts any kind through it, with the rows
//!   written alongside ([`Ledgered::dependents`]) and a guard that must hold
//!   before the leaf is appended ([`Ledgered::guard`]).
//! - [`Exported`]: a row that a signed export can carry.
//!
//! [`REGISTRY`] lists every table once; the integrity sweep, read
//! verification and the writer's single-statement path walk it. Adding a
//! table is a module and one line in [`tables!`].
//!
//! Beside the table modules: `row` (the row-MAC and leaf scheme every
//! table shares), `object` (row-MAC content and export objects written
//! from the columns), `sql` (how values travel to and from either engine,
//! and the `columns!` macro) and `bulk` (the writer's single statement on
//! PostgreSQL, generated from the bulk tables).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use soma_ledger::Hash;
use soma_sign::HmacKeyring;
use soma_store::{Database, on_pool};

use crate::error::AnalyticsError;

mod bulk;
pub(crate) mod leaves;
mod object;
pub(crate) mod row;
mod sql;

pub(crate) use bulk::{bind_arrays, bulk_arrays, bulk_statement};
pub(crate) use row::{EventRow, Seal};
pub(crate) use sql::{
    Column, Conn, Get, ToValue, Ty, Value, bind_values, bytes, column_name, columns, flag, int, on_conn,
    opt_bytes, opt_int, opt_text, real, text,
};

/// Declares the table modules and [`REGISTRY`], in sweep order: one line
/// per module.
macro_rules! tables {
    ($($module:ident),* $(,)?) => {
        $(pub(crate) mod $module;)*

        /// Every table, in sweep order.
        pub(crate) static REGISTRY: &[&[Registration]] = &[$($module::TABLES),*];
    };
}

tables! { capsule_runs, billing, regressions, anomalies, drills, audit_events }

/// The ledger index column of a ledgered table.
const LEDGER_INDEX: Column = int("ledger_index");

/// The seal columns every table ends with.
const SEAL_COLUMNS: [Column; 4] = [
    int("mac_scheme"),
    int("row_version"),
    text("mac_key_id"),
    bytes("mac"),
];

/// A future that may hold borrows (trait objects cannot name their own).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The (tenant, event id) of every stored ledger leaf, for the checks a
/// table makes beyond its own row ([`Table::cross_check`]).
#[derive(Debug, Default)]
pub(crate) struct Leaves(HashMap<String, HashSet<String>>);

impl Leaves {
    /// Records a leaf of `tenant` for `event_id`.
    pub(crate) fn insert(&mut self, tenant: &str, event_id: &str) {
        self.0
            .entry(tenant.to_owned())
            .or_default()
            .insert(event_id.to_owned());
    }

    /// Whether the ledger holds a leaf of `tenant` for `event_id`.
    pub(crate) fn has(&self, tenant: &str, event_id: &str) -> bool {
        self.0.get(tenant).is_some_and(|ids| ids.contains(event_id))
    }
}

/// Writes [`EventRow::event_id`] (the row's primary key within its tenant,
/// the field given) and [`EventRow::tenant`] (the `tenant` field).
macro_rules! keyed_by {
    ($key:ident) => {
        fn event_id(&self) -> &str {
            &self.$key
        }

        fn tenant(&self) -> &str {
            &self.tenant
        }
    };
}
pub(crate) use keyed_by;

/// A stored table: its columns and how a row maps to and from them.
///
/// Every table's primary key is `(tenant, KEY)`: ids are scoped per tenant.
pub(crate) trait Table: EventRow + Sized + Send + Sync + fmt::Debug + 'static {
    /// The key column (unique within a tenant).
    const KEY: &'static str;
    /// The application columns, in the order of [`Table::values`] (the
    /// ledger index and the seal columns follow them).
    const COLUMNS: &'static [Column];
    /// Whether each row is a ledger leaf (has a `ledger_index` column).
    const LEDGERED: bool;
    /// Whether the writer's single-statement path (PostgreSQL) may insert
    /// rows of this table: a ledgered kind with no guard and no dependents.
    const BULK: bool = false;

    /// The row's values, in the order of [`Table::COLUMNS`].
    fn values(&self) -> Vec<Value<'_>>;

    /// The row from a database row selected with [`select_list`].
    fn from_row<R: Get>(r: &R) -> Result<Self, AnalyticsError>;

    /// The time of a ledgered row (its leaf's `event_time`); `None` for the
    /// other tables.
    fn leaf_time(&self) -> Option<i64> {
        None
    }

    /// A check beyond the MAC and the leaf that the sweep makes (`Some`
    /// names the failure).
    fn cross_check(&self, _seal: &Seal, _leaves: &Leaves) -> Option<String> {
        None
    }
}

/// `c1, c2, …, [ledger_index,] mac_scheme, row_version, mac_key_id, mac`:
/// what reads select (and inserts write, in this order).
pub(crate) fn select_list<T: Table>() -> String {
    insert_columns(T::COLUMNS, T::LEDGERED)
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every column an insert writes, in order.
pub(crate) fn insert_columns(columns: &[Column], ledgered: bool) -> impl Iterator<Item = &Column> {
    let index: &[Column] = if ledgered { &[LEDGER_INDEX] } else { &[] };
    columns.iter().chain(index).chain(SEAL_COLUMNS.iter())
}

/// `($1, ..., $k), ($k+1, ...), ...` for `rows` rows of `columns` values,
/// numbered from `$first + 1`.
pub(crate) fn values_list(first: usize, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = (1..=columns)
                .map(|c| format!("${}", first + r * columns + c))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row to insert: its table and every value of [`insert_columns`].
#[derive(Debug)]
pub(crate) struct Write<'a> {
    pub table: &'static str,
    pub columns: &'static [Column],
    pub ledgered: bool,
    pub values: Vec<Value<'a>>,
}

impl<'a> Write<'a> {
    /// A row of `T` under `seal` (which carries a ledgered row's index).
    pub(crate) fn of<T: Table>(row: &'a T, seal: &'a Seal) -> Self {
        let mut values = row.values();
        values.extend(seal.values());
        Self {
            table: T::TABLE,
            columns: T::COLUMNS,
            ledgered: T::LEDGERED,
            values,
        }
    }

    /// A row of `T` (of a table that is not ledgered: a row written with a
    /// ledgered one) sealed now, owning its values.
    pub(crate) fn sealed<T: Table>(row: &T, keys: &HmacKeyring) -> Result<Write<'static>, AnalyticsError> {
        let seal = row.seal(keys, None)?;
        let mut values: Vec<Value<'static>> = row.values().into_iter().map(Value::into_owned).collect();
        values.extend(seal.into_values());
        Ok(Write {
            table: T::TABLE,
            columns: T::COLUMNS,
            ledgered: T::LEDGERED,
            values,
        })
    }

    /// `INSERT INTO table (columns) VALUES (...)` for `rows` rows.
    pub(crate) fn insert_sql(&self, rows: usize) -> String {
        let columns: Vec<&str> = insert_columns(self.columns, self.ledgered)
            .map(|c| c.name)
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.table,
            columns.join(", "),
            values_list(0, rows, columns.len())
        )
    }
}

/// A row appended to the ledger, with what its commit does besides.
pub(crate) trait Ledgered: Table {
    /// The time column: the leaf's `event_time`, and the window and keyset
    /// order of exports.
    const TIME: &'static str;

    /// The value of [`Ledgered::TIME`].
    fn time(&self) -> i64;

    /// Rows written in the same transaction, after the row itself (a
    /// scan's findings, a drill's webhook outbox rows).
    fn dependents(
        &self,
        _keys: &HmacKeyring,
        _ledger_index: i64,
        _leaf_hash: &Hash,
        _now: i64,
    ) -> Result<Vec<Write<'static>>, AnalyticsError> {
        Ok(Vec::new())
    }

    /// Runs inside the writer's transaction before the leaf is appended;
    /// `Ok(Some(e))` fails this item alone (e.g. a state row that moved).
    fn guard<'a>(
        &'a self,
        _conn: &'a mut Conn<'_>,
        _keys: &'a HmacKeyring,
    ) -> BoxFuture<'a, Result<Option<AnalyticsError>, AnalyticsError>> {
        Box::pin(async { Ok(None) })
    }

    /// The error for an event id the ledger already holds, for this tenant,
    /// with other content.
    fn conflict<'a>(
        &'a self,
        _conn: &'a mut Conn<'_>,
    ) -> BoxFuture<'a, Result<AnalyticsError, AnalyticsError>> {
        let event_id = self.event_id().to_owned();
        Box::pin(async move { Ok(AnalyticsError::EventIdConflict { event_id }) })
    }
}

/// A ledgered row as the writer holds it: any kind, named by none.
pub(crate) trait Entry: Send + Sync + fmt::Debug {
    /// The event id (the leaf's key within its tenant).
    fn id(&self) -> &str;
    /// The tenant of the leaf.
    fn owner(&self) -> &str;
    /// The leaf kind.
    fn kind(&self) -> &'static str;
    /// The event's time (the leaf's `event_time`).
    fn at(&self) -> i64;
    /// Whether the single-statement path may take it.
    fn bulk(&self) -> bool;
    /// The RFC 9162 leaf hash.
    fn hash(&self) -> Result<Hash, AnalyticsError>;
    /// The row's seal at `ledger_index` under the primary key.
    fn sealed(&self, keys: &HmacKeyring, ledger_index: i64) -> Result<Seal, AnalyticsError>;
    /// The row's insert under `seal`.
    fn write<'a>(&'a self, seal: &'a Seal) -> Write<'a>;
    /// See [`Ledgered::dependents`].
    fn dependents(
        &self,
        keys: &HmacKeyring,
        ledger_index: i64,
        leaf_hash: &Hash,
        now: i64,
    ) -> Result<Vec<Write<'static>>, AnalyticsError>;
    /// See [`Ledgered::guard`].
    fn guard<'a>(
        &'a self,
        conn: &'a mut Conn<'_>,
        keys: &'a HmacKeyring,
    ) -> BoxFuture<'a, Result<Option<AnalyticsError>, AnalyticsError>>;
    /// See [`Ledgered::conflict`].
    fn conflict<'a>(
        &'a self,
        conn: &'a mut Conn<'_>,
    ) -> BoxFuture<'a, Result<AnalyticsError, AnalyticsError>>;
}

impl<T: Ledgered> Entry for T {
    fn id(&self) -> &str {
        EventRow::event_id(self)
    }

    fn owner(&self) -> &str {
        EventRow::tenant(self)
    }

    fn kind(&self) -> &'static str {
        T::KIND
    }

    fn at(&self) -> i64 {
        Ledgered::time(self)
    }

    fn bulk(&self) -> bool {
        T::BULK
    }

    fn hash(&self) -> Result<Hash, AnalyticsError> {
        EventRow::leaf_hash(self)
    }

    fn sealed(&self, keys: &HmacKeyring, ledger_index: i64) -> Result<Seal, AnalyticsError> {
        EventRow::seal(self, keys, Some(ledger_index))
    }

    fn write<'a>(&'a self, seal: &'a Seal) -> Write<'a> {
        Write::of(self, seal)
    }

    fn dependents(
        &self,
        keys: &HmacKeyring,
        ledger_index: i64,
        leaf_hash: &Hash,
        now: i64,
    ) -> Result<Vec<Write<'static>>, AnalyticsError> {
        Ledgered::dependents(self, keys, ledger_index, leaf_hash, now)
    }

    fn guard<'a>(
        &'a self,
        conn: &'a mut Conn<'_>,
        keys: &'a HmacKeyring,
    ) -> BoxFuture<'a, Result<Option<AnalyticsError>, AnalyticsError>> {
        Ledgered::guard(self, conn, keys)
    }

    fn conflict<'a>(
        &'a self,
        conn: &'a mut Conn<'_>,
    ) -> BoxFuture<'a, Result<AnalyticsError, AnalyticsError>> {
        Ledgered::conflict(self, conn)
    }
}

/// A stored row as the sweep, the re-seal and read verification check it.
pub(crate) trait Stored: Send + fmt::Debug {
    /// The table.
    fn table_name(&self) -> &'static str;
    /// The key within the tenant.
    fn key(&self) -> &str;
    /// The tenant.
    fn owner(&self) -> &str;
    /// The MAC check of the row under `seal`.
    fn verify(&self, keys: &HmacKeyring, seal: &Seal) -> Result<(), AnalyticsError>;
    /// The row sealed anew under the current scheme, keeping `seal`'s row
    /// version and ledger index.
    fn reseal(&self, keys: &HmacKeyring, seal: &Seal) -> Result<Seal, AnalyticsError>;
    /// The recomputed leaf hash of a ledgered row; `None` for the others.
    fn leaf(&self) -> Option<Result<Hash, AnalyticsError>>;
    /// The time of a ledgered row (its leaf's `event_time`).
    fn at(&self) -> Option<i64>;
    /// See [`Table::cross_check`].
    fn cross(&self, seal: &Seal, leaves: &Leaves) -> Option<String>;
}

impl<T: Table> Stored for T {
    fn table_name(&self) -> &'static str {
        T::TABLE
    }

    fn key(&self) -> &str {
        EventRow::event_id(self)
    }

    fn owner(&self) -> &str {
        EventRow::tenant(self)
    }

    fn verify(&self, keys: &HmacKeyring, seal: &Seal) -> Result<(), AnalyticsError> {
        EventRow::check(self, keys, seal)
    }

    fn reseal(&self, keys: &HmacKeyring, seal: &Seal) -> Result<Seal, AnalyticsError> {
        Seal::at(self, keys, seal.row_version, seal.ledger_index)
    }

    fn leaf(&self) -> Option<Result<Hash, AnalyticsError>> {
        T::LEDGERED.then(|| EventRow::leaf_hash(self))
    }

    fn at(&self) -> Option<i64> {
        self.leaf_time()
    }

    fn cross(&self, seal: &Seal, leaves: &Leaves) -> Option<String> {
        self.cross_check(seal, leaves)
    }
}

/// A stored row and its seal, not yet checked.
pub(crate) type Sealed = (Box<dyn Stored>, Seal);

/// Reads every row of a table (only those of `scheme` when given), for the
/// sweep and the re-seal.
pub(crate) type LoadAll =
    for<'a> fn(&'a Database, Option<i64>) -> BoxFuture<'a, Result<Vec<Sealed>, AnalyticsError>>;

/// Reads the rows of one key of one tenant (of every tenant when `None`),
/// for read verification: one, or none, for a tenant; more only when the
/// table's key constraint was dropped.
pub(crate) type LoadKey =
    for<'a> fn(&'a Database, Option<&'a str>, &'a str) -> BoxFuture<'a, Result<Vec<Sealed>, AnalyticsError>>;

/// A table as the registry lists it.
pub(crate) struct Registration {
    pub name: &'static str,
    /// The leaf kind of a ledgered table.
    pub kind: &'static str,
    /// The key column (within the tenant).
    pub key: &'static str,
    pub columns: &'static [Column],
    pub ledgered: bool,
    pub bulk: bool,
    pub load_all: LoadAll,
    pub load_key: LoadKey,
}

impl Registration {
    /// The registration of `T`.
    pub(crate) const fn of<T: Table>() -> Self {
        Self {
            name: T::TABLE,
            kind: T::KIND,
            key: T::KEY,
            columns: T::COLUMNS,
            ledgered: T::LEDGERED,
            bulk: T::BULK,
            load_all: load_all::<T>,
            load_key: load_key::<T>,
        }
    }
}

/// Every registered table.
pub(crate) fn registered() -> impl Iterator<Item = &'static Registration> {
    REGISTRY.iter().flat_map(|tables| tables.iter())
}

/// The ledgered table whose leaves are of `kind`.
pub(crate) fn ledgered_of(kind: &str) -> Option<&'static Registration> {
    registered().find(|t| t.ledgered && t.kind == kind)
}

fn load_all<T: Table>(
    db: &Database,
    scheme: Option<i64>,
) -> BoxFuture<'_, Result<Vec<Sealed>, AnalyticsError>> {
    Box::pin(async move {
        Ok(all::<T>(db, scheme)
            .await?
            .into_iter()
            .map(|(row, seal)| (Box::new(row) as Box<dyn Stored>, seal))
            .collect())
    })
}

fn load_key<'a, T: Table>(
    db: &'a Database,
    tenant: Option<&'a str>,
    key: &'a str,
) -> BoxFuture<'a, Result<Vec<Sealed>, AnalyticsError>> {
    Box::pin(async move {
        Ok(by_key::<T>(db, tenant, key)
            .await?
            .into_iter()
            .map(|(row, seal)| (Box::new(row) as Box<dyn Stored>, seal))
            .collect())
    })
}

/// The rows keyed `key` of `tenant` (of every tenant when `None`), with
/// their seals (not yet checked): for a tenant one, or none; more only when
/// the key constraint was dropped.
async fn by_key<T: Table>(
    db: &Database,
    tenant: Option<&str>,
    key: &str,
) -> Result<Vec<(T, Seal)>, AnalyticsError> {
    // Two statements rather than one with an `OR`, so that each keeps a
    // plan that uses the key's index.
    let tenant_is = if tenant.is_some() {
        "tenant = $2"
    } else {
        "$2 = ''"
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = $1 AND {tenant_is} ORDER BY tenant LIMIT 16",
        select_list::<T>(),
        T::TABLE,
        T::KEY
    );
    soma_store::retry!(
        db,
        "row_by_key",
        AnalyticsError,
        on_pool!(db, pool => {
            let rows = sqlx::query(&sql)
                .bind(key)
                .bind(tenant.unwrap_or(""))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| -> Result<_, AnalyticsError> { Ok((T::from_row(r)?, Seal::read(r)?)) })
                .collect()
        })
    )
}

/// The row of `tenant` keyed `key`, with its seal (not yet checked). Two
/// rows under one key (a dropped key constraint) fail its integrity check.
pub(crate) async fn find<T: Table>(
    db: &Database,
    tenant: &str,
    key: &str,
) -> Result<Option<(T, Seal)>, AnalyticsError> {
    let mut rows = by_key::<T>(db, Some(tenant), key).await?;
    if rows.len() > 1 {
        return Err(AnalyticsError::RowIntegrity {
            table: T::TABLE,
            primary_key: key.to_owned(),
        });
    }
    Ok(rows.pop())
}

/// Every row (of `scheme` only, when given), with its seal, in ledger
/// order (key order for the tables that are not ledgered).
pub(crate) async fn all<T: Table>(
    db: &Database,
    scheme: Option<i64>,
) -> Result<Vec<(T, Seal)>, AnalyticsError> {
    let order = if T::LEDGERED {
        "ledger_index".to_owned()
    } else {
        format!("tenant, {}", T::KEY)
    };
    // A literal scheme, so that the partial index of unsealed rows serves
    // the re-seal's query.
    let only = match scheme {
        Some(scheme) => format!("WHERE mac_scheme = {scheme}"),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM {} {only} ORDER BY {order}",
        select_list::<T>(),
        T::TABLE
    );
    soma_store::retry!(
        db,
        "all_rows",
        AnalyticsError,
        on_pool!(db, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| -> Result<_, AnalyticsError> { Ok((T::from_row(r)?, Seal::read(r)?)) })
                .collect()
        })
    )
}

/// A row that a signed export can carry.
pub(crate) trait Exported: Ledgered {
    /// The document's `kind`, e.g. `billing_ledger`.
    const EXPORT: &'static str;
    /// The column the `tool` filter matches, if the table has one.
    const TOOL: Option<&'static str>;
    /// Whether rows may belong to no tenant (platform-wide), exported to a
    /// caller without tenant claims who names no tenant.
    const PLATFORM_WIDE: bool = false;

    /// SPIFFE ID of the service that recorded the row.
    fn recorded_by(&self) -> &str;

    /// The value of the [`Exported::TOOL`] column.
    fn tool(&self) -> Option<&str> {
        None
    }

    /// The columns that hold canonical JSON text, written in objects as
    /// the JSON they hold rather than as a string.
    const JSON_COLUMNS: &'static [&'static str] = &[];

    /// An exported table declares its columns in name order, so that its
    /// objects are written canonical column by column; a table that does
    /// not fails to compile.
    const COLUMNS_IN_NAME_ORDER: () = assert!(
        object::names_in_order(Self::COLUMNS),
        "an exported table declares its columns in name order"
    );

    /// Appends the row's JSON object: compact, members sorted by name
    /// (the form serde_json gives a map), times as RFC 3339 with nine
    /// fractional digits, integers as JSON numbers, NULL columns left out,
    /// with `ledger_index`.
    fn write_object(&self, ledger_index: i64, out: &mut Vec<u8>) {
        object::write_export(self, ledger_index, out);
    }

    /// Appends the row-MAC content of a table whose content is its columns
    /// (all but the key and `tenant`): what [`EventRow::write_content`]
    /// writes for it.
    fn write_column_content(&self, out: &mut Vec<u8>) {
        object::write_content(self, out);
    }
}

/// One keyset page of an export: a tenant's rows with their time in
/// `[from, to)`, ordered by `(time, ledger_index)`, strictly after the
/// position `after`.
///
/// Neither the checkpoint's tree size nor the `tool` filter narrows the
/// query: an export proves that every leaf of its window has its row, so it
/// reads every row of the window and leaves out, after checking them, those
/// past the cut or of another tool.
#[derive(Clone, Debug)]
pub(crate) struct ExportPage<'a> {
    pub tenant: &'a str,
    /// Inclusive start, Unix nanoseconds.
    pub from: i64,
    /// Exclusive end, Unix nanoseconds.
    pub to: i64,
    /// The `(time, ledger_index)` of the last row of the previous page.
    pub after: Option<(i64, i64)>,
    /// Most rows returned.
    pub limit: i64,
}

/// A row read for an export: the row, its seal (with the ledger index it
/// claims), and the hash of the stored leaf row at that index if that leaf
/// row names the same tenant, event and kind (`None` otherwise).
pub(crate) type ExportRow<R> = (R, Seal, Option<Vec<u8>>);

/// A page of `T` for an export.
///
/// Placeholders: $1 tenant, $2 lower time bound, $3 `to`, $4 last ledger
/// index (or -1), $5 limit.
pub(crate) async fn export_page<T: Exported>(
    db: &Database,
    page: &ExportPage<'_>,
) -> Result<Vec<ExportRow<T>>, AnalyticsError> {
    let (lower, last_index) = match page.after {
        Some((ts, index)) => (ts, index),
        None => (page.from, -1),
    };
    let ts = T::TIME;
    // The kind is a constant of the code, never input. The leaf row is
    // looked up by its primary key alone and its tenant, event and kind
    // compared after: with all four in the WHERE clause PostgreSQL's
    // planner takes the (event_id, tenant) text index instead, about three
    // times the cost per row (measured on 1,000,000 rows).
    let sql = format!(
        "SELECT {}, (SELECT CASE WHEN l.tenant = e.tenant AND l.event_id = e.{key} AND l.kind = '{kind}' \
         THEN l.leaf_hash END FROM ledger_leaves l WHERE l.leaf_index = e.ledger_index) AS leaf_hash \
         FROM {} e WHERE e.tenant = $1 AND e.{ts} >= $2 AND e.{ts} < $3 AND (e.{ts} > $2 OR e.ledger_index > $4) \
         ORDER BY e.{ts}, e.ledger_index LIMIT $5",
        select_list::<T>(),
        T::TABLE,
        key = T::KEY,
        kind = T::KIND,
    );
    soma_store::retry!(
        db,
        "export_page",
        AnalyticsError,
        on_pool!(db, pool => {
            let rows = sqlx::query(&sql)
                .bind(page.tenant)
                .bind(lower)
                .bind(page.to)
                .bind(last_index)
                .bind(page.limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| -> Result<_, AnalyticsError> {
                    Ok((T::from_row(r)?, Seal::read(r)?, r.opt_bytes("leaf_hash")?))
                })
                .collect()
        })
    )
}

/// Up to `limit` of a tenant's rows of `T` with their time in
/// `[from, to)`, in ledger order after index `after`, with their indices.
pub(crate) async fn window<T: Exported>(
    db: &Database,
    tenant: &str,
    (from, to): (i64, i64),
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, T, Seal)>, AnalyticsError> {
    let ts = T::TIME;
    let sql = format!(
        "SELECT {} FROM {} WHERE tenant = $1 AND {ts} >= $2 AND {ts} < $3 AND ledger_index > $4 \
         ORDER BY ledger_index LIMIT $5",
        select_list::<T>(),
        T::TABLE,
    );
    soma_store::retry!(
        db,
        "window",
        AnalyticsError,
        on_pool!(db, pool => {
            let rows = sqlx::query(&sql)
                .bind(tenant)
                .bind(from)
                .bind(to)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| -> Result<_, AnalyticsError> { Ok((r.int("ledger_index")?, T::from_row(r)?, Seal::read(r)?)) })
                .collect()
        })
    )
}

#[cfg(test)]
mod tests {
    use super::bulk::{bulk_arrays, bulk_statement};
    use super::{Seal, Write};
    use crate::tables::billing::BillingEvent;
    use crate::tables::capsule_runs::CapsuleRun;
    use crate::tables::drills::Delivery;

    /// The writer's single-statement path must take batches of the bulk
    /// tables: if their values stopped matching their columns, every batch
    /// would silently fall back to the locked path (more round trips).
    #[test]
    fn bulk_tables_fill_every_placeholder_of_the_single_statement() {
        let seal = |ledger_index| Seal {
            scheme: 2,
            row_version: 1,
            key_id: "row-1".to_owned(),
            mac: vec![7; 32],
            ledger_index,
        };
        let (at_0, at_1, unledgered) = (seal(Some(0)), seal(Some(1)), seal(None));
        let bill = BillingEvent {
            event_id: "b".to_owned(),
            tenant: "t".to_owned(),
            tool: "x".to_owned(),
            tool_version: "1".to_owned(),
            currency: "EUR".to_owned(),
            amount_micros: 1,
            fuel_consumed: 2,
            duration_micros: 3,
            occurred_at: 4,
            run_id: "r".to_owned(),
            recorded_by: "s".to_owned(),
            module_sha256: Some(vec![9; 32]),
            peak_memory_bytes: Some(65_536),
        };
        let run = CapsuleRun {
            event_id: "c".to_owned(),
            tenant: "t".to_owned(),
            capsule_id: "k".to_owned(),
            tool: "x".to_owned(),
            run_id: "r".to_owned(),
            outcome: "failed".to_owned(),
            started_at: 5,
            duration_nanos: 6,
            recorded_by: "s".to_owned(),
            capsule_version: Some("1.0.0".to_owned()),
            bundle_sha256: Some(vec![7; 32]),
            environment: Some("production".to_owned()),
            installation_revision: Some(2),
            moderation_decision_id: Some("mod_1".to_owned()),
        };
        let highest = |sql: &str| {
            sql.split('$')
                .skip(1)
                .filter_map(|p| {
                    p.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .max()
        };
        let both_writes = [Write::of(&bill, &at_0), Write::of(&run, &at_1)];
        let (both, both_arrays) =
            bulk_arrays(&both_writes).expect("billing and capsule runs are bulk tables");
        let bill_writes = [Write::of(&bill, &at_0)];
        let (bills, bill_arrays) = bulk_arrays(&bill_writes).unwrap();
        let run_writes = [Write::of(&run, &at_1), Write::of(&run, &at_0)];
        let (runs, run_arrays) = bulk_arrays(&run_writes).unwrap();
        assert_eq!(both_arrays.len(), bill_arrays.len() + run_arrays.len());
        for (tables, arrays, inserts, leaves_out) in [
            (
                both,
                &both_arrays,
                ["billing_events", "capsule_runs"].as_slice(),
                [].as_slice(),
            ),
            (bills, &bill_arrays, &["billing_events"], &["capsule_runs"]),
            (runs, &run_arrays, &["capsule_runs"], &["billing_events"]),
        ] {
            let sql = bulk_statement(tables);
            // $1..$14 (head and leaves), one array per column of the
            // batch's tables, then the checkpoint's note and key id.
            assert_eq!(highest(sql), Some(14 + arrays.len() + 2), "{sql}");
            for table in inserts {
                assert!(sql.contains(&format!("INSERT INTO {table} (")), "{table}: {sql}");
            }
            // A table without rows in the batch is not in its statement.
            for table in leaves_out {
                assert!(!sql.contains(table), "{table}: {sql}");
            }
        }
        // A row of a table that is not bulk sends the batch to the locked path.
        let delivery = Delivery {
            delivery_id: "d".to_owned(),
            event_id: "e".to_owned(),
            tenant: "t".to_owned(),
            url: "http://h/".to_owned(),
            body: Vec::new(),
            created_at: 0,
            attempts: 0,
            next_attempt_at: 0,
        };
        assert!(bulk_arrays(&[Write::of(&delivery, &unledgered)]).is_none());
    }
}
