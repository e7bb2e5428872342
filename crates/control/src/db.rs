//! The state database (SQLite): resources as JSON documents keyed by kind and name, and jobs.
//! Every change is one transaction, so a crash never leaves a half-written resource.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ControlError, Result};
use crate::model::{Event, Job};

pub(crate) struct Db {
    conn: Mutex<Connection>,
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
    fn as_str(self) -> &'static str {
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
                 PRIMARY KEY (item, time));",
        )?;
        Ok(Db {
            conn: Mutex::new(conn),
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
        let body: Option<String> = self.run(|conn| {
            Ok(conn
                .query_row(
                    "SELECT body FROM resources WHERE kind = ?1 AND key = ?2",
                    params![kind.as_str(), key],
                    |r| r.get(0),
                )
                .optional()?)
        })?;
        body.map(|b| decode(&b)).transpose()
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        self.run(|conn| {
            let mut stmt =
                conn.prepare("SELECT body FROM resources WHERE kind = ?1 ORDER BY key")?;
            let rows = stmt.query_map(params![kind.as_str()], |r| r.get::<_, String>(0))?;
            rows.map(|b| decode(&b?)).collect()
        })
    }

    /// Insert a new resource; `Conflict` when it exists.
    pub fn insert<T: Serialize>(&self, kind: Kind, key: &str, value: &T, what: &str) -> Result<()> {
        let body = encode(value);
        let n = self.run(|conn| {
            Ok(conn.execute(
                "INSERT OR IGNORE INTO resources (kind, key, body) VALUES (?1, ?2, ?3)",
                params![kind.as_str(), key, body],
            )?)
        })?;
        if n == 0 {
            return Err(ControlError::conflict(format!(
                "{what} {key} already exists"
            )));
        }
        Ok(())
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
        let body = encode(value);
        self.run(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO resources (kind, key, body) VALUES (?1, ?2, ?3)",
                params![kind.as_str(), key, body],
            )?;
            Ok(())
        })
    }

    pub fn delete(&self, kind: Kind, key: &str) -> Result<bool> {
        let n = self.run(|conn| {
            Ok(conn.execute(
                "DELETE FROM resources WHERE kind = ?1 AND key = ?2",
                params![kind.as_str(), key],
            )?)
        })?;
        Ok(n > 0)
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

    /// Forget everything recorded about an item that no longer exists.
    pub fn forget_rpo_history(&self, item: &str) -> Result<()> {
        self.run(|conn| {
            conn.execute("DELETE FROM rpo_history WHERE item = ?1", params![item])?;
            Ok(())
        })
    }

    pub fn new_job(&self, job: &mut Job) -> Result<()> {
        self.run(|conn| {
            conn.execute("INSERT INTO jobs (body) VALUES ('{}')", [])?;
            job.id = conn.last_insert_rowid() as u64;
            conn.execute(
                "UPDATE jobs SET body = ?1 WHERE id = ?2",
                params![encode(job), job.id as i64],
            )?;
            Ok(())
        })
    }

    pub fn put_job(&self, job: &Job) -> Result<()> {
        self.run(|conn| {
            conn.execute(
                "UPDATE jobs SET body = ?1 WHERE id = ?2",
                params![encode(job), job.id as i64],
            )?;
            Ok(())
        })
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        let body: Option<String> = self.run(|conn| {
            Ok(conn
                .query_row(
                    "SELECT body FROM jobs WHERE id = ?1",
                    params![id as i64],
                    |r| r.get(0),
                )
                .optional()?)
        })?;
        body.map(|b| decode(&b)).transpose()
    }

    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.run(|conn| {
            let mut stmt = conn.prepare("SELECT body FROM jobs ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|b| decode(&b?)).collect()
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

pub(crate) fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("resources serialise")
}

fn decode<T: DeserializeOwned>(body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| {
        ControlError::Internal(format!("state database holds an unreadable document: {e}"))
    })
}
