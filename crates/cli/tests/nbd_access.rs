//! Who reaches the agents' NBD exports through `ferry server`: the unix socket (mode 0660) in
//! the configured group, and TCP only where `nbd_tcp` asks for it, on a fixed port, only with
//! TLS (qemu-io with x509 credentials gets in; clients without TLS are refused).

mod support;

#[path = "../../nbd/tests/common/certs.rs"]
mod certs;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// qemu-io over TLS to `export` on 127.0.0.1:`port`, trusting the CA in `creds`.
fn qemu_io_tls(creds: &Path, port: u16, export: &str, commands: &[&str]) -> Output {
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        creds.display()
    );
    let image = format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["--object", &object, "--image-opts"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(&image).output().expect("run qemu-io")
}

#[test]
fn nbd_over_tcp_needs_tls_and_keeps_its_port_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Certs::make(&dir.path().join("pki")).unwrap();
    let creds = pki.qemu_client_dir(false).unwrap();
    let port = free_port();
    let config = serde_json::json!({
        "nbd_socket_group": "users",
        "nbd_tcp": {
            "listen": {"east": format!("127.0.0.1:{port}")},
            "tls_cert": pki.server_cert(),
            "tls_key": pki.server_key(),
        },
    });
    let mut s =
        Server::start_with_config(&dir.path().join("data"), Vec::new(), &config.to_string());
    s.base_resources(None);
    s.create_vm("rg1/web1", "default", &["4MiB@sa1"]);
    let export = "rg1.web1.disk0";
    let disk = &s.json(&["vm", "show", "rg1/web1"])["disks"][0];
    assert_eq!(
        disk["nbd_tcp_uri"],
        format!("nbds://127.0.0.1:{port}/{export}"),
        "{disk}"
    );

    // The unix socket: mode 0660, in the configured group.
    let socket = dir.path().join("data/regions/east/agent/nbd.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    let users = ferry_nbd::access::group_id("users").unwrap().unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, users));
    // Through the private data directory: the directories on the way are 0710 in that group,
    // so a member reaches the socket and lists the exports, and another user does not.
    for d in [
        "data",
        "data/regions",
        "data/regions/east",
        "data/regions/east/agent",
    ] {
        let m = std::fs::metadata(dir.path().join(d)).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o710, users), "{d}");
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let list = |groups: &str| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup"])
            .args(if groups.is_empty() {
                vec!["--clear-groups".to_string()]
            } else {
                vec![format!("--groups={groups}")]
            })
            .args(["nbdinfo", "--list", &uri])
            .output()
            .unwrap()
    };
    let member = list(&users.to_string());
    assert!(member.status.success(), "{}", text(&member));
    assert!(String::from_utf8_lossy(&member.stdout).contains(export));
    let other = list("");
    assert!(!other.status.success(), "{}", text(&other));

    // qemu-io over TLS writes and reads.
    let out = qemu_io_tls(
        &creds,
        port,
        export,
        &["write -P 0xab 0 64k", "read -P 0xab 0 64k"],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Clients without TLS are refused, and write nothing.
    let plain = format!("nbd://127.0.0.1:{port}/{export}");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xcd 0 64k", &plain])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let out = Command::new("nbdinfo").arg(&plain).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));

    // The same port after a restart, and the data is there.
    s.restart();
    let disk = &s.json(&["vm", "show", "rg1/web1"])["disks"][0];
    assert_eq!(
        disk["nbd_tcp_uri"],
        format!("nbds://127.0.0.1:{port}/{export}")
    );
    let out = qemu_io_tls(&creds, port, export, &["read -P 0xab 0 64k"]);
    assert!(out.status.success(), "{}", text(&out));
    // The URI itself works with libnbd, given the CA.
    let uri = format!(
        "{}?tls-certificates={}",
        disk["nbd_tcp_uri"].as_str().unwrap(),
        creds.display()
    );
    let out = Command::new("nbdinfo")
        .args(["--size", &uri])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4194304");
}

