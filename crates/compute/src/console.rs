//! The guest's serial console, as qemu writes it to `dir/console.log`.

use std::path::Path;
use std::time::Duration;

use crate::error::ComputeError;
use crate::process::is_running;
use crate::qemu::CONSOLE_LOG;

const POLL: Duration = Duration::from_millis(50);
const TAIL_LINES: usize = 30;

/// The console output so far (lossy UTF-8: firmware writes escape sequences).
pub fn console(dir: &Path) -> Result<String, ComputeError> {
    let path = dir.join(CONSOLE_LOG);
    let bytes = std::fs::read(&path).map_err(ComputeError::io("read console", &path))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls the console until it contains `needle` and returns the console so far. Fails with the
/// console's tail when `deadline` passes or qemu exits first.
pub async fn wait_console(
    dir: &Path,
    needle: &str,
    deadline: Duration,
) -> Result<String, ComputeError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        // Read the liveness before the log so output written just before exiting is seen.
        let running = is_running(dir);
        let text = console(dir)?;
        if text.contains(needle) {
            return Ok(text);
        }
        if !running {
            return Err(ComputeError::VmExited {
                dir: dir.to_path_buf(),
                needle: needle.to_string(),
                tail: tail(&text),
            });
        }
        if tokio::time::Instant::now() >= until {
            return Err(ComputeError::ConsoleTimeout {
                dir: dir.to_path_buf(),
                needle: needle.to_string(),
                waited: deadline,
                tail: tail(&text),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}
