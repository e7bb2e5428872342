//! The blocks this host exchanges with the server, over requests this agent makes: restoring
//! disks from a recovery point (`POST /v1/agent/restore/present` and `/v1/agent/restore/blocks`)
//! and sending its disks to seed a replica from (`POST /v1/agent/seed/blocks`).

use std::sync::Arc;
use std::time::Duration;

use ferry_agent::hydrate::{BlockSource, BoxFuture, Fetched};
use ferry_agent::restore::{self, BlocksRequest, Present, RestoreDisk, SeedRange, ServerBlocks};
use ferry_format::BLOCK_SIZE;

/// A request for blocks that takes longer than this fails (the hydration tries again).
const BLOCKS_TIMEOUT: Duration = Duration::from_secs(60);
/// The most blocks asked for in one request (the server's limit).
const BLOCKS_PER_REQUEST: usize = 256;

/// The server, as this agent's source of restored blocks.
pub(crate) struct FromServer {
    pub server: String,
    pub http: reqwest::Client,
}

impl FromServer {
    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<bytes::Bytes, String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.server))
            .json(body)
            .timeout(BLOCKS_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("POST {path}: read the answer: {e}"))?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| "no reason given".into());
            return Err(format!("POST {path}: {status}: {reason}"));
        }
        Ok(body)
    }
}

impl ServerBlocks for FromServer {
    fn present(&self, disk: RestoreDisk) -> BoxFuture<Result<Present, String>> {
        let this = self.clone_handle();
        Box::pin(async move {
            let body = this.post("/v1/agent/restore/present", &disk).await?;
            serde_json::from_slice(&body)
                .map_err(|e| format!("the server's list of blocks is malformed: {e}"))
        })
    }

    fn source(&self, disk: RestoreDisk) -> Arc<dyn BlockSource> {
        Arc::new(DiskSource {
            server: self.clone_handle(),
            disk,
        })
    }

    fn upload(&self, range: SeedRange, body: Vec<u8>) -> BoxFuture<Result<(), String>> {
        let this = self.clone_handle();
        Box::pin(async move {
            let path = format!(
                "/v1/agent/seed/blocks?upload={}&disk={}&offset={}&len={}",
                range.upload, range.disk, range.offset, range.len
            );
            let resp = this
                .http
                .post(format!("{}{path}", this.server))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .timeout(BLOCKS_TIMEOUT)
                .send()
                .await
                .map_err(|e| format!("POST /v1/agent/seed/blocks: {e}"))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let body = resp.bytes().await.unwrap_or_default();
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| "no reason given".into());
            Err(format!("POST /v1/agent/seed/blocks: {status}: {reason}"))
        })
    }
}

impl FromServer {
    fn clone_handle(&self) -> Arc<FromServer> {
        Arc::new(FromServer {
            server: self.server.clone(),
            http: self.http.clone(),
        })
    }
}

/// The blocks of one disk being restored.
struct DiskSource {
    server: Arc<FromServer>,
    disk: RestoreDisk,
}

impl BlockSource for DiskSource {
    fn fetch(&self, blocks: Vec<u64>) -> BoxFuture<Fetched> {
        let (server, disk) = (self.server.clone(), self.disk.clone());
        Box::pin(async move {
            let mut out = Vec::with_capacity(blocks.len());
            for chunk in blocks.chunks(BLOCKS_PER_REQUEST) {
                let req = BlocksRequest {
                    disk: disk.clone(),
                    blocks: chunk.to_vec(),
                };
                let body = server.post("/v1/agent/restore/blocks", &req).await?;
                let got = restore::decode_blocks(&body, chunk, BLOCK_SIZE as usize)?;
                if got.len() != chunk.len() {
                    return Err(format!(
                        "the server sent {} of the {} blocks asked for",
                        got.len(),
                        chunk.len()
                    ));
                }
                out.extend(got);
            }
            Ok(out)
        })
    }
}
