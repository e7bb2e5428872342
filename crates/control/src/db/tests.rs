//! The state layer's tests, each run on both databases: SQLite in a temp dir and a fresh
//! database on the test PostgreSQL cluster.

use super::*;
use crate::model::{JobKind, JobState};

/// Each database, opened afresh (the temp dir lives as long as the database is used).
fn each_db() -> Vec<(&'static str, Db, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::open(&Database::Embedded, dir.path()).unwrap();
    let pg_dir = tempfile::tempdir().unwrap();
    let url = postgres::fresh_test_database();
    let pg = Db::open(&Database::Postgres(url), pg_dir.path()).unwrap();
    vec![("sqlite", sqlite, dir), ("postgres", pg, pg_dir)]
}

fn job(kind: &str, state: &str) -> String {
    serde_json::json!({
        "id": 0, "kind": kind, "target": "rg1/vm1", "state": state, "steps": [],
        "error": null, "percent": 0.0,
        "created": "2026-11-28T05:00:00Z", "updated": "2026-11-28T05:00:00Z",
    })
    .to_string()
}

#[test]
fn a_job_that_cannot_be_read_is_left_out_of_the_list() {
    for (name, db, _dir) in each_db() {
        let mut first: Job = serde_json::from_str(&job("failover", "running")).unwrap();
        db.new_job(&mut first).unwrap();
        // What a crash between the two writes of an older version left.
        let empty = db.put_raw_job("{}").unwrap();
        let other_version = db.put_raw_job(&job("defragment", "running")).unwrap();
        let not_json = db.put_raw_job("not json").unwrap();
        let mut last: Job = serde_json::from_str(&job("reprotect", "succeeded")).unwrap();
        db.new_job(&mut last).unwrap();

        let jobs = db.jobs().unwrap();
        let kinds: Vec<(u64, JobKind, JobState)> =
            jobs.iter().map(|j| (j.id, j.kind, j.state)).collect();
        assert_eq!(
            kinds,
            [
                (first.id, JobKind::Failover, JobState::Running),
                (last.id, JobKind::Reprotect, JobState::Succeeded),
            ],
            "{name}"
        );
        for id in [empty, other_version, not_json] {
            let e = db.job(id).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("job {id} cannot be read from the state database")),
                "{name}: {e}"
            );
        }
        assert_eq!(db.job(last.id).unwrap().unwrap().id, last.id, "{name}");
        assert!(db.job(999).unwrap().is_none(), "{name}");
    }
}

fn event(time: &str, target: &str, kind: &str, severity: Severity) -> Event {
    Event {
        id: 0,
        time: Timestamp::parse_rfc3339(time).unwrap(),
        severity,
        kind: kind.into(),
        target: target.into(),
        message: time.into(),
    }
}

#[test]
fn events_older_than_the_cutoff_are_pruned_oldest_first_in_batches() {
    for (name, db, _dir) in each_db() {
        for t in [
            "2026-10-01T00:00:00Z",
            "2026-10-02T00:00:00Z",
            "2026-10-03T00:00:00Z",
            "2026-11-30T00:00:00.500Z",
            "2026-12-01T00:00:00Z",
        ] {
            db.add_event(&mut event(t, "rg1/vm1", "state-changed", Severity::Info))
                .unwrap();
        }
        let cutoff = Timestamp::parse_rfc3339("2026-11-30T00:00:00.400Z").unwrap();
        assert_eq!(db.prune_events(cutoff, 2).unwrap(), 2, "{name}");
        assert_eq!(db.prune_events(cutoff, 2).unwrap(), 1, "{name}");
        assert_eq!(db.prune_events(cutoff, 2).unwrap(), 0, "{name}");
        let left: Vec<String> = db
            .events(&EventQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            left,
            ["2026-11-30T00:00:00.500Z", "2026-12-01T00:00:00Z"],
            "{name}"
        );
    }
}

