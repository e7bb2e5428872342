//! `replication show` for a person: the item's health and why, its RPO against the policy's
//! thresholds with the last hour as a sparkline, churn per disk, the backlogs and the last
//! points. `-o json` and `-o yaml` print the whole document instead.

use serde_json::Value;

const MIB: f64 = (1u64 << 20) as f64;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn s<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |cur, p| &cur[p])
}

fn text(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The RPO samples as bars scaled to their maximum; a gap (no RPO) is a space.
pub(crate) fn sparkline(samples: &[Option<f64>]) -> String {
    let max = samples.iter().flatten().copied().fold(0.0_f64, f64::max);
    samples
        .iter()
        .map(|x| match x {
            None => ' ',
            Some(_) if max <= 0.0 => BARS[0],
            Some(r) => BARS[((r / max) * (BARS.len() - 1) as f64).round() as usize],
        })
        .collect()
}

/// The lines `replication show` prints.
pub(crate) fn render(v: &Value) -> Vec<String> {
    let mut out = vec![format!(
        "{}  {}  {}",
        text(s(v, "name")),
        text(s(v, "state")),
        text(s(v, "health"))
    )];
    for r in s(v, "health_reasons").as_array().into_iter().flatten() {
        out.push(format!("  ! {}", text(r)));
    }
    let row = |out: &mut Vec<String>, k: &str, val: String| out.push(format!("  {k:<14} {val}"));
    let rpo = match s(v, "rpo_seconds") {
        Value::Null => "-".to_string(),
        r => format!("{:.1} s", num(r)),
    };
    row(
        &mut out,
        "RPO",
        format!(
            "{rpo} (warning over {:.0} s, critical over {:.0} s)",
            num(s(v, "rpo_warning_seconds")),
            num(s(v, "rpo_critical_seconds"))
        ),
    );
    if let Some(h) = s(v, "rpo_history").as_array().filter(|h| !h.is_empty()) {
        let samples: Vec<Option<f64>> = h.iter().map(|x| x["rpo_seconds"].as_f64()).collect();
        let max = samples.iter().flatten().copied().fold(0.0_f64, f64::max);
        row(
            &mut out,
            "RPO last hour",
            format!("{} (max {max:.1} s)", sparkline(&samples)),
        );
    }
    for (label, key) in [
        ("last point", "last_recovery_point"),
        ("last app point", "last_app_consistent_point"),
    ] {
        let p = s(v, key);
        if !p.is_null() {
            row(
                &mut out,
                label,
                format!(
                    "{} {} ({})",
                    text(&p["time"]),
                    text(&p["kind"]),
                    text(&p["id"])
                ),
            );
        }
    }
    if let Some(c) = s(v, "churn").as_object() {
        let disks: Vec<String> = c["per_disk_mb_per_second"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, x)| format!("disk {i} {:.2}", num(x)))
            .collect();
        row(
            &mut out,
            "churn MB/s",
            format!(
                "{} (total {:.2}; shipped {:.2})",
                disks.join(", "),
                num(&c["mb_per_second"]),
                num(&c["shipped_mb_per_second"])
            ),
        );
    }
    let st = s(v, "stats");
    row(
        &mut out,
        "ship buffer",
        format!(
            "{:.1} of {:.0} MiB, {}{}",
            num(&st["ship_buffer_bytes"]) / MIB,
            num(&st["ship_buffer_limit"]) / MIB,
            text(&st["tracking"]),
            match num(&st["dirty_bytes"]) {
                d if d > 0.0 => format!(", {:.1} MiB dirty", d / MIB),
                _ => String::new(),
            }
        ),
    );
    row(
        &mut out,
        "cache backlog",
        format!(
            "{} segments, {:.1} MiB",
            text(&st["cache_backlog_segments"]),
            num(&st["cache_backlog_bytes"]) / MIB
        ),
    );
    let t = s(v, "target");
    row(
        &mut out,
        "target",
        format!(
            "{} group {} network {} subnet {}",
            text(&t["region"]),
            text(&t["group"]),
            text(&t["network"]),
            text(&t["subnet"])
        ),
    );
    row(&mut out, "policy", text(s(v, "policy")));
    if let Some(i) = s(v, "initial_replication").as_object()
        && num(&i["percent"]) < 100.0
    {
        row(
            &mut out,
            "initial copy",
            format!(
                "{:.1}% ({:.0} of {:.0} MiB scanned)",
                num(&i["percent"]),
                num(&i["scanned_bytes"]) / MIB,
                num(&i["total_bytes"]) / MIB
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_maximum_and_show_gaps() {
        assert_eq!(sparkline(&[Some(0.0), Some(5.0), None, Some(10.0)]), "▁▅ █");
        assert_eq!(sparkline(&[Some(0.0), Some(0.0)]), "▁▁");
    }

    #[test]
    fn the_view_names_the_reasons_thresholds_and_churn() {
        let v = serde_json::json!({
            "name": "rg1/db1", "state": "protected", "health": "warning",
            "health_reasons": ["RPO 130 s is over the warning threshold of 120 s"],
            "rpo_seconds": 130.0, "rpo_warning_seconds": 120.0, "rpo_critical_seconds": 600.0,
            "rpo_history": [{"time": "t", "rpo_seconds": 1.0}, {"time": "t", "rpo_seconds": 130.0}],
            "last_recovery_point": {"id": "00000000000000a1", "time": "T", "kind": "crash-consistent"},
            "churn": {"per_disk_mb_per_second": [1.5, 0.25], "mb_per_second": 1.75, "shipped_mb_per_second": 1.7},
            "stats": {"ship_buffer_bytes": 1048576, "ship_buffer_limit": 2147483648u64, "tracking": "ordered",
                      "dirty_bytes": 0, "cache_backlog_segments": 2, "cache_backlog_bytes": 3145728},
            "target": {"region": "west"}, "policy": "default"
        });
        let lines = render(&v).join("\n");
        for want in [
            "rg1/db1  protected  warning",
            "! RPO 130 s is over the warning threshold",
            "130.0 s (warning over 120 s, critical over 600 s)",
            "▁█ (max 130.0 s)",
            "disk 0 1.50, disk 1 0.25 (total 1.75; shipped 1.70)",
            "1.0 of 2048 MiB, ordered",
            "2 segments, 3.0 MiB",
            "crash-consistent (00000000000000a1)",
        ] {
            assert!(lines.contains(want), "{want:?} missing from:\n{lines}");
        }
    }
}
