//! The resource model, as stored and as the API returns it. States, steps and severities are
//! enums (`state.rs`, `job.rs` here) whose serde names are the strings the API has always used.

use std::collections::BTreeMap;

use ferry_types::{Generation, StreamId, Timestamp};
use serde::{Deserialize, Serialize};

/// For a fieldless enum with serde `rename_all = "kebab-case"`: its names as `&'static str`
/// (`as_str`, and `Display` for messages), `ALL`, and `FromStr` (for filters and requests).
/// The names are spelled out; a test beside each enum checks they are serde's.
macro_rules! wire_names {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name as the API and the state database spell it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::model::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::model::UnknownName {
                        what: $what,
                        name: s.to_string(),
                    })
            }
        }
    };
}

mod job;
mod state;

pub use job::{Job, JobKind, JobState, JobStep, StepState, TestOutcome};
pub use state::{Health, IllegalMove, ItemState, Severity, VmState};

/// A name that is none of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Region {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Group {
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Subnet {
    pub name: String,
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Network {
    pub group: String,
    pub name: String,
    pub region: String,
    pub address_space: String,
    pub subnets: Vec<Subnet>,
    /// The replicated item whose test failover made this network; it goes with the test.
    /// None: the user's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StorageAccount {
    pub group: String,
    pub name: String,
    pub region: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AvailabilitySet {
    pub group: String,
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Policy {
    pub name: String,
    pub retention_seconds: u64,
    pub crash_consistent_every_seconds: f64,
    pub app_consistent_every_seconds: u64,
    /// How far back any instant can be recovered (journal replay); at most the retention.
    #[serde(default = "default_journal")]
    pub journal_seconds: u64,
    /// Thinning ladder of crash-consistent points (default: all for 2 h, then one per hour).
    #[serde(default = "ferry_replica::retention::default_crash_ladder")]
    pub thinning: Vec<ferry_replica::retention::Rung>,
    /// Thinning ladder of app-consistent points (default: all for 2 h, then one per 4 h).
    #[serde(default = "ferry_replica::retention::default_app_ladder")]
    pub app_thinning: Vec<ferry_replica::retention::Rung>,
    /// Health turns `warning` when the RPO is over this, `critical` over the next.
    #[serde(default = "default_rpo_warning")]
    pub rpo_warning_seconds: f64,
    #[serde(default = "default_rpo_critical")]
    pub rpo_critical_seconds: f64,
    /// Health turns `warning` when no recovery point was published for this long (default:
    /// three crash-consistent intervals, at least 10 minutes).
    #[serde(default)]
    pub no_point_warning_seconds: Option<f64>,
}

fn default_journal() -> u64 {
    24 * 3600
}

fn default_rpo_warning() -> f64 {
    120.0
}

fn default_rpo_critical() -> f64 {
    600.0
}

impl Policy {
    /// The retention rules the planner applies.
    pub fn retention(&self) -> ferry_replica::retention::Retention {
        ferry_replica::retention::Retention {
            retention_seconds: self.retention_seconds,
            crash_ladder: self.thinning.clone(),
            app_ladder: self.app_thinning.clone(),
        }
    }

    /// How long an item may go without a new recovery point before its health warns.
    pub fn no_point_warning(&self) -> f64 {
        self.no_point_warning_seconds
            .unwrap_or((3.0 * self.crash_consistent_every_seconds).max(600.0))
    }

    pub fn default_named(name: &str) -> Self {
        Policy {
            name: name.to_string(),
            retention_seconds: 24 * 3600,
            crash_consistent_every_seconds: 300.0,
            app_consistent_every_seconds: 4 * 3600,
            journal_seconds: default_journal(),
            thinning: ferry_replica::retention::default_crash_ladder(),
            app_thinning: ferry_replica::retention::default_app_ladder(),
            rpo_warning_seconds: default_rpo_warning(),
            rpo_critical_seconds: default_rpo_critical(),
            no_point_warning_seconds: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmDisk {
    pub index: usize,
    pub size_bytes: u64,
    /// Storage account (in the VM's group) the disk belongs to.
    pub storage: String,
    /// The raw image on the source host.
    pub image: String,
    /// NBD URI of the disk's export (filled in when shown).
    #[serde(default)]
    pub nbd_uri: String,
    /// NBD over TLS (`nbds://HOST:PORT/EXPORT`) when the server's config gives the region
    /// an `nbd_tcp` listener; empty otherwise.
    #[serde(default)]
    pub nbd_tcp_uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Nic {
    pub network: String,
    pub subnet: String,
    pub private_ip: String,
}

/// How a `--compute qemu` VM boots: a kernel (with initrd and arguments), or disk 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Boot {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
}

/// How an `external` VM is quiesced for app-consistent points: shell commands ferry runs on
/// the host (`sh -c`, with `FERRY_VM=GROUP/VM`), each with a deadline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct AppConsistency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_freeze: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_thaw: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Vm {
    pub group: String,
    pub name: String,
    pub region: String,
    /// The joined host whose agent serves the VM (only that agent may act on it); none: the
    /// region's own agent in the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub state: VmState,
    pub compute: String,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default)]
    pub app_consistency: AppConsistency,
    pub availability_set: Option<String>,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<Nic>,
    /// Where the VM came from, when ferry created it (`failover`, `test-failover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The replicated item whose failover or test failover made this VM, while the item
    /// still answers for it. None: the user's VM (also one a disabled item left behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub created: Timestamp,
    /// While the disks are restored from a recovery point in the background (the VM already
    /// runs from them): which point, and how far it has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<VmHydration>,
}

/// The recovery point a VM's disks are hydrated from, and the progress (filled in when shown).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmHydration {
    /// The protected item (`GROUP/VM`) whose replica holds the point.
    pub item: String,
    /// The point's id.
    pub recovery_point: String,
    /// Bytes of the point's data to fetch, and already in the disks.
    #[serde(default, skip_deserializing)]
    pub total_bytes: u64,
    #[serde(default, skip_deserializing)]
    pub done_bytes: u64,
    #[serde(default, skip_deserializing)]
    pub percent: f64,
    /// The last failure of the background fetch (it retries), if any.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VmHydration {
    /// A restore of `item`'s point `recovery_point` that has not begun.
    pub fn new(item: String, recovery_point: String) -> Self {
        VmHydration {
            item,
            recovery_point,
            total_bytes: 0,
            done_bytes: 0,
            percent: 0.0,
            error: None,
        }
    }
}

/// Where a protected item replicates to.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Target {
    pub region: String,
    pub group: String,
    pub network: String,
    pub subnet: String,
    pub availability_set: Option<String>,
    /// Cache account, `GROUP/ACCOUNT` in the source region.
    pub cache_storage: String,
    /// Source account name → target account name (in the target group).
    pub storage: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replication {
    pub group: String,
    pub vm: String,
    pub source_region: String,
    pub stream: StreamId,
    pub generation: Generation,
    pub state: ItemState,
    pub policy: String,
    pub target: Target,
    pub job: Option<u64>,
    pub created: Timestamp,
    /// The VM whose writes replicate now, `GROUP/VM` (absent: the item's own VM). After a
    /// reprotect it is the failed-over VM in the other region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vm: Option<String>,
    /// The VM a failover writes into when it already exists (after a reprotect: the VM the
    /// item came from). Absent: a new VM named like the source in the target group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vm: Option<String>,
    /// The failover in effect (state `failing-over`, `failed-over`, `failover-committed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// A test failover that has not been cleaned up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_failover: Option<TestFailover>,
    /// How the last test failover ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test_failover: Option<TestFailover>,
    /// Why the item needs a repair (state `resync-required`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_reason: Option<String>,
    /// During a repair: the sequence the new generation's stream starts at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_from: Option<ferry_types::Seq>,
}

impl Replication {
    /// The item's name: its first source VM, for its whole life.
    pub fn item_key(&self) -> String {
        format!("{}/{}", self.group, self.vm)
    }

    /// The VM whose writes replicate now.
    pub fn source_key(&self) -> String {
        self.source_vm.clone().unwrap_or_else(|| self.item_key())
    }

    /// The VM a failover boots in the target region.
    pub fn failover_vm_key(&self) -> String {
        self.target_vm
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.target.group, self.source_name()))
    }

    fn source_name(&self) -> String {
        let key = self.source_key();
        key.split_once('/')
            .map_or(key.clone(), |(_, v)| v.to_string())
    }
}

