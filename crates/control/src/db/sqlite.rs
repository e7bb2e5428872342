//! The embedded state database: one SQLite file in the data directory, written with
//! `synchronous=FULL` so that a committed change survives a crash of the machine.

use std::path::Path;

use rusqlite::types::ValueRef;

use super::sql::{Conn, Row, Value};
use crate::error::{ControlError, Result};

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Open (or create) the database at `path` and bring its schema to this version.
pub(super) fn open(path: &Path) -> Result<rusqlite::Connection> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
    // The database's clock, as PostgreSQL has it (migrations/postgres/V4__leases.sql): here
    // the one machine's.
    conn.create_scalar_function(
        "ferry_now_ms",
        0,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |_| Ok(ferry_types::Timestamp::now().0 / 1_000_000),
    )?;
    embedded::migrations::runner()
        .set_grouped(true)
        .run(&mut conn)
        .map_err(|e| {
            ControlError::Internal(format!(
                "state database {}: the schema cannot be brought to this version: {e}",
                path.display()
            ))
        })?;
    Ok(conn)
}

/// A SQLite connection or transaction (a transaction derefs to its connection).
pub(super) struct Sqlite<'c>(pub &'c rusqlite::Connection);

/// PostgreSQL's `$N` parameters as SQLite's `?N` (no statement has a `$` otherwise).
fn dialect(sql: &str) -> String {
    sql.replace('$', "?")
}

fn bind(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

fn read(v: ValueRef<'_>) -> Result<Value> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(_) => {
            return Err(ControlError::Internal(
                "state database: a column holds a blob, which no table has".into(),
            ));
        }
    })
}

impl Conn for Sqlite<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut stmt = self.0.prepare_cached(&dialect(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(bind)))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.0.prepare_cached(&dialect(sql))?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(bind)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(width);
            for i in 0..width {
                row.push(read(r.get_ref(i)?)?);
            }
            out.push(Row(row));
        }
        Ok(out)
    }
}
