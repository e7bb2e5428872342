//! The progress bar `--wait` draws for a job when standard output is a terminal (plain lines
//! otherwise): the job's percent, the bytes its running step has moved, and that step's name.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use serde_json::Value;

const MIB: f64 = (1u64 << 20) as f64;

/// What the bar shows after itself for a running job: its percent, the bytes moved of the
/// total when the job knows them, and the name of the running step.
pub fn message(job: &Value) -> String {
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
    format!("{percent:5.1}%{bytes}  {step}")
}

/// One job's bar on standard output, e.g.
/// `job 7 [############------------------]  40.0%  26 of 64 MiB  initial replication`.
/// Dropping it wipes it.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(id: u64) -> Bar {
        let style = ProgressStyle::with_template("job {prefix} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("#-");
        Bar(
            ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stdout())
                .with_style(style)
                .with_prefix(id.to_string())
                .with_finish(ProgressFinish::AndClear),
        )
    }

    /// Redraw the bar for the job's latest state.
    pub fn update(&self, job: &Value) {
        let percent = job["percent"].as_f64().unwrap_or(0.0).clamp(0.0, 100.0);
        self.0.set_position(percent.round() as u64);
        // Last, as it always redraws: the bar then shows both.
        self.0.set_message(message(job));
    }

    /// Run `print` with the bar wiped, then draw the bar again below what it printed.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.0.suspend(print)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_running_step_and_its_bytes() {
        let job = serde_json::json!({
            "id": 7, "percent": 45.5, "bytes_done": 460u64 << 20, "bytes_total": 1024u64 << 20,
            "steps": [{"name": "start", "state": "succeeded"}, {"name": "initial replication", "state": "running"}]
        });
        assert_eq!(
            message(&job),
            " 45.5%  460 of 1024 MiB  initial replication"
        );
    }

    #[test]
    fn without_bytes_the_message_is_the_percent_and_step() {
        let job = serde_json::json!({
            "id": 8, "percent": 100.0,
            "steps": [{"name": "start", "state": "running"}]
        });
        assert_eq!(message(&job), "100.0%  start");
    }

    #[test]
    fn the_bar_template_is_valid() {
        let bar = Bar::new(7);
        bar.0.set_draw_target(ProgressDrawTarget::hidden());
        assert_eq!(bar.0.prefix(), "7");
    }
}
