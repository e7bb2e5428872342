//! The statements on resources and jobs, for the database's own connection and inside a
//! transaction ([`Tx`]) alike.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Kind;
use crate::error::{ControlError, Result};
use crate::model::Job;

/// One transaction of the state database ([`super::Db::transact`]).
pub(crate) struct Tx<'c>(pub(super) rusqlite::Transaction<'c>);

impl Tx<'_> {
    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>> {
        get(&self.0, kind, key)
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        list(&self.0, kind)
    }

    /// Insert a new resource; `Conflict` when it exists.
    pub fn insert<T: Serialize>(&self, kind: Kind, key: &str, value: &T, what: &str) -> Result<()> {
        insert(&self.0, kind, key, value, what)
    }

    pub fn put<T: Serialize>(&self, kind: Kind, key: &str, value: &T) -> Result<()> {
        put(&self.0, kind, key, value)
    }

    /// Record a new job; its id is set.
    pub fn new_job(&self, job: &mut Job) -> Result<()> {
        self.0
            .execute("INSERT INTO jobs (body) VALUES ('{}')", [])?;
        job.id = self.0.last_insert_rowid() as u64;
        put_job(&self.0, job)
    }

    pub fn put_job(&self, job: &Job) -> Result<()> {
        put_job(&self.0, job)
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        job(&self.0, id)
    }
}

pub(super) fn get<T: DeserializeOwned>(c: &Connection, kind: Kind, key: &str) -> Result<Option<T>> {
    let body: Option<String> = c
        .query_row(
            "SELECT body FROM resources WHERE kind = ?1 AND key = ?2",
            params![kind.as_str(), key],
            |r| r.get(0),
        )
        .optional()?;
    body.map(|b| decode(&b)).transpose()
}

pub(super) fn list<T: DeserializeOwned>(c: &Connection, kind: Kind) -> Result<Vec<T>> {
    let mut stmt = c.prepare("SELECT body FROM resources WHERE kind = ?1 ORDER BY key")?;
    let rows = stmt.query_map(params![kind.as_str()], |r| r.get::<_, String>(0))?;
    rows.map(|b| decode(&b?)).collect()
}

pub(super) fn insert<T: Serialize>(
    c: &Connection,
    kind: Kind,
    key: &str,
    value: &T,
    what: &str,
) -> Result<()> {
    let n = c.execute(
        "INSERT OR IGNORE INTO resources (kind, key, body) VALUES (?1, ?2, ?3)",
        params![kind.as_str(), key, encode(value)],
    )?;
    if n == 0 {
        return Err(ControlError::conflict(format!(
            "{what} {key} already exists"
        )));
    }
    Ok(())
}

pub(super) fn put<T: Serialize>(c: &Connection, kind: Kind, key: &str, value: &T) -> Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO resources (kind, key, body) VALUES (?1, ?2, ?3)",
        params![kind.as_str(), key, encode(value)],
    )?;
    Ok(())
}

pub(super) fn delete(c: &Connection, kind: Kind, key: &str) -> Result<bool> {
    let n = c.execute(
        "DELETE FROM resources WHERE kind = ?1 AND key = ?2",
        params![kind.as_str(), key],
    )?;
    Ok(n > 0)
}

pub(super) fn put_job(c: &Connection, job: &Job) -> Result<()> {
    c.execute(
        "UPDATE jobs SET body = ?1 WHERE id = ?2",
        params![encode(job), job.id as i64],
    )?;
    Ok(())
}

pub(super) fn job(c: &Connection, id: u64) -> Result<Option<Job>> {
    let body: Option<String> = c
        .query_row(
            "SELECT body FROM jobs WHERE id = ?1",
            params![id as i64],
            |r| r.get(0),
        )
        .optional()?;
    body.map(|b| {
        serde_json::from_str(&b).map_err(|e| {
            ControlError::Internal(format!(
                "job {id} cannot be read from the state database: {e}"
            ))
        })
    })
    .transpose()
}

pub(crate) fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("resources serialise")
}

pub(super) fn decode<T: DeserializeOwned>(body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| {
        ControlError::Internal(format!("state database holds an unreadable document: {e}"))
    })
}
