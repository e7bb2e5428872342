//! Separate processes: a `ferry server` (regions east and west, their embedded agents and the
//! processors) and one joined east host's `ferry agent`, both this executable, all on loopback,
//! with `file://` storage accounts for east, west and the cache.
//!
//! - The write path through the joined agent's NBD socket beside the server's embedded east
//!   agent: the same writes (1 MiB sequential; 4 KiB random at queue depth 16) to two
//!   replicated VMs, one on each. The embedded one is created before the host joins (while a
//!   live joined host is in a region, new VMs go to it). The embedded agent shares its process
//!   with the processors applying both VMs' writes; the joined one has a process of its own.
//!   Each VM's disk space is freed between workloads: points expire after a minute and are
//!   collected at once, and the next workload waits until replication has caught up.
//! - Failover RTO at a site loss ([`rto`]): a guest on a second joined east host, killed with
//!   its host; `failover run` timed to its first console line on a joined west host.
//! - RPO at a site loss ([`rpo`]): the joined host's VM written at a steady 100 MB/s (50 MB/s
//!   with `--quick`), its agent killed with SIGKILL, the item failed over to `latest`.

mod procs;
mod rpo;
mod rto;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ferry_agent::AgentHost;
use ferry_control::requests::{
    CreateGroup, CreateNetwork, CreatePolicy, CreateStorage, CreateVm, DiskRequest,
    EnableReplication, SubnetSpec,
};
use ferry_nbd::NbdClient;
use serde_json::Value;

use self::procs::{Agent, Server, wait_until};
use super::data::Pool;
use super::{Figure, MB, MIB, Plan, Target, progress};
use crate::client::Client;

const GROUP: &str = "bench";
const TARGET_GROUP: &str = "bench-west";
const HOST: &str = "east-1";
const JOINED_VM: &str = "joined";
const EMBEDDED_VM: &str = "embedded";
const POLICY: &str = "sites";
/// The policy's crash-consistent interval (the shortest a policy allows).
const POINT_EVERY: f64 = 1.0;
const BASELINE: &str = "server's embedded east agent, same writes";
/// Requests in flight of the random writes (one NBD connection each).
const DEPTH: usize = 16;
/// Regions east and west (the default). Points older than the policy's retention are deleted
/// within seconds, so that the gigabytes written do not pile up on the disk.
const SERVER_CONFIG: &str = r#"{"gc_grace_seconds": 0, "gc_interval_seconds": 5}"#;
/// The policy's retention and journal window (seconds).
const RETENTION: u64 = 60;
const JOURNAL: u64 = 10;
/// The longest replication may take to catch up after a workload.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a drained item must stay drained: a joined host reports every 2 s, so an older
/// report may still be read.
const DRAINED_FOR: Duration = Duration::from_millis(2100);

