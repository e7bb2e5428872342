//! Who an agent is. An operator creates a one-time, short-lived join token for a region; an
//! agent exchanges it once for its own credential; every agent request carries that credential,
//! and an agent acts only on the VMs placed on it. Revoking an agent refuses its credential
//! from then on.
//!
//! Secrets are 32 random bytes, printed as `ferry-join-HEX` and `ferry-agent-HEX`. Only their
//! BLAKE3 hashes are stored, and a presented secret is checked by comparing hashes in constant
//! time. Neither secret is ever logged: the types that carry one print it redacted.

use std::time::Duration;

use ferry_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::db::JoinTokenRow;
use crate::error::{ControlError, Result};
use crate::model::Vm;
use crate::resources::valid_name;

/// How long a join token lasts unless asked otherwise.
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(15 * 60);
/// The shortest and the longest lifetime a join token may be given.
pub const MIN_JOIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an expired join token is remembered (to say "expired" or "already used" rather
/// than "not recognised"), before it is forgotten.
const KEEP_EXPIRED_TOKENS: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest version string an agent may report.
const MAX_VERSION_LEN: usize = 64;

const JOIN_PREFIX: &str = "ferry-join-";
/// How an agent credential begins (the admin API names it when one is sent there).
pub(crate) const AGENT_PREFIX: &str = "ferry-agent-";

/// A join token just created: the secret, shown once.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinToken {
    pub token: String,
    pub region: String,
    pub expires: Timestamp,
}

/// `POST /v1/agent-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    pub region: String,
    /// Lifetime in seconds (default 15 min, from 1 min to 24 h).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/agents/join`: an agent exchanges a join token for its credential.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// The agent's name, unique among the agents not revoked (usually the host's name).
    pub name: String,
    /// The region the agent expects to join; refused when the token is for another.
    #[serde(default)]
    pub region: Option<String>,
    /// The agent's ferry version.
    pub version: String,
}

/// What a join returns: the agent's credential, shown once.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Joined {
    pub name: String,
    pub region: String,
    pub credential: String,
}

/// The agent an authenticated request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentIdentity {
    pub name: String,
    pub region: String,
}

/// An agent as listed: no secret in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentRecord {
    pub name: String,
    pub region: String,
    pub version: String,
    pub joined_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("token", &"<redacted>")
            .field("region", &self.region)
            .field("expires", &self.expires)
            .finish()
    }
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("version", &self.version)
            .finish()
    }
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// A new secret: `prefix` and 32 random bytes in hex.
pub(crate) fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    let mut s = String::with_capacity(prefix.len() + 64);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The hash a secret is stored and looked up by.
pub(crate) fn digest(secret: &str) -> blake3::Hash {
    blake3::hash(secret.trim().as_bytes())
}

/// Whether a stored hex hash is `expected` (constant time: `blake3::Hash` equality).
fn same_hash(stored_hex: &str, expected: &blake3::Hash) -> bool {
    blake3::Hash::from_hex(stored_hex).is_ok_and(|h| h == *expected)
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp(t.0.saturating_add(d.as_nanos() as i64))
}

fn create_hint(region: &str) -> String {
    format!("`ferry agent token create --region {region}`")
}

impl Control {
    /// A one-time join token for `region`, valid for `ttl` (1 min to 24 h).
    pub fn create_join_token(&self, region: &str, ttl: Duration) -> Result<JoinToken> {
        if !self.cfg.regions.iter().any(|r| r == region) {
            return Err(ControlError::not_found(format!(
                "region {region} does not exist; see `ferry region list`"
            )));
        }
        if !(MIN_JOIN_TTL..=MAX_JOIN_TTL).contains(&ttl) {
            return Err(ControlError::invalid(format!(
                "a join token's lifetime must be from 1 min to 24 h (60 to 86400 s), not {} s",
                ttl.as_secs()
            )));
        }
        let token = new_secret(JOIN_PREFIX);
        let now = Timestamp::now();
        let row = JoinTokenRow {
            hash: digest(&token).to_hex().to_string(),
            region: region.to_string(),
            created: now,
            expires: after(now, ttl),
            used: None,
        };
        self.db.transact(|tx| {
            tx.forget_join_tokens_expired_before(Timestamp(
                now.0 - KEEP_EXPIRED_TOKENS.as_nanos() as i64,
            ))?;
            tx.insert_join_token(&row)
        })?;
        tracing::info!(region, expires = %row.expires, "join token created");
        Ok(JoinToken {
            token,
            region: row.region,
            expires: row.expires,
        })
    }

