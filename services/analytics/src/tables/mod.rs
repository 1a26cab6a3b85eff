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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use soma_ledger::Hash;
use soma_sign::HmacKeyring;
use soma_store::{Database, on_pool};

use crate::error::AnalyticsError;

mod bulk;
mod object;
pub(crate) mod row;
mod sql;

pub(crate) use bulk::{bind_arrays, bulk_arrays, bulk_statement};
pub(crate) use row::{EventRow, Seal};
pub(crate) use sql::{
    Column, Conn, Get, ToValue, Ty, Value, bind_values, bytes, column_name, columns, flag, int, on_conn,
    opt_int, real, text,
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
const SEAL_COLUMNS: [Column; 3] = [int("row_version"), text("mac_key_id"), bytes("mac")];

/// A future that may hold borrows (trait objects cannot name their own).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The stored ledger leaves by event id, for the sweep.
pub(crate) type Leaves = HashMap<String, Vec<u8>>;

/// Writes [`EventRow::event_id`] (the row's primary key, the field
/// given) and [`EventRow::tenant`] (the `tenant` field).
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
pub(crate) trait Table: EventRow + Sized + Send + Sync + fmt::Debug + 'static {
    /// The primary key column.
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

    /// A check beyond the MAC and the leaf that the sweep makes (`Some`
    /// names the failure).
    fn cross_check(&self, _seal: &Seal, _leaves: &Leaves) -> Option<String> {
        None
    }
}

/// `c1, c2, …, row_version, mac_key_id, mac`: what reads select.
pub(crate) fn select_list<T: Table>() -> String {
    T::COLUMNS
        .iter()
        .chain(SEAL_COLUMNS.iter())
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
    /// A row of `T` at `ledger_index` (ledgered tables) under `seal`.
    pub(crate) fn of<T: Table>(row: &'a T, ledger_index: Option<i64>, seal: &'a Seal) -> Self {
        let mut values = row.values();
        values.extend(ledger_index.map(Value::Int));
        values.extend(seal.values());
        Self {
            table: T::TABLE,
            columns: T::COLUMNS,
            ledgered: T::LEDGERED,
            values,
        }
    }

    /// A row of `T` sealed now (a row written with a ledgered one), owning
    /// its values.
    pub(crate) fn sealed<T: Table>(row: &T, keys: &HmacKeyring) -> Result<Write<'static>, AnalyticsError> {
        let seal = row.seal(keys)?;
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

    /// The error for an event id the ledger already holds with other
    /// content.
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
    /// The event id (the leaf's key).
    fn id(&self) -> &str;
    /// The tenant of the leaf.
    fn owner(&self) -> &str;
    /// The leaf kind.
    fn kind(&self) -> &'static str;
    /// Whether the single-statement path may take it.
    fn bulk(&self) -> bool;
    /// The RFC 9162 leaf hash.
    fn hash(&self) -> Result<Hash, AnalyticsError>;
    /// The row's seal under the primary key.
    fn sealed(&self, keys: &HmacKeyring) -> Result<Seal, AnalyticsError>;
    /// The row's insert at `ledger_index` under `seal`.
    fn write<'a>(&'a self, ledger_index: i64, seal: &'a Seal) -> Write<'a>;
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

    fn bulk(&self) -> bool {
        T::BULK
    }

    fn hash(&self) -> Result<Hash, AnalyticsError> {
        EventRow::leaf_hash(self)
    }

    fn sealed(&self, keys: &HmacKeyring) -> Result<Seal, AnalyticsError> {
        EventRow::seal(self, keys)
    }

    fn write<'a>(&'a self, ledger_index: i64, seal: &'a Seal) -> Write<'a> {
        Write::of(self, Some(ledger_index), seal)
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

/// A stored row as the sweep and read verification check it.
pub(crate) trait Stored: Send + fmt::Debug {
    /// The table.
    fn table_name(&self) -> &'static str;
    /// The primary key.
    fn key(&self) -> &str;
    /// The MAC check of the row under `seal`.
    fn verify(&self, keys: &HmacKeyring, seal: &Seal) -> Result<(), AnalyticsError>;
    /// The recomputed leaf hash of a ledgered row; `None` for the others.
    fn leaf(&self) -> Option<Result<Hash, AnalyticsError>>;
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

    fn verify(&self, keys: &HmacKeyring, seal: &Seal) -> Result<(), AnalyticsError> {
        EventRow::check(self, keys, seal)
    }

    fn leaf(&self) -> Option<Result<Hash, AnalyticsError>> {
        T::LEDGERED.then(|| EventRow::leaf_hash(self))
    }

    fn cross(&self, seal: &Seal, leaves: &Leaves) -> Option<String> {
        self.cross_check(seal, leaves)
    }
}

/// A stored row and its seal, not yet checked.
pub(crate) type Sealed = (Box<dyn Stored>, Seal);

/// Reads every row of a table, for the sweep.
pub(crate) type LoadAll = for<'a> fn(&'a Database) -> BoxFuture<'a, Result<Vec<Sealed>, AnalyticsError>>;

/// Reads one row by primary key, for read verification.
pub(crate) type LoadOne =
    for<'a> fn(&'a Database, &'a str) -> BoxFuture<'a, Result<Option<Sealed>, AnalyticsError>>;

/// A table as the registry lists it.
pub(crate) struct Registration {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub ledgered: bool,
    pub bulk: bool,
    pub load_all: LoadAll,
    pub load_one: LoadOne,
}

impl Registration {
    /// The registration of `T`.
    pub(crate) const fn of<T: Table>() -> Self {
        Self {
            name: T::TABLE,
            columns: T::COLUMNS,
            ledgered: T::LEDGERED,
            bulk: T::BULK,
            load_all: load_all::<T>,
            load_one: load_one::<T>,
        }
    }
}

/// Every registered table.
pub(crate) fn registered() -> impl Iterator<Item = &'static Registration> {
    REGISTRY.iter().flat_map(|tables| tables.iter())
}

