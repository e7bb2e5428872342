//! Request bodies of the API. Unknown fields are refused, so a typo is an error, not a
//! silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    pub name: String,
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    pub address_space: String,
    pub subnets: Vec<SubnetSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStorage {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAvailabilitySet {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskRequest {
    pub size_bytes: u64,
    #[serde(default)]
    pub storage: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    pub name: String,
    pub network: String,
    pub subnet: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub availability_set: Option<String>,
    pub disks: Vec<DiskRequest>,
    /// The joined host to place the VM on; default: the region's live host with the most
    /// free space, or the server's own agent when none has joined.
    #[serde(default)]
    pub host: Option<String>,
    /// A file in the server's import directory (a name, or a path inside it) copied into disk 0.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub compute: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub append: Option<String>,
    /// External compute: name of the script in the scripts directory that quiesces the guest
    /// before an app-consistent point.
    #[serde(default)]
    pub pre_freeze_script: Option<String>,
    /// External compute: name of the script in the scripts directory that resumes the guest
    /// after it.
    #[serde(default)]
    pub post_thaw_script: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    pub name: String,
    #[serde(default)]
    pub retention_seconds: Option<u64>,
    #[serde(default)]
    pub crash_consistent_every_seconds: Option<f64>,
    #[serde(default)]
    pub app_consistent_every_seconds: Option<u64>,
    /// Journal window (any instant within it can be recovered); default 24 h, at most the
    /// retention.
    #[serde(default)]
    pub journal_seconds: Option<u64>,
    /// Thinning ladder of crash-consistent points.
    #[serde(default)]
    pub thinning: Option<Vec<ferry_replica::retention::Rung>>,
    /// Thinning ladder of app-consistent points.
    #[serde(default)]
    pub app_thinning: Option<Vec<ferry_replica::retention::Rung>>,
    /// RPO over which health is `warning` (default 120 s) and `critical` (default 600 s).
    #[serde(default)]
    pub rpo_warning_seconds: Option<f64>,
    #[serde(default)]
    pub rpo_critical_seconds: Option<f64>,
    /// Time without a new recovery point after which health is `warning` (default three
    /// crash-consistent intervals, at least 10 minutes).
    #[serde(default)]
    pub no_point_warning_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableReplication {
    pub target_region: String,
    #[serde(default)]
    pub target_group: Option<String>,
    #[serde(default)]
    pub target_network: Option<String>,
    #[serde(default)]
    pub target_subnet: Option<String>,
    /// Source account → target account name (in the target group).
    #[serde(default)]
    pub target_storage: BTreeMap<String, String>,
    #[serde(default)]
    pub target_availability_set: Option<String>,
    /// Cache account in the source region, `ACCOUNT` in the VM's group.
    #[serde(default)]
    pub cache_storage: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
}
