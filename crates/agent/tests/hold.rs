//! A replicated VM's writes wait for its stream: at a start, until the stream attaches, and
//! after a host's clean stop, until it starts again. Each write is then recorded in the stream;
//! none reaches the image unrecorded in between.

use std::time::Duration;

use ferry_agent::stream::StreamConfig;
use ferry_agent::{AgentHost, DiskSpec, ReplicationConfig};
use ferry_nbd::client::NbdClient;
use ferry_types::{Generation, StreamId};
use tokio::task::JoinHandle;

const VM: &str = "rg1/vm1";
const SIZE: u64 = 4 << 20;

fn config(dir: &std::path::Path) -> ReplicationConfig {
    let cache = ferry_storage::open(&format!("file://{}", dir.join("cache").display())).unwrap();
    ReplicationConfig {
        stream: StreamId([9; 16]),
        generation: Generation(1),
        cache,
        stream_config: StreamConfig::default(),
        crash_consistent_every: Duration::from_secs(60),
        seed: None,
        resync_from: None,
    }
}

/// Write `len` bytes of `byte` at `offset` through NBD, in the background.
fn write(host: &AgentHost, offset: u64, byte: u8) -> JoinHandle<()> {
    let socket = host.nbd_socket().to_path_buf();
    tokio::spawn(async move {
        let mut c = NbdClient::connect_unix(&socket, &AgentHost::export_name(VM, 0))
            .await
            .unwrap();
        c.write(offset, &[byte; 4096], false).await.unwrap();
    })
}

/// Bytes the stream has recorded for disk 0.
fn recorded(host: &AgentHost) -> u64 {
    host.status(VM)
        .map(|s| s.stream.bytes_changed_per_disk[0])
        .unwrap_or(0)
}

/// True when `task` is still pending after a while (it waits on the hold).
async fn still_waiting(task: &JoinHandle<()>) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    !task.is_finished()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_stream_at_a_start_and_after_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let host = AgentHost::start(&dir.path().join("agent")).await.unwrap();
    let mut spec = DiskSpec::plain(dir.path().join("d0.raw"), SIZE);
    spec.hold = Some(Duration::from_secs(60));
    host.attach_vm(VM, &[spec]).unwrap();
    assert!(host.held(VM));

    // Served, the stream not started: the write waits.
    let first = write(&host, 0, 0x11);
    assert!(still_waiting(&first).await, "a held write must wait");

    // The stream starts: the write goes on, and the stream has it.
    host.start_replication(VM, config(dir.path())).unwrap();
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the held write goes on once the stream attaches")
        .unwrap();
    assert!(!host.held(VM));
    let before_stop = recorded(&host);
    assert!(before_stop >= 4096, "the held write is recorded");

    // A clean stop holds writes again until the stream is back.
    host.stop_all(Duration::from_secs(60)).await;
    assert!(host.held(VM));
    let second = write(&host, 1 << 20, 0x22);
    assert!(
        still_waiting(&second).await,
        "a write after the stop must wait"
    );
    host.start_replication(VM, config(dir.path())).unwrap();
    tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the write goes on once the stream is back")
        .unwrap();
    assert_eq!(
        recorded(&host),
        4096,
        "the write held over the stop is recorded by the new stream"
    );

    // Stopping replication for good (disable) does not hold the VM.
    host.stop_replication(VM).await;
    assert!(!host.held(VM));
    tokio::time::timeout(Duration::from_secs(10), write(&host, 2 << 20, 0x33))
        .await
        .expect("an unprotected VM's write is not held")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_past_the_deadline_makes_the_stream_refuse_to_continue() {
    let dir = tempfile::tempdir().unwrap();
    let host = AgentHost::start(&dir.path().join("agent")).await.unwrap();
    host.attach_vm(VM, &[DiskSpec::plain(dir.path().join("d0.raw"), SIZE)])
        .unwrap();
    // A stream that finished its initial copy, then a clean stop with a short hold.
    host.start_replication(VM, config(dir.path())).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while host
            .status(VM)
            .is_none_or(|s| s.stream.initial_sync_done_seq.is_none())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the initial copy of an empty disk ends");
    host.stop_all(Duration::from_millis(100)).await;

    // The write waits out the deadline, then goes on untracked: the stream refuses to go on.
    tokio::time::timeout(Duration::from_secs(10), write(&host, 0, 0x44))
        .await
        .expect("a write is held no longer than the deadline")
        .unwrap();
    match host.start_replication(VM, config(dir.path())) {
        Err(ferry_agent::AgentError::TrackingLost { reason }) => assert!(
            reason.contains("disk 0") && reason.contains("no stream recorded"),
            "{reason}"
        ),
        other => panic!("expected tracking lost, got {other:?}"),
    }
    assert!(
        !host.held(VM),
        "the VM goes on while the item waits for a repair"
    );
}