#[test]
fn events_are_found_by_target_kind_severity_and_id_newest_last() {
    for (name, db, _dir) in each_db() {
        let mut ids = Vec::new();
        for (i, (target, kind, sev)) in [
            ("rg1/vm1", "state-changed", Severity::Info),
            ("rg1/vm2", "state-changed", Severity::Warning),
            ("rg1/vm1", "health-changed", Severity::Critical),
            ("job/7", "job-failed", Severity::Warning),
            ("rg1/vm1", "state-changed", Severity::Warning),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event(&format!("2026-12-01T00:00:0{i}Z"), target, kind, sev);
            db.add_event(&mut e).unwrap();
            ids.push(e.id);
        }
        let found = |q: EventQuery<'_>| -> Vec<u64> {
            db.events(&q).unwrap().iter().map(|e| e.id).collect()
        };
        let all = EventQuery {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(found(all.clone()), ids, "{name}");
        let vm1 = EventQuery {
            target: Some("rg1/vm1"),
            ..all.clone()
        };
        assert_eq!(found(vm1.clone()), [ids[0], ids[2], ids[4]], "{name}");
        assert_eq!(
            found(EventQuery {
                kind: Some("state-changed"),
                ..vm1.clone()
            }),
            [ids[0], ids[4]],
            "{name}"
        );
        assert_eq!(
            found(EventQuery {
                severity: Some(Severity::Warning),
                ..all.clone()
            }),
            [ids[1], ids[2], ids[3], ids[4]],
            "{name}"
        );
        assert_eq!(
            found(EventQuery {
                severity: Some(Severity::Critical),
                ..all.clone()
            }),
            [ids[2]],
            "{name}"
        );
        // The newest two, oldest first; then only those after an id.
        assert_eq!(
            found(EventQuery {
                limit: 2,
                ..all.clone()
            }),
            [ids[3], ids[4]],
            "{name}"
        );
        assert_eq!(
            found(EventQuery {
                after: ids[2],
                ..vm1
            }),
            [ids[4]],
            "{name}"
        );
    }
}

#[test]
fn only_jobs_that_ended_before_the_cutoff_are_pruned() {
    for (name, db, _dir) in each_db() {
        let mut ids = Vec::new();
        for state in ["running", "succeeded", "failed"] {
            let mut j: Job = serde_json::from_str(&job("failover", state)).unwrap();
            db.new_job(&mut j).unwrap();
            ids.push(j.id);
        }
        let mut recent: Job = serde_json::from_str(&job("reprotect", "succeeded")).unwrap();
        recent.updated = Timestamp::parse_rfc3339("2026-12-02T00:00:00Z").unwrap();
        db.new_job(&mut recent).unwrap();
        let cutoff = Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(db.prune_jobs(cutoff, 100).unwrap(), 2, "{name}");
        let left: Vec<u64> = db.jobs().unwrap().iter().map(|j| j.id).collect();
        assert_eq!(left, [ids[0], recent.id], "{name}");
    }
}

