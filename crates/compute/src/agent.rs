//! The host side of the qemu guest agent (`qemu-ga`) protocol over the VM's virtio-serial port
//! `org.qemu.guest_agent.0` (`dir/qga.sock`): one JSON command per line, one reply per command.
//!
//! A session starts with `guest-sync-delimited`: the host sends a 0xFF byte (which resets the
//! agent's JSON parser and earns a parse error reply) and a random id; the agent answers with
//! 0xFF followed by `{"return": id}`. Everything before that 0xFF, such as replies meant for an
//! earlier client that gave up, is discarded.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::ComputeError;
use crate::process::running_pid;
use crate::qemu::QGA_SOCK;

/// The guest's filesystems as `guest-fsfreeze-status` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeStatus {
    Thawed,
    Frozen,
}

/// Freezes the guest's filesystems (`guest-fsfreeze-freeze`): they flush everything and hold
/// new writes until [`thaw`]. Fails with [`ComputeError::GuestAgentTimeout`] when the agent does
/// not answer within `timeout`.
pub async fn freeze(dir: &Path, timeout: Duration) -> Result<(), ComputeError> {
    let frozen = command(dir, timeout, "guest-fsfreeze-freeze").await?;
    tracing::info!(dir = %dir.display(), filesystems = %frozen, "froze guest filesystems");
    Ok(())
}

/// Thaws what [`freeze`] froze (`guest-fsfreeze-thaw`).
pub async fn thaw(dir: &Path, timeout: Duration) -> Result<(), ComputeError> {
    let thawed = command(dir, timeout, "guest-fsfreeze-thaw").await?;
    tracing::info!(dir = %dir.display(), filesystems = %thawed, "thawed guest filesystems");
    Ok(())
}

/// `guest-fsfreeze-status`.
pub async fn freeze_status(dir: &Path, timeout: Duration) -> Result<FreezeStatus, ComputeError> {
    let status = command(dir, timeout, "guest-fsfreeze-status").await?;
    match status.as_str() {
        Some("thawed") => Ok(FreezeStatus::Thawed),
        Some("frozen") => Ok(FreezeStatus::Frozen),
        _ => Err(ComputeError::GuestAgentProtocol {
            dir: dir.to_path_buf(),
            command: "guest-fsfreeze-status",
            reply: status.to_string(),
        }),
    }
}

async fn command(
    dir: &Path,
    timeout: Duration,
    command: &'static str,
) -> Result<Value, ComputeError> {
    if running_pid(dir).is_none() {
        return Err(ComputeError::NotRunning(dir.to_path_buf()));
    }
    let session = async {
        let mut agent = Agent::connect(dir).await?;
        agent.sync().await?;
        agent.execute(command).await
    };
    tokio::time::timeout(timeout, session)
        .await
        .map_err(|_| ComputeError::GuestAgentTimeout {
            dir: dir.to_path_buf(),
            timeout,
        })?
}

struct Agent {
    dir: PathBuf,
    stream: BufReader<UnixStream>,
}

impl Agent {
    async fn connect(dir: &Path) -> Result<Agent, ComputeError> {
        let path = dir.join(QGA_SOCK);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(ComputeError::io("connect to the guest agent at", &path))?;
        Ok(Agent {
            dir: dir.to_path_buf(),
            stream: BufReader::new(stream),
        })
    }

    async fn sync(&mut self) -> Result<(), ComputeError> {
        let id = sync_id();
        let mut request = vec![0xFF];
        request.extend_from_slice(
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                .to_string()
                .as_bytes(),
        );
        request.push(b'\n');
        self.send("guest-sync-delimited", &request).await?;
        loop {
            // Skip to the delimiter; stale replies and the parse error for our 0xFF come first.
            loop {
                let byte = self.stream.read_u8().await.map_err(ComputeError::io(
                    "read from the guest agent at",
                    self.dir.join(QGA_SOCK),
                ))?;
                if byte == 0xFF {
                    break;
                }
            }
            let reply = self.read_reply("guest-sync-delimited").await?;
            if reply.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    async fn execute(&mut self, command: &'static str) -> Result<Value, ComputeError> {
        let mut request = json!({ "execute": command }).to_string().into_bytes();
        request.push(b'\n');
        self.send(command, &request).await?;
        let mut reply = self.read_reply(command).await?;
        if let Some(value) = reply.get_mut("return") {
            return Ok(value.take());
        }
        match reply.get("error") {
            Some(error) => Err(ComputeError::GuestAgent {
                dir: self.dir.clone(),
                command,
                class: error["class"].as_str().unwrap_or("?").to_string(),
                desc: error["desc"].as_str().unwrap_or("?").to_string(),
            }),
            None => Err(self.protocol(command, reply.to_string())),
        }
    }

    async fn send(&mut self, command: &'static str, request: &[u8]) -> Result<(), ComputeError> {
        self.stream
            .get_mut()
            .write_all(request)
            .await
            .map_err(|e| self.protocol(command, format!("(send failed: {e})")))
    }

    async fn read_reply(&mut self, command: &'static str) -> Result<Value, ComputeError> {
        let mut line = Vec::new();
        let n = self
            .stream
            .read_until(b'\n', &mut line)
            .await
            .map_err(ComputeError::io(
                "read from the guest agent at",
                self.dir.join(QGA_SOCK),
            ))?;
        if n == 0 {
            return Err(self.protocol(command, "(connection closed)".into()));
        }
        serde_json::from_slice(&line)
            .map_err(|_| self.protocol(command, String::from_utf8_lossy(&line).into_owned()))
    }

    fn protocol(&self, command: &'static str, reply: String) -> ComputeError {
        ComputeError::GuestAgentProtocol {
            dir: self.dir.clone(),
            command,
            reply,
        }
    }
}

/// An id unlikely to repeat between sessions (the protocol needs uniqueness, not secrecy).
fn sync_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Keep it within JSON's exactly representable integers.
    (nanos ^ (u64::from(std::process::id()) << 32)) & ((1 << 53) - 1)
}
