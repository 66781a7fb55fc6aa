//! The one SQL surface the core speaks, over either metadata backend (SQLite, or PostgreSQL with
//! the `postgres` feature).
//!
//! Statements are written once, in the dialect both share: numbered `?N` parameters (rewritten to
//! `$N` for PostgreSQL), `ON CONFLICT … DO …`, `COALESCE`, and `CAST(… AS BIGINT)` where an
//! aggregate would otherwise come back as PostgreSQL's `numeric`. Values cross the boundary as
//! [`Value`]: integers, floats, text, bytes or null, converted to the column's type on each side.

use std::fmt;

use crate::error::{Error, Result};

/// A value bound to a statement or read from a row.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT/INTEGER/SMALLINT/BOOLEAN).
    Int(i64),
    /// A float (SQLite REAL, PostgreSQL DOUBLE PRECISION/REAL).
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Vec<u8>),
}

impl fmt::Debug for Value {
    // Values can be wrapped keys or hashes: debug output names the type and size, never the bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Int(i) => write!(f, "Int({i})"),
            Value::Real(r) => write!(f, "Real({r})"),
            Value::Text(s) => write!(f, "Text({} bytes)", s.len()),
            Value::Blob(b) => write!(f, "Blob({} bytes)", b.len()),
        }
    }
}

impl Value {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }
}

/// What went wrong in the metadata store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A query that must return a row returned none.
    #[error("the query returned no rows")]
    NoRows,
    /// A column's value did not convert to the type asked for.
    #[error("column {index}: {reason}")]
    Column {
        /// 0-based column index.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A bound value did not fit (an unsigned integer above `i64::MAX`).
    #[error("parameter out of range: {0}")]
    Parameter(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (the server's message, or the connection).
    #[error("postgres: {0}")]
    Postgres(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Database(DbError::Sqlite(e))
    }
}

/// Converts a Rust value to a [`Value`] for binding.
pub trait ToValue {
    /// The value.
    fn to_value(&self) -> Result<Value>;
}

/// Converts a [`Value`] read from a row to a Rust value.
pub trait FromValue: Sized {
    /// The Rust value, or why not.
    fn from_value(v: &Value) -> std::result::Result<Self, String>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Result<Value> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Result<Value> {
        match self {
            Some(v) => v.to_value(),
            None => Ok(Value::Null),
        }
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Result<Value> {
        Ok(self.clone())
    }
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<Value> {
                i64::try_from(*self)
                    .map(Value::Int)
                    .map_err(|_| Error::Database(DbError::Parameter(format!("{self} does not fit a signed 64-bit integer"))))
            }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| format!("{i} is out of range for {}", stringify!($t))),
                    other => Err(format!("expected an integer, found {}", other.type_name())),
                }
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u64, usize, u8, u16);

impl ToValue for bool {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Int(i64::from(*self)))
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(*i != 0),
            other => Err(format!("expected a boolean, found {}", other.type_name())),
        }
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Real(*self))
    }
}

impl ToValue for f32 {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Real(f64::from(*self)))
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(r) => Ok(*r),
            // SQLite stores a whole REAL as an integer when it can.
            Value::Int(i) => Ok(*i as f64),
            other => Err(format!("expected a number, found {}", other.type_name())),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Text(self.to_owned()))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Text(self.clone()))
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {}", other.type_name())),
        }
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Blob(self.clone()))
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected bytes, found {}", other.type_name())),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl FromValue for Value {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        Ok(v.clone())
    }
}

/// A statement's parameters: an array of one type, `()` for none, or [`params!`](crate::params)
/// for mixed types.
pub trait Params {
    /// The values, in order.
    fn into_values(self) -> Result<Vec<Value>>;
}

