//! How values travel between Rust and either engine: column types, bound
//! values, rows read by column name, the writer's open transaction, and
//! the `columns!` macro that spells a table's columns once.

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

/// The type of a column, as both engines store it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Text,
    Int,
    /// A nullable integer.
    OptInt,
    Real,
    Bool,
    Bytes,
    /// A nullable byte string.
    OptBytes,
    /// A nullable text.
    OptText,
}

impl Ty {
    /// PostgreSQL's array type of the column (for `UNNEST`).
    pub(crate) fn pg_array(self) -> &'static str {
        match self {
            Self::Text | Self::OptText => "text[]",
            Self::Int | Self::OptInt => "bigint[]",
            Self::Real => "double precision[]",
            Self::Bool => "boolean[]",
            Self::Bytes | Self::OptBytes => "bytea[]",
        }
    }
}

/// One column of a table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub name: &'static str,
    pub ty: Ty,
}

/// A text column.
pub(crate) const fn text(name: &'static str) -> Column {
    Column { name, ty: Ty::Text }
}

/// A BIGINT column.
pub(crate) const fn int(name: &'static str) -> Column {
    Column { name, ty: Ty::Int }
}

/// A nullable BIGINT column.
pub(crate) const fn opt_int(name: &'static str) -> Column {
    Column { name, ty: Ty::OptInt }
}

/// A nullable text column.
pub(crate) const fn opt_text(name: &'static str) -> Column {
    Column {
        name,
        ty: Ty::OptText,
    }
}

/// A double-precision column.
pub(crate) const fn real(name: &'static str) -> Column {
    Column { name, ty: Ty::Real }
}

/// A boolean column.
pub(crate) const fn flag(name: &'static str) -> Column {
    Column { name, ty: Ty::Bool }
}

/// A byte-string column.
pub(crate) const fn bytes(name: &'static str) -> Column {
    Column { name, ty: Ty::Bytes }
}

/// A nullable byte-string column.
pub(crate) const fn opt_bytes(name: &'static str) -> Column {
    Column {
        name,
        ty: Ty::OptBytes,
    }
}

/// One value bound to a statement.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Text(&'a str),
    Owned(String),
    Int(i64),
    OptInt(Option<i64>),
    Real(f64),
    Bool(bool),
    Bytes(&'a [u8]),
    OwnedBytes(Vec<u8>),
    OptBytes(Option<&'a [u8]>),
    OwnedOptBytes(Option<Vec<u8>>),
    OptText(Option<&'a str>),
    OwnedOptText(Option<String>),
}

impl Value<'_> {
    /// The same value, borrowing nothing.
    pub(crate) fn into_owned(self) -> Value<'static> {
        match self {
            Self::Text(s) => Value::Owned(s.to_owned()),
            Self::Owned(s) => Value::Owned(s),
            Self::Int(n) => Value::Int(n),
            Self::OptInt(n) => Value::OptInt(n),
            Self::Real(x) => Value::Real(x),
            Self::Bool(b) => Value::Bool(b),
            Self::Bytes(b) => Value::OwnedBytes(b.to_vec()),
            Self::OwnedBytes(b) => Value::OwnedBytes(b),
            Self::OptBytes(b) => Value::OwnedOptBytes(b.map(<[u8]>::to_vec)),
            Self::OwnedOptBytes(b) => Value::OwnedOptBytes(b),
            Self::OptText(t) => Value::OwnedOptText(t.map(str::to_owned)),
            Self::OwnedOptText(t) => Value::OwnedOptText(t),
        }
    }

    /// Whether the value is SQL NULL: in a row's content and export object,
    /// a member the row does not have.
    pub(crate) fn is_null(&self) -> bool {
        matches!(
            self,
            Self::OptInt(None)
                | Self::OptBytes(None)
                | Self::OwnedOptBytes(None)
                | Self::OptText(None)
                | Self::OwnedOptText(None)
        )
    }
}

/// Binds each [`Value`] of `$values` to `$query`, in order (expanded per
/// engine, like [`on_pool!`]).
macro_rules! bind_values {
    ($query:expr, $values:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                $crate::tables::Value::Text(s) => query.bind(*s),
                $crate::tables::Value::Owned(s) => query.bind(s.as_str()),
                $crate::tables::Value::Int(n) => query.bind(*n),
                $crate::tables::Value::OptInt(n) => query.bind(*n),
                $crate::tables::Value::Real(x) => query.bind(*x),
                $crate::tables::Value::Bool(b) => query.bind(*b),
                $crate::tables::Value::Bytes(b) => query.bind(*b),
                $crate::tables::Value::OwnedBytes(b) => query.bind(b.as_slice()),
                $crate::tables::Value::OptBytes(b) => query.bind(*b),
                $crate::tables::Value::OwnedOptBytes(b) => query.bind(b.as_deref()),
                $crate::tables::Value::OptText(t) => query.bind(*t),
                $crate::tables::Value::OwnedOptText(t) => query.bind(t.as_deref()),
            };
        }
        query
    }};
}
pub(crate) use bind_values;

/// A database row of either engine, read by column name.
pub(crate) trait Get {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn real(&self, column: &str) -> Result<f64, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error>;
    fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    /// An integer column, or `None` when the query did not select it.
    fn int_if_selected(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        match self.int(column) {
            Ok(n) => Ok(Some(n)),
            Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

macro_rules! impl_get {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn real(&self, column: &str) -> Result<f64, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
        }
    };
}

impl_get!(sqlx::sqlite::SqliteRow);
impl_get!(sqlx::postgres::PgRow);

/// The connection of the writer's open transaction, on either engine.
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Runs `$body` with `$c` bound to the engine's connection of a
/// `&mut Conn` (use `&mut **$c` as the executor).
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::tables::Conn::Sqlite($c) => $body,
            $crate::tables::Conn::Postgres($c) => $body,
        }
    };
}
pub(crate) use on_conn;

/// A Rust value of a column's type, as a bound [`Value`].
pub(crate) trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Bool(*self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl ToValue for Option<i64> {
    fn to_value(&self) -> Value<'_> {
        Value::OptInt(*self)
    }
}

impl ToValue for Option<Vec<u8>> {
    fn to_value(&self) -> Value<'_> {
        Value::OptBytes(self.as_deref())
    }
}

impl ToValue for Option<String> {
    fn to_value(&self) -> Value<'_> {
        Value::OptText(self.as_deref())
    }
}

/// Writes [`Table::COLUMNS`], [`Table::values`] and [`Table::from_row`]
/// from one list of `field: type` (the column named as the field, or
/// `field as column: type`), so that each column is spelled once; fields
/// that are not columns follow a `;` with their value when read.
macro_rules! columns {
    ($($field:ident $(as $column:ident)?: $ty:ident),* $(,)? $(; $($extra:ident: $init:expr),* $(,)?)?) => {
        const COLUMNS: &'static [$crate::tables::Column] =
            &[$($crate::tables::$ty($crate::tables::column_name!($field $(, $column)?))),*];

        fn values(&self) -> Vec<$crate::tables::Value<'_>> {
            vec![$($crate::tables::ToValue::to_value(&self.$field)),*]
        }

        fn from_row<R: $crate::tables::Get>(r: &R) -> Result<Self, $crate::error::AnalyticsError> {
            Ok(Self {
                $($field: r.$ty($crate::tables::column_name!($field $(, $column)?))?,)*
                $($($extra: $init,)*)?
            })
        }
    };
}
pub(crate) use columns;

/// The column of a field: its own name, or the one `as` gives.
macro_rules! column_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $column:ident) => {
        stringify!($column)
    };
}
pub(crate) use column_name;
