//! One operation at a time per item (issue 13). Sets of conflicting requests (two failovers, a
//! failover and a disable, two to ten enables, a repair and a disable, a commit and a
//! reprotect, a VM's stop during a failover, ...) are fired at one item at once, with random
//! delays, round after round over its whole life: enabled, protected, under test failover,
//! failed over (to one point, then another), committed, reprotected back, failed back,
//! disabled and enabled again. Held to:
//!
//! - of a conflicting set one runs: two jobs never run on the item at once, except a disable
//!   that takes it from an enable or a repair, which then ends `cancelled`;
//! - every other request gets a 409 (never a 500, never a hang) that names the job running on
//!   the item, or says why its state refuses it; a 404 only while the item does not exist;
//! - after every round the item is in a state it can stay in, every job it ran succeeded, a
//!   failed-over VM's disks equal the recovery point the item records, and nothing is left
//!   behind: the VMs, their disk images, the `-test` networks, the agents' stream directories
//!   and the stores' cache and replica prefixes are exactly what the item's state implies, and
//!   no job runs.
//!
//! Each job waits a second between its admission and its first step (the failpoint
//! `job-before-first-step` as a delay), so it holds the item far longer than the requests of a
//! round are apart (up to 50 ms): of a set that cannot run one after the other, exactly one
//! runs. In sets where a later request may run after the first job, or take the item from it,
//! each request waits up to 50 ms, or 1 to 1.6 s (when the first job's steps run), or up to
//! 2 s, to land anywhere in the first job's life.
//!
//! Two more tests: a disable takes the item from an enable or a repair at any moment of its
//! steps (no hold there); and a crash between a job's insert and its first step leaves a server
//! that starts and finishes the job. The rounds are seeded: `FERRY_OPS_SEED` replays a run's
//! choices (not its timing, which decides which request of a set comes first).

#[path = "../support/mod.rs"]
mod support;

mod judge;
mod requests;
mod world;

use std::collections::BTreeSet;
use std::time::Instant;

use judge::{Start, describe, jobs_after, judge, newest_job, one_at_a_time};
use requests::{Answer, Op, fire, list, settle, vm_path};
use support::*;
use world::{Phase, World, check_world, names};

const ITEM: &str = "rg1/app1";
/// The VM a failover of the item creates in the target region.
const FAILED_OVER: &str = "rg1-asr/app1";
const API: &str = "/v1/groups/rg1/vms/app1";
const DISKS: [&str; 2] = ["16MiB@sa1", "8MiB@sa2"];
const ENABLE: &str = r#"{"target_region":"west","policy":"fast"}"#;
const ROUNDS: usize = 40;
/// How long each job holds the item before its first step.
const HOLD: &str = "job-before-first-step=delay:1000";

/// SplitMix64: a tiny seeded generator, so a failing run replays from its printed seed.
struct Rng(u64);

