//! The agent protocol's messages: what the control plane asks of a host's agent, what the agent
//! answers, and what it reports on its own. The same values drive an agent in the server's
//! process and one that dialled in from its host; `docs/agent-protocol.md` is the wire spec.
//!
//! Every command is idempotent (attaching an attached VM, starting a running stream, stopping a
//! stopped one do nothing), and those that act on a stream carry the item's generation: the
//! agent refuses one older than the stream it holds, so a retried or late command does no harm.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_format::segment::MarkerKind;
use ferry_types::{Generation, Seq, StreamId};
use serde::{Deserialize, Serialize};

use crate::stream::StreamConfig;
use crate::{AgentError, VmStatus};

/// The version of the protocol; an agent and a server speak when they share it.
pub const PROTOCOL_VERSION: u32 = 1;

/// One disk of a VM to serve. `image` is relative to the agent's data directory for a joined
/// host (it may not leave it), absolute for the server's own agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskWire {
    pub index: usize,
    pub image: String,
    pub size_bytes: u64,
    /// The recovery point (`rp-…`) the disk is still being restored from, on a joined host:
    /// its missing blocks come from the server ([`crate::restore`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
}

/// How a stream is cut, as sent to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamWire {
    pub seal_interval_ms: u64,
    pub seal_bytes: u64,
    pub zstd_level: i32,
    pub buffer_bytes: u64,
    pub start_hold_ms: u64,
}

impl From<&StreamConfig> for StreamWire {
    fn from(c: &StreamConfig) -> Self {
        StreamWire {
            seal_interval_ms: millis(c.seal_interval),
            seal_bytes: c.seal_bytes,
            zstd_level: c.zstd_level,
            buffer_bytes: c.buffer_bytes,
            start_hold_ms: millis(c.start_hold),
        }
    }
}

impl From<&StreamWire> for StreamConfig {
    fn from(w: &StreamWire) -> Self {
        StreamConfig {
            seal_interval: Duration::from_millis(w.seal_interval_ms),
            seal_bytes: w.seal_bytes,
            zstd_level: w.zstd_level,
            buffer_bytes: w.buffer_bytes,
            start_hold: Duration::from_millis(w.start_hold_ms),
        }
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The kinds of marker the control plane cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MarkWire {
    CrashConsistent,
    AppConsistent,
}

impl From<MarkWire> for MarkerKind {
    fn from(m: MarkWire) -> Self {
        match m {
            MarkWire::CrashConsistent => MarkerKind::CrashConsistent,
            MarkWire::AppConsistent => MarkerKind::AppConsistent,
        }
    }
}

/// Where a stream ships its segments: a cache account's URL and the stream's own prefix in it.
/// The agent sees only the prefix. With `sas` (an Azure account whose key the server holds) it
/// opens the account with that shared access signature alone (read and create, for a bounded
/// time); without, with its own credentials (its environment).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheWire {
    pub url: String,
    pub prefix: String,
    /// A secret: never logged (the `Debug` of this type hides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas: Option<String>,
}

impl std::fmt::Debug for CacheWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheWire")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("sas", &self.sas.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// What the control plane asks of an agent. A field the agent does not know is ignored, so a
/// newer server's optional fields reach an older agent harmlessly; a missing field is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Serve a VM's disks (creating missing images). With `hold_ms`, its writes wait that
    /// long for its stream to start.
    AttachVm {
        vm: String,
        disks: Vec<DiskWire>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_ms: Option<u64>,
    },
    /// Stop serving a VM (its stream stops too); its images stay.
    DetachVm { vm: String },
    /// Make a detached VM's disks empty images to be restored from `point`: the agent asks the
    /// server which blocks hold data and marks them to fetch. Attach the VM (its disks'
    /// `restore` set) to serve them.
    PrepareRestore {
        vm: String,
        point: String,
        disks: Vec<DiskWire>,
    },
    /// Send a detached VM's disks to the server, range by range, as `upload` (a replica is
    /// seeded from them); answers at once, or fails when a disk is not on the host.
    UploadDisks {
        vm: String,
        upload: u64,
        disks: Vec<DiskWire>,
    },
    /// Stop serving a VM and delete its images and local logs.
    DeleteVm { vm: String, disks: Vec<DiskWire> },
    /// Start (or resume) a VM's write stream.
    StartStream {
        vm: String,
        stream: StreamId,
        generation: Generation,
        cache: CacheWire,
        config: StreamWire,
        crash_consistent_every_ms: u64,
        /// Hex BLAKE3 digests of the replica's blocks per disk: the initial copy sends only
        /// the blocks that differ (a reprotect).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<Vec<Vec<String>>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resync_from: Option<Seq>,
    },
    /// Stop a VM's stream; its logs stay.
    StopStream { vm: String },
    /// Stop a VM's stream and delete its logs.
    ForgetStream { vm: String },
    /// Let a VM's held writes go on without a stream.
    ReleaseVm { vm: String },
    /// Cut a marker in the stream of `generation`; answers its sequence.
    Mark {
        vm: String,
        generation: Generation,
        kind: MarkWire,
    },
    /// Boot the VM under qemu on this host, from its served disks (a no-op while it runs).
    StartVm {
        vm: String,
        /// The disks' numbers, in the guest's order.
        disks: Vec<usize>,
        boot: BootWire,
        memory_mib: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
    },
    /// Ask the guest to power down, and stop it hard after `grace_ms` (a no-op when it is not
    /// running).
    StopVm { vm: String, grace_ms: u64 },
    /// The guest's serial console so far; answers `console`.
    Console { vm: String },
    /// Have the guest's agent freeze its file systems (for an app-consistent point), failing
    /// after `timeout_ms`.
    Freeze { vm: String, timeout_ms: u64 },
    /// Thaw what [`Command::Freeze`] froze.
    Thaw { vm: String, timeout_ms: u64 },
}