fn load_all<T: Table>(db: &Database) -> BoxFuture<'_, Result<Vec<Sealed>, AnalyticsError>> {
    Box::pin(async move {
        Ok(all::<T>(db)
            .await?
            .into_iter()
            .map(|(row, seal)| (Box::new(row) as Box<dyn Stored>, seal))
            .collect())
    })
}

fn load_one<'a, T: Table>(
    db: &'a Database,
    key: &'a str,
) -> BoxFuture<'a, Result<Option<Sealed>, AnalyticsError>> {
    Box::pin(async move {
        Ok(find::<T>(db, key)
            .await?
            .map(|(row, seal)| (Box::new(row) as Box<dyn Stored>, seal)))
    })
}

/// One row by primary key, with its seal (not yet checked).
pub(crate) async fn find<T: Table>(db: &Database, key: &str) -> Result<Option<(T, Seal)>, AnalyticsError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = $1",
        select_list::<T>(),
        T::TABLE,
        T::KEY
    );
    on_pool!(db, pool => {
        let row = sqlx::query(&sql).bind(key).fetch_optional(pool).await?;
        row.map(|r| -> Result<_, AnalyticsError> { Ok((T::from_row(&r)?, Seal::read(&r)?)) })
            .transpose()
    })
}

/// Every row, with its seal, in ledger order (primary-key order for the
/// tables that are not ledgered).
pub(crate) async fn all<T: Table>(db: &Database) -> Result<Vec<(T, Seal)>, AnalyticsError> {
    let order = if T::LEDGERED { "ledger_index" } else { T::KEY };
    let sql = format!("SELECT {} FROM {} ORDER BY {order}", select_list::<T>(), T::TABLE);
    on_pool!(db, pool => {
        let rows = sqlx::query(&sql).fetch_all(pool).await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((T::from_row(r)?, Seal::read(r)?)) })
            .collect()
    })
}

/// A row that a signed export carries.
pub(crate) trait Exported: Ledgered {
    /// The document's `kind`, e.g. `billing_ledger`.
    const EXPORT: &'static str;
    /// The time column the window and the keyset order use.
    const TIME: &'static str;
    /// The column the `tool` filter matches, if the table has one.
    const TOOL: Option<&'static str>;
    /// Whether rows may belong to no tenant (platform-wide), exported to a
    /// caller without tenant claims who names no tenant.
    const PLATFORM_WIDE: bool = false;

