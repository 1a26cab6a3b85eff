//! The writer's single statement on PostgreSQL: generated from the bulk
//! tables of the registry, with one array parameter per column.

use super::{Column, Ty, Value, Write, insert_columns, registered};

/// The single statement of the writer's fast path (PostgreSQL) for a batch
/// holding rows of the bulk tables in `tables` (a bit per bulk table, in
/// registry order, as [`bulk_arrays`] returns it): the head moved under a
/// guard, the leaves and the rows of each of those tables inserted from
/// arrays only if it moved, and the checkpoint. A table with no row in the
/// batch is left out of the statement, rather than inserting zero rows
/// (each insert opens its table and every index of it, rows or not).
///
/// Placeholders: $1 new size, $2 new root, $3 frontier, $4 old size, $5
/// old root, $6 now, $7..$13 the leaf columns (index, event id, tenant,
/// kind, hash, event time, MAC), $14 the leaves' MAC key id, then the
/// columns of each table of `tables` in registry order, then the
/// checkpoint's note and key id. The text depends on the registry and
/// `tables` only, so each of the few variants stays prepared on each
/// connection.
pub(crate) fn bulk_statement(tables: TableSet) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let variants = SQL.get_or_init(|| (0..1usize << bulk_tables().count()).map(statement).collect());
    // `TableSet`s come from `bulk_arrays`, whose bits index bulk tables.
    variants.get(tables.0).map_or("", String::as_str)
}

/// The bulk tables, in registry order.
fn bulk_tables() -> impl Iterator<Item = &'static super::Registration> {
    registered().filter(|t| t.bulk)
}

/// The text of [`bulk_statement`] for the tables of bit set `tables`.
fn statement(tables: usize) -> String {
    let mut next = 14;
    let mut sql = String::from(
        "WITH head AS ( \
            UPDATE ledger_head SET tree_size = $1, root = $2, frontier = $3 \
            WHERE id = 1 AND tree_size = $4 AND root = $5 RETURNING 1 AS moved), \
        leaves AS ( \
            INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at, \
                event_time, mac_scheme, mac_key_id, mac) \
            SELECT l.leaf_index, l.event_id, l.tenant, l.kind, l.leaf_hash, $6, l.event_time, 2, $14, l.mac \
            FROM UNNEST($7::bigint[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::bigint[], \
                $13::bytea[]) AS l (leaf_index, event_id, tenant, kind, leaf_hash, event_time, mac) \
            WHERE EXISTS (SELECT 1 FROM head))",
    );
    for (bit, table) in bulk_tables().enumerate() {
        if tables & (1 << bit) == 0 {
            continue;
        }
        let columns: Vec<&Column> = insert_columns(table.columns, true).collect();
        let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
        let arrays: Vec<String> = columns
            .iter()
            .map(|c| {
                next += 1;
                format!("${next}::{}", c.ty.pg_array())
            })
            .collect();
        sql.push_str(&format!(
            ", {name} AS (INSERT INTO {name} ({}) SELECT * FROM UNNEST({}) WHERE EXISTS (SELECT 1 FROM head))",
            names.join(", "),
            arrays.join(", "),
            name = table.name,
        ));
    }
    sql.push_str(&format!(
        ", checkpoint AS (INSERT INTO ledger_checkpoints (tree_size, root, note, key_id, created_at) \
         SELECT $1, $2, ${}, ${}, $6 WHERE EXISTS (SELECT 1 FROM head)) \
         SELECT count(*) AS moved FROM head",
        next + 1,
        next + 2
    ));
    sql
}

/// Which bulk tables a batch has rows of: bit `i` for the `i`-th bulk
/// table in registry order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableSet(usize);