impl Rng {
    /// The seed from `FERRY_OPS_SEED`, or a new one; printed either way.
    fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("FERRY_OPS_SEED") {
            Ok(v) => v.trim().parse().expect("FERRY_OPS_SEED is a number"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{test}: seed {seed} (replay with FERRY_OPS_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// Two failover points to choose between: distinct ids when there are two.
fn two_points(s: &Server, rng: &mut Rng) -> (String, String) {
    let ids: Vec<String> = s
        .points(ITEM)
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    let a = rng.pick(&ids);
    let others: Vec<String> = ids.iter().filter(|i| **i != a).cloned().collect();
    let b = if others.is_empty() {
        "latest-processed".to_string()
    } else {
        rng.pick(&others)
    };
    (a, b)
}

/// A set of requests that conflict from where the item is, and whether exactly one of them
/// must run (each that can holds the item a second, so none can run after another within the
/// round).
fn conflicts(s: &Server, w: &World, rng: &mut Rng) -> (Vec<Op>, bool) {
    use Op::*;
    let source = w.source();
    let other = || EnableVm(FAILED_OVER.into());
    let mut sets: Vec<(Vec<Op>, bool)> = match (w.phase(), w.test_vm()) {
        (Phase::Absent, _) => {
            let enables = (0..2 + rng.below(9)).map(|_| Enable).collect();
            vec![
                (enables, true),
                (vec![Enable, Disable], false),
                (vec![Enable, Repair], true),
                (vec![Enable, Disable, Repair], false),
                (vec![Enable, DeleteVm(ITEM.into())], false),
                (
                    vec![Enable, StopVm(ITEM.into()), StartVm(ITEM.into())],
                    false,
                ),
                (vec![Enable, Enable, Op::failover(), other(), Verify], true),
            ]
        }
        (Phase::Protected, None) => {
            let (point, _) = two_points(s, rng);
            let planned = Failover {
                point: None,
                planned: true,
            };
            let test = w.test_vm_to_be();
            vec![
                (
                    vec![
                        TestFailover,
                        DeleteVm(test.clone()),
                        StopVm(test.clone()),
                        EnableVm(test),
                    ],
                    false,
                ),
                (vec![Op::failover(), Op::failover()], true),
                (vec![planned, Op::failover_to(&point)], true),
                (vec![Op::failover(), TestFailover], true),
                (vec![Op::failover(), Disable], true),
                (vec![Repair, Disable], false),
                (vec![Repair, Repair], true),
                (vec![Repair, Op::failover()], true),
                (vec![TestFailover, TestFailover], true),
                (vec![TestFailover, Disable], true),
                (vec![Op::failover(), Verify], false),
                (vec![Op::failover(), StopVm(source.clone())], false),
                (
                    vec![
                        StartVm(source.clone()),
                        StopVm(source.clone()),
                        Op::failover(),
                    ],
                    false,
                ),
                (vec![Commit, Reprotect, TestCleanup, Enable], false),
                (
                    vec![Op::failover(), Enable, other(), DeleteVm(ITEM.into())],
                    true,
                ),
            ]
        }
        (Phase::Protected, Some(test)) => vec![
            (vec![TestCleanup, TestCleanup], true),
            (vec![TestCleanup, Op::failover()], false),
            (vec![TestCleanup, Disable], false),
            (vec![TestCleanup, TestFailover], false),
            (
                vec![TestCleanup, DeleteVm(test.clone()), StopVm(test)],
                true,
            ),
            (vec![Op::failover(), TestFailover, Repair], true),
        ],
        (Phase::FailedOver, test) => {
            let (a, b) = two_points(s, rng);
            let fvm = w.failover_vm().expect("a failed-over item names its VM");
            let mut sets = vec![
                (vec![Op::failover_to(&a), Op::failover_to(&b)], true),
                (vec![Commit, Commit], true),
                (vec![Commit, Reprotect], false),
                (vec![Commit, Op::failover_to(&a)], true),
                (vec![Op::failover_to(&b), Disable], true),
                (vec![Op::failover_to(&a), StopVm(fvm.clone())], false),
                (vec![Commit, other(), DeleteVm(fvm)], true),
                (vec![TestFailover, Op::failover(), Repair], true),
                (vec![Verify, Commit], false),
            ];
            if test.is_some() {
                sets.push((vec![TestCleanup, Commit], false));
            }
            sets
        }
        // The test failover must be cleaned up before the reprotect.
        (Phase::Committed, Some(_)) => vec![
            (vec![TestCleanup, Reprotect], false),
            (vec![TestCleanup, TestCleanup], true),
            (vec![TestCleanup, Disable], false),
            (vec![Reprotect, Commit, Op::failover()], false),
        ],
        (Phase::Committed, None) => {
            let fvm = w.failover_vm().expect("a committed item names its VM");
            vec![
                (vec![Reprotect, Reprotect], true),
                (vec![Reprotect, Commit], true),
                (vec![Reprotect, Disable], true),
                (vec![Reprotect, Op::failover()], true),
                (vec![Reprotect, StopVm(fvm.clone())], false),
                (vec![Reprotect, StopVm(source)], false),
                (vec![Reprotect, Verify], false),
                (vec![Reprotect, other(), DeleteVm(fvm), Repair], true),
            ]
        }
    };
    let i = rng.below(sets.len() as u64) as usize;
    sets.swap_remove(i)
}

/// How long a request of a round waits before it is sent: within 50 ms for a set of which one
/// must run (its first job holds the item for a second); for the others, a third of the time
/// each: within 50 ms (while the first job is held), 1 to 1.6 s (while its steps run) or 2 s.
fn delay_ms(one_wins: bool, rng: &mut Rng) -> u64 {
    match (one_wins, rng.below(3)) {
        (true, _) | (false, 0) => rng.below(51),
        (false, 1) => 1000 + rng.below(601),
        (false, _) => rng.below(2001),
    }
}

fn job_ok(s: &Server, args: &[&str]) {
    let mut a = args.to_vec();
    a.push("--wait");
    s.ok(&a);
}

/// Move the item one step along its life (its round left it where it was). From protected,
/// the `n`-th time: a failover, now and then a planned one, a test failover or a disable.
fn advance(s: &Server, w: &World, n: usize) -> &'static str {
    match (w.phase(), w.test_vm().is_some()) {
        (Phase::Absent, _) => {
            s.protect(ITEM);
            "enable"
        }
        (_, true) => {
            job_ok(s, &["failover", "test-cleanup", ITEM]);
            "test cleanup"
        }
        (Phase::Protected, false) => match n % 5 {
            1 => {
                job_ok(s, &["failover", "test", ITEM]);
                "test failover"
            }
            3 => {
                s.ok(&["replication", "disable", ITEM, "--wait"]);
                "disable"
            }
            4 => {
                job_ok(s, &["failover", "run", ITEM, "--shutdown-source"]);
                "planned failover"
            }
            _ => {
                job_ok(s, &["failover", "run", ITEM]);
                "failover"
            }
        },
        (Phase::FailedOver, false) => {
            job_ok(s, &["failover", "commit", ITEM]);
            "commit"
        }
        (Phase::Committed, false) => {
            job_ok(s, &["reprotect", ITEM]);
            "reprotect"
        }
    }
}

/// Undo what a round's VM requests did beside the item: create its own VM again if a delete
/// took it (before replication was enabled), and start again the VMs they stopped that run the
/// item's workload (its source, failed-over or test VM; not the VM a reprotect turned into its
/// target).
fn undo_vm_requests(s: &Server, w: &World, answers: &[Answer]) {
    let accepted = |op: &Op| answers.iter().any(|a| a.accepted() && a.op == *op);
    if accepted(&Op::DeleteVm(ITEM.into())) {
        create_item_vm(s);
    }
    let vms = list(s, "vms");
    let running: Vec<String> = w
        .rep
        .iter()
        .flat_map(|_| [Some(w.source()), w.failover_vm(), w.test_vm()])
        .flatten()
        .collect();
    for vm in running
        .iter()
        .filter(|vm| accepted(&Op::StopVm(vm.to_string())))
    {
        let stopped = vms
            .iter()
            .any(|v| names(std::slice::from_ref(v)).contains(vm) && v["state"] == "stopped");
        if stopped {
            let (code, body) = s.http("POST", &format!("{}/start", vm_path(vm)), None, true);
            assert_eq!(code, 200, "start {vm} again: {body}");
        }
    }
}

/// Delete the VMs a disable kept, so that the item starts again from its own VM alone.
fn forget_kept(s: &Server, w: World) -> World {
    if w.rep.is_some() {
        return w;
    }
    for vm in w.kept.iter().filter(|v| *v != ITEM) {
        let (code, body) = s.http("DELETE", &vm_path(vm), None, true);
        assert_eq!(code, 200, "delete {vm}, which the disable kept: {body}");
    }
    World::default()
}

/// The item's VM, two disks with data.
fn create_item_vm(s: &Server) {
    s.create_vm(ITEM, "default", &DISKS);
    assert!(qemu_io(&s.disk_uri(ITEM, 0), "write -P 0x11 0 1M"));
    assert!(qemu_io(&s.disk_uri(ITEM, 1), "write -P 0x22 1M 1M"));
}

/// Write a new pattern to the source so that the next point differs from the last.
fn write_to_source(s: &Server, w: &World, round: usize) {
    let offset = (round as u64 * 64) << 10;
    let cmd = format!("write -P {} {offset} 64k", round % 250 + 1);
    assert!(qemu_io(&s.disk_uri(&w.source(), 0), &cmd));
}

#[test]
fn conflicting_operations_run_one_at_a_time_and_leave_nothing_behind() {
    let mut rng = Rng::from_env("conflicting_operations");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start_with(&dir.join("data"), free_port(), failpoints(HOLD));
    s.base_resources(None);
    create_item_vm(&s);

    let mut world = World::default();
    let mut covered = BTreeSet::new();
    let mut advances_from_protected = 0;
    for round in 0..ROUNDS {
        let phase = world.phase();
        covered.insert((phase, world.test_vm().is_some(), world.source()));
        if phase == Phase::Protected {
            write_to_source(&s, &world, round);
        }
        let (ops, one_wins) = conflicts(&s, &world, &mut rng);
        let at = Start {
            phase,
            testing: world.test_vm().is_some(),
            vms: names(&list(&s, "vms")),
        };
        let watermark = newest_job(&s);
        let t0 = now();
        let timed: Vec<(Op, u64)> = ops
            .into_iter()
            .map(|op| (op, delay_ms(one_wins, &mut rng)))
            .collect();
        let answers = fire(&s, &timed);
        settle(&s);
        let jobs = jobs_after(&s, watermark);
        eprint!(
            "round {round} from {phase:?}:\n{}",
            describe(t0, &answers, &jobs)
        );
        judge(&at, &answers, &jobs, one_wins, &format!("round {round}: "));

        world = world.next(&s);
        undo_vm_requests(&s, &world, &answers);
        check_world(&s, &world, dir, &format!("after round {round}"));
        world = forget_kept(&s, world);
        if world.phase() == phase && world.test_vm().is_some() == at.testing {
            let n = advances_from_protected;
            advances_from_protected += usize::from(phase == Phase::Protected && !at.testing);
            let step = advance(&s, &world, n);
            settle(&s);
            world = world.next(&s);
            check_world(&s, &world, dir, &format!("after round {round}'s {step}"));
            eprintln!("  then {step}: {:?}", world.phase());
            world = forget_kept(&s, world);
        }
    }
    eprintln!(
        "conflicting_operations: {ROUNDS} rounds in {:?}; covered {covered:?}",
        started.elapsed()
    );
    let phases: BTreeSet<Phase> = covered.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(phases.len(), 4, "every state was covered: {covered:?}");
    assert!(
        covered.iter().any(|(_, testing, _)| *testing),
        "a test failover was covered: {covered:?}"
    );
}

/// The server dies between each kind of job's insert and its first step (the request gets no
/// answer); started again, it resumes the job, which brings the item where the operation
/// leads, with nothing left behind.
#[test]
fn a_crash_between_a_jobs_insert_and_its_first_step_leaves_a_server_that_starts() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = Server::start(&dir.join("data"));
    s.base_resources(None);
    create_item_vm(&s);
    let log = s.data.with_extension("log");

    let mut world = World::default();
    let steps = [
        (Op::Enable, Phase::Protected, false),
        (Op::TestFailover, Phase::Protected, true),
        (Op::TestCleanup, Phase::Protected, false),
        (Op::failover(), Phase::FailedOver, false),
        (
            Op::failover_to("latest-processed"),
            Phase::FailedOver,
            false,
        ),
        (Op::Commit, Phase::Committed, false),
        (Op::Reprotect, Phase::Protected, false),
        (Op::Repair, Phase::Protected, false),
        (Op::Disable, Phase::Absent, false),
    ];
    for (n, (op, phase, testing)) in steps.into_iter().enumerate() {
        let ctx = format!("{op:?}");
        s.restart_with(failpoints("job-before-first-step"));
        let before = newest_job(&s);
        let (method, path, body) = op.request();
        let (code, answer) = s.http(method, &path, body.as_deref(), true);
        assert_eq!(code, 0, "{ctx}: answered {answer} instead of dying");
        s.wait_died(60);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.matches("failpoint job-before-first-step: stopping the process")
                .count(),
            n + 1,
            "{ctx}: the server died elsewhere"
        );

        s.restart_with(Vec::new());
        settle(&s);
        let jobs = jobs_after(&s, before);
        assert_eq!(jobs.len(), 1, "{ctx}: {jobs:?}");
        assert_eq!(Some(jobs[0].kind.as_str()), op.job_kind(), "{ctx}");
        assert_eq!(jobs[0].state, "succeeded", "{ctx}: {jobs:?}");
        world = world.next(&s);
        assert_eq!(world.phase(), phase, "{ctx}: {:?}", world.rep);
        assert_eq!(world.test_vm().is_some(), testing, "{ctx}");
        check_world(&s, &world, dir, &ctx);
        eprintln!("{ctx}: resumed after the crash, {:?}", started.elapsed());
    }

    // A disable that takes the item from a running enable dies before its first step: both
    // jobs resume, the enable ends cancelled, the disable removes the item.
    s.restart_with(failpoints("job-before-first-step=abort-after:2"));
    let before = newest_job(&s);
    let (method, path, body) = Op::Enable.request();
    let (code, answer) = s.http(method, &path, body.as_deref(), true);
    assert_eq!(code, 202, "enable: {answer}");
    let (method, path, body) = Op::Disable.request();
    let (code, answer) = s.http(method, &path, body.as_deref(), true);
    assert_eq!(code, 0, "disable: answered {answer} instead of dying");
    s.wait_died(60);
    s.restart_with(Vec::new());
    settle(&s);
    let jobs = jobs_after(&s, before);
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["enable-replication", "disable-replication"]);
    one_at_a_time(&jobs, "a disable's takeover, resumed: ");
    world = world.next(&s);
    check_world(&s, &world, dir, "a disable's takeover, resumed");
    eprintln!(
        "a disable's takeover: the enable {} ({}), {:?}",
        jobs[0].state,
        jobs[0].error,
        started.elapsed()
    );
}

