//! The monitor: moves items to `protected` when initial replication is applied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::control::Control;
use crate::db::Kind;
use crate::model::{Replication, state};
use crate::resources::key;

pub(crate) async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = tick(&control) {
            tracing::warn!(error = %e, "monitor replicated items");
        }
    }
}

fn tick(control: &Control) -> crate::error::Result<()> {
    for mut rep in control.db.list::<Replication>(Kind::Replication)? {
        let vm_key = key(&rep.group, &rep.vm);
        if rep.state != state::INITIAL_REPLICATION {
            continue;
        }
        let done = control
            .processor_status(&vm_key)
            .is_some_and(|s| s.initial_sync_seq.is_some());
        if done {
            rep.state = state::PROTECTED.into();
            control.db.put(Kind::Replication, &vm_key, &rep)?;
            tracing::info!(item = %vm_key, "protected");
        }
    }
    Ok(())
}
