//! The state database (SQLite): resources as JSON documents keyed by kind and name, and jobs.
//! Every change is one transaction, so a crash never leaves a half-written resource.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use ferry_types::Timestamp;

use crate::error::Result;
use crate::model::{Event, Job};

mod identity;
mod tx;
pub(crate) use identity::JoinTokenRow;
use tx::decode;
pub(crate) use tx::{Tx, encode};

pub(crate) struct Db {
    conn: Mutex<Connection>,
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

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS resources (
                 kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY (kind, key));
             CREATE TABLE IF NOT EXISTS jobs (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rpo_history (
                 item TEXT NOT NULL, time INTEGER NOT NULL, rpo REAL,
                 PRIMARY KEY (item, time));
             CREATE TABLE IF NOT EXISTS orphans (
                 name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL);",
        )?;
        identity::create_tables(&conn)?;
        Ok(Db {
            conn: Mutex::new(conn),
            unreadable_jobs: Mutex::new(HashSet::new()),
        })
    }

    /// Run `f` on the connection, off the async workers: every statement may wait for the
    /// connection's lock and for an fsync (synchronous=FULL), which must not hold a worker that
    /// also serves the disks' NBD connections and the API.
    fn run<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<R> {
        ferry_types::blocking::off_worker(|| {
            f(&mut self.conn.lock().unwrap_or_else(|p| p.into_inner()))
        })
    }

    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>> {
        self.run(|c| tx::get(c, kind, key))
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        self.run(|c| tx::list(c, kind))
    }

    /// Insert a new resource; `Conflict` when it exists.
    pub fn insert<T: Serialize>(&self, kind: Kind, key: &str, value: &T, what: &str) -> Result<()> {
        self.run(|c| tx::insert(c, kind, key, value, what))
    }

    /// Insert several resources in one transaction, skipping those that exist.
    pub fn insert_missing(&self, items: &[(Kind, String, String)]) -> Result<()> {
        self.run(|conn| {
            let tx = conn.transaction()?;
            for (kind, key, body) in items {
                tx.execute(
                    "INSERT OR IGNORE INTO resources (kind, key, body) VALUES (?1, ?2, ?3)",
                    params![kind.as_str(), key, body],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn put<T: Serialize>(&self, kind: Kind, key: &str, value: &T) -> Result<()> {
        self.run(|c| tx::put(c, kind, key, value))
    }

    pub fn delete(&self, kind: Kind, key: &str) -> Result<bool> {
        self.run(|c| tx::delete(c, kind, key))
    }

    /// Run `f` as one transaction: what it reads is what it changes, with no other change in
    /// between, and all of its writes land or none (on an error, or a crash, nothing does).
    /// It holds the database for its whole run: no waiting inside.
    pub fn transact<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let tx = Tx(tx);
            let out = f(&tx)?;
            tx.0.commit()?;
            Ok(out)
        })
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
        self.run(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO rpo_history (item, time, rpo) VALUES (?1, ?2, ?3)",
                params![item, time, rpo],
            )?;
            conn.execute(
                "DELETE FROM rpo_history WHERE item = ?1 AND time < ?2",
                params![item, keep_after],
            )?;
            Ok(())
        })
    }

    /// An item's RPO samples from `since` (Unix seconds) on, oldest first.
    pub fn rpo_history(&self, item: &str, since: i64) -> Result<Vec<(i64, Option<f64>)>> {
        self.run(|conn| {
            let mut stmt = conn.prepare(
                "SELECT time, rpo FROM rpo_history WHERE item = ?1 AND time >= ?2 ORDER BY time",
            )?;
            let rows = stmt.query_map(params![item, since], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
    }

    /// Remember what the orphan check finds now (`names`): each name keeps the time it was
    /// first found (Unix seconds; `now` for a new one), and names no longer found are
    /// forgotten. Returns the first sightings of `names`, in order, and whether each is new.
    pub fn orphans_seen(&self, names: &[String], now: i64) -> Result<Vec<(i64, bool)>> {
        self.transact(|tx| {
            let c = &tx.0;
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS found (name TEXT PRIMARY KEY)",
                [],
            )?;
            c.execute("DELETE FROM found", [])?;
            let mut first = Vec::with_capacity(names.len());
            for n in names {
                c.execute("INSERT OR IGNORE INTO found (name) VALUES (?1)", params![n])?;
                let new = c.execute(
                    "INSERT OR IGNORE INTO orphans (name, first_seen) VALUES (?1, ?2)",
                    params![n, now],
                )? == 1;
                let seen = c.query_row(
                    "SELECT first_seen FROM orphans WHERE name = ?1",
                    params![n],
                    |r| r.get(0),
                )?;
                first.push((seen, new));
            }
            c.execute(
                "DELETE FROM orphans WHERE name NOT IN (SELECT name FROM found)",
                [],
            )?;
            Ok(first)
        })
    }

    /// Forget everything recorded about an item that no longer exists.
    pub fn forget_rpo_history(&self, item: &str) -> Result<()> {
        self.run(|conn| {
            conn.execute("DELETE FROM rpo_history WHERE item = ?1", params![item])?;
            Ok(())
        })
    }

    /// Record a new job; its id is set (tests: jobs start through their admission).
    #[cfg(test)]
    pub fn new_job(&self, job: &mut Job) -> Result<()> {
        self.transact(|tx| tx.new_job(job))
    }

    pub fn put_job(&self, job: &Job) -> Result<()> {
        self.run(|c| tx::put_job(c, job))
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        self.run(|c| tx::job(c, id))
    }

    /// Every job, oldest first. A job whose stored body cannot be read (a crash of an older
    /// version between its two writes, or a body of another version) is logged and left out:
    /// it must not stop the listing, nor a start from resuming the other jobs.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let rows: Vec<(i64, String)> = self.run(|conn| {
            let mut stmt = conn.prepare("SELECT id, body FROM jobs ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })?;
        let mut jobs = Vec::new();
        for (id, body) in rows {
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
        self.run(|conn| {
            conn.execute("INSERT INTO jobs (body) VALUES (?1)", params![body])?;
            Ok(conn.last_insert_rowid() as u64)
        })
    }
}

impl Db {
    /// Record an event; its id is set.
    pub fn add_event(&self, event: &mut Event) -> Result<()> {
        self.run(|conn| {
            let tx = conn.transaction()?;
            tx.execute("INSERT INTO events (body) VALUES ('{}')", [])?;
            event.id = tx.last_insert_rowid() as u64;
            tx.execute(
                "UPDATE events SET body = ?1 WHERE id = ?2",
                params![encode(event), event.id as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Delete up to `batch` events older than `before`, oldest first; how many went.
    pub fn prune_events(&self, before: Timestamp, batch: usize) -> Result<usize> {
        self.run(|conn| {
            Ok(conn.execute(
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events WHERE json_extract(body, '$.time') < ?1
                     ORDER BY id LIMIT ?2)",
                params![before.to_string(), batch as i64],
            )?)
        })
    }

    /// Delete up to `batch` jobs that ended (succeeded or failed) before `before`; how many
    /// went. A running job is never deleted, however old.
    pub fn prune_jobs(&self, before: Timestamp, batch: usize) -> Result<usize> {
        self.run(|conn| {
            Ok(conn.execute(
                "DELETE FROM jobs WHERE id IN (
                     SELECT id FROM jobs
                     WHERE json_extract(body, '$.state') IN ('succeeded', 'failed')
                       AND json_extract(body, '$.updated') < ?1
                     ORDER BY id LIMIT ?2)",
                params![before.to_string(), batch as i64],
            )?)
        })
    }

    /// Events with an id above `after`, oldest first, at most `limit` of the newest.
    pub fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.run(|conn| {
            let mut stmt = conn.prepare(
                "SELECT body FROM (SELECT id, body FROM events WHERE id > ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|b| decode(&b?)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKind, JobState};

    fn job(kind: &str, state: &str) -> String {
        serde_json::json!({
            "id": 0, "kind": kind, "target": "rg1/vm1", "state": state, "steps": [],
            "error": null, "percent": 0.0,
            "created": "2026-11-28T05:00:00Z", "updated": "2026-11-28T05:00:00Z",
        })
        .to_string()
    }

    #[test]
    fn a_job_that_cannot_be_read_is_left_out_of_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let mut first: Job = serde_json::from_str(&job("failover", "running")).unwrap();
        db.new_job(&mut first).unwrap();
        // What a crash between the two writes of an older version left.
        let empty = db.put_raw_job("{}").unwrap();
        let other_version = db.put_raw_job(&job("defragment", "running")).unwrap();
        let not_json = db.put_raw_job("not json").unwrap();
        let mut last: Job = serde_json::from_str(&job("reprotect", "succeeded")).unwrap();
        db.new_job(&mut last).unwrap();

        let jobs = db.jobs().unwrap();
        let kinds: Vec<(u64, JobKind, JobState)> =
            jobs.iter().map(|j| (j.id, j.kind, j.state)).collect();
        assert_eq!(
            kinds,
            [
                (first.id, JobKind::Failover, JobState::Running),
                (last.id, JobKind::Reprotect, JobState::Succeeded),
            ]
        );
        for id in [empty, other_version, not_json] {
            let e = db.job(id).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("job {id} cannot be read from the state database")),
                "{e}"
            );
        }
        assert_eq!(db.job(last.id).unwrap().unwrap().id, last.id);
        assert!(db.job(999).unwrap().is_none());
    }

    fn event(time: &str) -> Event {
        Event {
            id: 0,
            time: Timestamp::parse_rfc3339(time).unwrap(),
            severity: crate::model::Severity::Info,
            kind: "state-changed".into(),
            target: "rg1/vm1".into(),
            message: time.into(),
        }
    }

    #[test]
    fn events_older_than_the_cutoff_are_pruned_oldest_first_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        for t in [
            "2026-10-01T00:00:00Z",
            "2026-10-02T00:00:00Z",
            "2026-10-03T00:00:00Z",
            "2026-11-30T00:00:00.500Z",
            "2026-12-01T00:00:00Z",
        ] {
            db.add_event(&mut event(t)).unwrap();
        }
        let cutoff = Timestamp::parse_rfc3339("2026-11-30T00:00:00.400Z").unwrap();
        assert_eq!(db.prune_events(cutoff, 2).unwrap(), 2);
        assert_eq!(db.prune_events(cutoff, 2).unwrap(), 1);
        assert_eq!(db.prune_events(cutoff, 2).unwrap(), 0);
        let left: Vec<String> = db
            .events(0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(left, ["2026-11-30T00:00:00.500Z", "2026-12-01T00:00:00Z"]);
    }

    #[test]
    fn only_jobs_that_ended_before_the_cutoff_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let mut ids = Vec::new();
        for state in ["running", "succeeded", "failed"] {
            let mut j: Job = serde_json::from_str(&job("failover", state)).unwrap();
            db.new_job(&mut j).unwrap();
            ids.push(j.id);
        }
        let mut recent: Job = serde_json::from_str(&job("reprotect", "succeeded")).unwrap();
        recent.updated = Timestamp::parse_rfc3339("2026-12-02T00:00:00Z").unwrap();
        db.new_job(&mut recent).unwrap();
        let cutoff = Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(db.prune_jobs(cutoff, 100).unwrap(), 2);
        let left: Vec<u64> = db.jobs().unwrap().iter().map(|j| j.id).collect();
        assert_eq!(left, [ids[0], recent.id]);
    }
}
