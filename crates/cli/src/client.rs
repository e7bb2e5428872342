//! The HTTP client of the REST API.

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;

use crate::args::Cli;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(cli: &Cli) -> Result<Client> {
        let token = Self::cli_token(cli)?;
        Self::with(&cli.api, &token)
    }

    fn cli_token(cli: &Cli) -> Result<String> {
        Ok(match &cli.token {
            Some(t) => t.clone(),
            None => {
                let dir = cli.data.clone().unwrap_or_else(|| "ferry-data".into());
                let path = dir.join("admin-token");
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|_| anyhow!("no API token: set FERRY_TOKEN or pass --data DIR of the server ({} is not readable)", path.display()))?
            }
        })
    }

    /// A client of the API at `url` with `token`.
    pub fn with(url: &str, token: &str) -> Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token has characters a header cannot carry")?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .context("build HTTP client")?;
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
            if e.is_connect() {
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
