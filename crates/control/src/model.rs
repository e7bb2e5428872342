//! The resource model, as stored and as the API returns it.

use std::collections::BTreeMap;

use ferry_types::{Generation, StreamId, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subnet {
    pub name: String,
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub group: String,
    pub name: String,
    pub region: String,
    pub address_space: String,
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageAccount {
    pub group: String,
    pub name: String,
    pub region: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AvailabilitySet {
    pub group: String,
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub retention_seconds: u64,
    pub crash_consistent_every_seconds: f64,
    pub app_consistent_every_seconds: u64,
}

impl Policy {
    pub fn default_named(name: &str) -> Self {
        Policy {
            name: name.to_string(),
            retention_seconds: 24 * 3600,
            crash_consistent_every_seconds: 300.0,
            app_consistent_every_seconds: 4 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(default)]
    pub nbd_tcp_uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nic {
    pub network: String,
    pub subnet: String,
    pub private_ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    pub group: String,
    pub name: String,
    pub region: String,
    pub state: String,
    pub compute: String,
    pub availability_set: Option<String>,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<Nic>,
    pub created: Timestamp,
}

/// Where a protected item replicates to.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub state: String,
    pub policy: String,
    pub target: Target,
    pub job: Option<u64>,
    pub created: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkMapping {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStep {
    pub name: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub kind: String,
    pub target: String,
    pub state: String,
    pub steps: Vec<JobStep>,
    pub error: Option<String>,
    pub percent: Option<f64>,
    pub created: Timestamp,
    pub updated: Timestamp,
}

/// Item states.
pub mod state {
    pub const ENABLING: &str = "enabling";
    pub const INITIAL_REPLICATION: &str = "initial-replication";
    pub const PROTECTED: &str = "protected";
    pub const DISABLING: &str = "disabling";
}
