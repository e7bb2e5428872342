//! Commands for protected items: replication, recovery points, disk export, jobs.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferry_control::requests::EnableReplication;
use futures::StreamExt;
use serde_json::Value;

use super::qualified;
use crate::args::*;
use crate::client::Client;
use crate::output::outln;
use crate::output::print;

fn item_path(name: &str) -> Result<String> {
    let q = qualified(name)?;
    Ok(format!("/v1/groups/{}/vms/{}", q.group, q.name))
}

pub async fn replication(c: &Client, out: Output, cmd: ReplicationCmd) -> Result<()> {
    let cols = [
        "name",
        "state",
        "health",
        "rpo_seconds",
        "target.region",
        "last_recovery_point.time",
    ];
    match cmd {
        ReplicationCmd::Enable(a) => {
            let mut body = EnableReplication {
                target_region: a.target_region,
                target_group: a.target_group,
                target_network: a.target_network,
                target_subnet: a.target_subnet,
                target_availability_set: a.target_availability_set,
                cache_storage: a.cache_storage,
                policy: a.policy,
                ..Default::default()
            };
            for m in &a.target_storage {
                let (s, t) = m.split_once('=').ok_or_else(|| {
                    anyhow!("invalid --target-storage {m:?}: use SOURCE_ACCOUNT=TARGET_ACCOUNT")
                })?;
                body.target_storage.insert(s.into(), t.into());
            }
            let job = c
                .post(&format!("{}/replication", item_path(&a.name)?), &body)
                .await?;
            if a.wait {
                wait_job(c, out, job["id"].as_u64().unwrap_or(0)).await?;
            } else {
                print(out, &job, &[]);
            }
        }
        ReplicationCmd::List {
            state,
            health,
            limit,
            after,
        } => {
            let path = with_query(
                "/v1/replications",
                [
                    ("state", state),
                    ("health", health),
                    ("after", after),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            );
            let items = c.get(&path).await?;
            print(out, &items, &cols);
            let page = items.as_array().map_or(0, Vec::len);
            if let (Some(l), Some(last)) = (limit, items.as_array().and_then(|a| a.last()))
                && page >= l
            {
                eprintln!(
                    "(a page of {l}; the next: --after {})",
                    last["name"].as_str().unwrap_or_default()
                );
            }
        }
        ReplicationCmd::Show { name } => {
            let v = c.get(&format!("{}/replication", item_path(&name)?)).await?;
            match out {
                Output::Table => super::item_view::render(&v)
                    .iter()
                    .for_each(|l| outln!("{l}")),
                _ => print(out, &v, &cols),
            }
        }
        ReplicationCmd::RpoHistory { name, since } => {
            let since = super::seconds("since", &Some(since))?.unwrap_or(86_400.0);
            let path = format!(
                "{}/replication/rpo-history?since_seconds={}",
                item_path(&name)?,
                since.round() as u64
            );
            print(out, &c.get(&path).await?, &["time", "rpo_seconds"]);
        }
        ReplicationCmd::Disable {
            name,
            dry_run: true,
            ..
        } => {
            let plan = c
                .delete(&format!("{}/replication?dry_run=true", item_path(&name)?))
                .await?;
            print(out, &plan, &[]);
        }
        ReplicationCmd::Disable { name, wait, .. } => {
            let job = c
                .delete(&format!("{}/replication", item_path(&name)?))
                .await?;
            if wait {
                wait_job(c, out, job["id"].as_u64().unwrap_or(0)).await?;
            } else {
                print(out, &job, &[]);
            }
        }
        ReplicationCmd::Verify { name, repair } => verify(c, out, &name, repair).await?,
        ReplicationCmd::Repair { name, wait } => {
            let path = format!("{}/replication/repair", item_path(&name)?);
            let job = c.post(&path, &serde_json::json!({})).await?;
            job_or_wait(c, out, job, wait).await?
        }
    }
    Ok(())
}

pub async fn points(c: &Client, out: Output, cmd: PointCmd) -> Result<()> {
    match cmd {
        PointCmd::List { name } => print(
            out,
            &c.get(&format!("{}/recovery-points", item_path(&name)?))
                .await?,
            &["id", "time", "kind"],
        ),
    }
    Ok(())
}

pub async fn disk(c: &Client, out: Output, cmd: DiskCmd) -> Result<()> {
    let DiskCmd::Export {
        name,
        disk,
        recovery_point,
        out: path,
    } = cmd;
    let url = format!(
        "{}/disks/{disk}/export?recovery_point={}",
        item_path(&name)?,
        encode(&recovery_point)
    );
    let resp = c.get_raw(&url).await?;
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (point, time) = (
        header("x-ferry-recovery-point"),
        header("x-ferry-recovery-point-time"),
    );
    let size = resp
        .content_length()
        .ok_or_else(|| anyhow!("the server did not say the disk's size"))?;
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("size {}", path.display()))?;
    let mut offset = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("read the disk from the server")?;
        if chunk.iter().any(|&b| b != 0) {
            file.write_all_at(&chunk, offset)
                .with_context(|| format!("write {}", path.display()))?;
        }
        offset += chunk.len() as u64;
    }
    if offset != size {
        bail!(
            "the export stopped after {offset} of {size} bytes; {} is incomplete, run the export again",
            path.display()
        );
    }
    file.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    let summary = serde_json::json!({"vm": name, "disk": disk, "recovery_point": point, "time": time, "bytes": size, "out": path});
    match out {
        Output::Json | Output::Yaml => print(out, &summary, &[]),
        Output::Table => outln!(
            "exported disk {disk} of {name} at recovery point {point} ({time}): {size} bytes to {}",
            path.display()
        ),
    }
    Ok(())
}

