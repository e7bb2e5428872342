//! Holding a round's answers and the jobs it started to what the product promises.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::ITEM;
use crate::requests::{Answer, Op, list};
use crate::support::*;
use crate::world::Phase;

/// The item as a round finds it, for judging its answers.
pub(crate) struct Start {
    pub(crate) phase: Phase,
    pub(crate) testing: bool,
    pub(crate) vms: BTreeSet<String>,
}

/// Whether the item's state lets `op` start when no job runs on it.
pub(crate) fn legal(op: &Op, at: &Start) -> bool {
    use Phase::*;
    match (op, at.phase) {
        (Op::Enable, Absent) => true,
        (_, Absent) => false,
        (Op::Disable | Op::Verify, _) => true,
        (Op::TestCleanup, _) => at.testing,
        (Op::Failover { .. }, Protected) => true,
        (Op::Failover { planned: false, .. }, FailedOver) => true,
        (Op::TestFailover, Protected) => !at.testing,
        (Op::Repair, Protected) => true,
        (Op::Commit, FailedOver) => true,
        (Op::Reprotect, Committed) => !at.testing,
        _ => false,
    }
}

/// A job as `GET /v1/jobs` shows it; `ended` is infinite while it runs.
#[derive(Debug, Clone)]
pub(crate) struct RoundJob {
    pub(crate) id: u64,
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) error: String,
    pub(crate) created: f64,
    pub(crate) ended: f64,
}

/// The jobs created after job `after`, oldest first.
pub(crate) fn jobs_after(s: &Server, after: u64) -> Vec<RoundJob> {
    let mut jobs: Vec<RoundJob> = list(s, "jobs")
        .iter()
        .filter(|j| j["id"].as_u64().unwrap() > after)
        .map(|j| {
            let state = j["state"].as_str().unwrap().to_string();
            RoundJob {
                id: j["id"].as_u64().unwrap(),
                kind: j["kind"].as_str().unwrap().to_string(),
                error: j["error"].as_str().unwrap_or_default().to_string(),
                created: epoch(j["created"].as_str().unwrap()),
                ended: if state == "running" {
                    f64::INFINITY
                } else {
                    epoch(j["updated"].as_str().unwrap())
                },
                state,
            }
        })
        .collect();
    jobs.sort_by_key(|j| j.id);
    jobs
}

