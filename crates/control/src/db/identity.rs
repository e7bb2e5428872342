//! The statements on agent identity: join tokens and the agents that joined with them. Only
//! BLAKE3 hashes of the secrets are stored (hex), never the secrets.

use ferry_types::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Db, Tx};
use crate::error::Result;
use crate::hosts::AgentRecord;

/// Create the tables, if missing. An agent's name is unique among the agents not revoked; a
/// revoked agent stays (so its credential is refused as revoked, not as unknown), and the
/// name may join again.
pub(super) fn create_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS join_tokens (
             hash TEXT PRIMARY KEY, region TEXT NOT NULL,
             created INTEGER NOT NULL, expires INTEGER NOT NULL,
             used_by TEXT, used_at INTEGER);
         CREATE TABLE IF NOT EXISTS agents (
             id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, region TEXT NOT NULL,
             version TEXT NOT NULL, credential_hash TEXT NOT NULL UNIQUE,
             joined_at INTEGER NOT NULL, revoked_at INTEGER);
         CREATE UNIQUE INDEX IF NOT EXISTS agents_active_name ON agents (name)
             WHERE revoked_at IS NULL;",
    )?;
    Ok(())
}

/// A join token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinTokenRow {
    /// Hex BLAKE3 hash of the secret.
    pub hash: String,
    pub region: String,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// The agent that joined with it, and when.
    pub used: Option<(String, Timestamp)>,
}

const AGENT_COLUMNS: &str = "name, region, version, joined_at, revoked_at";

fn agent(r: &Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        name: r.get(0)?,
        region: r.get(1)?,
        version: r.get(2)?,
        joined_at: Timestamp(r.get(3)?),
        revoked_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
    })
}

impl Tx<'_> {
    pub fn insert_join_token(&self, t: &JoinTokenRow) -> Result<()> {
        self.0.execute(
            "INSERT INTO join_tokens (hash, region, created, expires, used_by, used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                t.hash,
                t.region,
                t.created.0,
                t.expires.0,
                t.used.as_ref().map(|u| &u.0),
                t.used.as_ref().map(|u| u.1.0),
            ],
        )?;
        Ok(())
    }

    /// Forget join tokens that expired before `before`.
    pub fn forget_join_tokens_expired_before(&self, before: Timestamp) -> Result<()> {
        self.0.execute(
            "DELETE FROM join_tokens WHERE expires < ?1",
            params![before.0],
        )?;
        Ok(())
    }

    pub fn join_token(&self, hash: &str) -> Result<Option<JoinTokenRow>> {
        Ok(self
            .0
            .query_row(
                "SELECT hash, region, created, expires, used_by, used_at
                 FROM join_tokens WHERE hash = ?1",
                params![hash],
                |r| {
                    let used_by: Option<String> = r.get(4)?;
                    let used_at: Option<i64> = r.get(5)?;
                    Ok(JoinTokenRow {
                        hash: r.get(0)?,
                        region: r.get(1)?,
                        created: Timestamp(r.get(2)?),
                        expires: Timestamp(r.get(3)?),
                        used: used_by.zip(used_at.map(Timestamp)),
                    })
                },
            )
            .optional()?)
    }

    /// Mark the join token `hash` used by agent `name` at `at`.
    pub fn use_join_token(&self, hash: &str, name: &str, at: Timestamp) -> Result<()> {
        self.0.execute(
            "UPDATE join_tokens SET used_by = ?2, used_at = ?3 WHERE hash = ?1",
            params![hash, name, at.0],
        )?;
        Ok(())
    }

    /// The agent named `name` that is not revoked, if any.
    pub fn active_agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        Ok(self
            .0
            .query_row(
                &format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?1 AND revoked_at IS NULL"
                ),
                params![name],
                agent,
            )
            .optional()?)
    }

    /// The agent named `name` that joined last, revoked or not.
    pub fn latest_agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        Ok(self
            .0
            .query_row(
                &format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?1 ORDER BY id DESC LIMIT 1"
                ),
                params![name],
                agent,
            )
            .optional()?)
    }

    /// Record an agent that joined with a credential whose hash is `credential_hash`.
    pub fn insert_agent(&self, a: &AgentRecord, credential_hash: &str) -> Result<()> {
        self.0.execute(
            "INSERT INTO agents (name, region, version, credential_hash, joined_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                a.name,
                a.region,
                a.version,
                credential_hash,
                a.joined_at.0,
                a.revoked_at.map(|t| t.0),
            ],
        )?;
        Ok(())
    }

    /// Revoke the active agent named `name` at `at`; false when there is none.
    pub fn revoke_agent(&self, name: &str, at: Timestamp) -> Result<bool> {
        let n = self.0.execute(
            "UPDATE agents SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![name, at.0],
        )?;
        Ok(n > 0)
    }
}

impl Db {
    /// The agent whose credential hashes to `credential_hash` (one indexed read), with the
    /// stored hash.
    pub fn agent_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<(AgentRecord, String)>> {
        self.run(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {AGENT_COLUMNS}, credential_hash FROM agents WHERE credential_hash = ?1"
                ),
                params![credential_hash],
                |r| Ok((agent(r)?, r.get(5)?)),
            )
            .optional()?)
        })
    }

    /// Every agent that ever joined, in the order they joined.
    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        self.run(|c| {
            let mut stmt = c.prepare(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id"))?;
            let rows = stmt.query_map([], agent)?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
    }
}
