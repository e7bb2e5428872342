//! The progress bar `--wait` draws for a job when standard output is a terminal (plain lines
//! otherwise): the job's percent, the bytes its running step has moved, and that step's name.

use serde_json::Value;

use crate::output::out;

const WIDTH: usize = 30;
const MIB: f64 = (1u64 << 20) as f64;

/// `[#######-----------]` for `percent` in 0..=100.
pub fn bar(percent: f64) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * WIDTH as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

/// The one line drawn for a running job.
pub fn line(job: &Value) -> String {
    let percent = job["percent"].as_f64().unwrap_or(0.0);
    let step = job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["state"] == "running")
        .and_then(|s| s["name"].as_str())
        .unwrap_or("");
    let bytes = match (job["bytes_done"].as_u64(), job["bytes_total"].as_u64()) {
        (Some(d), Some(t)) if t > 0 => {
            format!("  {:.0} of {:.0} MiB", d as f64 / MIB, t as f64 / MIB)
        }
        _ => String::new(),
    };
    format!(
        "job {} {} {percent:5.1}%{bytes}  {step}",
        job["id"],
        bar(percent)
    )
}

/// Redraws the bar in place on a terminal.
pub struct Bar {
    drawn: bool,
}

impl Bar {
    pub fn new() -> Bar {
        Bar { drawn: false }
    }

    /// Wipe the bar so a plain line can be printed in its place.
    pub fn clear(&mut self) {
        if self.drawn {
            out!("\r\x1b[2K");
            self.drawn = false;
        }
    }

    pub fn draw(&mut self, job: &Value) {
        out!("\r\x1b[2K{}", line(job));
        self.drawn = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_percent() {
        assert_eq!(bar(0.0), format!("[{}]", "-".repeat(30)));
        assert_eq!(bar(50.0), format!("[{}{}]", "#".repeat(15), "-".repeat(15)));
        assert_eq!(bar(250.0), format!("[{}]", "#".repeat(30)));
    }

    #[test]
    fn the_line_names_the_running_step_and_its_bytes() {
        let job = serde_json::json!({
            "id": 7, "percent": 45.5, "bytes_done": 460u64 << 20, "bytes_total": 1024u64 << 20,
            "steps": [{"name": "start", "state": "succeeded"}, {"name": "initial replication", "state": "running"}]
        });
        let l = line(&job);
        assert!(l.starts_with("job 7 [##############"), "{l}");
        assert!(
            l.contains(" 45.5%  460 of 1024 MiB  initial replication"),
            "{l}"
        );
    }
}
