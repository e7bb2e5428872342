//! A joined host's agent ships its stream to an Azure cache account (Azurite) with the shared
//! access signature the server sends in `start-stream`, not with a key of its own.
//!
//! With Azurite, an environment with no key at all would still reach the account (the emulator
//! has a well-known key that `object_store` falls back to), so the agent's environment holds a
//! *wrong* account key instead: only the SAS can make its shipments succeed.

mod support;

use std::path::Path;
use std::process::{Child, Command};

use support::*;

const ITEM: &str = "rg1/db1";

/// A well-formed account key that is not the account's.
const WRONG_KEY: &str =
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host_alive(s: &Server, name: &str) -> bool {
    s.json(&["host", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == name && h["alive"] == true)
}

/// Start host `name`'s agent of region east, joined with a fresh token, over loopback, with no
/// usable Azure credential of its own.
fn start_agent_without_key(s: &Server, name: &str, data: &Path) -> Agent {
    let token = s.json(&["agent", "token", "create", "--region", "east"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let child = Command::new(FERRY)
        .args(["agent", "--server", &s.url])
        .args(["--region", "east", "--name", name, "--data"])
        .arg(data)
        .args(["--join-token", &token])
        .env("FERRY_LOG", "info")
        .env("AZURE_STORAGE_ACCOUNT_KEY", WRONG_KEY)
        .env_remove("AZURE_STORAGE_ACCESS_KEY")
        .env_remove("AZURE_STORAGE_MASTER_KEY")
        .env_remove("AZURE_STORAGE_SAS_KEY")
        .env_remove("AZURE_STORAGE_SAS_TOKEN")
        .env_remove("AZURE_STORAGE_TOKEN")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start ferry agent");
    let agent = Agent(child);
    wait_until(60, &format!("host {name} to be alive"), || {
        host_alive(s, name)
    });
    agent
}

#[test]
fn a_joined_host_ships_to_an_azure_cache_with_the_servers_sas_alone() {
    let azure = peer_env("FERRY_TEST_AZURE_URL", "azurite");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    let cache = format!("{azure}/cache-sas-{}", std::process::id());
    s.ok(&["storage", "create", "rg1/cache1", "--url", &cache]);
    let agent_data = dir.join("east-1");
    let _agent = start_agent_without_key(&s, "east-1", &agent_data);

    s.ok(&[
        "vm",
        "create",
        ITEM,
        "--network",
        "vnet1",
        "--subnet",
        "db",
        "--disk",
        "16MiB@sa1",
        "--host",
        "east-1",
    ]);
    let uri = format!(
        "nbd+unix:///{}.disk0?socket={}",
        ITEM.replace('/', "."),
        agent_data.join("agent/nbd.sock").display()
    );
    assert!(qemu_io(&uri, "write -P 0x21 0 1M"));
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
    assert!(qemu_io(&uri, "write -P 0x22 1M 1M"));
    let t = now();
    let point = s.wait_point_after(ITEM, t, 60);

    // The point holds the write made after protection: it went through the cache account.
    let got = dir.join("point.raw");
    s.export(ITEM, 0, point["id"].as_str().unwrap(), &got);
    let bytes = std::fs::read(&got).unwrap();
    assert!(bytes[..1 << 20].iter().all(|b| *b == 0x21));
    assert!(bytes[1 << 20..2 << 20].iter().all(|b| *b == 0x22));

    // The SAS is a secret: neither side logs it.
    let agent_log = std::fs::read_to_string(agent_data.with_extension("log")).unwrap();
    let server_log = std::fs::read_to_string(s.data.with_extension("log")).unwrap_or_default();
    for (who, log) in [("agent", &agent_log), ("server", &server_log)] {
        assert!(
            !log.contains("sig="),
            "the {who}'s log shows a SAS signature"
        );
    }
}