#[cfg(test)]
impl Replication {
    /// An item `GROUP/VM` replicating from east to west in `state` (tests).
    pub(crate) fn sample(item: &str, state: ItemState) -> Replication {
        let (group, vm) = item.split_once('/').unwrap_or((item, ""));
        Replication {
            group: group.into(),
            vm: vm.into(),
            source_region: "east".into(),
            stream: StreamId::random(),
            generation: Generation(1),
            state,
            policy: "default".into(),
            target: Target {
                region: "west".into(),
                group: format!("{group}-asr"),
                network: "net1-asr".into(),
                subnet: "default".into(),
                availability_set: None,
                cache_storage: format!("{group}/cache"),
                storage: BTreeMap::new(),
            },
            job: None,
            created: Timestamp::now(),
            source_vm: None,
            target_vm: None,
            failover: None,
            test_failover: None,
            last_test_failover: None,
            resync_reason: None,
            resync_from: None,
        }
    }
}

/// A failover: the VM it booted and the recovery point it booted from.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Failover {
    pub vm: String,
    pub point: Option<crate::replication::PointView>,
    pub planned: bool,
    pub started: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<Timestamp>,
}

/// A test failover: the VM and the isolated network it runs in.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TestFailover {
    pub vm: String,
    pub network: String,
    /// Whether the test created the network (cleanup then deletes it).
    pub created_network: bool,
    pub point: Option<crate::replication::PointView>,
    pub job: u64,
    pub started: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaned_up: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TestOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkMapping {
    pub source: String,
    pub target: String,
}

/// Something that happened: a state or health change, a job's end, a fault.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    pub id: u64,
    pub time: Timestamp,
    pub severity: Severity,
    /// What happened, e.g. `state-changed`, `health-changed`, `job-succeeded`, `job-failed`,
    /// `segment-refused`, `stale-segment-deleted`, `ship-buffer-overflow`, `catch-up-done`,
    /// `resync-required`.
    pub kind: String,
    /// The item (`GROUP/VM`) or job (`job/ID`) it is about.
    pub target: String,
    pub message: String,
}