/// `path` with the query parameters that have a value, each encoded.
fn with_query<const N: usize>(path: &str, params: [(&str, Option<String>); N]) -> String {
    let query: Vec<String> = params
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(&v))))
        .collect();
    match query.is_empty() {
        true => path.to_string(),
        false => format!("{path}?{}", query.join("&")),
    }
}

pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn job(c: &Client, out: Output, cmd: JobCmd) -> Result<()> {
    match cmd {
        JobCmd::List {
            state,
            limit,
            after,
        } => {
            let path = with_query(
                "/v1/jobs",
                [
                    ("state", state),
                    ("after", after.map(|a| a.to_string())),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            );
            let jobs = c.get(&path).await?;
            print(out, &jobs, &["id", "kind", "target", "state", "percent"]);
            let page = jobs.as_array().map_or(0, Vec::len);
            if let (Some(l), Some(last)) = (limit, jobs.as_array().and_then(|a| a.last()))
                && page >= l
            {
                eprintln!("(a page of {l}; the next: --after {})", last["id"]);
            }
        }
        JobCmd::Show { id, wait: false } => {
            print(out, &c.get(&format!("/v1/jobs/{id}")).await?, &[])
        }
        JobCmd::Show { id, wait: true } => wait_job(c, out, id).await?,
    }
    Ok(())
}

/// Follow a job to its end: on a terminal a progress bar with the steps as they change,
/// otherwise a plain line per step change; fails when the job fails.
pub async fn wait_job(c: &Client, out: Output, id: u64) -> Result<()> {
    use std::io::IsTerminal;
    let mut seen: Vec<(String, String, Option<String>)> = Vec::new();
    let bar = (out == Output::Table && std::io::stdout().is_terminal())
        .then(|| crate::progress::Bar::new(id));
    loop {
        let job = c.get(&format!("/v1/jobs/{id}")).await?;
        if let Some(b) = &bar
            && job["state"] == "running"
        {
            b.update(&job);
        }
        if out == Output::Table {
            for s in job["steps"].as_array().into_iter().flatten() {
                let state = s["state"].as_str().unwrap_or("");
                // Under a bar, a running step's progress is the bar's, not a line each.
                let detail = s["detail"]
                    .as_str()
                    .filter(|_| bar.is_none() || state != "running");
                let key = (
                    s["name"].as_str().unwrap_or("").to_string(),
                    state.to_string(),
                    detail.map(str::to_string),
                );
                if !seen.contains(&key) && key.1 != "pending" {
                    let detail = key
                        .2
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    let line = || outln!("job {id}: {}: {}{detail}", key.0, key.1);
                    match &bar {
                        Some(b) => b.suspend(line),
                        None => line(),
                    }
                    seen.push(key);
                }
            }
        }
        match job["state"].as_str() {
            Some("running") => tokio::time::sleep(Duration::from_millis(300)).await,
            state => {
                // The job has ended: its bar goes before its last line.
                drop(bar);
                finish(out, &job);
                if state == Some("succeeded") {
                    return Ok(());
                }
                bail!(
                    "job {id} ({}) failed: {}",
                    job["kind"].as_str().unwrap_or("?"),
                    job["error"].as_str().unwrap_or("no reason given")
                );
            }
        }
    }
}

fn finish(out: Output, job: &Value) {
    match out {
        Output::Json | Output::Yaml => print(out, job, &[]),
        Output::Table => outln!(
            "job {}: {}",
            job["id"],
            job["state"].as_str().unwrap_or("?")
        ),
    }
}

/// Print a job, or follow it to its end with `--wait`.
async fn job_or_wait(c: &Client, out: Output, job: Value, wait: bool) -> Result<()> {
    if wait {
        wait_job(c, out, job["id"].as_u64().unwrap_or(0)).await
    } else {
        print(out, &job, &["id", "kind", "target", "state"]);
        Ok(())
    }
}

pub async fn failover(c: &Client, out: Output, cmd: FailoverCmd) -> Result<()> {
    use serde_json::json;
    let (job, wait) = match cmd {
        FailoverCmd::Test {
            name,
            recovery_point,
            network,
            wait,
        } => {
            let body = json!({"recovery_point": recovery_point, "network": network});
            let path = format!("{}/test-failover", item_path(&name)?);
            (c.post(&path, &body).await?, wait)
        }
        FailoverCmd::TestCleanup { name, wait } => {
            let path = format!("{}/test-failover", item_path(&name)?);
            (c.delete(&path).await?, wait)
        }
        FailoverCmd::Run {
            name,
            recovery_point,
            shutdown_source,
            wait,
        } => {
            let body =
                json!({"recovery_point": recovery_point, "shutdown_source": shutdown_source});
            let path = format!("{}/failover", item_path(&name)?);
            (c.post(&path, &body).await?, wait)
        }
        FailoverCmd::Commit { name, wait } => {
            let path = format!("{}/failover/commit", item_path(&name)?);
            (c.post(&path, &json!({})).await?, wait)
        }
    };
    job_or_wait(c, out, job, wait).await
}

pub async fn events(c: &Client, out: Output, cmd: crate::args::EventCmd) -> Result<()> {
    let crate::args::EventCmd::List {
        target,
        kind,
        severity,
        limit,
    } = cmd;
    let mut query = vec![format!("limit={limit}")];
    for (k, v) in [("target", target), ("kind", kind), ("severity", severity)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(&v)));
        }
    }
    let events = c.get(&format!("/v1/events?{}", query.join("&"))).await?;
    print(
        out,
        &events,
        &["time", "severity", "kind", "target", "message"],
    );
    Ok(())
}

