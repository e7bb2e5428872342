//! `ferry demo`: the whole replication story on the embedded default, verified byte for byte.
//!
//! It starts a server in-process on a fresh directory, builds the resources through the REST
//! API, writes data into a two-disk VM through its NBD exports, enables replication to `west`,
//! then runs rounds of a realistic workload (sequential, random, zeroes, rewrites). After each
//! round it waits for the recovery point cut right after it, and at the end it exports every
//! such point and checks it against what the disks held at that instant. Then it runs a test
//! failover and its cleanup, a planned failover to `west`, commit, more writes in `west`, and a
//! reprotect back to `east`, checking the disks byte for byte at each step.

mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_nbd::client::NbdClient;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::outln;
use crate::server;
use workload::{Disks, Workload};

const ITEM: &str = "/v1/groups/demo-rg/vms/web1";
const ROUNDS: usize = 4;

fn say(msg: impl AsRef<str>) {
    outln!("[demo] {}", msg.as_ref());
}

pub async fn run(data: Option<PathBuf>) -> Result<()> {
    let tmp_used = data.is_none();
    let dir = match data {
        Some(d) => d,
        None => tempdir()?,
    };
    say(format!(
        "starting ferry in {} (regions east and west, local storage accounts, SQLite)",
        dir.display()
    ));
    let running = server::start(&dir, "127.0.0.1:0", None, Default::default()).await?;
    let result = story(&Client::with(&running.url, &running.token)?).await;
    running.stop().await;
    match &result {
        Ok(()) => {
            say("all checks held");
            if tmp_used {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Err(e) => say(format!("FAILED: {e:#} (state kept in {})", dir.display())),
    }
    result
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    Ok(dir)
}

async fn story(c: &Client) -> Result<()> {
    say(
        "creating group demo-rg in east, network vnet1, accounts sa1 and sa2, availability set avset1, policy every 2 s",
    );
    c.post("/v1/groups", &json!({"name": "demo-rg", "region": "east"}))
        .await?;
    c.post(
        "/v1/groups/demo-rg/networks",
        &json!({"name": "vnet1", "address_space": "10.20.0.0/16", "subnets": [{"name": "web", "cidr": "10.20.1.0/24"}]}),
    )
    .await?;
    c.post("/v1/groups/demo-rg/storage", &json!({"name": "sa1"}))
        .await?;
    c.post("/v1/groups/demo-rg/storage", &json!({"name": "sa2"}))
        .await?;
    c.post(
        "/v1/groups/demo-rg/availability-sets",
        &json!({"name": "avset1"}),
    )
    .await?;
    c.post(
        "/v1/policies",
        &json!({"name": "demo", "crash_consistent_every_seconds": 2.0, "retention_seconds": 3600}),
    )
    .await?;
    let vm = c
        .post(
            "/v1/groups/demo-rg/vms",
            &json!({"name": "web1", "network": "vnet1", "subnet": "web", "availability_set": "avset1",
                    "disks": [{"size_bytes": 64u64 << 20, "storage": "sa1"}, {"size_bytes": 32u64 << 20, "storage": "sa2"}]}),
        )
        .await?;
    say(format!(
        "VM demo-rg/web1 created with disks {} and {}",
        vm["disks"][0]["nbd_uri"], vm["disks"][1]["nbd_uri"]
    ));
    let mut nbd = Vec::new();
    for d in vm["disks"].as_array().into_iter().flatten() {
        nbd.push(NbdClient::connect_uri(d["nbd_uri"].as_str().unwrap_or_default()).await?);
    }
    let mut disks = Disks::new(&[64 << 20, 32 << 20]);
    let mut load = Workload::new(0x5eed);
    say("writing 24 MiB of existing data before replication is enabled");
    load.seed_data(&mut nbd, &mut disks).await?;

    say("enabling replication of demo-rg/web1 to west");
    let job = c
        .post(
            &format!("{ITEM}/replication"),
            &json!({"target_region": "west", "policy": "demo"}),
        )
        .await?;
    let started = Instant::now();
    wait_protected(c, job["id"].as_u64().unwrap_or(0)).await?;
    say(format!(
        "protected after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let rep = c.get(&format!("{ITEM}/replication")).await?;
    let t = &rep["target"];
    say(format!(
        "target: group {} network {} subnet {} availability set {} accounts {}",
        t["group"], t["network"], t["subnet"], t["availability_set"], t["storage"]
    ));

    let worst = Arc::new(std::sync::Mutex::new(0.0f64));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_rpo(
        Client::with(c.base(), c.token())?,
        worst.clone(),
        stop.clone(),
    ));
    let mut checks: Vec<(String, Vec<String>)> = Vec::new();
    for round in 1..=ROUNDS {
        let written = load.round(&mut nbd, &mut disks).await?;
        let after = ferry_types::Timestamp::now();
        let point = wait_point_after(c, after).await?;
        say(format!(
            "round {round}/{ROUNDS}: wrote {:.1} MiB (sequential, random 4 KiB, zeroes, rewrites); point {} at {}",
            written as f64 / (1 << 20) as f64,
            point["id"].as_str().unwrap_or("?"),
            point["time"].as_str().unwrap_or("?")
        ));
        checks.push((
            point["id"].as_str().unwrap_or_default().to_string(),
            disks.digests(),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    for n in nbd {
        n.disconnect().await?;
    }

    for (id, digests) in &checks {
        for (disk, want) in digests.iter().enumerate() {
            let got = export_digest(c, disk, id).await?;
            ensure!(
                &got == want,
                "point {id} disk {disk} differs from what the disk held at that instant"
            );
        }
        say(format!(
            "point {id}: both disks exported and equal, byte for byte, to the disks at that instant"
        ));
    }
    let worst = *worst.lock().unwrap_or_else(|p| p.into_inner());
    failover_story(c, &mut load, &mut disks).await?;
    summary(c, &load, worst).await
}

/// Test failover and cleanup, a planned failover to west, commit, writes in west, reprotect
/// back to east (only the blocks that differ), and a point of the reversed item checked.
async fn failover_story(c: &Client, load: &mut Workload, disks: &mut Disks) -> Result<()> {
    say("test failover of demo-rg/web1 into an isolated network in west (replication goes on)");
    run_job(c, &format!("{ITEM}/test-failover"), Some(json!({}))).await?;
    let rep = c.get(&format!("{ITEM}/replication")).await?;
    let test_vm = rep["test_failover"]["vm"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    check_vm_disks(c, &test_vm, &disks.digests()).await?;
    say(format!(
        "test VM {test_vm} holds exactly the source's disks; cleaning up"
    ));
    run_job(c, &format!("{ITEM}/test-failover"), None).await?;

    say("planned failover to west: shut the source down, drain its writes, boot in west");
    let started = Instant::now();
    run_job(
        c,
        &format!("{ITEM}/failover"),
        Some(json!({"shutdown_source": true})),
    )
    .await?;
    let rep = c.get(&format!("{ITEM}/replication")).await?;
    let west_vm = rep["failover"]["vm"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    check_vm_disks(c, &west_vm, &disks.digests()).await?;
    say(format!(
        "{west_vm} runs in west after {:.1} s, from point {}, and lost nothing",
        started.elapsed().as_secs_f64(),
        rep["failover"]["point"]["id"].as_str().unwrap_or("?")
    ));
    run_job(c, &format!("{ITEM}/failover/commit"), Some(json!({}))).await?;
    say("failover committed; the other recovery points are discarded");

    let vm = c
        .get(&format!(
            "/v1/groups/{}/vms/{}",
            group_of(&west_vm),
            name_of(&west_vm)
        ))
        .await?;
    let mut nbd = Vec::new();
    for d in vm["disks"].as_array().into_iter().flatten() {
        nbd.push(NbdClient::connect_uri(d["nbd_uri"].as_str().unwrap_or_default()).await?);
    }
    let written = load.round(&mut nbd, disks).await?;
    say(format!(
        "the VM in west writes {:.1} MiB",
        written as f64 / (1 << 20) as f64
    ));

    say(
        "reprotecting: west → east, seeded from the original disks, sending only blocks that differ",
    );
    run_job(c, &format!("{ITEM}/reprotect"), Some(json!({}))).await?;
    let rep = c.get(&format!("{ITEM}/replication")).await?;
    let init = &rep["initial_replication"];
    say(format!(
        "protected again in the reverse direction: sent {:.1} MiB of {:.1} MiB compared",
        init["sent_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
        init["total_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64
    ));
    let written = load.round(&mut nbd, disks).await?;
    for n in nbd {
        n.disconnect().await?;
    }
    let point = wait_point_after(c, ferry_types::Timestamp::now()).await?;
    let id = point["id"].as_str().unwrap_or_default();
    for (disk, want) in disks.digests().iter().enumerate() {
        let got = export_digest(c, disk, id).await?;
        ensure!(
            &got == want,
            "point {id} of the reversed item differs on disk {disk}"
        );
    }
    say(format!(
        "wrote {:.1} MiB more in west; point {id} in east equals the disks byte for byte",
        written as f64 / (1 << 20) as f64
    ));
    Ok(())
}

fn group_of(vm: &str) -> &str {
    vm.split_once('/').map_or(vm, |(g, _)| g)
}

fn name_of(vm: &str) -> &str {
    vm.split_once('/').map_or(vm, |(_, n)| n)
}

/// POST (with a body) or DELETE (without) an item action and wait for its job.
async fn run_job(c: &Client, path: &str, body: Option<Value>) -> Result<()> {
    let job = match body {
        Some(b) => c.post(path, &b).await?,
        None => c.delete(path).await?,
    };
    wait_protected(c, job["id"].as_u64().unwrap_or(0)).await
}

/// Read every disk of a VM through its NBD export and compare digests.
async fn check_vm_disks(c: &Client, vm: &str, want: &[String]) -> Result<()> {
    let v = c
        .get(&format!("/v1/groups/{}/vms/{}", group_of(vm), name_of(vm)))
        .await?;
    for (i, d) in v["disks"].as_array().into_iter().flatten().enumerate() {
        let mut n = NbdClient::connect_uri(d["nbd_uri"].as_str().unwrap_or_default()).await?;
        let mut h = blake3::Hasher::new();
        let mut off = 0;
        while off < n.size() {
            let len = (n.size() - off).min(1 << 20) as u32;
            h.update(&n.read(off, len).await?);
            off += len as u64;
        }
        n.disconnect().await?;
        ensure!(
            want.get(i) == Some(&h.finalize().to_hex().to_string()),
            "disk {i} of {vm} differs from the source"
        );
    }
    Ok(())
}

async fn wait_protected(c: &Client, job: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = String::new();
    loop {
        let j = c.get(&format!("/v1/jobs/{job}")).await?;
        let line = j["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["state"] != "pending")
            .map(|s| {
                format!(
                    "{}: {}{}",
                    s["name"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    s["detail"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                )
            })
            .next_back()
            .unwrap_or_default();
        if line != last {
            say(format!("  job {job}: {line}"));
            last = line;
        }
        match j["state"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("running") => {}
            _ => bail!("job {job} failed: {}", j["error"]),
        }
        ensure!(
            Instant::now() < deadline,
            "job {job} did not finish within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_point_after(c: &Client, t: ferry_types::Timestamp) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let points = c.get(&format!("{ITEM}/recovery-points")).await?;
        let found = points.as_array().into_iter().flatten().find(|p| {
            p["time"]
                .as_str()
                .and_then(ferry_types::Timestamp::parse_rfc3339)
                .is_some_and(|pt| pt > t)
        });
        if let Some(p) = found {
            return Ok(p.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "no recovery point within 60 s of the writes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn export_digest(c: &Client, disk: usize, point: &str) -> Result<String> {
    let resp = c
        .get_raw(&format!(
            "{ITEM}/disks/{disk}/export?recovery_point={point}"
        ))
        .await?;
    let mut h = blake3::Hasher::new();
    let mut s = resp.bytes_stream();
    while let Some(b) = s.next().await {
        h.update(&b?);
    }
    Ok(h.finalize().to_hex().to_string())
}

async fn sample_rpo(c: Client, worst: Arc<std::sync::Mutex<f64>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = c.get(&format!("{ITEM}/replication")).await
            && let Some(rpo) = r["rpo_seconds"].as_f64()
        {
            let mut w = worst.lock().unwrap_or_else(|p| p.into_inner());
            *w = w.max(rpo);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn summary(c: &Client, load: &Workload, worst_rpo: f64) -> Result<()> {
    let rep = c.get(&format!("{ITEM}/replication")).await?;
    let points = c.get(&format!("{ITEM}/recovery-points")).await?;
    let shipped = rep["stats"]["bytes_shipped"].as_u64().unwrap_or(0);
    let streamed = rep["stats"]["bytes_written"].as_u64().unwrap_or(0);
    say("summary:");
    say(format!(
        "  bytes written by the VM     {:>12}",
        load.bytes_written
    ));
    say(format!("  bytes streamed (with copy)  {streamed:>12}"));
    say(format!(
        "  bytes shipped to the cache  {shipped:>12}  (compression {:.2}x)",
        streamed as f64 / shipped.max(1) as f64
    ));
    say(format!(
        "  recovery points             {:>12}",
        points.as_array().map_or(0, |p| p.len())
    ));
    say(format!("  worst RPO seen              {worst_rpo:>11.2}s"));
    say(format!(
        "  health                      {:>12}",
        rep["health"].as_str().unwrap_or("?")
    ));
    ensure!(
        rep["health"] == "healthy",
        "the item is not healthy: {}",
        rep["health_reasons"]
    );
    Ok(())
}
