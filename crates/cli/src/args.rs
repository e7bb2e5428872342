//! The command-line grammar (the interface contract of DESIGN §4, extended).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Continuous replication and failover of virtual machines between regions"
)]
pub struct Cli {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// The API to talk to.
    #[arg(
        long = "api",
        global = true,
        env = "FERRY_URL",
        default_value = "http://127.0.0.1:7480"
    )]
    pub api: String,
    /// API token (default: read DATA/admin-token).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory: where `server`, `demo` and `agent` keep their state; clients read its
    /// admin-token.
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
    /// For an https:// API: trust the server's certificate if this CA (PEM) signed it
    /// (default: DATA/tls/ca.pem when it exists, else the system's roots).
    #[arg(long, global = true, env = "FERRY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// For an https:// API: trust the server whose CA has this fingerprint (sha256:<hex>, as
    /// `ferry server` printed it).
    #[arg(
        long,
        global = true,
        env = "FERRY_FINGERPRINT",
        conflicts_with = "ca_cert"
    )]
    pub fingerprint: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// A section of `ferry bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchSection {
    /// NBD write path beside qemu-nbd.
    Nbd,
    /// Sustained churn the pipeline keeps up with.
    Churn,
    /// Initial replication.
    Initial,
    /// Failover, hydration and reprotect.
    Failover,
    /// Storage efficiency of recovery points.
    Storage,
    /// `replication repair`: blocks compared per second beside a sequential read.
    Repair,
    /// Separate processes: a joined agent's write path, RPO at a site loss.
    Sites,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the whole story on the embedded default in a fresh directory; exit 0 when verified.
    Demo,
    /// Run the control plane, the agents and the processors (regions east and west).
    Server(ServerArgs),
    /// Measure ferry beside baselines measured in the same run.
    Bench {
        /// A shorter run with smaller sizes.
        #[arg(long)]
        quick: bool,
        /// Run only these sections, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
        only: Vec<BenchSection>,
    },
    #[command(subcommand)]
    Region(RegionCmd),
    #[command(subcommand)]
    Host(HostCmd),
    #[command(subcommand)]
    Lease(LeaseCmd),
    #[command(subcommand)]
    Group(GroupCmd),
    #[command(subcommand)]
    Network(NetworkCmd),
    #[command(subcommand)]
    Storage(StorageCmd),
    #[command(subcommand, name = "availability-set")]
    AvailabilitySet(AvSetCmd),
    #[command(subcommand)]
    Vm(VmCmd),
    #[command(subcommand)]
    Policy(PolicyCmd),
    #[command(subcommand)]
    Replication(ReplicationCmd),
    #[command(subcommand, name = "recovery-point")]
    RecoveryPoint(PointCmd),
    #[command(subcommand)]
    Disk(DiskCmd),
    #[command(subcommand)]
    Failover(FailoverCmd),
    /// After a committed failover: replicate the failed-over VM back to the region it came
    /// from, sending only the blocks that differ from the original disks.
    Reprotect {
        /// GROUP/VM (the item's name, whichever way it replicates)
        name: String,
        /// Wait until the item is protected again.
        #[arg(long)]
        wait: bool,
    },
    #[command(subcommand)]
    Job(JobCmd),
    #[command(subcommand)]
    Event(EventCmd),
    #[command(subcommand)]
    Orphan(OrphanCmd),
    #[command(subcommand)]
    Alert(AlertCmd),
    /// Run an agent on a hypervisor host (without a subcommand: it dials out to the server),
    /// or manage agents: join tokens, the list, revocation.
    Agent(AgentArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum FailoverCmd {
    /// Boot a copy of the VM in an isolated network in the target region; replication goes on.
    Test {
        /// GROUP/VM
        name: String,
        /// latest (default), latest-processed, latest-app-consistent, a point id or an RFC 3339 time.
        #[arg(long)]
        recovery_point: Option<String>,
        /// Isolated network in the target group (default: NETWORK-test, created for the test).
        #[arg(long)]
        network: Option<String>,
        /// Wait for the job to finish.
        #[arg(long)]
        wait: bool,
    },
    /// Delete the test failover's VM, its disks and the network it created; record the outcome.
    TestCleanup {
        /// GROUP/VM
        name: String,
        #[arg(long)]
        wait: bool,
    },
    /// Fail the VM over: boot it in the target region from a recovery point. Run it again
    /// while failed over to change the point.
    Run {
        /// GROUP/VM
        name: String,
        /// latest (default: process everything in the cache, then cut a point),
        /// latest-processed, latest-app-consistent, a point id or an RFC 3339 time.
        #[arg(long)]
        recovery_point: Option<String>,
        /// Planned failover: shut the source VM down and drain its writes first (no data loss).
        #[arg(long)]
        shutdown_source: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Make the failover permanent and discard the other recovery points.
    Commit {
        /// GROUP/VM
        name: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Configuration file, JSON (not needed for the embedded default):
    /// `{"regions": ["east", "west"], "seal_interval_seconds": 1, "seal_bytes": 8388608,
    /// "ship_buffer_bytes": 2147483648, "gc_grace_seconds": 600, "gc_interval_seconds": 60,
    /// "gap_grace_seconds": 30, "start_hold_seconds": 20}`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: String,
    /// The state database, for several servers or a deployment beyond one machine:
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE` (give it in FERRY_DATABASE to keep a
    /// password off the command line). Default: SQLite, `state.db` in the data directory.
    #[arg(long, env = "FERRY_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RegionCmd {
    /// List the regions.
    List,
}

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List the hosts: each region's agent in the server, and the hosts that joined, with
    /// their version, last heartbeat, VMs and streams.
    List,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Which server works on each item (`item:GROUP/VM`), under which generation and until
    /// when: several servers on one database share the items by these leases.
    List,
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a resource group in a region.
    Create {
        name: String,
        #[arg(long)]
        region: String,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a virtual network: `ferry network create rg1/vnet1 --address-space 10.1.0.0/16 --subnet default=10.1.0.0/24`
    Create {
        /// GROUP/NETWORK
        name: String,
        #[arg(long)]
        address_space: String,
        /// NAME=CIDR, repeatable.
        #[arg(long = "subnet", required = true)]
        subnets: Vec<String>,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StorageCmd {
    /// Create a storage account: local directory by default, or `--url az://C`, `s3://B`, `file:///DIR`.
    Create {
        /// GROUP/ACCOUNT
        name: String,
        /// az://CONTAINER[/PREFIX], s3://BUCKET[/PREFIX], or file:///DIR with DIR a directory
        /// under one of the server's storage roots (`storage_roots`, default DATA/storage).
        #[arg(long)]
        url: Option<String>,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AvSetCmd {
    /// Create an availability set: GROUP/SET.
    Create {
        name: String,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM whose disks ferry serves over NBD.
    Create(Box<VmCreate>),
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Boot the VM (qemu compute) or mark it running (external).
    Start {
        name: String,
    },
    /// Ask the guest to power down; stop it hard after a timeout.
    Stop {
        name: String,
    },
    /// Print the VM's serial console so far (qemu compute).
    Console {
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct VmCreate {
    /// GROUP/VM
    pub name: String,
    #[arg(long)]
    pub network: String,
    #[arg(long)]
    pub subnet: String,
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long)]
    pub availability_set: Option<String>,
    /// SIZE[@ACCOUNT], e.g. 64MiB@sa1; repeatable, numbered from 0.
    #[arg(long = "disk", required = true)]
    pub disks: Vec<String>,
    /// The joined host to place the VM on (`ferry host list`); default: the region's live
    /// host with the most free space, or the server's own agent when no host has joined.
    #[arg(long)]
    pub host: Option<String>,
    /// Raw image copied into disk 0: a file in the server's import directory (`import_dir`,
    /// default DATA/import), by name or by a path inside it.
    #[arg(long)]
    pub image: Option<String>,
    /// `qemu`: ferry boots the VM on this host; `external`: only serve its disks over NBD.
    #[arg(long, default_value = "external")]
    pub compute: String,
    /// Kernel to boot (qemu compute), instead of booting disk 0: a file in the server's import
    /// directory, by name or by a path inside it.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Initial ramdisk for --kernel, in the import directory too.
    #[arg(long)]
    pub initrd: Option<String>,
    /// Kernel command line for --kernel (ferry adds the console and the NIC's IP as ferry.ip=).
    #[arg(long)]
    pub append: Option<String>,
    /// External compute: name of the shell script in the server's scripts directory
    /// (`scripts_dir`, default DATA/scripts) that quiesces the guest before an app-consistent
    /// point; it runs with `sh` as `scripts_user` (default nobody) when the server runs as root.
    #[arg(long)]
    pub pre_freeze_script: Option<String>,
    /// External compute: name of the script in the scripts directory that resumes the guest
    /// afterwards.
    #[arg(long)]
    pub post_thaw_script: Option<String>,
}

#[derive(Debug, Args)]
pub struct PolicyCreateArgs {
    pub name: String,
    /// How long points are kept (default 24h).
    #[arg(long)]
    pub retention: Option<String>,
    /// Cadence of crash-consistent points (default 5min, at least 1s).
    #[arg(long)]
    pub crash_consistent_every: Option<String>,
    /// Cadence of app-consistent points (default 4h).
    #[arg(long)]
    pub app_consistent_every: Option<String>,
    /// Journal window: any instant within it can be recovered (default 24h, at most the
    /// retention).
    #[arg(long)]
    pub journal: Option<String>,
    /// Thinning rung for crash-consistent points, AFTER:EVERY (e.g. 2h:1h keeps one point
    /// per hour among those older than 2 h); repeatable, in increasing AFTER.
    #[arg(long = "thin")]
    pub thin: Vec<String>,
    /// Thinning rung for app-consistent points, AFTER:EVERY; repeatable.
    #[arg(long = "app-thin")]
    pub app_thin: Vec<String>,
    /// RPO over which an item's health is warning (default 2m).
    #[arg(long)]
    pub rpo_warning: Option<String>,
    /// RPO over which an item's health is critical (default 10m).
    #[arg(long)]
    pub rpo_critical: Option<String>,
    /// Time without a new recovery point after which health is warning (default three
    /// crash-consistent intervals, at least 10m).
    #[arg(long)]
    pub no_point_warning: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Create a replication policy.
    Create(Box<PolicyCreateArgs>),
    List,
    Show {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReplicationCmd {
    /// Protect a VM: replicate its disks continuously to another region.
    Enable(EnableArgs),
    /// Protected items with their state, health and RPO, in `GROUP/VM` order.
    ///
    /// Example: `ferry replication list --health critical --limit 50`
    List {
        /// Only items in this state (`protected`, `initial-replication`, `failed-over`, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only items of this health: `healthy`, `warning` or `critical`.
        #[arg(long)]
        health: Option<String>,
        /// A page: at most this many items.
        #[arg(long)]
        limit: Option<usize>,
        /// The next page: items after this `GROUP/VM` (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    Show {
        name: String,
    },
    /// Stop protecting a VM and delete its cache and replica data (the VM is untouched).
    Disable {
        name: String,
        /// Wait for the job to finish.
        #[arg(long)]
        wait: bool,
        /// Show what would be stopped and deleted, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-read every chunk and map page behind the retained recovery points and check their
    /// digests; exits non-zero when damage remains.
    Verify {
        /// GROUP/VM
        name: String,
        /// Rebuild damaged chunks in place from the source disks where they still hold the data.
        #[arg(long)]
        repair: bool,
    },
    /// Resynchronise an item whose stream cannot be trusted (state `resync-required`), or on
    /// demand: read every block of every disk and send only those that differ from the
    /// replica, under a new generation that fences any stale writer. Points are kept.
    ///
    /// Example: `ferry replication repair rg1/web1 --wait`
    Repair {
        /// GROUP/VM
        name: String,
        /// Wait for the job to finish.
        #[arg(long)]
        wait: bool,
    },
    /// The item's RPO over time: one sample every 30 s, kept for 7 days.
    RpoHistory {
        /// GROUP/VM
        name: String,
        /// How far back (e.g. 1h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
    },
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    /// GROUP/VM
    pub name: String,
    #[arg(long)]
    pub target_region: String,
    #[arg(long)]
    pub target_group: Option<String>,
    #[arg(long)]
    pub target_network: Option<String>,
    #[arg(long)]
    pub target_subnet: Option<String>,
    /// SOURCE_ACCOUNT=TARGET_ACCOUNT, repeatable.
    #[arg(long = "target-storage")]
    pub target_storage: Vec<String>,
    #[arg(long)]
    pub target_availability_set: Option<String>,
    /// Cache account in the VM's group (default cache-REGION).
    #[arg(long)]
    pub cache_storage: Option<String>,
    #[arg(long)]
    pub policy: Option<String>,
    /// Wait until the VM is protected.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum PointCmd {
    /// List a protected VM's recovery points, oldest first.
    List { name: String },
}

#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// Write a disk as it was at a recovery point to a raw file.
    Export {
        /// GROUP/VM
        name: String,
        #[arg(long)]
        disk: usize,
        /// latest, latest-processed, latest-app-consistent, a point id or an RFC 3339 time.
        #[arg(long)]
        recovery_point: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertCmd {
    /// POST a JSON notification to a webhook when an item's health crosses a severity, and
    /// when it comes back (retried with backoff).
    ///
    /// Example: `ferry alert create oncall --url http://127.0.0.1:9000/hook --severity critical`
    Create {
        name: String,
        #[arg(long)]
        url: String,
        /// `warning` (warning and critical) or `critical`.
        #[arg(long, default_value = "warning")]
        severity: String,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCmd {
    /// State and health changes, job ends and faults, oldest first.
    ///
    /// Example: `ferry event list --target rg1/web1 --severity warning`
    List {
        /// Only events about this target: an item (`GROUP/VM`), or what a job acted on.
        #[arg(long)]
        target: Option<String>,
        /// Only this kind (`health-changed`, `state-changed`, `job-failed`, `resync-required`,
        /// `ship-buffer-overflow`, `catch-up-done`, `segment-refused`, ...).
        #[arg(long)]
        kind: Option<String>,
        /// This severity and above: `info`, `warning`, `critical`.
        #[arg(long)]
        severity: Option<String>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrphanCmd {
    /// What ferry made and no record owns any more (replicas, cache streams, stream
    /// directories, VMs, test networks, VM directories), looked for now: since when, and when
    /// the server deletes it (`orphan_grace_seconds` after it was first found).
    List,
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Jobs, oldest first, with their kind, target, state and percent.
    ///
    /// Example: `ferry job list --state running`
    List {
        /// Only jobs in this state: `running`, `succeeded` or `failed`.
        #[arg(long)]
        state: Option<String>,
        /// A page: at most this many jobs.
        #[arg(long)]
        limit: Option<usize>,
        /// The next page: jobs after this id (the last one of the previous page).
        #[arg(long)]
        after: Option<u64>,
    },
    Show {
        id: u64,
        /// Wait until the job ends, printing its steps.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub cmd: Option<AgentCmd>,
    #[command(flatten)]
    pub run: AgentRunArgs,
}

/// How `ferry agent` runs (no subcommand). Its data directory is the global `--data DIR`.
#[derive(Debug, Clone, Args)]
pub struct AgentRunArgs {
    /// The server's URL.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The region this host serves.
    #[arg(long)]
    pub region: Option<String>,
    /// This agent's name (default: the host's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the agent keeps its credential, disks, stream logs and NBD socket: the global
    /// `--data DIR`, filled in by the dispatch.
    #[arg(skip)]
    pub data: Option<PathBuf>,
    /// A one-time join token (`ferry agent token create`), for the first start.
    #[arg(long, value_name = "T")]
    pub join_token: Option<String>,
    /// The agent's configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The SHA-256 fingerprint of the server's TLS certificate, to trust on first use.
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Join tokens: one for each agent's first start.
    #[command(subcommand)]
    Token(AgentTokenCmd),
    /// List the agents that joined, revoked ones too.
    List,
    /// Revoke an agent: its credential is refused from now on (it may join again with a new
    /// token).
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentTokenCmd {
    /// Create a one-time join token for a region: an agent exchanges it once for its own
    /// credential. Shown once; only its hash is stored.
    Create {
        #[arg(long)]
        region: String,
        /// How long it can be used: 1m to 24h.
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
}
