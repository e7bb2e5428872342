//! A host whose agent joined and dialled in: the commands waiting for its connection, the
//! answers awaited, and what it last reported.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_agent::command::{Answer, Command, Envelope, Outcome, Report, WireError};
use ferry_types::Timestamp;
use tokio::sync::{mpsc, oneshot};

/// A host not heard from for this long is unreachable.
pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command may take on the host (a stream's start may redo its logs first).
const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// One joined host, as the server knows it.
pub(crate) struct RemoteHost {
    pub name: String,
    pub region: String,
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// The open command stream, with its number (a newer connection replaces an older one).
    session: Option<(u64, mpsc::UnboundedSender<Envelope>)>,
    pending: HashMap<u64, oneshot::Sender<Outcome>>,
    report: Report,
    last_seen: Option<(Instant, Timestamp)>,
    version: String,
    /// Reports received, and per VM the first report known to be made after its disks were
    /// last prepared for a restore (one may be on its way that was made before).
    reports: u64,
    fresh_from: HashMap<String, u64>,
}

impl RemoteHost {
    pub fn new(name: &str, region: &str) -> Self {
        RemoteHost {
            name: name.to_string(),
            region: region.to_string(),
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new command stream from the agent; the commands sent on the older one, if any, fail.
    pub fn connect(&self, version: &str) -> (u64, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner();
        inner.session = Some((session, tx));
        inner.pending.clear();
        inner.version = version.to_string();
        inner.last_seen = Some((Instant::now(), Timestamp::now()));
        (session, rx)
    }

    /// The command stream numbered `session` ended.
    pub fn disconnect(&self, session: u64) {
        let mut inner = self.inner();
        if inner.session.as_ref().is_some_and(|(s, _)| *s == session) {
            inner.session = None;
            inner.pending.clear();
        }
    }

    /// End the open command stream (a revoked agent).
    pub fn close(&self) {
        let mut inner = self.inner();
        inner.session = None;
        inner.pending.clear();
    }

    pub fn connected(&self) -> bool {
        self.inner().session.is_some()
    }

    /// Send a command and wait for its answer.
    pub async fn call(&self, command: Command) -> Outcome {
        let name = command.name();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner();
            let Some((_, session)) = &inner.session else {
                return failed(format!(
                    "host {} is not connected{}; its agent must be running and able to reach \
                     the server",
                    self.name,
                    since(inner.last_seen)
                ));
            };
            if session.send(Envelope { id, command }).is_err() {
                return failed(format!("host {} just disconnected", self.name));
            }
            inner.pending.insert(id, tx);
        }
        match tokio::time::timeout(CALL_DEADLINE, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => failed(format!(
                "host {} disconnected before it answered {name}",
                self.name
            )),
            Err(_) => {
                self.inner().pending.remove(&id);
                failed(format!(
                    "host {} did not answer {name} within {} s",
                    self.name,
                    CALL_DEADLINE.as_secs()
                ))
            }
        }
    }

    /// An answer from the agent; one for no awaited command (late, or of an older
    /// connection) is dropped.
    pub fn answer(&self, answer: Answer) {
        if let Some(tx) = self.inner().pending.remove(&answer.id) {
            let _ = tx.send(answer.outcome);
        }
    }

    /// A heartbeat with the agent's report.
    pub fn report(&self, report: Report) {
        let mut inner = self.inner();
        inner.version = report.version.clone();
        inner.report = report;
        inner.reports += 1;
        inner.last_seen = Some((Instant::now(), Timestamp::now()));
    }

    /// What the agent last said of a VM.
    pub fn vm_report(&self, vm: &str) -> Option<ferry_agent::command::VmReport> {
        self.inner().report.vms.get(vm).cloned()
    }

    /// The VM's disks were just prepared for a restore: what the reports said of their
    /// hydration before is void, and the next report may still be one made before.
    pub fn restore_prepared(&self, vm: &str) {
        let mut inner = self.inner();
        let from = inner.reports + 2;
        inner.fresh_from.insert(vm.to_string(), from);
    }

    /// What the agent last said of a VM, when it was said after its disks were last prepared
    /// for a restore.
    pub fn vm_report_since_restore(&self, vm: &str) -> Option<ferry_agent::command::VmReport> {
        let inner = self.inner();
        if inner.fresh_from.get(vm).is_some_and(|&n| inner.reports < n) {
            return None;
        }
        inner.report.vms.get(vm).cloned()
    }

    /// Where the host serves NBD, as it last reported: its unix socket and TCP address.
    pub fn nbd(&self) -> (String, Option<String>) {
        let inner = self.inner();
        (
            inner.report.nbd_socket.clone(),
            inner.report.nbd_tcp.clone(),
        )
    }

    pub fn free_bytes(&self) -> u64 {
        self.inner().report.free_bytes
    }

    pub fn version(&self) -> String {
        self.inner().version.clone()
    }

    /// When the agent was last heard from (none since the server started).
    pub fn last_seen(&self) -> Option<Timestamp> {
        self.inner().last_seen.map(|(_, t)| t)
    }

    /// Heard from within [`HEARTBEAT_TIMEOUT`].
    pub fn alive(&self) -> bool {
        self.inner()
            .last_seen
            .is_some_and(|(i, _)| i.elapsed() < HEARTBEAT_TIMEOUT)
    }
}

fn failed(message: String) -> Outcome {
    Outcome::Failed {
        error: WireError::Other { message },
    }
}

fn since(last: Option<(Instant, Timestamp)>) -> String {
    match last {
        Some((_, t)) => format!(" (last heard from at {t})"),
        None => " (not heard from since the server started)".into(),
    }
}
