//! Named failpoints for crash and race tests. `FERRY_FAILPOINTS=NAME[,NAME=delay:MS...]` in the
//! environment makes the process die on the spot (as with `kill -9`) when it reaches `NAME`, or
//! pause there for `MS` milliseconds.

use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Action {
    Abort,
    Delay(Duration),
}

fn armed() -> &'static [(String, Action)] {
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("FERRY_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once("=delay:") {
                Some((name, ms)) => (
                    name.to_string(),
                    Action::Delay(Duration::from_millis(ms.parse().unwrap_or(1000))),
                ),
                None => (s.to_string(), Action::Abort),
            })
            .collect()
    })
}

/// Die or pause here if the failpoint `name` is armed.
pub(crate) async fn hit(name: &str) {
    for (_, action) in armed().iter().filter(|(n, _)| n == name) {
        match action {
            Action::Abort => {
                eprintln!("failpoint {name}: stopping the process");
                std::process::abort();
            }
            Action::Delay(d) => tokio::time::sleep(*d).await,
        }
    }
}