/// How a qemu VM boots: a kernel (with its initrd and command line), or firmware from disk 0.
/// The files are read on the host, at these paths.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
}

impl Command {
    /// The VM the command acts on.
    pub fn vm(&self) -> &str {
        match self {
            Command::AttachVm { vm, .. }
            | Command::DetachVm { vm }
            | Command::PrepareRestore { vm, .. }
            | Command::UploadDisks { vm, .. }
            | Command::DeleteVm { vm, .. }
            | Command::StartStream { vm, .. }
            | Command::StopStream { vm }
            | Command::ForgetStream { vm }
            | Command::ReleaseVm { vm }
            | Command::Mark { vm, .. }
            | Command::StartVm { vm, .. }
            | Command::StopVm { vm, .. }
            | Command::Console { vm }
            | Command::Freeze { vm, .. }
            | Command::Thaw { vm, .. } => vm,
        }
    }

    /// The command's name on the wire, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::AttachVm { .. } => "attach-vm",
            Command::DetachVm { .. } => "detach-vm",
            Command::PrepareRestore { .. } => "prepare-restore",
            Command::UploadDisks { .. } => "upload-disks",
            Command::DeleteVm { .. } => "delete-vm",
            Command::StartStream { .. } => "start-stream",
            Command::StopStream { .. } => "stop-stream",
            Command::ForgetStream { .. } => "forget-stream",
            Command::ReleaseVm { .. } => "release-vm",
            Command::Mark { .. } => "mark",
            Command::StartVm { .. } => "start-vm",
            Command::StopVm { .. } => "stop-vm",
            Command::Console { .. } => "console",
            Command::Freeze { .. } => "freeze",
            Command::Thaw { .. } => "thaw",
        }
    }
}

/// A command with the number its answer is matched by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    Marked { seq: Seq },
    Console { text: String },
    Failed { error: WireError },
}

/// The answer to the command numbered `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Answer {
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// An agent's error, with the kinds the control plane acts on kept apart.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, schemars::JsonSchema,
)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WireError {
    /// The stream no longer holds every change: a repair is needed.
    #[error("{reason}: the replica must be resynchronised (`ferry replication repair`)")]
    TrackingLost { reason: String },
    /// No point can be cut inside a catch-up window.
    #[error("{message}")]
    CatchingUp { message: String },
    #[error("VM {vm} is not attached to this agent")]
    UnknownVm { vm: String },
    /// A command of an older generation than the stream the agent holds.
    #[error("{message}")]
    Stale { message: String },
    /// The request cannot be met as asked (a disk larger than the file system holds).
    #[error("{message}")]
    Refused { message: String },
    #[error("{message}")]
    Other { message: String },
}

