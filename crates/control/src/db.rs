//! The state database: resources as JSON documents keyed by kind and name, jobs, events and
//! the agents' identities. SQLite in the data directory by default; PostgreSQL (`--database`)
//! for a deployment beyond one machine. Both have one schema, brought to this version at start
//! by the versioned migrations in `migrations/`. Every change is one transaction, so a crash
//! never leaves a half-written resource.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use ferry_types::Timestamp;

use crate::error::{ControlError, Result};
use crate::model::{Event, Job, JobState, Severity};

mod identity;
mod leases;
mod postgres;
mod sql;
mod sqlite;
mod tx;
pub(crate) use identity::JoinTokenRow;
pub(crate) use leases::LeaseRow;
use sql::{Conn, Value};
use tx::decode;
pub(crate) use tx::{Tx, encode};

/// Where the state lives.
#[derive(Clone, Default)]
pub enum Database {
    /// The embedded default: `state.db` (SQLite) in the data directory.
    #[default]
    Embedded,
    /// PostgreSQL at this URL (`postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`).
    Postgres(String),
}

/// Shows where the database is, never its password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Embedded => f.write_str("Embedded"),
            Database::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

impl Database {
    /// The database a `--database` value names: a `postgres://` or `postgresql://` URL.
    pub fn parse(url: &str) -> Result<Database> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        Err(ControlError::invalid(
            "--database takes a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE); leave it \
             out for the embedded SQLite database in the data directory",
        ))
    }
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Postgres>),
}

pub(crate) struct Db {
    backend: Mutex<Backend>,
    /// Where it is, for people ([`Db::location`]).
    location: String,
    /// Jobs whose stored body cannot be read, each logged once.
    unreadable_jobs: Mutex<HashSet<i64>>,
}

/// Resource kinds as stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Group,
    Network,
    Storage,
    AvailabilitySet,
    Vm,
    Policy,
    Replication,
    NetworkMapping,
    AlertRule,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Network => "network",
            Kind::Storage => "storage",
            Kind::AvailabilitySet => "availability-set",
            Kind::Vm => "vm",
            Kind::Policy => "policy",
            Kind::Replication => "replication",
            Kind::NetworkMapping => "network-mapping",
            Kind::AlertRule => "alert-rule",
        }
    }
}

/// Which events to read ([`Db::events`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct EventQuery<'a> {
    /// Only those with an id above this.
    pub after: u64,
    pub target: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// This severity and worse.
    pub severity: Option<Severity>,
    /// At most this many, the newest.
    pub limit: usize,
}

/// Which jobs to read ([`Db::jobs_page`]): those after an id, of a state, at most so many.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobQuery {
    pub after: u64,
    pub state: Option<JobState>,
    pub limit: Option<usize>,
}

/// A severity as the indexed `events.severity` column holds it: higher is worse.
fn severity_rank(s: Severity) -> i64 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

impl Db {
    /// Open the state database `db`, the embedded one in `data` by default, and bring its
    /// schema to this version.
    pub fn open(db: &Database, data: &Path) -> Result<Db> {
        let (backend, location) = match db {
            Database::Embedded => {
                let path = Db::embedded_path(data);
                let c = sqlite::open(&path)?;
                (Backend::Sqlite(c), path.display().to_string())
            }
            Database::Postgres(url) => {
                let p = ferry_types::blocking::off_worker(|| postgres::Postgres::open(url))?;
                let location = format!("PostgreSQL {}", p.shown());
                (Backend::Postgres(Box::new(p)), location)
            }
        };
        Ok(Db {
            backend: Mutex::new(backend),
            location,
            unreadable_jobs: Mutex::new(HashSet::new()),
        })
    }

    /// Where the database is: the SQLite file, or PostgreSQL's host, port and database.
    pub fn location(&self) -> String {
        self.location.clone()
    }

    /// The embedded database's file in the data directory `data`.
    pub fn embedded_path(data: &Path) -> PathBuf {
        data.join("state.db")
    }

