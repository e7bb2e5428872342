//! `ferry agent` management: join tokens, the list of agents, revocation.

use anyhow::{Context, Result};
use ferry_control::CreateJoinToken;

use super::replication::encode;
use crate::args::{AgentCmd, AgentTokenCmd, Output};
use crate::client::Client;
use crate::output::print;

pub async fn agent(c: &Client, out: Output, cmd: AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::Token(AgentTokenCmd::Create { region, ttl }) => {
            let ttl = ferry_types::parse_duration(&ttl).context("--ttl")?;
            let body = CreateJoinToken {
                region,
                ttl_seconds: Some(ttl.as_secs()),
            };
            print(out, &c.post("/v1/agent-tokens", &body).await?, &[]);
        }
        AgentCmd::List => print(
            out,
            &c.get("/v1/agents").await?,
            &["name", "region", "version", "joined_at", "revoked_at"],
        ),
        AgentCmd::Revoke { name } => {
            let path = format!("/v1/agents/{}/revoke", encode(&name));
            print(out, &c.post(&path, &serde_json::json!({})).await?, &[]);
        }
    }
    Ok(())
}
