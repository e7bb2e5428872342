//! The requests a round fires at the item, and how each was answered.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use crate::{API, ENABLE};

/// A request a round fires.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Enable,
    /// Enable another VM as a new item (one the item works with, or none).
    EnableVm(String),
    Disable,
    /// Fail over to a point (none: `latest`); `planned` shuts the source down first.
    Failover {
        point: Option<String>,
        planned: bool,
    },
    TestFailover,
    TestCleanup,
    Commit,
    Reprotect,
    Repair,
    Verify,
    StartVm(String),
    StopVm(String),
    DeleteVm(String),
}

pub(crate) fn vm_path(vm: &str) -> String {
    let (g, v) = vm.split_once('/').expect("GROUP/VM");
    format!("/v1/groups/{g}/vms/{v}")
}

impl Op {
    pub(crate) fn failover() -> Op {
        Op::Failover {
            point: None,
            planned: false,
        }
    }

    pub(crate) fn failover_to(point: &str) -> Op {
        Op::Failover {
            point: Some(point.to_string()),
            planned: false,
        }
    }

    /// Method, path and body.
    pub(crate) fn request(&self) -> (&'static str, String, Option<String>) {
        let item = |tail: &str| format!("{API}{tail}");
        match self {
            Op::Enable => ("POST", item("/replication"), Some(ENABLE.into())),
            Op::EnableVm(vm) => (
                "POST",
                format!("{}/replication", vm_path(vm)),
                Some(ENABLE.into()),
            ),
            Op::Disable => ("DELETE", item("/replication"), None),
            Op::Failover { point, planned } => {
                let mut body = json!({});
                if let Some(p) = point {
                    body["recovery_point"] = p.as_str().into();
                }
                if *planned {
                    body["shutdown_source"] = true.into();
                }
                ("POST", item("/failover"), Some(body.to_string()))
            }
            Op::TestFailover => ("POST", item("/test-failover"), Some("{}".into())),
            Op::TestCleanup => ("DELETE", item("/test-failover"), None),
            Op::Commit => ("POST", item("/failover/commit"), None),
            Op::Reprotect => ("POST", item("/reprotect"), None),
            Op::Repair => ("POST", item("/replication/repair"), None),
            Op::Verify => (
                "POST",
                item("/replication/verify"),
                Some(r#"{"repair":false}"#.into()),
            ),
            Op::StartVm(vm) => ("POST", format!("{}/start", vm_path(vm)), None),
            Op::StopVm(vm) => ("POST", format!("{}/stop", vm_path(vm)), None),
            Op::DeleteVm(vm) => ("DELETE", vm_path(vm), None),
        }
    }

    /// The kind of job it starts on the item; none for a request about a VM.
    pub(crate) fn job_kind(&self) -> Option<&'static str> {
        Some(match self {
            Op::Enable => "enable-replication",
            Op::Disable => "disable-replication",
            Op::Failover { .. } => "failover",
            Op::TestFailover => "test-failover",
            Op::TestCleanup => "test-failover-cleanup",
            Op::Commit => "failover-commit",
            Op::Reprotect => "reprotect",
            Op::Repair => "repair-replication",
            Op::Verify => "verify-replication",
            Op::EnableVm(_) | Op::StartVm(_) | Op::StopVm(_) | Op::DeleteVm(_) => return None,
        })
    }
}

/// A request's answer, with when it was sent and answered (seconds since the epoch).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) op: Op,
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) sent: f64,
    pub(crate) answered: f64,
}

impl Answer {
    pub(crate) fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Fire every request from its own thread after its delay (ms).
pub(crate) fn fire(s: &Server, ops: &[(Op, u64)]) -> Vec<Answer> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = ops
            .iter()
            .map(|(op, delay)| {
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(*delay));
                    let (method, path, body) = op.request();
                    let sent = now();
                    let (status, body) = s.http(method, &path, body.as_deref(), true);
                    Answer {
                        op: op.clone(),
                        status,
                        body,
                        sent,
                        answered: now(),
                    }
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// `GET path`, which must answer 200 with JSON.
pub(crate) fn get(s: &Server, path: &str) -> Value {
    let (code, body) = s.http("GET", path, None, true);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("a JSON answer")
}

/// `replication show`, none when the item does not exist.
pub(crate) fn replication(s: &Server) -> Option<Value> {
    let (code, body) = s.http("GET", &format!("{API}/replication"), None, true);
    match code {
        200 => Some(serde_json::from_str(&body).unwrap()),
        404 => None,
        _ => panic!("GET the item: {code} {body}"),
    }
}

/// `GET /v1/WHAT`: every job, VM, network, ...
pub(crate) fn list(s: &Server, what: &str) -> Vec<Value> {
    get(s, &format!("/v1/{what}")).as_array().unwrap().clone()
}

/// Wait until no job runs and every VM's disks are whole.
pub(crate) fn settle(s: &Server) {
    wait_until(240, "every job to end", || {
        list(s, "jobs").iter().all(|j| j["state"] != "running")
    });
    wait_until(240, "every VM's disks to be restored", || {
        list(s, "vms").iter().all(|v| v.get("hydration").is_none())
    });
}