    /// Run `f` on the connection, outside a transaction: for reads. It runs off the async
    /// workers: every statement may wait for the connection's lock, for an fsync or for the
    /// database server, which must not hold a worker that also serves the disks' NBD
    /// connections and the API.
    fn read<R>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        ferry_types::blocking::off_worker(|| {
            match &mut *self.backend.lock().unwrap_or_else(|p| p.into_inner()) {
                Backend::Sqlite(c) => f(&mut sqlite::Sqlite(c)),
                Backend::Postgres(p) => p.run(f),
            }
        })
    }

    /// Run `f` as one writing transaction (off the async workers, as [`Db::read`]). Writing
    /// transactions run one at a time, across every server on the database.
    fn write<R>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        ferry_types::blocking::off_worker(|| {
            match &mut *self.backend.lock().unwrap_or_else(|p| p.into_inner()) {
                Backend::Sqlite(c) => {
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let out = f(&mut sqlite::Sqlite(&tx))?;
                    tx.commit()?;
                    Ok(out)
                }
                Backend::Postgres(p) => p.transact(f),
            }
        })
    }

    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>> {
        self.read(|c| tx::get(c, kind, key))
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        self.read(|c| tx::list(c, kind))
    }

    /// Insert a new resource; `Conflict` when it exists.
    pub fn insert<T: Serialize>(&self, kind: Kind, key: &str, value: &T, what: &str) -> Result<()> {
        self.write(|c| tx::insert(c, kind, key, value, what))
    }

    /// Insert several resources in one transaction, skipping those that exist.
    pub fn insert_missing(&self, items: &[(Kind, String, String)]) -> Result<()> {
        self.write(|c| {
            for (kind, key, body) in items {
                tx::insert_missing(c, *kind, key, body)?;
            }
            Ok(())
        })
    }

    pub fn put<T: Serialize>(&self, kind: Kind, key: &str, value: &T) -> Result<()> {
        self.write(|c| tx::put(c, kind, key, value))
    }

    pub fn delete(&self, kind: Kind, key: &str) -> Result<bool> {
        self.write(|c| tx::delete(c, kind, key))
    }

    /// Run `f` as one transaction: what it reads is what it changes, with no other change in
    /// between, and all of its writes land or none (on an error, or a crash, nothing does).
    /// It holds the database for its whole run: no waiting inside.
    pub fn transact<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.write(|c| f(&Tx::new(c)))
    }

    /// Record an item's RPO (none: the item had no RPO, e.g. not protected) at `time`
    /// (Unix seconds), and forget samples older than `keep_after`.
    pub fn add_rpo_sample(
        &self,
        item: &str,
        time: i64,
        rpo: Option<f64>,
        keep_after: i64,
    ) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO rpo_history (item, time, rpo) VALUES ($1, $2, $3)
                 ON CONFLICT (item, time) DO UPDATE SET rpo = excluded.rpo",
                &[item.into(), time.into(), rpo.into()],
            )?;
            c.execute(
                "DELETE FROM rpo_history WHERE item = $1 AND time < $2",
                &[item.into(), keep_after.into()],
            )?;
            Ok(())
        })
    }

    /// An item's RPO samples from `since` (Unix seconds) on, oldest first.
    pub fn rpo_history(&self, item: &str, since: i64) -> Result<Vec<(i64, Option<f64>)>> {
        self.read(|c| {
            c.query(
                "SELECT time, rpo FROM rpo_history WHERE item = $1 AND time >= $2 ORDER BY time",
                &[item.into(), since.into()],
            )?
            .iter()
            .map(|r| Ok((r.int(0)?, r.opt_real(1)?)))
            .collect()
        })
    }

    /// Remember what the orphan check finds now (`names`): each name keeps the time it was
    /// first found (Unix seconds; `now` for a new one), and names no longer found are
    /// forgotten. Returns the first sightings of `names`, in order, and whether each is new.
    pub fn orphans_seen(&self, names: &[String], now: i64) -> Result<Vec<(i64, bool)>> {
        self.write(|c| {
            let mut first = Vec::with_capacity(names.len());
            for n in names {
                let new = c.execute(
                    "INSERT INTO orphans (name, first_seen) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[n.into(), now.into()],
                )? == 1;
                let seen = c
                    .query_opt(
                        "SELECT first_seen FROM orphans WHERE name = $1",
                        &[n.into()],
                    )?
                    .map(|r| r.int(0))
                    .transpose()?
                    .unwrap_or(now);
                first.push((seen, new));
            }
            let found: HashSet<&str> = names.iter().map(String::as_str).collect();
            for r in c.query("SELECT name FROM orphans", &[])? {
                let name = r.text(0)?;
                if !found.contains(name.as_str()) {
                    c.execute("DELETE FROM orphans WHERE name = $1", &[name.into()])?;
                }
            }
            Ok(first)
        })
    }

    /// Forget everything recorded about an item that no longer exists.
    pub fn forget_rpo_history(&self, item: &str) -> Result<()> {
        self.write(|c| {
            c.execute("DELETE FROM rpo_history WHERE item = $1", &[item.into()])?;
            Ok(())
        })
    }

    /// Record a new job; its id is set (tests: jobs start through their admission).
    #[cfg(test)]
    pub fn new_job(&self, job: &mut Job) -> Result<()> {
        self.transact(|tx| tx.new_job(job))
    }

    pub fn put_job(&self, job: &Job) -> Result<()> {
        self.write(|c| tx::put_job(c, job))
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        self.read(|c| tx::job(c, id))
    }

    /// Every job, oldest first. A job whose stored body cannot be read (a crash of an older
    /// version between its two writes, or a body of another version) is logged and left out:
    /// it must not stop the listing, nor a start from resuming the other jobs.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.jobs_page(&JobQuery::default())
    }

    /// The jobs `q` asks for, oldest first; unreadable ones are left out as by [`Db::jobs`].
    pub fn jobs_page(&self, q: &JobQuery) -> Result<Vec<Job>> {
        let mut sql = String::from("SELECT id, body FROM jobs WHERE id > $1");
        let mut params: Vec<Value> = vec![q.after.into()];
        if let Some(state) = q.state {
            params.push(state.as_str().into());
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        sql.push_str(" ORDER BY id");
        if let Some(limit) = q.limit {
            params.push(limit.into());
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut jobs = Vec::new();
        for r in rows {
            let (id, body) = (r.int(0)?, r.text(1)?);
            match serde_json::from_str(&body) {
                Ok(job) => jobs.push(job),
                Err(e) => {
                    let mut seen = self
                        .unreadable_jobs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if seen.insert(id) {
                        tracing::error!(job = id, error = %e, "a stored job cannot be read; it is left out of the job list and not resumed");
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// Store a job row with any body, as a crash or another version may have left it.
    #[cfg(test)]
    pub fn put_raw_job(&self, body: &str) -> Result<u64> {
        self.write(|c| {
            let r = c.query_opt(
                "INSERT INTO jobs (body) VALUES ($1) RETURNING id",
                &[body.into()],
            )?;
            Ok(r.expect("a new row").int(0)? as u64)
        })
    }
}

impl Db {
    /// Record an event; its id is set.
    pub fn add_event(&self, event: &mut Event) -> Result<()> {
        self.write(|c| {
            let row = c
                .query_opt(
                    "INSERT INTO events (body, target, kind, severity, time)
                     VALUES ('{}', $1, $2, $3, $4) RETURNING id",
                    &[
                        event.target.as_str().into(),
                        event.kind.as_str().into(),
                        severity_rank(event.severity).into(),
                        event.time.0.into(),
                    ],
                )?
                .ok_or_else(|| {
                    ControlError::Internal("state database: an event has no id".into())
                })?;
            event.id = row.int(0)? as u64;
            c.execute(
                "UPDATE events SET body = $1 WHERE id = $2",
                &[encode(event).into(), event.id.into()],
            )?;
            Ok(())
        })
    }

    /// Delete up to `batch` events older than `before`, oldest first; how many went.
    pub fn prune_events(&self, before: Timestamp, batch: usize) -> Result<usize> {
        self.write(|c| {
            Ok(c.execute(
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events WHERE time < $1 ORDER BY id LIMIT $2)",
                &[before.0.into(), batch.into()],
            )? as usize)
        })
    }

    /// Delete up to `batch` jobs that ended (succeeded or failed) before `before`; how many
    /// went. A running job is never deleted, however old.
    pub fn prune_jobs(&self, before: Timestamp, batch: usize) -> Result<usize> {
        self.write(|c| {
            Ok(c.execute(
                "DELETE FROM jobs WHERE id IN (
                     SELECT id FROM jobs WHERE ended < $1 ORDER BY id LIMIT $2)",
                &[before.0.into(), batch.into()],
            )? as usize)
        })
    }

    /// The newest events that `q` asks for, oldest first (found through the indexed
    /// columns, not by reading every body).
    pub fn events(&self, q: &EventQuery<'_>) -> Result<Vec<Event>> {
        let mut sql = String::from("SELECT id, body FROM events WHERE id > $1");
        let mut params: Vec<Value> = vec![q.after.into()];
        let mut and = |clause: &str, v: Value| {
            params.push(v);
            sql.push_str(&format!(" AND {clause} ${}", params.len()));
        };
        if let Some(t) = q.target {
            and("target =", t.into());
        }
        if let Some(k) = q.kind {
            and("kind =", k.into());
        }
        if let Some(s) = q.severity.filter(|s| *s != Severity::Info) {
            and("severity >=", severity_rank(s).into());
        }
        params.push(q.limit.into());
        let sql = format!(
            "SELECT body FROM ({sql} ORDER BY id DESC LIMIT ${}) AS newest ORDER BY id",
            params.len()
        );
        self.read(|c| {
            c.query(&sql, &params)?
                .iter()
                .map(|r| decode(&r.text(0)?))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests;
