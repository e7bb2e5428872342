//! A minimal QMP client: greeting, capabilities negotiation, one command at a time.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::ComputeError;
use crate::qemu::QMP_SOCK;

pub(crate) struct Qmp {
    dir: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to `dir/qmp.sock`, reads the greeting and leaves negotiation mode.
    pub(crate) async fn connect(dir: &Path) -> Result<Qmp, ComputeError> {
        let path = dir.join(QMP_SOCK);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(ComputeError::io("connect to QMP", &path))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            dir: dir.to_path_buf(),
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.error(format!("expected the QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Runs a command without arguments and returns its `return` value.
    pub(crate) async fn execute(&mut self, command: &str) -> Result<Value, ComputeError> {
        let request = format!("{{\"execute\":\"{command}\"}}\n");
        self.writer
            .write_all(request.as_bytes())
            .await
            .map_err(|e| self.error(format!("send {command}: {e}")))?;
        loop {
            let mut message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            return Err(self.error(format!("{command} failed: {message}")));
        }
    }

    async fn read_message(&mut self) -> Result<Value, ComputeError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| self.error(format!("read: {e}")))?;
        if n == 0 {
            return Err(self.error("qemu closed the connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| self.error(format!("bad message {line:?}: {e}")))
    }

    fn error(&self, reason: String) -> ComputeError {
        ComputeError::Qmp {
            dir: self.dir.clone(),
            reason,
        }
    }
}