#[test]
fn resources_insert_put_list_delete_and_a_failed_transaction_leaves_nothing() {
    for (name, db, _dir) in each_db() {
        db.insert(Kind::Group, "b", &serde_json::json!({"n": 1}), "group")
            .unwrap();
        db.insert(Kind::Group, "a", &serde_json::json!({"n": 2}), "group")
            .unwrap();
        let e = db
            .insert(Kind::Group, "a", &serde_json::json!({"n": 3}), "group")
            .unwrap_err();
        assert!(matches!(e, ControlError::Conflict(_)), "{name}: {e}");
        assert_eq!(e.to_string(), "group a already exists", "{name}");
        db.put(Kind::Group, "b", &serde_json::json!({"n": 4}))
            .unwrap();
        let all: Vec<serde_json::Value> = db.list(Kind::Group).unwrap();
        assert_eq!(
            all,
            [serde_json::json!({"n": 2}), serde_json::json!({"n": 4})],
            "{name}"
        );
        assert!(
            db.list::<serde_json::Value>(Kind::Vm).unwrap().is_empty(),
            "{name}"
        );

        let e = db
            .transact(|tx| {
                tx.put(Kind::Group, "a", &serde_json::json!({"n": 5}))?;
                tx.put(Kind::Vm, "a/x", &serde_json::json!({"n": 6}))?;
                Err::<(), _>(ControlError::invalid("no"))
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "no", "{name}");
        let a: serde_json::Value = db.get(Kind::Group, "a").unwrap().unwrap();
        assert_eq!(a, serde_json::json!({"n": 2}), "{name}: rolled back");
        assert!(
            db.get::<serde_json::Value>(Kind::Vm, "a/x")
                .unwrap()
                .is_none()
        );

        db.insert_missing(&[
            (Kind::Group, "a".into(), r#"{"n":7}"#.into()),
            (Kind::Group, "c".into(), r#"{"n":8}"#.into()),
        ])
        .unwrap();
        let all: Vec<serde_json::Value> = db.list(Kind::Group).unwrap();
        assert_eq!(all.len(), 3, "{name}");
        assert_eq!(all[0], serde_json::json!({"n": 2}), "{name}: kept");
        assert!(db.delete(Kind::Group, "c").unwrap(), "{name}");
        assert!(!db.delete(Kind::Group, "c").unwrap(), "{name}");
    }
}

#[test]
fn rpo_samples_and_orphan_sightings_are_kept_and_forgotten() {
    for (name, db, _dir) in each_db() {
        db.add_rpo_sample("rg/vm", 100, Some(1.5), 0).unwrap();
        db.add_rpo_sample("rg/vm", 100, Some(2.5), 0).unwrap();
        db.add_rpo_sample("rg/vm", 200, None, 0).unwrap();
        db.add_rpo_sample("rg/vm", 300, Some(3.0), 150).unwrap();
        assert_eq!(
            db.rpo_history("rg/vm", 0).unwrap(),
            [(200, None), (300, Some(3.0))],
            "{name}"
        );
        db.forget_rpo_history("rg/vm").unwrap();
        assert!(db.rpo_history("rg/vm", 0).unwrap().is_empty(), "{name}");

        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            db.orphans_seen(&names(&["x", "y"]), 10).unwrap(),
            [(10, true), (10, true)],
            "{name}"
        );
        assert_eq!(
            db.orphans_seen(&names(&["y", "z"]), 20).unwrap(),
            [(10, false), (20, true)],
            "{name}"
        );
        // x was no longer found, so it is new again.
        assert_eq!(
            db.orphans_seen(&names(&["x"]), 30).unwrap(),
            [(30, true)],
            "{name}"
        );
    }
}

/// The tables and columns of a database after its migrations, as (table, column) pairs.
fn schema(db: &Db) -> std::collections::BTreeSet<(String, String)> {
    let sql = match &*db.backend.lock().unwrap() {
        Backend::Sqlite(_) => {
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT IN ('sqlite_sequence', 'refinery_schema_history')"
        }
        Backend::Postgres(_) => {
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> 'refinery_schema_history'"
        }
    };
    db.read(|c| {
        c.query(sql, &[])?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
    })
    .unwrap()
}

#[test]
fn both_databases_have_one_schema() {
    let dbs = each_db();
    let sqlite = schema(&dbs[0].1);
    assert!(sqlite.contains(&("events".into(), "target".into())));
    assert_eq!(sqlite, schema(&dbs[1].1));
    let versions = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir),
        )
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
        v.sort();
        v
    };
    assert_eq!(versions("sqlite"), versions("postgres"));
}

