//! The running parts of a replicated item: its stream on the source agent and its processor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_agent::command::{Command, WireError, format_seed, millis};
use ferry_replica::{Processor, ProcessorStatus, Waker};
use ferry_storage::{DynStore, Key};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::Control;
use crate::db::Kind;
use crate::error::Result;
use crate::hosts::Host;
use crate::model::{ItemState, Replication, Severity};

/// The states an item moves to `resync-required` from when its stream turns out
/// untrustworthy (a repair's own stream is left to the repair).
pub(crate) const UNTRUSTED_FROM: [ItemState; 4] = [
    ItemState::Enabling,
    ItemState::InitialReplication,
    ItemState::Protected,
    ItemState::Reprotecting,
];

pub(crate) struct ItemRuntime {
    pub processor: Arc<Mutex<ProcessorStatus>>,
    /// Told what the source reports shipped, so an idle processor looks at once.
    waker: Waker,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How long a processor has to stop by itself (it may be waiting on a slow account) before it
/// is aborted, as a crash would stop it: it resumes from its newest durable record.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl ItemRuntime {
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

impl Control {
    /// The cache account of an item, confined to the item's own prefix.
    pub(crate) fn item_cache(&self, rep: &Replication) -> Result<DynStore> {
        let (group, account) = rep
            .target
            .cache_storage
            .split_once('/')
            .unwrap_or((&rep.group, &rep.target.cache_storage));
        let acct = self.storage(group, account)?;
        let store = self.stores.get(&acct.url)?;
        let prefix = Key::from_segments(["streams", &rep.stream.to_string()])
            .expect("stream ids are valid key segments");
        Ok(ferry_storage::scoped(store, prefix))
    }

    /// Start the item's stream and processor unless they run (idempotent; used after restarts).
    /// Decided on the item as it is now, under its runtime lock: a disable or a failover that
    /// stopped it since `rep` was read is not undone.
    pub(crate) async fn ensure_running(self: &Arc<Self>, rep: &Replication) -> Result<()> {
        let item = rep.item_key();
        let _runtime = self.lock_runtime(&item).await;
        let Some(rep) = self.db.get::<Replication>(Kind::Replication, &item)? else {
            return Ok(());
        };
        let rep = &rep;
        if !rep.state.is_replicating() {
            return Ok(());
        }
        if rep.state == ItemState::Reprotecting && rep.failover.is_some() {
            // A reprotect admitted but not yet turned: the item still names the old direction,
            // whose source is being stopped. The job starts the new direction after its turn.
            return Ok(());
        }
        // A server that cannot reach the item's source (another server's own agent) leaves
        // the item to the one that can.
        self.source_host(rep)?;
        if !self.take_item_lease(&item)? {
            // Another server on the database works on the item.
            return Ok(());
        }
        let policy = self.policy(&rep.policy)?;
        let cache = self.item_cache(rep)?;
        let layout = self.layout(rep)?;
        let compare = matches!(
            rep.state,
            ItemState::Reprotecting | ItemState::Resynchronizing
        );
        let seed = if compare {
            let hashes = ferry_replica::block_hashes(&layout).await?;
            if hashes.is_empty() {
                // Not seeded yet: the reprotect job starts the item once the seed is stored,
                // and its copy compares every block, so the VM's writes need not wait.
                self.source_host(rep)?.release_vm(&rep.source_key()).await?;
                return Ok(());
            }
            Some(std::sync::Arc::new(hashes))
        } else {
            None
        };
        let agent = self.source_host(rep)?;
        let minted = std::time::Instant::now();
        let cache_wire = self.item_cache_wire(rep, matches!(agent, Host::Joined(_)))?;
        let signed = cache_wire.sas.is_some();
        // Opening the stream reads and syncs its files.
        let started = agent
            .call(Command::StartStream {
                vm: rep.source_key(),
                stream: rep.stream,
                generation: rep.generation,
                cache: cache_wire,
                config: (&self.cfg.stream).into(),
                crash_consistent_every_ms: millis(Duration::from_secs_f64(
                    policy.crash_consistent_every_seconds,
                )),
                seed: seed.map(|s| format_seed(&s)),
                resync_from: rep
                    .resync_from
                    .filter(|_| rep.state == ItemState::Resynchronizing),
            })
            .await;
        match started {
            Err(WireError::TrackingLost { reason }) => {
                self.event(
                    Severity::Critical,
                    "resync-required",
                    &item,
                    format!(
                        "{reason}; replication is stopped until `ferry replication repair {item}`"
                    ),
                );
                self.move_item_if(&item, &UNTRUSTED_FROM, ItemState::ResyncRequired, |r| {
                    r.resync_reason = Some(reason);
                })?;
                return Ok(());
            }
            other => {
                other?;
            }
        }
        self.sas_sent(&item, signed.then_some(minted));
        let vm = self.source_vm(rep)?;
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if !items.contains_key(&item) {
            let sizes = vm.disks.iter().map(|d| d.size_bytes).collect();
            let processor = Processor::new(layout, cache, sizes, self.cfg.processor.clone())
                .with_fence(self.item_fence(&item));
            let status = processor.status();
            let waker = processor.waker();
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(processor.run(rx));
            let runtime = ItemRuntime {
                processor: status,
                waker,
                shutdown: tx,
                task,
            };
            items.insert(item.clone(), runtime);
        }
        drop(items);
        self.move_item_if(
            &item,
            &[ItemState::Enabling],
            ItemState::InitialReplication,
            |_| {},
        )?;
        Ok(())
    }

