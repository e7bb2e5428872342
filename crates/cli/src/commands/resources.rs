//! Commands for the plain resources: regions, groups, networks, accounts, sets, policies, VMs.

use anyhow::{Context, Result, anyhow};
use ferry_control::requests::*;
use ferry_types::ByteSize;

use super::{qualified, seconds};
use crate::args::*;
use crate::client::Client;
use crate::output::{out, print};

pub async fn region(c: &Client, out: Output, cmd: RegionCmd) -> Result<()> {
    match cmd {
        RegionCmd::List => print(out, &c.get("/v1/regions").await?, &["name"]),
    }
    Ok(())
}

pub async fn host(c: &Client, out: Output, cmd: HostCmd) -> Result<()> {
    match cmd {
        HostCmd::List => print(
            out,
            &c.get("/v1/hosts").await?,
            &[
                "name",
                "region",
                "kind",
                "alive",
                "version",
                "last_heartbeat",
                "vms",
                "streams",
            ],
        ),
    }
    Ok(())
}

pub async fn lease(c: &Client, out: Output, cmd: LeaseCmd) -> Result<()> {
    match cmd {
        LeaseCmd::List => print(
            out,
            &c.get("/v1/leases").await?,
            &["name", "holder", "generation", "expires", "this_server"],
        ),
    }
    Ok(())
}

pub async fn group(c: &Client, out: Output, cmd: GroupCmd) -> Result<()> {
    let cols = ["name", "region"];
    match cmd {
        GroupCmd::Create { name, region } => print(
            out,
            &c.post("/v1/groups", &CreateGroup { name, region }).await?,
            &cols,
        ),
        GroupCmd::List => print(out, &c.get("/v1/groups").await?, &cols),
        GroupCmd::Show { name } => print(out, &c.get(&format!("/v1/groups/{name}")).await?, &cols),
    }
    Ok(())
}

pub async fn network(c: &Client, out: Output, cmd: NetworkCmd) -> Result<()> {
    let cols = ["group", "name", "region", "address_space"];
    match cmd {
        NetworkCmd::Create {
            name,
            address_space,
            subnets,
        } => {
            let q = qualified(&name)?;
            let subnets = subnets
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(n, c)| SubnetSpec {
                            name: n.into(),
                            cidr: c.into(),
                        })
                        .ok_or_else(|| {
                            anyhow!(
                                "invalid --subnet {s:?}: use NAME=CIDR, e.g. default=10.1.0.0/24"
                            )
                        })
                })
                .collect::<Result<_>>()?;
            let body = CreateNetwork {
                name: q.name.to_string(),
                address_space,
                subnets,
            };
            print(
                out,
                &c.post(&format!("/v1/groups/{}/networks", q.group), &body)
                    .await?,
                &cols,
            );
        }
        NetworkCmd::List => print(out, &c.get("/v1/networks").await?, &cols),
        NetworkCmd::Show { name } => {
            let q = qualified(&name)?;
            print(
                out,
                &c.get(&format!("/v1/groups/{}/networks/{}", q.group, q.name))
                    .await?,
                &cols,
            );
        }
    }
    Ok(())
}

pub async fn storage(c: &Client, out: Output, cmd: StorageCmd) -> Result<()> {
    let cols = ["group", "name", "region", "url"];
    match cmd {
        StorageCmd::Create { name, url } => {
            let q = qualified(&name)?;
            let body = CreateStorage {
                name: q.name.to_string(),
                url,
            };
            print(
                out,
                &c.post(&format!("/v1/groups/{}/storage", q.group), &body)
                    .await?,
                &cols,
            );
        }
        StorageCmd::List => print(out, &c.get("/v1/storage").await?, &cols),
        StorageCmd::Show { name } => {
            let q = qualified(&name)?;
            print(
                out,
                &c.get(&format!("/v1/groups/{}/storage/{}", q.group, q.name))
                    .await?,
                &cols,
            );
        }
    }
    Ok(())
}

pub async fn availability_set(c: &Client, out: Output, cmd: AvSetCmd) -> Result<()> {
    let cols = ["group", "name", "region"];
    match cmd {
        AvSetCmd::Create { name } => {
            let q = qualified(&name)?;
            let body = CreateAvailabilitySet {
                name: q.name.to_string(),
            };
            print(
                out,
                &c.post(&format!("/v1/groups/{}/availability-sets", q.group), &body)
                    .await?,
                &cols,
            );
        }
        AvSetCmd::List => print(out, &c.get("/v1/availability-sets").await?, &cols),
        AvSetCmd::Show { name } => {
            let q = qualified(&name)?;
            print(
                out,
                &c.get(&format!(
                    "/v1/groups/{}/availability-sets/{}",
                    q.group, q.name
                ))
                .await?,
                &cols,
            );
        }
    }
    Ok(())
}