/// One column of a bulk table, as an array parameter.
#[derive(Debug)]
pub(crate) enum Array<'a> {
    Text(Vec<&'a str>),
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    Real(Vec<f64>),
    Bool(Vec<bool>),
    Bytes(Vec<&'a [u8]>),
    OptBytes(Vec<Option<&'a [u8]>>),
    OptText(Vec<Option<&'a str>>),
}

impl<'a> Array<'a> {
    fn new(ty: Ty) -> Self {
        match ty {
            Ty::Text => Self::Text(Vec::new()),
            Ty::Int => Self::Int(Vec::new()),
            Ty::OptInt => Self::OptInt(Vec::new()),
            Ty::Real => Self::Real(Vec::new()),
            Ty::Bool => Self::Bool(Vec::new()),
            Ty::Bytes => Self::Bytes(Vec::new()),
            Ty::OptBytes => Self::OptBytes(Vec::new()),
            Ty::OptText => Self::OptText(Vec::new()),
        }
    }

    /// Appends `value`; `false` when its type is not the column's.
    fn push(&mut self, value: &'a Value<'a>) -> bool {
        match (self, value) {
            (Self::Text(v), Value::Text(s)) => v.push(s),
            (Self::Text(v), Value::Owned(s)) => v.push(s.as_str()),
            (Self::Int(v), Value::Int(n)) => v.push(*n),
            (Self::OptInt(v), Value::OptInt(n)) => v.push(*n),
            (Self::Real(v), Value::Real(x)) => v.push(*x),
            (Self::Bool(v), Value::Bool(b)) => v.push(*b),
            (Self::Bytes(v), Value::Bytes(b)) => v.push(b),
            (Self::Bytes(v), Value::OwnedBytes(b)) => v.push(b.as_slice()),
            (Self::OptBytes(v), Value::OptBytes(b)) => v.push(*b),
            (Self::OptBytes(v), Value::OwnedOptBytes(b)) => v.push(b.as_deref()),
            (Self::OptText(v), Value::OptText(t)) => v.push(*t),
            (Self::OptText(v), Value::OwnedOptText(t)) => v.push(t.as_deref()),
            _ => return false,
        }
        true
    }
}

/// The array parameters of a batch of writes, for the bulk tables it has
/// rows of (returned with them), in the order of [`bulk_statement`];
/// `None` when a write is of no bulk table or a value does not match its
/// column (the caller then takes the locked path).
pub(crate) fn bulk_arrays<'a>(writes: &'a [Write<'a>]) -> Option<(TableSet, Vec<Array<'a>>)> {
    // Per bulk table: its bit and its columns' arrays, filled as rows come.
    let mut tables: Vec<(&'static str, Vec<Array<'a>>)> = bulk_tables()
        .map(|t| {
            (
                t.name,
                insert_columns(t.columns, true)
                    .map(|c| Array::new(c.ty))
                    .collect(),
            )
        })
        .collect();
    let mut present = 0usize;
    for write in writes {
        let bit = tables.iter().position(|(name, _)| *name == write.table)?;
        let arrays = &mut tables.get_mut(bit)?.1;
        if write.values.len() != arrays.len() {
            return None;
        }
        for (array, value) in arrays.iter_mut().zip(&write.values) {
            if !array.push(value) {
                return None;
            }
        }
        present |= 1 << bit;
    }
    let arrays = tables
        .into_iter()
        .enumerate()
        .filter(|(bit, _)| present & (1 << bit) != 0)
        .flat_map(|(_, (_, arrays))| arrays)
        .collect();
    Some((TableSet(present), arrays))
}

/// Binds each array of [`bulk_arrays`] to a PostgreSQL query.
pub(crate) fn bind_arrays<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    arrays: Vec<Array<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for array in arrays {
        query = match array {
            Array::Text(v) => query.bind(v),
            Array::Int(v) => query.bind(v),
            Array::OptInt(v) => query.bind(v),
            Array::Real(v) => query.bind(v),
            Array::Bool(v) => query.bind(v),
            Array::Bytes(v) => query.bind(v),
            Array::OptBytes(v) => query.bind(v),
            Array::OptText(v) => query.bind(v),
        };
    }
    query
}
