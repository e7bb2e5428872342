//! Separate sites: the server stands for the target site; the east host's agent runs in its
//! own network namespace that can dial out but accepts no connection (a veth pair and an
//! nftables rule dropping every new inbound connection), with its own data directory, and
//! reaches the server and the cache account (S3) only over the network; the west host's agent
//! is a process of its own as well. Then the east site is lost (`kill -9`, data deleted) and the
//! VM is failed over onto the west host from the latest processed point; a fresh east host
//! joins, and reprotect and failback bring the VM home. Also: a server restart with both hosts
//! running, a host that comes back with its disks (reprotect sends only what differs), and a real
//! guest through the same path (`guest.rs`). The parts of a site are in `site.rs`.

#[path = "../support/mod.rs"]
mod support;

mod guest;
mod site;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use site::*;
use support::*;

const ITEM: &str = "rg1/db1";

#[test]
fn an_east_host_that_accepts_no_connection_replicates_and_its_site_loss_is_failed_over() {
    let Sites {
        tmp,
        ns,
        s,
        s3,
        prefix,
    } = Sites::start("sites");
    let dir = tmp.path();
    s.base_resources(Some((&format!("{prefix}/sa1"), &format!("{prefix}/sa2"))));
    s.ok(&[
        "storage",
        "create",
        "rg1/cache1",
        "--url",
        &format!("{prefix}/cache"),
    ]);
    let east = start_agent(&s, &ns, "east-1", &dir.join("east-1"), s3);
    // West's host is a process of its own too (the server stands for the rest of that site).
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));

    // The namespace accepts no connection: a listener inside it is unreachable from here.
    let port = free_port();
    let mut listener = ns
        .cmd("python3")
        .args(["-c", &format!(
            "import socket,time; s=socket.socket(); s.bind(('{}',{port})); s.listen(); time.sleep(60)",
            ns.ns_ip
        )])
        .spawn()
        .unwrap();
    let inside = || {
        ns.cmd("python3")
            .args([
                "-c",
                &format!(
                    "import socket; socket.create_connection(('{}',{port}),2)",
                    ns.ns_ip
                ),
            ])
            .status()
            .unwrap()
            .success()
    };
    wait_until(10, "the listener inside the namespace", inside);
    let addr: SocketAddr = format!("{}:{port}", ns.ns_ip).parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "a connection into the east namespace was accepted"
    );
    let _ = listener.kill();
    let _ = listener.wait();

    create_on_east_1(&s);
    let vm = s.json(&["vm", "show", ITEM]);
    assert_eq!(vm["host"], "east-1");
    let uri = east.socket_uri(ITEM, 0);
    assert!(qemu_io(&uri, "write -P 0x11 0 1M"));
    s.ok(&[
        "replication",
        "enable",
        ITEM,
        "--target-region",
        "west",
        "--policy",
        "fast",
        "--cache-storage",
        "cache1",
    ]);
    s.wait_protected(ITEM, 120);
    // The host reports its stream with its next heartbeat.
    wait_until(10, "east-1 to report its stream", || {
        host(&s, "east-1")["streams"] == 1
    });
    assert_eq!(host(&s, "east-1")["vms"][0], ITEM);

    let writer = Writer::start(&uri);
    let start = now();
    s.wait_point_after(ITEM, start + 2.0, 60);

    // The disaster: every process of the east site is killed and its data is gone.
    let mut east = east;
    east.child.kill().unwrap();
    east.child.wait().unwrap();
    let last_ack = writer.stop();
    std::fs::remove_dir_all(&east.data).unwrap();

    wait_until(30, "the health to name the lost host", || {
        let rep = s.replication(ITEM);
        rep["health"] == "critical"
            && rep["health_reasons"]
                .to_string()
                .contains("source host east-1 unreachable since")
    });
    // The last record that reached the cache account before the loss (the processor applied
    // it long before a host is declared lost).
    let applied = s.replication(ITEM)["stats"]["applied_seq"]
        .as_u64()
        .expect("an applied sequence");
    let job = job_succeeds(&s, &["failover", "run", ITEM, "--recovery-point", "latest"]);
    let detail = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "Select recovery point")
        .and_then(|st| st["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    let lost: f64 = detail
        .split("leaves out ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seconds-lost figure in {detail:?}"));
    let rep = s.replication(ITEM);
    let point_id = rep["failover"]["point"]["id"].as_str().unwrap().to_string();
    let point_time = epoch(rep["failover"]["point"]["time"].as_str().unwrap());
    // The newest write the server knows of is at most a heartbeat (2 s) and a report's trip
    // older than the last acknowledged one.
    // The failover's point is built at that last record, not at the last marker before it.
    assert_eq!(
        u64::from_str_radix(&point_id, 16).unwrap(),
        applied,
        "the failover point {point_id} is not at the last record applied"
    );
    let seen = last_ack - point_time;
    assert!(
        lost <= seen + 0.3 && lost >= seen - 3.0,
        "reported {lost} s lost; the last acknowledged write came {seen:.1} s after the point"
    );
    assert!(s.events_text().contains("failover-writes-lost"));

    // The VM runs on the west host from that point, its disk restored from the server on
    // demand: it equals the point's.
    let failed_over = rep["failover"]["vm"].as_str().unwrap().to_string();
    let fv = s.json(&["vm", "show", &failed_over]);
    assert_eq!(fv["region"], "west");
    assert_eq!(fv["host"], "west-1");
    assert_eq!(fv["state"], "running");
    let got = dir.join("failed-over.raw");
    read_disk(&west.socket_uri(&failed_over, 0), &got);
    let want = dir.join("point.raw");
    s.export(ITEM, 0, &point_id, &want);
    assert!(
        same_image(&got, &want),
        "the failed-over disk differs from its point"
    );
    // The rest of the disk is restored in the background; then it is a plain disk.
    wait_until(60, "the failed-over disk to be whole", || {
        s.json(&["vm", "show", &failed_over])["hydration"].is_null()
    });
    assert!(s.events_text().contains("hydration-complete"));
    read_disk(&west.socket_uri(&failed_over, 0), &got);
    assert!(
        same_image(&got, &want),
        "the restored disk differs from its point"
    );
    // Writes in the west; then a fresh east host (empty data directory) joins, and reprotect
    // copies the VM back to it: its old host is gone, so every block.
    let wuri = west.socket_uri(&failed_over, 0);
    assert!(qemu_io(&wuri, "write -P 0x77 2M 1M"));
    s.ok(&["failover", "commit", ITEM, "--wait"]);
    let east2 = start_agent(&s, &ns, "east-2", &dir.join("east-2"), s3);
    let job = job_succeeds(&s, &["reprotect", ITEM]);
    let steps = job["steps"].to_string();
    assert!(
        steps.contains("moves from lost host east-1 to east-2") && steps.contains("every block"),
        "{steps}"
    );
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(rep["source_vm"], failed_over);
    assert_eq!(s.json(&["vm", "show", ITEM])["host"], "east-2");
    assert!(qemu_io(&wuri, "write -P 0x78 3M 1M"));

    // Failback brings it home onto the new east host with every write made in the west.
    let in_west = dir.join("west.raw");
    s.ok(&["vm", "stop", &failed_over]);
    read_disk(&wuri, &in_west);
    job_succeeds(&s, &["failover", "run", ITEM, "--shutdown-source"]);
    let home = s.json(&["vm", "show", ITEM]);
    assert_eq!(home["host"], "east-2");
    assert_eq!(home["state"], "running");
    let back = dir.join("back.raw");
    read_disk(&east2.socket_uri(ITEM, 0), &back);
    assert!(
        same_image(&back, &in_west),
        "the failed-back disk differs from the west disk"
    );
    assert!(qemu_io(&east2.socket_uri(ITEM, 0), "read -P 0x78 3M 1M"));
}