impl Params for () {
    fn into_values(self) -> Result<Vec<Value>> {
        Ok(Vec::new())
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Result<Vec<Value>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Result<Vec<Value>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

/// Mixed-type statement parameters: `params![id.as_str(), version, wrapped]`.
#[macro_export]
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$(&$value as &dyn $crate::store::sql::ToValue),*] as &[&dyn $crate::store::sql::ToValue]
    };
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(values: Vec<Value>) -> Self {
        Self { values }
    }

    /// Column `index` (0-based) as `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let v = self
            .values
            .get(index)
            .ok_or_else(|| Error::Database(DbError::Column { index, reason: "no such column".into() }))?;
        T::from_value(v).map_err(|reason| Error::Database(DbError::Column { index, reason }))
    }
}

/// What a backend runs: one statement at a time, inside whatever transaction the store opened.
pub(crate) trait Backend {
    /// Runs a statement that returns no rows; the number of rows it changed.
    fn execute_values(&self, sql: &str, params: Vec<Value>) -> Result<usize>;
    /// Runs a query; its rows.
    fn query_values(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>>;
}

/// A connection inside a read or write transaction of the [`MetaStore`](super::MetaStore).
pub struct Db<'a> {
    backend: &'a dyn Backend,
}

impl fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Db")
    }
}

impl<'a> Db<'a> {
    pub(crate) fn new(backend: &'a dyn Backend) -> Self {
        Self { backend }
    }

    /// Runs a statement; the number of rows it inserted, changed or deleted.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        self.backend.execute_values(sql, params.into_values()?)
    }

    /// Every row of a query, each mapped by `f`.
    pub fn query_map<T>(&self, sql: &str, params: impl Params, f: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        self.backend.query_values(sql, params.into_values()?)?.iter().map(f).collect()
    }

    /// The first row of a query mapped by `f`; [`DbError::NoRows`] when there is none (see
    /// [`OptionalExt::optional`]).
    pub fn query_row<T>(&self, sql: &str, params: impl Params, f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        let rows = self.backend.query_values(sql, params.into_values()?)?;
        match rows.first() {
            Some(r) => f(r),
            None => Err(Error::Database(DbError::NoRows)),
        }
    }
}

/// Turns "no rows" into `None`.
pub trait OptionalExt<T> {
    /// `Ok(None)` for [`DbError::NoRows`], the rest unchanged.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExt<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::Database(DbError::NoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Rewrites `?N` (and bare `?`) placeholders to PostgreSQL's `$N`, leaving quoted text and
/// identifiers alone.
pub fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut next_bare = 0usize;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    next_bare += 1;
                    out.push_str(&next_bare.to_string());
                }
            }
            None => out.push(c),
        }
    }
    out
}

// ---- SQLite ---------------------------------------------------------------------------------

pub(crate) struct Sqlite<'a>(pub(crate) &'a rusqlite::Connection);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Backend for Sqlite<'_> {
    fn execute_values(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        let mut st = self.0.prepare_cached(sql)?;
        Ok(st.execute(rusqlite::params_from_iter(params.iter()))?)
    }

    fn query_values(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut st = self.0.prepare_cached(sql)?;
        let columns = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8(t.to_vec()).map_err(|_| {
                        Error::Database(DbError::Column { index: i, reason: "text is not UTF-8".into() })
                    })?),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row::new(values));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(numbered_placeholders("VALUES (?, ?, '?', \"a?b\")"), "VALUES ($1, $2, '?', \"a?b\")");
        assert_eq!(numbered_placeholders("x = 'it''s ?1' AND y = ?2"), "x = 'it''s ?1' AND y = $2");
    }

    #[test]
    fn conversions_refuse_what_does_not_fit() {
        assert!(u64::MAX.to_value().is_err());
        assert_eq!(u32::from_value(&Value::Int(-1)).ok(), None);
        assert_eq!(Option::<String>::from_value(&Value::Null), Ok(None));
        assert!(String::from_value(&Value::Blob(vec![1])).is_err());
        assert_eq!(f64::from_value(&Value::Int(3)), Ok(3.0));
        assert_eq!(format!("{:?}", Value::Blob(vec![7; 32])), "Blob(32 bytes)");
    }
}
