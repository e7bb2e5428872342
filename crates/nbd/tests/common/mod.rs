//! Helpers shared by the integration tests: an in-process server and subprocess clients.
#![allow(dead_code)]

pub mod certs;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_nbd::protocol::*;
use ferry_nbd::{DynExport, Export, Exports, FileExport, NbdListener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type Result<T = ()> = anyhow::Result<T>;

/// A server running in-process on a unix socket (and optionally TCP) in a temp dir.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: Option<std::net::SocketAddr>,
    pub exports: Arc<Exports>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<io::Result<()>>>,
}

impl Server {
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    pub async fn start_with(tcp: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("nbd.sock");
        let exports = Arc::new(Exports::new());
        let (stop, stopped) = watch::channel(false);
        let unix = NbdListener::bind_unix(&socket)?;
        let mut tasks = vec![tokio::spawn(unix.serve(exports.clone(), stopped.clone()))];
        let mut addr = None;
        if tcp {
            let l = NbdListener::bind_tcp("127.0.0.1:0".parse()?).await?;
            addr = l.local_addr();
            tasks.push(tokio::spawn(l.serve(exports.clone(), stopped)));
        }
        Ok(Self {
            dir,
            socket,
            tcp: addr,
            exports,
            stop,
            tasks,
        })
    }

    /// Creates a raw image of `size` bytes in the temp dir, serves it as `name`.
    pub fn file_export(&self, name: &str, size: u64) -> Result<PathBuf> {
        let path = self
            .dir
            .path()
            .join(format!("{}.img", name.replace('/', "_")));
        let export = FileExport::create(&path, size)?;
        self.exports.insert(name, Arc::new(export));
        Ok(path)
    }

    pub fn insert(&self, name: &str, export: impl Export) {
        self.exports.insert(name, Arc::new(export) as DynExport);
    }

    pub fn url(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    pub fn tcp_url(&self, name: &str) -> String {
        let addr = self.tcp.expect("server started with tcp");
        format!("nbd://{addr}/{name}")
    }

    /// Flips shutdown and waits for every listener to finish.
    pub async fn shutdown(self) -> Result {
        self.stop.send(true)?;
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// Runs a client program to completion.
pub async fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    Ok(out)
}

/// Runs `qemu-io -f raw` with one `-c` per command against `url`.
pub async fn qemu_io(url: &str, commands: &[&str]) -> Result<Output> {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(url);
    run("qemu-io", &args).await
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts the client succeeded, showing its output otherwise.
pub fn ok(out: Output) -> Result<Output> {
    anyhow::ensure!(out.status.success(), "client failed: {}", text(&out));
    Ok(out)
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result {
    let deadline = Instant::now() + timeout;
    while !cond() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "condition not met in {timeout:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub fn file_bytes(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)?.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// A hand-written NBD client for protocol-level tests.
pub struct RawClient<S> {
    pub s: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    /// Reads the greeting and sends client flags.
    pub async fn greet(mut s: S, client_flags: u32) -> Result<Self> {
        anyhow::ensure!(s.read_u64().await? == NBDMAGIC);
        anyhow::ensure!(s.read_u64().await? == IHAVEOPT);
        let flags = s.read_u16().await?;
        anyhow::ensure!(
            flags == FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
            "flags {flags}"
        );
        s.write_u32(client_flags).await?;
        Ok(Self { s })
    }

    pub async fn option(&mut self, option: u32, data: &[u8]) -> Result {
        self.s
            .write_all(&option_header(option, data.len() as u32))
            .await?;
        self.s.write_all(data).await?;
        Ok(())
    }

    /// Reads one option reply: (option, type, data).
    pub async fn option_reply(&mut self) -> Result<(u32, u32, Vec<u8>)> {
        anyhow::ensure!(self.s.read_u64().await? == OPTION_REPLY_MAGIC);
        let option = self.s.read_u32().await?;
        let kind = self.s.read_u32().await?;
        let len = self.s.read_u32().await?;
        anyhow::ensure!(len < 1 << 20, "reply too long");
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await?;
        Ok((option, kind, data))
    }

    /// NBD_OPT_GO to `name`; returns the export size.
    pub async fn go(&mut self, name: &str) -> Result<u64> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &d).await?;
        let (opt, kind, data) = self.option_reply().await?;
        anyhow::ensure!(opt == OPT_GO && kind == REP_INFO, "GO got {kind:#x}");
        anyhow::ensure!(data.len() == 12 && data[0..2] == [0, 0]);
        let size = u64::from_be_bytes(data[2..10].try_into()?);
        let flags = u16::from_be_bytes(data[10..12].try_into()?);
        anyhow::ensure!(flags == TRANSMISSION_FLAGS);
        let (_, kind, _) = self.option_reply().await?;
        anyhow::ensure!(kind == REP_ACK);
        Ok(size)
    }

    pub async fn request(&mut self, command: u16, handle: u64, offset: u64, length: u32) -> Result {
        let req = Request {
            flags: 0,
            command,
            handle,
            offset,
            length,
        };
        self.s.write_all(&req.encode()).await?;
        Ok(())
    }

    pub async fn reply(&mut self) -> Result<SimpleReply> {
        let mut b = [0u8; SimpleReply::LEN];
        self.s.read_exact(&mut b).await?;
        SimpleReply::decode(&b).map_err(|m| anyhow::anyhow!("bad reply magic {m:#x}"))
    }

    /// A read that must succeed; returns the data.
    pub async fn read(&mut self, handle: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.request(CMD_READ, handle, offset, len).await?;
        let r = self.reply().await?;
        anyhow::ensure!(r == SimpleReply { error: 0, handle }, "read reply {r:?}");
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await?;
        Ok(data)
    }

    /// True once the server has closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b).await, Ok(0) | Err(_))
    }
}
