//! The agent's credential: read from its data directory, or got once by joining with a join
//! token and stored there (mode 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

use super::Settings;

#[derive(Deserialize)]
struct Joined {
    credential: String,
}

/// The agent's credential, joining first when it has none.
pub(crate) async fn credential(s: &Settings) -> Result<String> {
    let token = s.join_token.as_deref();
    let path = s.data.join("credential");
    match std::fs::read_to_string(&path) {
        Ok(c) => return Ok(c.trim().to_string()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("read {}", path.display()));
        }
        Err(_) => {}
    }
    let Some(token) = token else {
        bail!(
            "this agent has not joined yet ({} is missing): pass --join-token from `ferry agent \
             token create --region {}`",
            path.display(),
            s.region
        );
    };
    let http = super::link::http_client(s, None)?;
    let resp = http
        .post(format!("{}/v1/agents/join", s.server))
        .json(&json!({
            "token": token,
            "name": s.name,
            "region": s.region,
            "version": env!("CARGO_PKG_VERSION"),
        }))
        .send()
        .await
        .with_context(|| format!("reach the server at {} to join", s.server))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let msg = body["error"].as_str().unwrap_or("no reason given");
        bail!(
            "the server refused to let host {} join ({status}): {msg}",
            s.name
        );
    }
    let joined: Joined = serde_json::from_value(body).context("the server's join answer")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("store the credential in {}", path.display()))?;
    f.write_all(joined.credential.as_bytes())?;
    f.sync_all()?;
    Ok(joined.credential)
}
