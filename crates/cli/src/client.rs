//! The HTTP client of the REST API.

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;

use crate::args::Cli;
use crate::tls::{Trust, client_config};

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(cli: &Cli) -> Result<Client> {
        let token = Self::cli_token(cli)?;
        let trust = match (&cli.fingerprint, &cli.ca_cert) {
            (Some(pin), _) => Some(Trust::parse(pin).and_then(|t| match t {
                Trust::Fingerprint(_) => Ok(t),
                Trust::CaFile(_) => bail!("--fingerprint {pin:?} is not sha256:<hex>"),
            })?),
            (None, Some(ca)) => Some(Trust::CaFile(ca.clone())),
            (None, None) => {
                let ca = Self::data_dir(cli).join("tls").join("ca.pem");
                ca.exists().then_some(Trust::CaFile(ca))
            }
        };
        Self::with_trust(&cli.api, &token, trust.as_ref())
    }

    fn data_dir(cli: &Cli) -> std::path::PathBuf {
        cli.data.clone().unwrap_or_else(|| "ferry-data".into())
    }

    fn cli_token(cli: &Cli) -> Result<String> {
        Ok(match &cli.token {
            Some(t) => t.clone(),
            None => {
                let path = Self::data_dir(cli).join("admin-token");
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|_| anyhow!("no API token: set FERRY_TOKEN or pass --data DIR of the server ({} is not readable)", path.display()))?
            }
        })
    }

    /// A client of the API at `url` with `token`.
    pub fn with(url: &str, token: &str) -> Result<Client> {
        Self::with_trust(url, token, None)
    }

    /// A client of the API at `url` with `token` that trusts an `https://` server by `trust`
    /// (else by the system's roots).
    pub fn with_trust(url: &str, token: &str, trust: Option<&Trust>) -> Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token has characters a header cannot carry")?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(trust) = trust {
            builder = builder.use_preconfigured_tls(client_config(trust)?.as_ref().clone());
        }
        let http = builder.build().context("build HTTP client")?;
        Ok(Client {
            http,
            base: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if let Some(tls) = tls_error(&e) {
                anyhow!(
                    "TLS with the ferry API at {} failed: {tls} (trust the server with \
                     FERRY_FINGERPRINT=sha256:... from its start line or DATA/tls/fingerprint, \
                     or FERRY_CA_CERT=DATA/tls/ca.pem)",
                    self.base
                )
            } else if e.is_connect() {
                anyhow!(
                    "cannot reach the ferry API at {}: is `ferry server` running? (set FERRY_URL)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        bail!("{msg} (HTTP {})", status.as_u16())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.http.get(self.url(path)))
            .await?
            .json()
            .await?)
    }

    pub async fn post(&self, path: &str, body: &impl Serialize) -> Result<Value> {
        Ok(self
            .send(self.http.post(self.url(path)).json(body))
            .await?
            .json()
            .await?)
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.http.delete(self.url(path)))
            .await?
            .json()
            .await?)
    }

    pub async fn get_raw(&self, path: &str) -> Result<reqwest::Response> {
        self.send(self.http.get(self.url(path))).await
    }
}

/// The TLS error under a failed request, if that is why it failed.
fn tls_error(e: &reqwest::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An I/O error carries its cause as its payload, not as its source.
        let payload = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        next = match payload {
            Some(payload) => Some(payload),
            None => err.source(),
        };
    }
    None
}
