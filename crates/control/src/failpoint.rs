//! Named failpoints for crash tests: with `FERRY_FAILPOINTS=NAME[,NAME...]` in its
//! environment, the process dies on the spot (as with `kill -9`) when it reaches one of them.

use std::sync::OnceLock;

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("FERRY_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

/// Die here if the failpoint `name` is armed.
pub(crate) fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("failpoint {name}: stopping the process");
        std::process::abort();
    }
}
