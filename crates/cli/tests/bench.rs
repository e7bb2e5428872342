//! `ferry bench`: a section runs alone with `--only`, prints its figures as JSON, and leaves no
//! process behind.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn the_sites_section_measures_a_joined_agent_and_a_site_loss_and_stops_its_processes() {
    let child = Command::new(FERRY)
        .args(["bench", "--quick", "--only", "sites", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ferry bench");
    // The bench's work directory, which its server and agent are started in.
    let work = format!("ferry-bench-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry bench failed:\n{stderr}");
    let figures: Value = serde_json::from_slice(&out.stdout).expect("JSON figures");
    let figure = |name: &str| -> &Value {
        figures
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no figure {name} in {figures}\n{stderr}"))
    };
    for name in [
        "sites_joined_agent_seq_write_1m",
        "sites_joined_agent_randwrite_4k_qd16",
        "sites_rpo_at_site_loss_writing_50mb_s",
        "sites_rpo_at_site_loss_writing_50mb_s_writer_record",
        "sites_failover_rto_after_site_loss_256mib",
    ] {
        let f = figure(name);
        let (value, base) = (
            f["value"].as_f64().unwrap(),
            f["baseline_value"].as_f64().unwrap(),
        );
        assert!(value.is_finite() && base.is_finite(), "{f}");
        assert!(base > 0.0, "{name}: no baseline measured: {f}");
        // What the failover reports counts up to the host's last report, which may be older
        // than the point: it can be 0. Every other figure is a rate or a time that passed.
        if name == "sites_rpo_at_site_loss_writing_50mb_s" {
            assert!(value >= 0.0, "{f}");
        } else {
            assert!(value > 0.0, "{f}");
        }
    }
    assert!(
        stderr.contains("killed at T") && stderr.contains("the server reports"),
        "{stderr}"
    );

    // The server and the agent are gone with the bench.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_naming(&work);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind by the bench: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
