//! The statements on resources and jobs, for a plain connection and inside a transaction
//! ([`Tx`]) alike.

use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Kind;
use super::sql::Conn;
use crate::error::{ControlError, Result};
use crate::model::{Job, JobState};

/// One transaction of the state database ([`super::Db::transact`]).
pub(crate) struct Tx<'c>(RefCell<&'c mut dyn Conn>);

impl<'c> Tx<'c> {
    pub(super) fn new(conn: &'c mut dyn Conn) -> Self {
        Tx(RefCell::new(conn))
    }

    /// The transaction's connection, for one statement.
    pub(super) fn conn(&self) -> std::cell::RefMut<'_, &'c mut dyn Conn> {
        self.0.borrow_mut()
    }

    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>> {
        get(&mut **self.conn(), kind, key)
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        list(&mut **self.conn(), kind)
    }

    /// Insert a new resource; `Conflict` when it exists.
    pub fn insert<T: Serialize>(&self, kind: Kind, key: &str, value: &T, what: &str) -> Result<()> {
        insert(&mut **self.conn(), kind, key, value, what)
    }

    pub fn put<T: Serialize>(&self, kind: Kind, key: &str, value: &T) -> Result<()> {
        put(&mut **self.conn(), kind, key, value)
    }

    /// Record a new job; its id is set.
    pub fn new_job(&self, job: &mut Job) -> Result<()> {
        new_job(&mut **self.conn(), job)
    }

    pub fn put_job(&self, job: &Job) -> Result<()> {
        put_job(&mut **self.conn(), job)
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        job(&mut **self.conn(), id)
    }
}

pub(super) fn get<T: DeserializeOwned>(
    c: &mut dyn Conn,
    kind: Kind,
    key: &str,
) -> Result<Option<T>> {
    c.query_opt(
        "SELECT body FROM resources WHERE kind = $1 AND key = $2",
        &[kind.as_str().into(), key.into()],
    )?
    .map(|r| decode(&r.text(0)?))
    .transpose()
}

pub(super) fn list<T: DeserializeOwned>(c: &mut dyn Conn, kind: Kind) -> Result<Vec<T>> {
    c.query(
        "SELECT body FROM resources WHERE kind = $1 ORDER BY key",
        &[kind.as_str().into()],
    )?
    .iter()
    .map(|r| decode(&r.text(0)?))
    .collect()
}

pub(super) fn insert<T: Serialize>(
    c: &mut dyn Conn,
    kind: Kind,
    key: &str,
    value: &T,
    what: &str,
) -> Result<()> {
    if !insert_missing(c, kind, key, &encode(value))? {
        return Err(ControlError::conflict(format!(
            "{what} {key} already exists"
        )));
    }
    Ok(())
}

/// Insert a resource unless one of that kind and key exists; whether it was inserted.
pub(super) fn insert_missing(c: &mut dyn Conn, kind: Kind, key: &str, body: &str) -> Result<bool> {
    Ok(c.execute(
        "INSERT INTO resources (kind, key, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[kind.as_str().into(), key.into(), body.into()],
    )? == 1)
}

pub(super) fn put<T: Serialize>(c: &mut dyn Conn, kind: Kind, key: &str, value: &T) -> Result<()> {
    c.execute(
        "INSERT INTO resources (kind, key, body) VALUES ($1, $2, $3)
         ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
        &[kind.as_str().into(), key.into(), encode(value).into()],
    )?;
    Ok(())
}

pub(super) fn delete(c: &mut dyn Conn, kind: Kind, key: &str) -> Result<bool> {
    let n = c.execute(
        "DELETE FROM resources WHERE kind = $1 AND key = $2",
        &[kind.as_str().into(), key.into()],
    )?;
    Ok(n > 0)
}

pub(super) fn new_job(c: &mut dyn Conn, job: &mut Job) -> Result<()> {
    let row = c
        .query_opt("INSERT INTO jobs (body) VALUES ('{}') RETURNING id", &[])?
        .ok_or_else(|| ControlError::Internal("state database: a new job has no id".into()))?;
    job.id = row.int(0)? as u64;
    put_job(c, job)
}

/// Store a job; its state and the time it ended (`ended`) are kept beside its body, indexed,
/// for listing and pruning.
pub(super) fn put_job(c: &mut dyn Conn, job: &Job) -> Result<()> {
    let ended = (job.state != JobState::Running).then_some(job.updated.0);
    c.execute(
        "UPDATE jobs SET body = $1, state = $2, ended = $3 WHERE id = $4",
        &[
            encode(job).into(),
            job.state.as_str().into(),
            ended.into(),
            job.id.into(),
        ],
    )?;
    Ok(())
}

pub(super) fn job(c: &mut dyn Conn, id: u64) -> Result<Option<Job>> {
    let row = c.query_opt("SELECT body FROM jobs WHERE id = $1", &[id.into()])?;
    row.map(|r| {
        serde_json::from_str(&r.text(0)?).map_err(|e| {
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