/// A disable takes the item from an enable or a repair at any moment of its steps (no hold
/// here: the disable follows after a random 0–900 ms): the job ends `cancelled` (or succeeded,
/// when it was done first), and nothing of the item is left.
#[test]
fn a_disable_takes_the_item_from_an_enable_or_a_repair_at_any_moment() {
    let mut rng = Rng::from_env("a_disable_takes_the_item");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Server::start(&dir.join("data"));
    s.base_resources(None);
    create_item_vm(&s);

    for round in 0..16 {
        let (first, phase, late) = if round % 2 == 0 {
            (Op::Enable, Phase::Absent, rng.below(500))
        } else {
            s.protect(ITEM);
            s.wait_point_after(ITEM, 0.0, 60);
            write_to_source(&s, &World::default(), round);
            (Op::Repair, Phase::Protected, rng.below(900))
        };
        let at = Start {
            phase,
            testing: false,
            vms: names(&list(&s, "vms")),
        };
        let watermark = newest_job(&s);
        let t0 = now();
        let answers = fire(&s, &[(first, 0), (Op::Disable, late)]);
        settle(&s);
        let jobs = jobs_after(&s, watermark);
        eprint!("round {round}:\n{}", describe(t0, &answers, &jobs));
        judge(&at, &answers, &jobs, false, &format!("round {round}: "));

        let mut world = World::default().next(&s);
        check_world(&s, &world, dir, &format!("after round {round}"));
        if world.rep.is_some() {
            // The disable came before the enable: disable it now.
            s.ok(&["replication", "disable", ITEM, "--wait"]);
            world = world.next(&s);
            check_world(&s, &world, dir, &format!("after round {round}'s disable"));
        }
    }
}

/// A test failover that outlives a failover and its commit must be cleaned up before the
/// reprotect, which turns the target around (the test network is in the old target group) and
/// deletes the replica the test VM came from; then nothing of it is left.
#[test]
fn a_reprotect_waits_for_the_test_failover_to_be_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"));
    s.base_resources(None);
    create_item_vm(&s);
    s.protect(ITEM);
    job_ok(&s, &["failover", "test", ITEM]);
    job_ok(&s, &["failover", "run", ITEM]);
    job_ok(&s, &["failover", "commit", ITEM]);
    let refused = s.fails(&["reprotect", ITEM]);
    assert!(refused.contains("test-cleanup"), "{refused}");
    job_ok(&s, &["failover", "test-cleanup", ITEM]);
    job_ok(&s, &["reprotect", ITEM]);
    let networks = names(&list(&s, "networks"));
    assert!(
        networks.iter().all(|n| !n.ends_with("-test")),
        "{networks:?}"
    );
}