    /// The value of [`Exported::TIME`].
    fn time(&self) -> i64;

    /// SPIFFE ID of the service that recorded the row.
    fn recorded_by(&self) -> &str;

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
    /// fractional digits, integers as JSON numbers, with `ledger_index`.
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
/// `[from, to)` and a ledger index below `below_index`, ordered by
/// `(time, ledger_index)`, strictly after the position `after`.
#[derive(Clone, Debug)]
pub(crate) struct ExportPage<'a> {
    pub tenant: &'a str,
    /// Inclusive start, Unix nanoseconds.
    pub from: i64,
    /// Exclusive end, Unix nanoseconds.
    pub to: i64,
    /// Exclusive bound on the ledger index (the checkpoint's tree size).
    pub below_index: i64,
    /// Only this tool, when set.
    pub tool: Option<&'a str>,
    /// The `(time, ledger_index)` of the last row of the previous page.
    pub after: Option<(i64, i64)>,
    /// Most rows returned.
    pub limit: i64,
}

/// A row read for an export: the row, its seal, its ledger index and the
/// hash of the ledger leaf at that index for the same event (`None` when
/// there is none).
pub(crate) type ExportRow<R> = (R, Seal, i64, Option<Vec<u8>>);

/// A page of `T` for an export.
///
/// Placeholders: $1 tenant, $2 lower time bound, $3 `to`, $4 last ledger
/// index (or -1), $5 index bound, $6 tool (empty: any), $7 limit.
pub(crate) async fn export_page<T: Exported>(
    db: &Database,
    page: &ExportPage<'_>,
) -> Result<Vec<ExportRow<T>>, AnalyticsError> {
    let (lower, last_index) = match page.after {
        Some((ts, index)) => (ts, index),
        None => (page.from, -1),
    };
    let ts = T::TIME;
    let tool = match T::TOOL {
        Some(column) => format!("($6 = '' OR e.{column} = $6)"),
        None => "$6 = ''".to_owned(),
    };
    let sql = format!(
        "SELECT {}, ledger_index, (SELECT l.leaf_hash FROM ledger_leaves l \
         WHERE l.leaf_index = e.ledger_index AND l.event_id = e.event_id) AS leaf_hash \
         FROM {} e WHERE e.tenant = $1 AND e.{ts} >= $2 AND e.{ts} < $3 AND (e.{ts} > $2 OR e.ledger_index > $4) \
         AND e.ledger_index < $5 AND {tool} ORDER BY e.{ts}, e.ledger_index LIMIT $7",
        select_list::<T>(),
        T::TABLE,
    );
    on_pool!(db, pool => {
        let rows = sqlx::query(&sql)
            .bind(page.tenant)
            .bind(lower)
            .bind(page.to)
            .bind(last_index)
            .bind(page.below_index)
            .bind(page.tool.unwrap_or(""))
            .bind(page.limit)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> {
                Ok((T::from_row(r)?, Seal::read(r)?, r.int("ledger_index")?, r.opt_bytes("leaf_hash")?))
            })
            .collect()
    })
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
        "SELECT ledger_index, {} FROM {} WHERE tenant = $1 AND {ts} >= $2 AND {ts} < $3 AND ledger_index > $4 \
         ORDER BY ledger_index LIMIT $5",
        select_list::<T>(),
        T::TABLE,
    );
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
        let seal = Seal {
            row_version: 1,
            key_id: "row-1".to_owned(),
            mac: vec![7; 32],
        };
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
        };
        let writes = [Write::of(&bill, Some(0), &seal), Write::of(&run, Some(1), &seal)];
        let arrays = bulk_arrays(&writes).expect("billing and capsule runs are bulk tables");
        // $1..$11 (head and leaves), one array per bulk column, then the
        // checkpoint's note and key id.
        let highest = bulk_statement()
            .split('$')
            .skip(1)
            .filter_map(|p| {
                p.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max();
        assert_eq!(highest, Some(11 + arrays.len() + 2));
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
        assert!(bulk_arrays(&[Write::of(&delivery, None, &seal)]).is_none());
    }
}