#[test]
fn without_nbd_tcp_there_is_no_tcp_uri() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    s.create_vm("rg1/web1", "default", &["4MiB@sa1"]);
    let disk = &s.json(&["vm", "show", "rg1/web1"])["disks"][0];
    assert_eq!(disk["nbd_tcp_uri"], "", "{disk}");
    assert!(qemu_io(disk["nbd_uri"].as_str().unwrap(), "read -P 0 0 4k"));
}

/// Runs `ferry server` with `config`; it must exit (within 60 s) with an error.
fn refused_config(dir: &Path, config: &serde_json::Value) -> String {
    let path = dir.join("bad.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = Command::new(FERRY)
        .args(["server", "--data"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with {config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_nbd_settings_are_clear_errors_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Certs::make(&dir.path().join("pki")).unwrap();
    let err = refused_config(
        dir.path(),
        &serde_json::json!({"nbd_socket_group": "no-such-group-ferry"}),
    );
    assert!(
        err.contains("nbd_socket_group \"no-such-group-ferry\" is not a group on this host"),
        "{err}"
    );
    let tcp = |listen: serde_json::Value, cert: &Path| {
        serde_json::json!({"nbd_tcp": {
            "listen": listen, "tls_cert": cert, "tls_key": pki.server_key(),
        }})
    };
    let err = refused_config(
        dir.path(),
        &tcp(
            serde_json::json!({"north": "127.0.0.1:10809"}),
            &pki.server_cert(),
        ),
    );
    assert!(
        err.contains("region \"north\", which is not one of the regions (east, west)"),
        "{err}"
    );
    let err = refused_config(
        dir.path(),
        &tcp(serde_json::json!({"east": "localhost"}), &pki.server_cert()),
    );
    assert!(
        err.contains("nbd_tcp.listen.east \"localhost\" is not HOST:PORT"),
        "{err}"
    );
    let missing = dir.path().join("missing.pem");
    let err = refused_config(
        dir.path(),
        &tcp(serde_json::json!({"east": "127.0.0.1:10809"}), &missing),
    );
    assert!(err.contains("missing.pem"), "{err}");
    let err = refused_config(
        dir.path(),
        &serde_json::json!({"nbd_tcp": {"listen": {}, "tls_cert": "c", "tls_key": "k", "tls": 1}}),
    );
    assert!(err.contains("unknown field `tls`"), "{err}");
}

/// A joined host's agent serves NBD over TCP only where its own config asks, only with TLS;
/// `vm show` names its socket and its address.
#[test]
fn a_joined_hosts_agent_serves_tcp_only_as_its_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::Certs::make(&dir.path().join("pki")).unwrap();
    let creds = pki.qemu_client_dir(false).unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.base_resources(None);
    let port = free_port();
    let config = dir.path().join("agent.json");
    let body = serde_json::json!({
        "server": s.url,
        "region": "east",
        "name": "east-1",
        "nbd_tcp": {
            "listen": format!("127.0.0.1:{port}"),
            "tls_cert": pki.server_cert(),
            "tls_key": pki.server_key(),
        },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let token = s.json(&["agent", "token", "create", "--region", "east"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let data = dir.path().join("east-1");
    let mut agent = Command::new(FERRY)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .args(["--join-token", &token])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let alive = || {
        s.json(&["host", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "east-1" && h["alive"] == true)
    };
    wait_until(60, "east-1 to join", alive);
    s.create_vm("rg1/web1", "default", &["4MiB@sa1"]);
    let export = "rg1.web1.disk0";
    let vm = s.json(&["vm", "show", "rg1/web1"]);
    assert_eq!(vm["host"], "east-1");
    let socket = data.join("agent/nbd.sock");
    assert_eq!(
        vm["disks"][0]["nbd_uri"],
        format!("nbd+unix:///{export}?socket={}", socket.display())
    );
    assert_eq!(
        vm["disks"][0]["nbd_tcp_uri"],
        format!("nbds://127.0.0.1:{port}/{export}")
    );
    let out = qemu_io_tls(
        &creds,
        port,
        export,
        &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plain = format!("nbd://127.0.0.1:{port}/{export}");
    let out = Command::new("nbdinfo").arg(&plain).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let _ = agent.kill();
    let _ = agent.wait();
}
