//! The agent's link to the server, opened by the agent: a command stream (server-sent events
//! on `GET /v1/agent/commands`), an answer per command (`POST /v1/agent/answers`) and a
//! heartbeat with the host's report every [`HEARTBEAT`] (`POST /v1/agent/report`). When the
//! server cannot be reached the agent goes on serving and shipping, and tries again with a
//! growing pause; the server brings it in line when the link is back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_agent::command::{Answer, Envelope, Outcome, PROTOCOL_VERSION, WireError};
use ferry_agent::executor::Executor;
use ferry_storage::retry::{self, Backoff};
use futures::StreamExt;
use tokio::sync::watch;

use super::Settings;
use super::sse::Parser;

/// How often the agent reports (and so shows it is alive).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// A command stream silent for this long (the server sends a keep-alive every 5 s) is dead.
const SILENCE: Duration = Duration::from_secs(20);

/// Plain HTTP only to a loopback address: anything else must be https.
pub(crate) fn check_server_url(server: &str) -> Result<()> {
    let url =
        url::Url::parse(server).with_context(|| format!("--server {server:?} is not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                bail!(
                    "--server {server}: plain http is allowed only to a loopback address; use https://"
                )
            }
        }
        other => bail!("--server {server}: scheme {other} is not http or https"),
    }
}

struct Link {
    settings: Settings,
    http: reqwest::Client,
    exec: Arc<Executor>,
}

/// Keep the link up until `stop`.
pub(crate) async fn run(
    settings: Settings,
    credential: String,
    exec: Arc<Executor>,
    stop: watch::Receiver<bool>,
) {
    let http = match http_client(&settings, Some(&credential)) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the agent's HTTP client");
            return;
        }
    };
    let link = Arc::new(Link {
        settings,
        http,
        exec,
    });
    let heartbeat = tokio::spawn(link.clone().heartbeat(stop.clone()));
    link.commands(stop).await;
    let _ = heartbeat.await;
}

/// The agent's HTTP client: the server's certificate trusted as settled (a pinned
/// fingerprint or a CA file), and the agent's credential on every request once it has one.
pub(crate) fn http_client(s: &Settings, credential: Option<&str>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(credential) = credential {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {credential}"))
            .context("the credential has characters a header cannot carry")?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
    }
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(5));
    if let Some(trust) = &s.trust {
        builder = builder.use_preconfigured_tls(crate::tls::client_config(trust)?.as_ref().clone());
    }
    builder.build().context("build the agent's HTTP client")
}

impl Link {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.server)
    }

    /// Hold the command stream open, opening it again after a failure.
    async fn commands(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            let ended = tokio::select! {
                r = self.clone().stream_once() => r,
                _ = retry::stopped(&mut stop) => return,
            };
            match ended {
                Ok(()) => {
                    backoff.succeeded();
                    tracing::info!("the server closed the command stream; opening it again");
                }
                Err(e) => {
                    if backoff.failed(&format!("{e:#}")) {
                        tracing::warn!(error = %format!("{e:#}"), "the link to the server is down; the agent goes on serving and tries again");
                    }
                }
            }
            if retry::pause(&mut stop, backoff.delay().max(Duration::from_millis(200))).await {
                return;
            }
        }
    }

    /// One command stream, until it ends; every command runs in its own task.
    async fn stream_once(self: Arc<Self>) -> Result<()> {
        let resp = self
            .http
            .get(format!(
                "{}?version={}&protocol={PROTOCOL_VERSION}",
                self.url("/v1/agent/commands"),
                env!("CARGO_PKG_VERSION")
            ))
            .send()
            .await
            .context("open the command stream")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            bail!(
                "the server refused the command stream ({status}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        tracing::info!("linked to the server");
        let mut body = resp.bytes_stream();
        let mut parser = Parser::default();
        loop {
            let chunk = match tokio::time::timeout(SILENCE, body.next()).await {
                Err(_) => bail!("the command stream was silent for {} s", SILENCE.as_secs()),
                Ok(None) => return Ok(()),
                Ok(Some(chunk)) => chunk.context("read the command stream")?,
            };
            for event in parser.feed(&chunk).map_err(anyhow::Error::msg)? {
                if event.name != "command" {
                    continue;
                }
                match serde_json::from_str::<Envelope>(&event.data) {
                    Ok(envelope) => {
                        tokio::spawn(self.clone().execute(envelope));
                    }
                    Err(e) => {
                        // Answer it, so the server need not wait for an answer that never
                        // comes.
                        tracing::error!(error = %e, "a command this agent does not understand; is it older than the server?");
                        let id = serde_json::from_str::<serde_json::Value>(&event.data)
                            .ok()
                            .and_then(|v| v["id"].as_u64());
                        if let Some(id) = id {
                            let answer = Answer {
                                id,
                                outcome: Outcome::Failed {
                                    error: WireError::Other {
                                        message: format!(
                                            "agent {} does not understand the command ({e})",
                                            env!("CARGO_PKG_VERSION")
                                        ),
                                    },
                                },
                            };
                            let link = self.clone();
                            tokio::spawn(async move {
                                let _ = link.post("/v1/agent/answers", &answer).await;
                            });
                        }
                    }
                }
            }
        }
    }

    async fn execute(self: Arc<Self>, envelope: Envelope) {
        let name = envelope.command.name();
        let vm = envelope.command.vm().to_string();
        let outcome = self.exec.execute(envelope.command).await;
        if let Outcome::Failed { error } = &outcome {
            tracing::warn!(command = name, %vm, %error, "command failed");
        }
        let answer = Answer {
            id: envelope.id,
            outcome,
        };
        // The server waits for this answer; a lost one fails its call there, and the command
        // is sent again (it is idempotent).
        for _ in 0..3 {
            match self.post("/v1/agent/answers", &answer).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(command = name, error = %format!("{e:#}"), "send an answer")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Report every [`HEARTBEAT`] until `stop`.
    async fn heartbeat(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(HEARTBEAT, HEARTBEAT);
        loop {
            let report = self.exec.report();
            match self.post("/v1/agent/report", &report).await {
                Ok(()) => {
                    backoff.succeeded();
                }
                Err(e) => {
                    if backoff.failed(&format!("{e:#}")) {
                        tracing::warn!(error = %format!("{e:#}"), "report to the server");
                    }
                }
            }
            if retry::pause(&mut stop, HEARTBEAT).await {
                return;
            }
        }
    }

    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<()> {
        let resp = self
            .http
            .post(self.url(path))
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            bail!(
                "POST {path}: {status}: {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(())
    }
}