pub async fn alerts(c: &Client, out: Output, cmd: crate::args::AlertCmd) -> Result<()> {
    use crate::args::AlertCmd;
    match cmd {
        AlertCmd::Create {
            name,
            url,
            severity,
        } => {
            let body = serde_json::json!({ "name": name, "url": url, "severity": severity });
            print(out, &c.post("/v1/alerts", &body).await?, &[]);
        }
        AlertCmd::List => print(
            out,
            &c.get("/v1/alerts").await?,
            &["name", "severity", "url"],
        ),
        AlertCmd::Delete { name } => {
            c.delete(&format!("/v1/alerts/{}", encode(&name))).await?;
        }
    }
    Ok(())
}

pub async fn reprotect(c: &Client, out: Output, name: &str, wait: bool) -> Result<()> {
    let path = format!("{}/reprotect", item_path(name)?);
    let job = c.post(&path, &serde_json::json!({})).await?;
    job_or_wait(c, out, job, wait).await
}

/// Verify (and repair) an item's replica; fails when damage remains.
async fn verify(c: &Client, out: Output, name: &str, repair: bool) -> Result<()> {
    let path = format!("{}/replication/verify", item_path(name)?);
    let report = c
        .post(&path, &serde_json::json!({ "repair": repair }))
        .await?;
    match out {
        Output::Json | Output::Yaml => print(out, &report, &[]),
        Output::Table => print_verify(name, &report),
    }
    let left = report["unrepaired"].as_u64().unwrap_or(0);
    if left == 0 {
        return Ok(());
    }
    if repair {
        bail!(
            "{left} damaged object(s) of {name} could not be repaired (see each reason: the source \
             no longer holds the data, or the object cannot be rebuilt); the recovery points listed \
             cannot be restored correctly, fail over from another point"
        )
    }
    bail!(
        "{left} damaged object(s) in the replica of {name}; run `ferry replication verify {name} \
         --repair` to rebuild them from the source"
    )
}

/// One summary line, then one line per problem.
fn print_verify(name: &str, r: &Value) {
    outln!(
        "verified {name}: {} points, {} pages, {} chunks, {} bytes read; {} problem(s), {} repaired",
        r["points"],
        r["pages"],
        r["chunks"],
        r["bytes_read"],
        r["problems"].as_array().map_or(0, Vec::len),
        r["repaired"],
    );
    for p in r["problems"].as_array().into_iter().flatten() {
        let place = match p.get("chunk") {
            Some(ch) => format!(
                " at {}+{} (hash {}…)",
                ch["offset"],
                ch["len"],
                ch["hash"].as_str().unwrap_or("?").get(..16).unwrap_or("?"),
            ),
            None => String::new(),
        };
        let state = if p["repaired"] == true {
            "repaired".to_string()
        } else if let Some(why) = p["unrepairable"].as_str() {
            format!("unrepairable: {why}")
        } else {
            "damaged".to_string()
        };
        let points: Vec<&str> = p["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        outln!(
            "{} {}{place}: {} [points: {}] {state}",
            p["kind"].as_str().unwrap_or("?"),
            p["key"].as_str().unwrap_or("?"),
            p["error"].as_str().unwrap_or("?"),
            if points.is_empty() {
                "none".to_string()
            } else {
                points.join(",")
            },
        );
    }
}
