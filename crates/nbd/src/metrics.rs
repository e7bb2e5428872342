//! How long the server takes to execute requests, per command, for every export of the
//! process (from the worker picking the request up to its result; the reply is sent after).

use std::time::Duration;

use ferry_types::histogram::{Histogram, Snapshot};

static READ: Histogram = Histogram::new();
static WRITE: Histogram = Histogram::new();
static FLUSH: Histogram = Histogram::new();
static TRIM: Histogram = Histogram::new();
static WRITE_ZEROES: Histogram = Histogram::new();

/// The command names, as in the NBD protocol (`read`, `write`, `flush`, `trim`,
/// `write_zeroes`).
pub(crate) fn histogram(command: &str) -> &'static Histogram {
    match command {
        "read" => &READ,
        "write" => &WRITE,
        "flush" => &FLUSH,
        "trim" => &TRIM,
        _ => &WRITE_ZEROES,
    }
}

pub(crate) fn observe(command: &'static str, d: Duration) {
    histogram(command).observe(d);
}

/// Every command's latency histogram.
pub fn request_latency() -> Vec<(&'static str, Snapshot)> {
    ["read", "write", "flush", "trim", "write_zeroes"]
        .into_iter()
        .map(|c| (c, histogram(c).snapshot()))
        .collect()
}