/// The id of the newest job (0: none yet).
pub(crate) fn newest_job(s: &Server) -> u64 {
    list(s, "jobs")
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The job a refusal names ("job 12 (failover) has been running ..."), if any.
pub(crate) fn named_job(body: &str) -> Option<u64> {
    body.match_indices("job ").find_map(|(i, _)| {
        let rest = &body[i + 4..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[digits.len()..];
        (!digits.is_empty() && after.starts_with(" (")).then(|| digits.parse().unwrap())
    })
}

/// Whether a disable takes the item from `job` (an enable or a repair).
pub(crate) fn yields_to_disable(job: &RoundJob) -> bool {
    matches!(
        job.kind.as_str(),
        "enable-replication" | "repair-replication"
    )
}

/// A disable takes an item from a running enable or repair.
pub(crate) fn takes_over(taker: &RoundJob, job: &RoundJob) -> bool {
    taker.kind == "disable-replication" && yields_to_disable(job)
}

/// The round for a failure message: each request, its answer, and each job, timed from `t0`.
pub(crate) fn describe(t0: f64, answers: &[Answer], jobs: &[RoundJob]) -> String {
    let mut out = String::new();
    for a in answers {
        let (method, path, body) = a.op.request();
        let text: String = a.body.chars().take(300).collect();
        out += &format!(
            "  {method} {path} {} at +{:.3} s → {} at +{:.3} s: {text}\n",
            body.unwrap_or_default(),
            a.sent - t0,
            a.status,
            a.answered - t0
        );
    }
    for j in jobs {
        out += &format!(
            "  job {} ({}) {} +{:.3}..+{:.3} s {}\n",
            j.id,
            j.kind,
            j.state,
            j.created - t0,
            j.ended - t0,
            j.error
        );
    }
    out
}

/// Hold a round's answers and jobs to the promise: one job at a time (but a disable's
/// takeover), every refusal a 409 naming the running job or refused by the state, a 404 only
/// while the item (or VM) did not exist, and every job succeeded (or was taken over).
pub(crate) fn judge(at: &Start, answers: &[Answer], jobs: &[RoundJob], one_wins: bool, ctx: &str) {
    for a in answers {
        let ctx = format!("{ctx}{:?}", a.op);
        match a.status {
            200..=299 => accepted(at, a, jobs, &ctx),
            409 => refused(at, a, jobs, &ctx),
            404 => not_found(at, a, jobs, &ctx),
            0 => panic!("{ctx} got no answer (a hang, or the server died)"),
            other => panic!("{ctx} got {other}: {}", a.body),
        }
    }
    jobs_of_answers(at, answers, jobs, one_wins, ctx);
    one_at_a_time(jobs, ctx);
}

/// The jobs of the round that ran all through a request (it was decided while they ran).
fn running_throughout(a: &Answer, jobs: &[RoundJob]) -> Vec<u64> {
    jobs.iter()
        .filter(|j| j.created < a.sent && a.answered < j.ended)
        .map(|j| j.id)
        .collect()
}

/// An accepted request about a VM: never one the item works with while a job of it runs,
/// never a delete of one the item has (only before an enable, which then finds no VM, or
/// after a disable).
fn accepted(at: &Start, a: &Answer, jobs: &[RoundJob], ctx: &str) {
    match &a.op {
        Op::EnableVm(_) => panic!("{ctx} was accepted: the VM belongs to the item"),
        Op::DeleteVm(_) => assert!(
            (at.phase == Phase::Absent && jobs.is_empty())
                || jobs
                    .iter()
                    .any(|j| j.kind == "disable-replication" && j.ended < a.answered),
            "{ctx} was accepted while the item works with the VM"
        ),
        Op::StartVm(_) | Op::StopVm(_) => assert!(
            running_throughout(a, jobs).is_empty(),
            "{ctx} was accepted while a job of the item ran"
        ),
        _ => {}
    }
}

/// A 409 names a job of the round that ran during the request (not one a disable takes the
/// item from, for a disable); one that names none was not refused for a job, and an operation
/// on the item only when its state refuses it (as the round found it, or a job moved it).
fn refused(at: &Start, a: &Answer, jobs: &[RoundJob], ctx: &str) {
    let op = &a.op;
    if let Some(id) = named_job(&a.body) {
        let job = jobs.iter().find(|j| j.id == id).unwrap_or_else(|| {
            panic!("{ctx} names job {id}, which no request of the round started")
        });
        assert!(
            job.created < a.answered && a.sent < job.ended,
            "{ctx} names job {id}, which did not run during the request"
        );
        assert!(
            !(*op == Op::Disable && yields_to_disable(job)),
            "{ctx}: a disable was refused for job {id}, which it takes the item from"
        );
        return;
    }
    let asks_item = op.job_kind().is_some();
    if asks_item || matches!(op, Op::StartVm(_) | Op::StopVm(_)) {
        let ran = running_throughout(a, jobs);
        assert!(
            ran.is_empty(),
            "{ctx} was refused while job {ran:?} ran, without naming it"
        );
    }
    if asks_item {
        assert!(
            !legal(op, at) || jobs.iter().any(|j| j.created < a.answered),
            "{ctx} was refused though the item's state allows it and no job ran"
        );
    }
}

/// A 404 only for what did not exist: the item before its enable or after a disable, a VM the
/// round did not find (or a job of the round removed).
fn not_found(at: &Start, a: &Answer, jobs: &[RoundJob], ctx: &str) {
    let before = |kind: &str, t: f64| jobs.iter().any(|j| j.kind == kind && j.created < t);
    match &a.op {
        Op::EnableVm(vm) | Op::StartVm(vm) | Op::StopVm(vm) | Op::DeleteVm(vm) => {
            let moved = jobs.iter().any(|j| j.created < a.answered);
            assert!(
                !at.vms.contains(vm) || moved,
                "{ctx}: 404 for a VM that exists"
            );
        }
        _ => assert!(
            (at.phase == Phase::Absent && !before("enable-replication", a.sent))
                || before("disable-replication", a.answered),
            "{ctx}: 404 while the item exists"
        ),
    }
}

/// Each accepted operation on the item started its job (one its state allowed, or a job
/// before it moved the item there), and no refused one did; of a set of which one must run,
/// exactly one did.
fn jobs_of_answers(at: &Start, answers: &[Answer], jobs: &[RoundJob], one_wins: bool, ctx: &str) {
    let mut unclaimed: Vec<&RoundJob> = jobs.iter().collect();
    for a in answers.iter().filter(|a| a.accepted()) {
        let Some(kind) = a.op.job_kind() else {
            continue;
        };
        // A verify answers with its report, not its job.
        let id = serde_json::from_str::<Value>(&a.body)
            .ok()
            .and_then(|b| b["id"].as_u64())
            .filter(|_| kind != "verify-replication");
        let i = unclaimed
            .iter()
            .position(|j| j.kind == kind && id.is_none_or(|id| j.id == id))
            .unwrap_or_else(|| panic!("{ctx}{:?} was accepted, but no {kind} job ran", a.op));
        let job = unclaimed.remove(i);
        assert!(
            legal(&a.op, at) || jobs.iter().any(|j| j.id < job.id),
            "{ctx}{:?} was accepted, though the item's state refuses it and no job had moved \
             the item",
            a.op
        );
    }
    assert!(
        unclaimed.is_empty(),
        "{ctx}jobs that no accepted request started: {unclaimed:?}"
    );
    if one_wins {
        let accepted = answers
            .iter()
            .filter(|a| a.accepted() && a.op.job_kind().is_some())
            .count();
        assert_eq!(accepted, 1, "{ctx}exactly one of the set must run");
    }
}

/// No two jobs ran on the item at once, but a disable that took it from an enable or a repair,
/// which then ended cancelled, naming it; every other job succeeded.
pub(crate) fn one_at_a_time(jobs: &[RoundJob], ctx: &str) {
    for (i, a) in jobs.iter().enumerate() {
        for b in &jobs[i + 1..] {
            assert!(
                b.created > a.ended || takes_over(b, a),
                "{ctx}jobs {} and {} ran on the item at once",
                a.id,
                b.id
            );
        }
        let taker = jobs[i + 1..]
            .iter()
            .find(|b| b.created < a.ended && takes_over(b, a));
        match taker {
            Some(d) => {
                let cancelled = format!("cancelled: job {} took {ITEM} over", d.id);
                assert!(
                    a.state == "failed" && a.error.starts_with(&cancelled),
                    "{ctx}job {} was taken over by job {}: {} {}",
                    a.id,
                    d.id,
                    a.state,
                    a.error
                );
            }
            None => assert_eq!(a.state, "succeeded", "{ctx}job {} failed", a.id),
        }
    }
}