impl From<AgentError> for WireError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::TrackingLost { reason } => WireError::TrackingLost { reason },
            AgentError::CatchingUp { .. } => WireError::CatchingUp {
                message: e.to_string(),
            },
            AgentError::UnknownVm(vm) => WireError::UnknownVm { vm },
            AgentError::Io { ref source, .. } if source.raw_os_error() == Some(libc::EFBIG) => {
                WireError::Refused {
                    message: format!(
                        "{e}: the file system cannot hold a file this large; pick a smaller disk"
                    ),
                }
            }
            e => WireError::Other {
                message: e.to_string(),
            },
        }
    }
}

/// What an agent says of itself every few seconds (its heartbeat): every VM it serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub version: String,
    /// Free space in the agent's data directory, where new disks go.
    #[serde(default)]
    pub free_bytes: u64,
    /// Where the host serves NBD: its unix socket (on the host), and its TCP address when its
    /// config gives one.
    #[serde(default)]
    pub nbd_socket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_tcp: Option<String>,
    pub vms: BTreeMap<String, VmReport>,
}

/// One served VM in a [`Report`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmReport {
    /// Its writes wait for its stream.
    pub held: bool,
    /// Its stream, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<VmStatus>,
    /// The recovery point its disks were attached to be restored from (kept once they are
    /// whole, until the VM is detached), so a report from before the attach is told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Per disk, how far its restore has come (`null` for a disk that is whole), while any
    /// disk is still restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<Vec<Option<crate::hydrate::HydrationProgress>>>,
}

/// A hex digest list to digests; a malformed one is an error naming it.
pub fn parse_seed(seed: &[Vec<String>]) -> Result<Vec<Vec<ferry_format::Digest>>, String> {
    seed.iter()
        .enumerate()
        .map(|(disk, hashes)| {
            hashes
                .iter()
                .enumerate()
                .map(|(block, h)| {
                    let mut d = [0u8; 32];
                    if h.len() != 64 {
                        return Err(format!(
                            "seed digest {block} of disk {disk} is not 64 hex digits"
                        ));
                    }
                    for (i, byte) in d.iter_mut().enumerate() {
                        *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|_| {
                            format!("seed digest {block} of disk {disk} is not hex")
                        })?;
                    }
                    Ok(ferry_format::Digest(d))
                })
                .collect()
        })
        .collect()
}

/// Digests to their hex form for [`Command::StartStream`].
pub fn format_seed(seed: &[Vec<ferry_format::Digest>]) -> Vec<Vec<String>> {
    seed.iter()
        .map(|hashes| {
            hashes
                .iter()
                .map(|d| d.0.iter().map(|b| format!("{b:02x}")).collect())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_text_and_a_missing_field_is_refused() {
        let c = Envelope {
            id: 7,
            command: Command::Mark {
                vm: "g/v".into(),
                generation: Generation(3),
                kind: MarkWire::AppConsistent,
            },
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "command": "mark", "vm": "g/v", "generation": 3, "kind": "app-consistent"})
        );
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), c);
        let answer = Answer {
            id: 7,
            outcome: Outcome::Marked { seq: Seq(9) },
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), answer);
        let newer = r#"{"id":1,"command":"detach-vm","vm":"g/v","later":1}"#;
        assert_eq!(
            serde_json::from_str::<Envelope>(newer).unwrap().command,
            Command::DetachVm { vm: "g/v".into() }
        );
        let bad = r#"{"id":1,"command":"mark","vm":"g/v","generation":1}"#;
        assert!(serde_json::from_str::<Envelope>(bad).is_err());
    }

    #[test]
    fn a_cache_sas_travels_but_never_shows() {
        let plain = CacheWire {
            url: "az://cache".into(),
            prefix: "streams/s".into(),
            sas: None,
        };
        let json = serde_json::to_value(&plain).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"url": "az://cache", "prefix": "streams/s"})
        );
        let signed = CacheWire {
            sas: Some("sv=2025-11-05&sig=SECRET".into()),
            ..plain
        };
        let text = serde_json::to_string(&signed).unwrap();
        assert_eq!(serde_json::from_str::<CacheWire>(&text).unwrap(), signed);
        let shown = format!("{signed:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn a_seed_round_trips_and_a_bad_digest_is_named() {
        let seed = vec![vec![
            ferry_format::Digest([0xab; 32]),
            ferry_format::Digest::ZERO,
        ]];
        assert_eq!(parse_seed(&format_seed(&seed)).unwrap(), seed);
        let err = parse_seed(&[vec!["zz".repeat(32)]]).unwrap_err();
        assert!(err.contains("digest 0 of disk 0"), "{err}");
    }
}
