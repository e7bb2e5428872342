//! The CLI's output cut short (`ferry … | head -c1`): the command ends quietly, with status 0
//! and nothing on stderr, in every output format; no panic.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use support::*;

#[test]
fn output_cut_short_by_the_reader_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.ok(&["group", "create", "rg1", "--region", "east"]);
    let commands: [&[&str]; 6] = [
        &["region", "list"],
        &["region", "list", "-o", "json"],
        &["region", "list", "-o", "yaml"],
        &["group", "show", "rg1"],
        &["group", "list", "-o", "json"],
        &["job", "list"],
    ];
    for args in commands {
        // What the command prints when it is read whole.
        let whole = s.ok(args);
        assert!(!whole.is_empty(), "{args:?} prints something");

        // The reader closes the pipe before the command writes anything.
        let mut child = Command::new(FERRY)
            .args(args)
            .env("FERRY_URL", &s.url)
            .env("FERRY_TOKEN", &s.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            stderr.is_empty(),
            "{args:?}: nothing on stderr, got {stderr:?}"
        );
        assert_eq!(status.code(), Some(0), "{args:?}: {status}");

        // `| head -c1`: the reader takes one byte and goes.
        let mut child = Command::new(FERRY)
            .args(args)
            .env("FERRY_URL", &s.url)
            .env("FERRY_TOKEN", &s.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut one = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut one).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(one[0], whole.as_bytes()[0], "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
}