#[test]
fn a_server_restart_stops_no_vm_on_a_joined_host_and_loses_no_point() {
    const WEST_ITEM: &str = "rg2/app1";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = Server::start(&dir.join("data"));
    s.base_resources(None);
    let east = start_local_agent(&s, "east", "east-1", &dir.join("east-1"));
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));
    create_on_east_1(&s);
    s.protect(ITEM);
    // A VM on the west host, replicated the other way.
    s.ok(&["group", "create", "rg2", "--region", "west"]);
    s.ok(&[
        "network",
        "create",
        "rg2/vnet2",
        "--address-space",
        "10.2.0.0/16",
        "--subnet",
        "app=10.2.1.0/24",
    ]);
    s.ok(&["storage", "create", "rg2/sa3"]);
    s.ok(&[
        "vm",
        "create",
        WEST_ITEM,
        "--network",
        "vnet2",
        "--subnet",
        "app",
        "--disk",
        "16MiB@sa3",
    ]);
    assert_eq!(s.json(&["vm", "show", WEST_ITEM])["host"], "west-1");
    s.ok(&[
        "replication",
        "enable",
        WEST_ITEM,
        "--target-region",
        "east",
        "--policy",
        "fast",
    ]);
    s.wait_protected(WEST_ITEM, 120);

    let cases = [
        (ITEM, east.socket_uri(ITEM, 0)),
        (WEST_ITEM, west.socket_uri(WEST_ITEM, 0)),
    ];
    let writers: Vec<Writer> = cases.iter().map(|(_, uri)| Writer::start(uri)).collect();
    let before: Vec<Vec<String>> = cases
        .iter()
        .map(|(item, _)| {
            s.wait_point_after(item, now(), 60);
            s.points(item).iter().map(|p| p["id"].to_string()).collect()
        })
        .collect();

    // The server dies; both hosts go on serving their VMs.
    s.kill9();
    let down = now();
    for w in &writers {
        wait_until(30, "writes acknowledged while the server is down", || {
            w.acked_since(down) >= 5
        });
    }
    s.restart();
    for name in ["east-1", "west-1"] {
        wait_until(60, &format!("{name} to link again"), || {
            host(&s, name)["alive"] == true
        });
    }
    let back = now();
    for ((item, uri), (writer, before)) in cases.iter().zip(writers.into_iter().zip(&before)) {
        s.wait_point_after(item, back, 60);
        let last = writer.stop();
        let point = s.wait_point_after(item, last, 60);
        let after: Vec<String> = s.points(item).iter().map(|p| p["id"].to_string()).collect();
        for p in before {
            assert!(
                after.contains(p),
                "point {p} of {item} was lost over the restart"
            );
        }
        let rep = s.replication(item);
        assert_eq!(rep["state"], "protected", "{rep}");
        // The newest point holds every write, those made while the server was down included.
        let want = dir.join("source.raw");
        read_disk(uri, &want);
        let got = dir.join("point.raw");
        s.export(item, 0, point["id"].as_str().unwrap(), &got);
        assert!(
            same_image(&got, &want),
            "the point of {item} after the last write differs from its disk"
        );
    }

    // Another host's credential cannot speak for this VM, and a revoked one is refused.
    let joined: serde_json::Value = {
        let body = format!(
            r#"{{"token":"{}","name":"east-2","region":"east","version":"0.1.0"}}"#,
            join_token(&s, "east")
        );
        let (code, text) = s.http("POST", "/v1/agents/join", Some(&body), false);
        assert_eq!(code, 201, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let other = joined["credential"].as_str().unwrap();
    let report = format!(r#"{{"version":"0.1.0","vms":{{"{ITEM}":{{"held":false}}}}}}"#);
    let (code, text) = as_agent(&s, other, "/v1/agent/report", &report);
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("agent east-2 may act only on the VMs placed on it")
            && text.contains("is on host east-1"),
        "{text}"
    );
    assert_eq!(host(&s, "east-1")["vms"][0], ITEM);
    // Nor read the blocks of a VM that is not its own, restored or not.
    let ask = format!(r#"{{"vm":"{ITEM}","disk":0,"point":"rp-1","blocks":[0]}}"#);
    let (code, text) = as_agent(&s, other, "/v1/agent/restore/blocks", &ask);
    assert_eq!(code, 403, "{text}");
    let mine = credential_of(&east);
    let (code, text) = as_agent(&s, &mine, "/v1/agent/restore/blocks", &ask);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("is not being restored"), "{text}");
    s.ok(&["agent", "revoke", "east-2"]);
    let (code, text) = as_agent(
        &s,
        other,
        "/v1/agent/report",
        r#"{"version":"0.1.0","vms":{}}"#,
    );
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("east-2 was revoked"), "{text}");
}

