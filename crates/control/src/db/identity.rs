//! The statements on agent identity: join tokens and the agents that joined with them. Only
//! BLAKE3 hashes of the secrets are stored (hex), never the secrets. An agent's name is unique
//! among the agents not revoked; a revoked agent stays (so its credential is refused as
//! revoked, not as unknown), and the name may join again.

use ferry_types::Timestamp;

use super::sql::Row;
use super::{Db, Tx};
use crate::error::Result;
use crate::hosts::AgentRecord;

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

fn agent(r: &Row) -> Result<AgentRecord> {
    Ok(AgentRecord {
        name: r.text(0)?,
        region: r.text(1)?,
        version: r.text(2)?,
        joined_at: Timestamp(r.int(3)?),
        revoked_at: r.opt_int(4)?.map(Timestamp),
    })
}

impl Tx<'_> {
    pub fn insert_join_token(&self, t: &JoinTokenRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO join_tokens (hash, region, created, expires, used_by, used_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                t.hash.as_str().into(),
                t.region.as_str().into(),
                t.created.0.into(),
                t.expires.0.into(),
                t.used.as_ref().map(|u| u.0.as_str()).into(),
                t.used.as_ref().map(|u| u.1.0).into(),
            ],
        )?;
        Ok(())
    }

    /// Forget join tokens that expired before `before`.
    pub fn forget_join_tokens_expired_before(&self, before: Timestamp) -> Result<()> {
        self.conn().execute(
            "DELETE FROM join_tokens WHERE expires < $1",
            &[before.0.into()],
        )?;
        Ok(())
    }

    pub fn join_token(&self, hash: &str) -> Result<Option<JoinTokenRow>> {
        let row = self.conn().query_opt(
            "SELECT hash, region, created, expires, used_by, used_at
             FROM join_tokens WHERE hash = $1",
            &[hash.into()],
        )?;
        row.map(|r| {
            let used_by = r.opt_text(4)?;
            let used_at = r.opt_int(5)?;
            Ok(JoinTokenRow {
                hash: r.text(0)?,
                region: r.text(1)?,
                created: Timestamp(r.int(2)?),
                expires: Timestamp(r.int(3)?),
                used: used_by.zip(used_at.map(Timestamp)),
            })
        })
        .transpose()
    }

    /// Mark the join token `hash` used by agent `name` at `at`.
    pub fn use_join_token(&self, hash: &str, name: &str, at: Timestamp) -> Result<()> {
        self.conn().execute(
            "UPDATE join_tokens SET used_by = $2, used_at = $3 WHERE hash = $1",
            &[hash.into(), name.into(), at.0.into()],
        )?;
        Ok(())
    }

    /// The agent named `name` that is not revoked, if any.
    pub fn active_agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        self.conn()
            .query_opt(
                &format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE name = $1 AND revoked_at IS NULL"
                ),
                &[name.into()],
            )?
            .map(|r| agent(&r))
            .transpose()
    }

    /// The agent named `name` that joined last, revoked or not.
    pub fn latest_agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        self.conn()
            .query_opt(
                &format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE name = $1 ORDER BY id DESC LIMIT 1"
                ),
                &[name.into()],
            )?
            .map(|r| agent(&r))
            .transpose()
    }

    /// Record an agent that joined with a credential whose hash is `credential_hash`.
    pub fn insert_agent(&self, a: &AgentRecord, credential_hash: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO agents (name, region, version, credential_hash, joined_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                a.name.as_str().into(),
                a.region.as_str().into(),
                a.version.as_str().into(),
                credential_hash.into(),
                a.joined_at.0.into(),
                a.revoked_at.map(|t| t.0).into(),
            ],
        )?;
        Ok(())
    }

    /// Revoke the active agent named `name` at `at`; false when there is none.
    pub fn revoke_agent(&self, name: &str, at: Timestamp) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE agents SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
            &[name.into(), at.0.into()],
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
        self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {AGENT_COLUMNS}, credential_hash FROM agents WHERE credential_hash = $1"
                ),
                &[credential_hash.into()],
            )?
            .map(|r| Ok((agent(&r)?, r.text(5)?)))
            .transpose()
        })
    }

    /// Every agent that ever joined, in the order they joined.
    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        self.read(|c| {
            c.query(
                &format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id"),
                &[],
            )?
            .iter()
            .map(agent)
            .collect()
        })
    }
}
