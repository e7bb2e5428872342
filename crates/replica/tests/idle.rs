//! What an idle item costs the cache account: a processor with nothing to apply, counted on a
//! real (in-memory) store through the fault-injecting wrapper, in the runtime's virtual time.

use std::sync::Arc;
use std::time::Duration;

use ferry_replica::{Processor, ProcessorConfig, ReplicaLayout};
use ferry_storage::DynStore;
use ferry_storage::fault::{FaultyStore, Op};
use ferry_types::StreamId;
use tokio::time::Instant;

fn mem() -> DynStore {
    ferry_storage::open("memory://").unwrap()
}

fn requests(cache: &FaultyStore) -> u64 {
    cache.calls(Op::Get) + cache.calls(Op::List)
}

#[tokio::test(start_paused = true)]
async fn an_idle_processor_looks_rarely_and_at_once_when_its_source_ships() {
    let cache = Arc::new(FaultyStore::new(mem()));
    let layout = ReplicaLayout::new(StreamId([9; 16]), mem(), vec![mem()]);
    let config = ProcessorConfig::default();
    let p = Processor::new(layout, cache.clone(), vec![1 << 20], config.clone());
    let waker = p.waker();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(p.run(rx));

    // Two minutes of nothing: the pause grows to its cap.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let before = requests(&cache);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle = requests(&cache) - before;
    let most = 60 / config.idle_poll_max.as_secs() + 60 / (config.gap_grace.as_secs() / 2) + 2;
    assert!(
        idle <= most,
        "an idle processor made {idle} requests in a minute (at most {most} expected)"
    );
    assert!(
        idle >= 6,
        "an idle processor stopped looking ({idle} requests in a minute)"
    );

    // The source reports a shipped segment: the processor looks now, not at its next pause.
    let gets = cache.calls(Op::Get);
    let t = Instant::now();
    waker.shipped_through(1);
    for _ in 0..10_000 {
        if cache.calls(Op::Get) > gets {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        cache.calls(Op::Get) > gets,
        "the processor did not look after the wake"
    );
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "the look waited for time to pass"
    );

    // Told a segment is there, it looks every poll interval again.
    let gets = cache.calls(Op::Get);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let looks = cache.calls(Op::Get) - gets;
    assert!(looks >= 9, "{looks} looks in the second after a wake");
    tx.send(true).unwrap();
    task.await.unwrap();
}