    /// Stop an item's processor and stream (its data stays).
    pub(crate) async fn stop_item(&self, rep: &Replication) {
        let _runtime = self.lock_runtime(&rep.item_key()).await;
        let item = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rep.item_key());
        if let Some(item) = item {
            item.stop().await;
        }
        let stopped = match self.source_host(rep) {
            Ok(agent) => agent.stop_replication(&rep.source_key()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stopped {
            // An unreachable host keeps its stream; the item's processor is stopped, and a
            // stream of an older generation is refused once the host is back.
            tracing::warn!(item = %rep.item_key(), error = %e, "stop the source stream");
        }
        self.release_item_lease(&rep.item_key());
    }

    /// Stop the processor of an item whose lease this server lost: another server may work
    /// on it now. Its stream is left to that server.
    pub(crate) async fn drop_lost_item(&self, item: &str) {
        let _runtime = self.lock_runtime(item).await;
        let runtime = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(item);
        if let Some(runtime) = runtime {
            runtime.stop().await;
            self.event(
                Severity::Warning,
                "item-lease-lost",
                item,
                format!(
                    "this server ({}) lost the lease of the item's work, which another server \
                     may hold now; its processor here stopped",
                    self.leases.server
                ),
            );
        }
    }

    /// The VM whose writes the item replicates now.
    pub(crate) fn source_vm(&self, rep: &Replication) -> Result<crate::model::Vm> {
        let k = rep.source_key();
        let (g, v) = k.split_once('/').unwrap_or((&k, ""));
        self.vm(g, v)
    }

    /// Tell every running processor what its source last reported shipped (an embedded
    /// agent's live status, a joined host's last report).
    pub(crate) fn wake_processors(&self, reps: &[Replication]) {
        for rep in reps.iter().filter(|r| r.state.is_replicating()) {
            let Some(shipped) = self
                .source_status(rep)
                .and_then(|s| s.stream.shipped_through)
            else {
                continue;
            };
            let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = items.get(&rep.item_key()) {
                i.waker.shipped_through(shipped);
            }
        }
    }

    /// Have the item's processor look for its next segment now.
    pub(crate) fn wake_processor(&self, vm_key: &str) {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = items.get(vm_key) {
            i.waker.look_now();
        }
    }

    pub(crate) fn processor_status(&self, vm_key: &str) -> Option<ProcessorStatus> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items.get(vm_key).map(|i| {
            i.processor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}