pub async fn policy(c: &Client, out: Output, cmd: PolicyCmd) -> Result<()> {
    let cols = [
        "name",
        "retention_seconds",
        "crash_consistent_every_seconds",
        "app_consistent_every_seconds",
        "journal_seconds",
        "rpo_warning_seconds",
        "rpo_critical_seconds",
    ];
    match cmd {
        PolicyCmd::Create(a) => {
            let PolicyCreateArgs {
                name,
                retention,
                crash_consistent_every,
                app_consistent_every,
                journal,
                thin,
                app_thin,
                rpo_warning,
                rpo_critical,
                no_point_warning,
            } = *a;
            let body = CreatePolicy {
                name,
                retention_seconds: seconds("retention", &retention)?.map(|s| s.round() as u64),
                crash_consistent_every_seconds: seconds(
                    "crash-consistent-every",
                    &crash_consistent_every,
                )?,
                app_consistent_every_seconds: seconds(
                    "app-consistent-every",
                    &app_consistent_every,
                )?
                .map(|s| s.round() as u64),
                journal_seconds: seconds("journal", &journal)?.map(|s| s.round() as u64),
                thinning: ladder("thin", &thin)?,
                app_thinning: ladder("app-thin", &app_thin)?,
                rpo_warning_seconds: seconds("rpo-warning", &rpo_warning)?,
                rpo_critical_seconds: seconds("rpo-critical", &rpo_critical)?,
                no_point_warning_seconds: seconds("no-point-warning", &no_point_warning)?,
            };
            print(out, &c.post("/v1/policies", &body).await?, &cols);
        }
        PolicyCmd::List => print(out, &c.get("/v1/policies").await?, &cols),
        PolicyCmd::Show { name } => {
            print(out, &c.get(&format!("/v1/policies/{name}")).await?, &cols)
        }
    }
    Ok(())
}

pub async fn vm(c: &Client, out: Output, cmd: VmCmd) -> Result<()> {
    let cols = ["group", "name", "region", "state"];
    match cmd {
        VmCmd::Create(a) => {
            let q = qualified(&a.name)?;
            let disks = a
                .disks
                .iter()
                .map(|d| parse_disk(d))
                .collect::<Result<_>>()?;
            let body = CreateVm {
                name: q.name.to_string(),
                network: a.network,
                subnet: a.subnet,
                ip: a.ip,
                availability_set: a.availability_set,
                disks,
                host: a.host,
                image: a.image,
                compute: Some(a.compute),
                kernel: a.kernel,
                initrd: a.initrd,
                append: a.append,
                pre_freeze_script: a.pre_freeze_script,
                post_thaw_script: a.post_thaw_script,
            };
            print(
                out,
                &c.post(&format!("/v1/groups/{}/vms", q.group), &body)
                    .await?,
                &cols,
            );
        }
        VmCmd::List => {
            let v = c.get("/v1/vms").await?;
            let slim: Vec<_> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| serde_json::json!({"group": x["group"], "name": x["name"], "region": x["region"], "state": x["state"]}))
                .collect();
            print(out, &serde_json::Value::Array(slim), &cols);
        }
        VmCmd::Show { name } => {
            let q = qualified(&name)?;
            print(
                out,
                &c.get(&format!("/v1/groups/{}/vms/{}", q.group, q.name))
                    .await?,
                &cols,
            );
        }
        VmCmd::Delete { name } => {
            let q = qualified(&name)?;
            print(
                out,
                &c.delete(&format!("/v1/groups/{}/vms/{}", q.group, q.name))
                    .await?,
                &["deleted"],
            );
        }
        VmCmd::Start { name } => {
            let q = qualified(&name)?;
            let path = format!("/v1/groups/{}/vms/{}/start", q.group, q.name);
            print(out, &c.post(&path, &serde_json::json!({})).await?, &cols);
        }
        VmCmd::Stop { name } => {
            let q = qualified(&name)?;
            let path = format!("/v1/groups/{}/vms/{}/stop", q.group, q.name);
            print(out, &c.post(&path, &serde_json::json!({})).await?, &cols);
        }
        VmCmd::Console { name } => {
            let q = qualified(&name)?;
            let path = format!("/v1/groups/{}/vms/{}/console", q.group, q.name);
            let text = c.get_raw(&path).await?.text().await?;
            out!("{text}");
        }
    }
    Ok(())
}

/// Parse `--thin AFTER:EVERY` rungs (none given: the server's default ladder).
fn ladder(flag: &str, rungs: &[String]) -> Result<Option<Vec<ferry_replica::retention::Rung>>> {
    if rungs.is_empty() {
        return Ok(None);
    }
    rungs
        .iter()
        .map(|r| {
            let (after, every) = r
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--{flag} {r:?}: use AFTER:EVERY, e.g. 2h:1h"))?;
            let secs = |s: &str| {
                ferry_types::parse_duration(s)
                    .map(|d| d.as_secs())
                    .map_err(|e| anyhow::anyhow!("--{flag} {r:?}: {e}"))
            };
            Ok(ferry_replica::retention::Rung {
                after_seconds: secs(after)?,
                every_seconds: secs(every)?,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `SIZE[@ACCOUNT]`
fn parse_disk(s: &str) -> Result<DiskRequest> {
    let (size, storage) = match s.split_once('@') {
        Some((a, b)) => (a, Some(b.to_string())),
        None => (s, None),
    };
    let size: ByteSize = size.parse().with_context(|| format!("--disk {s}"))?;
    Ok(DiskRequest {
        size_bytes: size.0,
        storage,
    })
}