pub async fn run(dir: &Path, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let dir = dir.join("sites");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut server = Server::start(&dir, SERVER_CONFIG)
        .await
        .context("start the server process")?;
    progress(format!("sites: server listening on {}", server.url));
    let client = server.client()?;
    resources(&client, &server.data).await.map_err(|e| {
        server
            .proc
            .error(format!("create the sites' resources: {e:#}"))
    })?;
    // Before the host joins, a new east VM goes to the server's own agent.
    // Each VM's disk (three copies of what is written to it are kept meanwhile: the disk,
    // the replica and the points).
    let size = if plan.quick { 128 * MIB } else { plan.disk };
    create_vm(&client, EMBEDDED_VM, size, None).await?;
    let agent = Agent::join(&dir, &mut server, HOST, "east")
        .await
        .with_context(|| format!("join host {HOST}"))?;
    progress(format!(
        "sites: host {HOST} joined, serving NBD on {}",
        agent.nbd_socket.display()
    ));
    let mut sites = Sites {
        client,
        server,
        agent,
    };
    let result = measure(&mut sites, &dir, size, plan, pool)
        .await
        .map_err(|e| {
            // The server's side of whatever failed.
            anyhow!(
                "{e:#}; the end of the server log:\n{}",
                sites.server.proc.tail()
            )
        });
    sites.agent.proc.stop().await;
    sites.server.proc.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The running processes and the bench's client of the server.
pub struct Sites {
    pub client: Client,
    pub server: Server,
    pub agent: Agent,
}

impl Sites {
    /// Fails when the server or the agent has exited.
    pub fn check(&mut self) -> Result<()> {
        self.server.proc.check()?;
        self.agent.proc.check()
    }

    /// Waits until every write to `vms` is shipped and applied, for [`DRAINED_FOR`] in a row.
    async fn drain(&mut self, vms: &[&str]) -> Result<()> {
        let start = Instant::now();
        let mut since: Option<Instant> = None;
        loop {
            let mut drained = true;
            for vm in vms {
                let s = &replication(&self.client, &item(vm)).await?["stats"];
                drained &= s["pending_local_logs"] == 0 && s["cache_backlog_bytes"] == 0;
            }
            since = match drained {
                true => Some(since.unwrap_or_else(Instant::now)),
                false => None,
            };
            if since.is_some_and(|t| t.elapsed() >= DRAINED_FOR) {
                break;
            }
            self.check()?;
            if start.elapsed() > DRAIN_TIMEOUT {
                bail!(
                    "replication of {} did not catch up within {DRAIN_TIMEOUT:?}",
                    vms.join(" and ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress(format!(
            "sites: replication caught up in {:.1} s",
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

async fn measure(
    sites: &mut Sites,
    dir: &Path,
    size: u64,
    plan: Plan,
    pool: &Arc<Pool>,
) -> Result<Vec<Figure>> {
    let c = &sites.client;
    create_vm(c, JOINED_VM, size, Some(HOST)).await?;
    let embedded_uri = embedded_uri(c).await?;
    let joined_uri = ferry_nbd::bench::unix_url(
        &sites.agent.nbd_socket,
        &AgentHost::export_name(&item(JOINED_VM), 0),
    );
    for vm in [EMBEDDED_VM, JOINED_VM] {
        enable(c, vm).await?;
    }
    for vm in [EMBEDDED_VM, JOINED_VM] {
        wait_protected(sites, vm).await?;
    }
    let mut figures = write_path(sites, &joined_uri, &embedded_uri, size, plan, pool)
        .await
        .context("write path figures")?;
    sites.drain(&[EMBEDDED_VM, JOINED_VM]).await?;
    figures.extend(
        rto::run(sites, dir, plan)
            .await
            .context("failover RTO at a site loss")?,
    );
    let site = rpo::Site {
        item: item(JOINED_VM),
        uri: joined_uri,
        disk: size,
        point_every: POINT_EVERY,
    };
    figures.extend(
        rpo::run(sites, site, plan, pool)
            .await
            .context("RPO at a site loss")?,
    );
    Ok(figures)
}

fn item(vm: &str) -> String {
    format!("{GROUP}/{vm}")
}

fn vm_path(vm: &str) -> String {
    format!("/v1/groups/{GROUP}/vms/{vm}")
}

/// Groups `bench` (east) and `bench-west`, a network, the accounts `east`, `cache` and
/// `west` under the server's storage root, and policy `sites` (a point every second).
async fn resources(c: &Client, data: &Path) -> Result<()> {
    let account = |name: &str| format!("file://{}", data.join("storage").join(name).display());
    for (name, region) in [(GROUP, "east"), (TARGET_GROUP, "west")] {
        let body = CreateGroup {
            name: name.into(),
            region: region.into(),
        };
        c.post("/v1/groups", &body)
            .await
            .with_context(|| format!("create group {name}"))?;
    }
    let net = CreateNetwork {
        name: "net".into(),
        address_space: "10.9.0.0/16".into(),
        subnets: vec![SubnetSpec {
            name: "sub".into(),
            cidr: "10.9.1.0/24".into(),
        }],
    };
    c.post(&format!("/v1/groups/{GROUP}/networks"), &net)
        .await
        .context("create the network")?;
    for (group, name) in [(GROUP, "east"), (GROUP, "cache"), (TARGET_GROUP, "west")] {
        let body = CreateStorage {
            name: name.into(),
            url: Some(account(name)),
        };
        c.post(&format!("/v1/groups/{group}/storage"), &body)
            .await
            .with_context(|| format!("create storage account {group}/{name}"))?;
    }
    let policy = CreatePolicy {
        name: POLICY.into(),
        retention_seconds: Some(RETENTION),
        crash_consistent_every_seconds: Some(POINT_EVERY),
        app_consistent_every_seconds: None,
        journal_seconds: Some(JOURNAL),
        thinning: None,
        app_thinning: None,
        rpo_warning_seconds: None,
        rpo_critical_seconds: None,
        no_point_warning_seconds: None,
    };
    c.post("/v1/policies", &policy)
        .await
        .context("create the policy")?;
    Ok(())
}

/// Creates VM `bench/VM` with one disk of `size` on account `east`, on `host` (none: where
/// placement puts it), and checks where it went.
async fn create_vm(c: &Client, vm: &str, size: u64, host: Option<&str>) -> Result<()> {
    let body = CreateVm {
        name: vm.into(),
        network: "net".into(),
        subnet: "sub".into(),
        ip: None,
        availability_set: None,
        disks: vec![DiskRequest {
            size_bytes: size,
            storage: Some("east".into()),
        }],
        host: host.map(str::to_string),
        image: None,
        compute: Some("external".into()),
        kernel: None,
        initrd: None,
        append: None,
        pre_freeze_script: None,
        post_thaw_script: None,
    };
    let created = c
        .post(&format!("/v1/groups/{GROUP}/vms"), &body)
        .await
        .with_context(|| format!("create VM {}", item(vm)))?;
    let placed = created["host"].as_str();
    if placed != host {
        bail!(
            "VM {} was placed on {} instead of {}",
            item(vm),
            placed.unwrap_or("the server's own agent"),
            host.unwrap_or("the server's own agent")
        );
    }
    Ok(())
}

/// The NBD URI the server gives for the embedded VM's disk.
async fn embedded_uri(c: &Client) -> Result<String> {
    let vm = c
        .get(&vm_path(EMBEDDED_VM))
        .await
        .with_context(|| format!("show VM {}", item(EMBEDDED_VM)))?;
    vm["disks"][0]["nbd_uri"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("VM {} has no NBD URI: {vm}", item(EMBEDDED_VM)))
}

/// Enables replication of `bench/VM` to west.
async fn enable(c: &Client, vm: &str) -> Result<()> {
    let body = EnableReplication {
        target_region: "west".into(),
        target_group: Some(TARGET_GROUP.into()),
        target_storage: [("east".to_string(), "west".to_string())].into(),
        cache_storage: Some("cache".into()),
        policy: Some(POLICY.into()),
        ..Default::default()
    };
    let path = format!("{}/replication", vm_path(vm));
    c.post(&path, &body)
        .await
        .with_context(|| format!("enable replication of {}", item(vm)))?;
    Ok(())
}

/// Waits until `bench/VM` is protected.
async fn wait_protected(sites: &mut Sites, vm: &str) -> Result<()> {
    let c = &sites.client;
    let what = format!("{} to be protected", item(vm));
    wait_until(
        &what,
        Duration::from_secs(120),
        || {
            sites.server.proc.check()?;
            sites.agent.proc.check()
        },
        || async {
            let rep = replication(c, &item(vm)).await?;
            Ok((rep["state"] == "protected").then_some(()))
        },
    )
    .await?;
    progress(format!("sites: {} protected", item(vm)));
    Ok(())
}

/// Waits (up to 60 s) until the server holds `host` lost (not alive in `/v1/hosts`).
async fn wait_host_lost(c: &Client, server: &mut Server, host: &str) -> Result<()> {
    wait_until(
        &format!("the server to hold host {host} lost"),
        Duration::from_secs(60),
        || server.proc.check(),
        || async {
            let hosts = c.get("/v1/hosts").await.context("list the hosts")?;
            let alive = hosts
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["name"] == host && h["alive"] == true);
            Ok((!alive).then_some(()))
        },
    )
    .await
}

/// `replication show ITEM` as JSON.
async fn replication(c: &Client, item: &str) -> Result<Value> {
    let (group, vm) = item.split_once('/').unwrap_or((item, ""));
    c.get(&format!("/v1/groups/{group}/vms/{vm}/replication"))
        .await
        .with_context(|| format!("show the replication of {item}"))
}

/// One write workload of the write path figures.
#[derive(Clone, Copy)]
enum Load {
    /// 1 MiB writes, one after the other from the start of the disk, this many bytes.
    Sequential { bytes: u64 },
    /// 4 KiB writes at random 4 KiB-aligned offsets, [`DEPTH`] in flight, this many.
    Random { count: u64 },
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Sequential { .. } => "sites_joined_agent_seq_write_1m",
            Load::Random { .. } => "sites_joined_agent_randwrite_4k_qd16",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Load::Sequential { .. } => "MB/s",
            Load::Random { .. } => "IOPS",
        }
    }

    fn rate(self, secs: f64) -> f64 {
        match self {
            Load::Sequential { bytes } => bytes as f64 / MB / secs,
            Load::Random { count } => count as f64 / secs,
        }
    }
}

/// Each workload several times on both VMs, in turn (the order swapped each round so that
/// neither always runs behind the other's replication), the median of each.
async fn write_path(
    sites: &mut Sites,
    joined: &str,
    embedded: &str,
    size: u64,
    plan: Plan,
    pool: &Arc<Pool>,
) -> Result<Vec<Figure>> {
    let loads = if plan.quick {
        [
            Load::Sequential { bytes: size / 2 },
            Load::Random { count: 2_000 },
        ]
    } else {
        [
            Load::Sequential { bytes: size / 2 },
            Load::Random { count: 25_000 },
        ]
    };
    let rounds = if plan.quick { 3 } else { 5 };
    let mut block = 1u64 << 44;
    let mut figures = Vec::new();
    for (i, load) in loads.into_iter().enumerate() {
        // What a workload wrote is applied (and the disk space of what the replica no longer
        // needs freed) before the next starts; a quick run has little to free.
        if i > 0 && !plan.quick {
            sites.drain(&[EMBEDDED_VM, JOINED_VM]).await?;
        }
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut order = [(joined, "joined agent"), (embedded, "embedded agent")];
            if round % 2 == 1 {
                order.reverse();
            }
            for (uri, who) in order {
                let secs = write(uri, load, size, pool, block)
                    .await
                    .with_context(|| format!("{} through the {who} ({uri})", load.name()))?;
                block += 1 << 24;
                progress(format!(
                    "{} run {}: {who}: {:.0} {}",
                    load.name(),
                    round + 1,
                    load.rate(secs),
                    load.unit()
                ));
                match uri == joined {
                    true => ours.push(secs),
                    false => base.push(secs),
                }
            }
        }
        figures.push(Figure::new(
            load.name(),
            load.rate(median(ours)),
            load.unit(),
            BASELINE,
            load.rate(median(base)),
            // A separate process should cost little.
            Target::RatioAtLeast(0.9),
        ));
    }
    Ok(figures)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `load` against the disk at `uri` (of `size` bytes) with blocks of data numbered from
/// `first`; returns the seconds from the first write to the last acknowledgement (the
/// connections are opened before).
async fn write(uri: &str, load: Load, size: u64, pool: &Arc<Pool>, first: u64) -> Result<f64> {
    let conns = match load {
        Load::Sequential { .. } => 1,
        Load::Random { .. } => DEPTH,
    };
    let mut clients = Vec::new();
    for _ in 0..conns {
        let c = NbdClient::connect_uri(uri)
            .await
            .with_context(|| format!("connect to {uri}"))?;
        clients.push(c);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let pool = pool.clone();
        let base = first + ((i as u64) << 20);
        tasks.push(tokio::spawn(async move {
            match load {
                Load::Sequential { bytes } => {
                    let mut buf = vec![0u8; MIB as usize];
                    for n in 0..bytes / MIB {
                        pool.fill(base + n, &mut buf);
                        c.write(n * MIB % size, &buf, false).await?;
                    }
                }
                Load::Random { count } => {
                    let mut buf = vec![0u8; 4096];
                    let mut state = base | 1;
                    let blocks = size / 4096;
                    for n in 0..count / DEPTH as u64 {
                        pool.fill(base + n, &mut buf);
                        c.write(xorshift(&mut state) % blocks * 4096, &buf, false)
                            .await?;
                    }
                }
            }
            c.disconnect().await?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