    /// Exchange a join token for a new agent's credential. In one transaction: the token must
    /// be known, unused and not expired; it is then marked used and the agent recorded. Any
    /// refusal creates nothing and leaves the token as it was.
    pub fn join_agent(&self, req: JoinRequest) -> Result<Joined> {
        let name = valid_name(&req.name, "agent name")?;
        if req.version.is_empty()
            || req.version.len() > MAX_VERSION_LEN
            || req.version.chars().any(|c| c.is_control())
        {
            return Err(ControlError::invalid(format!(
                "the agent's version must be 1 to {MAX_VERSION_LEN} printable characters"
            )));
        }
        let presented = digest(&req.token);
        let credential = new_secret(AGENT_PREFIX);
        let credential_hash = digest(&credential).to_hex().to_string();
        let now = Timestamp::now();
        let region = self.db.transact(|tx| {
            let token = tx
                .join_token(presented.to_hex().as_str())?
                .filter(|t| same_hash(&t.hash, &presented))
                .ok_or_else(|| {
                    let region = req.region.as_deref().unwrap_or("REGION");
                    ControlError::unauthorized(format!(
                        "the join token is not recognised; create one with {}",
                        create_hint(region)
                    ))
                })?;
            let hint = create_hint(&token.region);
            if let Some((by, at)) = &token.used {
                return Err(ControlError::unauthorized(format!(
                    "the join token was already used by agent {by} at {at}; create a new one with {hint}"
                )));
            }
            if now >= token.expires {
                return Err(ControlError::unauthorized(format!(
                    "the join token expired at {}; create a new one with {hint}",
                    token.expires
                )));
            }
            if let Some(r) = req.region.as_deref()
                && r != token.region
            {
                return Err(ControlError::invalid(format!(
                    "the join token is for region {}, not {r}; join region {} or create a token for {r} with {}",
                    token.region,
                    token.region,
                    create_hint(r)
                )));
            }
            if tx.active_agent(&name)?.is_some() {
                return Err(ControlError::conflict(format!(
                    "agent {name} is already joined; revoke it first with `ferry agent revoke {name}`"
                )));
            }
            tx.use_join_token(&token.hash, &name, now)?;
            let agent = AgentRecord {
                name: name.clone(),
                region: token.region.clone(),
                version: req.version.clone(),
                joined_at: now,
                revoked_at: None,
            };
            tx.insert_agent(&agent, &credential_hash)?;
            Ok(token.region)
        })?;
        tracing::info!(agent = %name, %region, version = %req.version, "agent joined");
        Ok(Joined {
            name,
            region,
            credential,
        })
    }

    /// The agent a credential belongs to; refused when unknown or revoked. One indexed read.
    pub fn authenticate_agent(&self, credential: &str) -> Result<AgentIdentity> {
        let presented = digest(credential);
        let found = self
            .db
            .agent_by_credential(presented.to_hex().as_str())?
            .filter(|(_, stored)| same_hash(stored, &presented));
        let Some((agent, _)) = found else {
            return Err(ControlError::unauthorized(
                "the agent credential is not recognised; join again with a new token",
            ));
        };
        if let Some(at) = agent.revoked_at {
            return Err(ControlError::unauthorized(format!(
                "agent {} was revoked at {at}; join again with a new token",
                agent.name
            )));
        }
        Ok(AgentIdentity {
            name: agent.name,
            region: agent.region,
        })
    }

    /// Revoke agent `name`: its credential is refused from now on. Revoking a revoked agent
    /// changes nothing.
    pub fn revoke_agent(&self, name: &str) -> Result<AgentRecord> {
        let now = Timestamp::now();
        let (agent, revoked) = self.db.transact(|tx| {
            let revoked = tx.revoke_agent(name, now)?;
            let agent = tx.latest_agent(name)?.ok_or_else(|| {
                ControlError::not_found(format!(
                    "agent {name} does not exist; see `ferry agent list`"
                ))
            })?;
            Ok((agent, revoked))
        })?;
        if revoked {
            tracing::info!(agent = %name, "agent revoked");
            // Its open command stream ends now, not at its next request.
            if let Some(h) = self
                .joined
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
            {
                h.close();
            }
        }
        Ok(agent)
    }

    /// Every agent that ever joined (revoked ones too), in the order they joined.
    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        self.db.agents()
    }

    /// Allow an agent to act on `vm` only when the VM is placed on it.
    pub fn authorize_vm(&self, identity: &AgentIdentity, vm: &Vm) -> Result<()> {
        if vm.host.as_deref() == Some(identity.name.as_str()) {
            return Ok(());
        }
        let place = match &vm.host {
            Some(host) => format!("is on host {host}"),
            None => "is placed on no host".to_string(),
        };
        Err(ControlError::forbidden(format!(
            "agent {} may act only on the VMs placed on it; VM {}/{} {place}",
            identity.name, vm.group, vm.name
        )))
    }
}

#[cfg(test)]
mod tests;