#[test]
fn a_database_of_the_version_before_migrations_is_brought_up_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(Db::embedded_path(dir.path())).unwrap();
        c.execute_batch(
            "CREATE TABLE resources (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY (kind, key));
             CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
             INSERT INTO resources VALUES ('group', 'rg', '{\"name\":\"rg\"}');",
        )
        .unwrap();
        let e = event(
            "2026-10-01T00:00:00.250Z",
            "rg/vm",
            "state-changed",
            Severity::Warning,
        );
        c.execute(
            "INSERT INTO events (body) VALUES (?1)",
            [serde_json::to_string(&Event { id: 1, ..e }).unwrap()],
        )
        .unwrap();
        let mut ended: Job = serde_json::from_str(&job("failover", "failed")).unwrap();
        ended.id = 1;
        c.execute("INSERT INTO jobs (body) VALUES (?1)", [encode(&ended)])
            .unwrap();
    }
    let db = Db::open(&Database::Embedded, dir.path()).unwrap();
    let rg: serde_json::Value = db.get(Kind::Group, "rg").unwrap().unwrap();
    assert_eq!(rg["name"], "rg");
    let found = db
        .events(&EventQuery {
            target: Some("rg/vm"),
            severity: Some(Severity::Warning),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    // The time column was filled from the body, to the millisecond.
    let at = Timestamp::parse_rfc3339("2026-10-01T00:00:00.251Z").unwrap();
    assert_eq!(db.prune_events(at, 10).unwrap(), 1);
    let at = Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
    assert_eq!(db.prune_jobs(at, 10).unwrap(), 1);
    // Opening again applies nothing twice.
    drop(db);
    Db::open(&Database::Embedded, dir.path()).unwrap();
}

#[test]
fn a_postgres_url_that_is_wrong_or_unreachable_is_a_clear_error() {
    let e = Database::parse("mysql://x").unwrap_err().to_string();
    assert!(e.contains("--database takes a PostgreSQL URL"), "{e}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://ferry:secret-word@127.0.0.1:{port}/state?connect_timeout=2");
    let dir = tempfile::tempdir().unwrap();
    let e = Db::open(&Database::parse(&url).unwrap(), dir.path())
        .err()
        .expect("nothing listens there");
    let msg = e.to_string();
    assert!(matches!(e, ControlError::Unavailable(_)), "{msg}");
    assert!(
        msg.contains(&format!(
            "state database 127.0.0.1:{port}/state cannot be reached"
        )),
        "{msg}"
    );
    assert!(
        !msg.contains("secret-word"),
        "the password is never shown: {msg}"
    );
    assert!(!format!("{:?}", Database::parse(&url).unwrap()).contains("secret-word"));
}

#[test]
fn a_dropped_postgres_connection_is_made_again() {
    let url = postgres::fresh_test_database();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&Database::Postgres(url), dir.path()).unwrap();
    db.put(Kind::Group, "a", &serde_json::json!({"n": 1}))
        .unwrap();
    // Another session ends this server's connection, as a restart of PostgreSQL would.
    db.read(|c| {
        c.query(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
    })
    .unwrap();
    let own = db
        .read(|c| c.query_opt("SELECT pg_backend_pid()::bigint", &[]))
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    // Ending its own backend: the statement fails, the next one connects again.
    let e = db
        .read(|c| c.query("SELECT pg_terminate_backend(pg_backend_pid())::text", &[]))
        .err();
    assert!(e.is_some(), "the ended connection's statement fails");
    let mut answer = None;
    for _ in 0..3 {
        if let Ok(v) = db.get::<serde_json::Value>(Kind::Group, "a") {
            answer = v;
            break;
        }
    }
    assert_eq!(answer, Some(serde_json::json!({"n": 1})));
    let again = db
        .read(|c| c.query_opt("SELECT pg_backend_pid()::bigint", &[]))
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_ne!(own, again, "a new connection");
}

#[test]
fn jobs_are_paged_by_id_and_found_by_state() {
    for (name, db, _dir) in each_db() {
        let mut ids = Vec::new();
        for state in ["running", "succeeded", "running", "failed", "running"] {
            let mut j: Job = serde_json::from_str(&job("failover", state)).unwrap();
            db.new_job(&mut j).unwrap();
            ids.push(j.id);
        }
        let page =
            |q: JobQuery| -> Vec<u64> { db.jobs_page(&q).unwrap().iter().map(|j| j.id).collect() };
        assert_eq!(page(JobQuery::default()), ids, "{name}");
        let running = JobQuery {
            state: Some(JobState::Running),
            ..Default::default()
        };
        assert_eq!(page(running), [ids[0], ids[2], ids[4]], "{name}");
        let first = page(JobQuery {
            limit: Some(2),
            ..running
        });
        assert_eq!(first, [ids[0], ids[2]], "{name}");
        assert_eq!(
            page(JobQuery {
                after: first[1],
                limit: Some(2),
                ..running
            }),
            [ids[4]],
            "{name}"
        );
        // A job that ends leaves the running ones.
        let mut ended = db.job(ids[2]).unwrap().unwrap();
        ended.state = JobState::Succeeded;
        db.put_job(&ended).unwrap();
        assert_eq!(page(running), [ids[0], ids[4]], "{name}");
    }
}

/// Try `f` until it gives Some, for at most 10 s.
fn within_10s<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_lease_passes_to_another_holder_only_once_it_lapsed_and_fences_the_old_one() {
    for (name, db, _dir) in each_db() {
        let a = db
            .acquire_lease("item:rg/vm", "a", 60_000)
            .unwrap()
            .unwrap();
        assert_eq!((a.holder.as_str(), a.generation), ("a", 1), "{name}");
        assert!(
            db.acquire_lease("item:rg/vm", "b", 60_000)
                .unwrap()
                .is_none(),
            "{name}"
        );
        // Taking it again is a renewal: the same generation.
        let again = db
            .acquire_lease("item:rg/vm", "a", 60_000)
            .unwrap()
            .unwrap();
        assert_eq!(again.generation, 1, "{name}");
        assert!(db.lease_holds(&a, 1_000).unwrap(), "{name}");
        assert!(
            !db.lease_holds(&a, 120_000).unwrap(),
            "{name}: not that long"
        );

        // A short lease lapses; then another holder takes it, one generation on.
        let short = db.acquire_lease("leader", "a", 50).unwrap().unwrap();
        let b = within_10s(|| db.acquire_lease("leader", "b", 60_000).unwrap());
        assert_eq!((b.holder.as_str(), b.generation), ("b", 2), "{name}");
        // The old holder is fenced: it cannot renew, is told it does not hold, and cannot
        // give the new holder's lease away.
        let renewed = db.renew_leases("a", 60_000).unwrap();
        assert_eq!(
            renewed.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["item:rg/vm"],
            "{name}: a renews only the lease it still holds"
        );
        assert!(!db.lease_holds(&short, 0).unwrap(), "{name}");
        db.release_lease(&short).unwrap();
        assert!(db.lease_holds(&b, 1_000).unwrap(), "{name}");
        let renewed = db.renew_leases("b", 60_000).unwrap();
        assert_eq!(renewed.len(), 1, "{name}");
        assert_eq!(renewed[0].generation, 2, "{name}");

        // Given up, it passes at once, one generation on.
        db.release_lease(&b).unwrap();
        assert!(!db.lease_holds(&b, 0).unwrap(), "{name}");
        let c = db
            .acquire_lease("leader", "c.run1", 60_000)
            .unwrap()
            .unwrap();
        assert_eq!(c.generation, 3, "{name}");
        // A restarted server ends its earlier runs' leases, and takes them one generation on.
        assert_eq!(db.end_leases_like("c.%").unwrap(), 1, "{name}");
        assert!(!db.lease_holds(&c, 0).unwrap(), "{name}");
        let c = db
            .acquire_lease("leader", "c.run2", 60_000)
            .unwrap()
            .unwrap();
        assert_eq!(c.generation, 4, "{name}");
        let names: Vec<(String, String, i64)> = db
            .leases()
            .unwrap()
            .into_iter()
            .map(|l| (l.name, l.holder, l.generation))
            .collect();
        assert_eq!(
            names,
            [
                ("item:rg/vm".into(), "a".into(), 1),
                ("leader".into(), "c.run2".into(), 4)
            ],
            "{name}"
        );
    }
}
