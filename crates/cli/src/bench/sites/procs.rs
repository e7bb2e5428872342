//! The processes of the sites section: a `ferry server` and a joined `ferry agent`, both this
//! very executable, each logging to its own file in the work directory, each killed when
//! dropped (on an error too) and when the bench itself dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ferry_control::CreateJoinToken;
use tokio::process::{Child, Command};

use crate::client::Client;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A child process of the bench.
pub struct Proc {
    /// What it is, for messages: `server`, `agent east-1`.
    what: String,
    child: Child,
    log: PathBuf,
}

/// A bench that is killed (Ctrl-C, SIGKILL) runs no destructor: the kernel then kills the
/// child instead.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe, takes plain integers and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        die_with_parent(&mut cmd);
        let child = cmd
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start the {what} process ({cmd:?})"))?;
        Ok(Proc {
            what: what.into(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The last lines of its log (stdout and stderr).
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// An error naming the process, `msg` and the tail of its log.
    pub fn error(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{msg}; the end of the {} log ({}):\n{}",
            self.what,
            self.log.display(),
            self.tail()
        )
    }

    /// Fails when the process has exited.
    pub fn check(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(self.error(format!("the {} process exited ({status})", self.what))),
        }
    }

    /// Sends SIGKILL, as a crash or a site loss would.
    pub fn kill9(&mut self) -> Result<()> {
        self.child
            .start_kill()
            .with_context(|| format!("kill the {} process", self.what))
    }

    /// Waits (up to 10 s) until the process has exited.
    pub async fn wait_exit(&mut self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| self.error(format!("the {} process did not exit", self.what)))??;
        Ok(())
    }

    /// Kills it and waits for it.
    pub async fn stop(mut self) {
        let _ = self.kill9();
        let _ = self.wait_exit().await;
    }

    /// Polls the log until a line holds `marker`; returns that line. Fails when the process
    /// exits first or after [`START_TIMEOUT`].
    async fn wait_log_line(&mut self, marker: &str) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                return Ok(line.to_string());
            }
            self.check()?;
            if Instant::now() > deadline {
                return Err(self.error(format!(
                    "no {marker:?} line within {START_TIMEOUT:?} of the start"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A `ferry server` process listening on a free loopback port.
pub struct Server {
    pub proc: Proc,
    pub data: PathBuf,
    /// Plain HTTP (served to loopback), for the bench's own client.
    pub url: String,
    /// What a host's agent dials: `https://` with the fingerprint to pin, or plain HTTP when
    /// the server serves no TLS.
    pub agent_url: String,
    pub fingerprint: Option<String>,
    pub token: String,
}

impl Server {
    /// Starts `ferry server --data DIR/server --listen 127.0.0.1:0 --config FILE` (`config`,
    /// JSON, in `DIR/server.json`) and waits for its banner.
    pub async fn start(dir: &Path, config: &str) -> Result<Server> {
        let data = dir.join("server");
        let file = dir.join("server.json");
        std::fs::write(&file, config).with_context(|| format!("write {}", file.display()))?;
        let mut cmd = Command::new(exe()?);
        cmd.arg("server")
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&file);
        let mut proc = Proc::spawn("server", cmd, &dir.join("server.log"))?;
        const BANNER: &str = "ferry server listening on ";
        let line = proc.wait_log_line(BANNER).await?;
        let listening = line
            .split(BANNER)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| proc.error(format!("no URL in the banner {line:?}")))?
            .to_string();
        let url = listening.replacen("https://", "http://", 1);
        let fingerprint = match listening.starts_with("https://") {
            true => {
                let path = data.join("tls/fingerprint");
                let f = std::fs::read_to_string(&path)
                    .map_err(|e| proc.error(format!("read {}: {e}", path.display())))?;
                Some(f.trim().to_string())
            }
            false => None,
        };
        let token_path = data.join("admin-token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| proc.error(format!("read {}: {e}", token_path.display())))?
            .trim()
            .to_string();
        Ok(Server {
            proc,
            data,
            url,
            agent_url: listening,
            fingerprint,
            token,
        })
    }

    pub fn client(&self) -> Result<Client> {
        Client::with(&self.url, &self.token)
    }
}

/// A joined host's `ferry agent` process.
pub struct Agent {
    pub proc: Proc,
    pub name: String,
    /// The unix socket it serves its VMs' disks on.
    pub nbd_socket: PathBuf,
}

impl Agent {
    /// Makes a join token for `region`, starts `ferry agent --data DIR/NAME` linked to the
    /// server, and waits until the server lists the host as alive.
    pub async fn join(dir: &Path, server: &mut Server, name: &str, region: &str) -> Result<Agent> {
        let client = server.client()?;
        let body = CreateJoinToken {
            region: region.into(),
            ttl_seconds: None,
        };
        let token = client
            .post("/v1/agent-tokens", &body)
            .await
            .context("create a join token (POST /v1/agent-tokens)")?;
        let token = token["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in the join token answer {token}"))?;
        let mut cmd = Command::new(exe()?);
        cmd.arg("--data")
            .arg(dir.join(name))
            .arg("agent")
            .args(["--server", &server.agent_url, "--region", region])
            .args(["--name", name, "--join-token", token]);
        if let Some(f) = &server.fingerprint {
            cmd.args(["--fingerprint", f]);
        }
        let mut proc = Proc::spawn(
            &format!("agent {name}"),
            cmd,
            &dir.join(format!("{name}.log")),
        )?;
        const SERVING: &str = "serving NBD on ";
        let line = proc.wait_log_line(SERVING).await?;
        let nbd_socket = line
            .split(SERVING)
            .nth(1)
            .and_then(|rest| rest.split(", linked to").next())
            .map(PathBuf::from)
            .ok_or_else(|| proc.error(format!("no socket in {line:?}")))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let hosts = client.get("/v1/hosts").await.context("list the hosts")?;
            let alive = hosts
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["name"] == name && h["alive"] == true);
            if alive {
                break;
            }
            proc.check()?;
            server.proc.check()?;
            if Instant::now() > deadline {
                return Err(proc.error(format!(
                    "host {name} did not show as alive in `host list` within {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(Agent {
            proc,
            name: name.into(),
            nbd_socket,
        })
    }
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("find the ferry executable to start the server and agent")
}

/// Fails when `cond` has not held by `timeout` after the start; between polls (every 100 ms),
/// `alive` checks the processes the condition depends on.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
    mut cond: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await? {
            return Ok(v);
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