/// The east host comes back with its disks after a failover: reprotect seeds the reverse
/// replica from them (its agent sends them to the server) and the west host sends only the
/// blocks that differ; failback brings the VM home with every write made in the west.
#[test]
fn a_host_that_comes_back_with_its_disks_is_reprotected_with_the_blocks_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    let east = start_local_agent(&s, "east", "east-1", &dir.join("east-1"));
    let west = start_local_agent(&s, "west", "west-1", &dir.join("west-1"));
    create_on_east_1(&s);
    let uri = east.socket_uri(ITEM, 0);
    // 12 MiB of data, so a full copy and a delta are far apart.
    for m in 0..12 {
        assert!(qemu_io(&uri, &format!("write -P {} {m}M 1M", m + 1)));
    }
    s.protect(ITEM);
    s.wait_point_after(ITEM, now(), 60);

    // A test failover runs on the west host, and its cleanup deletes the copy there.
    s.ok(&["failover", "test", ITEM, "--wait"]);
    let test_vm = s.replication(ITEM)["test_failover"]["vm"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.json(&["vm", "show", &test_vm])["host"], "west-1");
    assert!(qemu_io(&west.socket_uri(&test_vm, 0), "read -P 12 11M 1M"));
    let test_image = west.data.join("disks").join(&test_vm).join("disk0.raw");
    assert!(test_image.exists(), "{} is not there", test_image.display());
    s.ok(&["failover", "test-cleanup", ITEM, "--wait"]);
    assert!(
        s.fails(&["vm", "show", &test_vm])
            .contains("does not exist")
    );
    assert!(
        !test_image.exists(),
        "{} is left behind",
        test_image.display()
    );

    // East goes dark (its disks stay), and the VM is failed over to the west host.
    let mut east = east;
    east.child.kill().unwrap();
    east.child.wait().unwrap();
    wait_until(30, "east-1 to be lost", || {
        host(&s, "east-1")["alive"] == false
    });
    job_succeeds(&s, &["failover", "run", ITEM, "--recovery-point", "latest"]);
    let failed_over = s.replication(ITEM)["failover"]["vm"]
        .as_str()
        .unwrap()
        .to_string();
    let wuri = west.socket_uri(&failed_over, 0);
    assert!(qemu_io(&wuri, "write -P 0x77 2M 1M"));
    s.ok(&["failover", "commit", ITEM, "--wait"]);

    // East comes back with its data directory; reprotect compares instead of copying.
    let east = Agent {
        child: Command::new(FERRY)
            .args([
                "agent", "--server", &s.url, "--region", "east", "--name", "east-1",
            ])
            .arg("--data")
            .arg(&east.data)
            .stdout(std::fs::File::create(dir.join("east-1-again.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("east-1-again.err")).unwrap())
            .spawn()
            .unwrap(),
        data: east.data.clone(),
    };
    wait_until(60, "east-1 to be back", || {
        host(&s, "east-1")["alive"] == true
    });
    let job = job_succeeds(&s, &["reprotect", ITEM]);
    let steps = job["steps"].to_string();
    assert!(
        steps.contains("on host east-1: only the blocks that differ are sent"),
        "{steps}"
    );
    let rep = s.replication(ITEM);
    assert_eq!(rep["state"], "protected");
    assert_eq!(s.json(&["vm", "show", ITEM])["host"], "east-1");
    let sent = rep["initial_replication"]["sent_bytes"].as_u64().unwrap();
    assert!(
        sent <= 2 << 20,
        "reprotect sent {sent} bytes for 1 MiB of difference on a 12 MiB disk"
    );

    // Failback: home on east-1 with the west's writes.
    assert!(qemu_io(&wuri, "write -P 0x78 3M 1M"));
    let in_west = dir.join("west.raw");
    s.ok(&["vm", "stop", &failed_over]);
    read_disk(&wuri, &in_west);
    job_succeeds(&s, &["failover", "run", ITEM, "--shutdown-source"]);
    let back = dir.join("back.raw");
    read_disk(&east.socket_uri(ITEM, 0), &back);
    assert!(
        same_image(&back, &in_west),
        "the failed-back disk differs from the west disk"
    );
}

/// A VM created from an image on a joined host is served at once, its first disk filled from
/// the image on the server as it is read and in the background.
#[test]
fn a_vm_from_an_image_on_a_joined_host_is_served_at_once_and_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    let east = start_local_agent(&s, "east", "east-1", &dir.join("east-1"));
    let import = s.data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    let image = import.join("img.raw");
    // 3 MiB and a half of data: the last block is short.
    let data: Vec<u8> = (0..(7u32 << 19)).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&image, &data).unwrap();
    create_vm(
        &s,
        &[
            "--disk",
            "16MiB@sa1",
            "--disk",
            "8MiB@sa2",
            "--image",
            "img.raw",
            "--host",
            "east-1",
        ],
    );
    let vm = s.json(&["vm", "show", ITEM]);
    assert_eq!(vm["host"], "east-1");
    let uri = east.socket_uri(ITEM, 0);
    let got = dir.join("disk0.raw");
    read_disk(&uri, &got);
    let bytes = std::fs::read(&got).unwrap();
    assert_eq!(bytes.len(), 16 << 20);
    assert!(
        bytes[..data.len()] == data[..],
        "the disk does not begin with the image"
    );
    assert!(
        bytes[data.len()..].iter().all(|&b| b == 0),
        "the disk is not zero past the image"
    );
    wait_until(60, "the first disk to be filled", || {
        s.json(&["vm", "show", ITEM])["hydration"].is_null()
    });
    assert!(s.events_text().contains("is filled from image"));
    // The second disk is empty, and the filled one reads the same without the server's help.
    let second = dir.join("disk1.raw");
    read_disk(&east.socket_uri(ITEM, 1), &second);
    assert!(std::fs::read(&second).unwrap().iter().all(|&b| b == 0));
    read_disk(&uri, &got);
    assert!(std::fs::read(&got).unwrap()[..data.len()] == data[..]);
}
