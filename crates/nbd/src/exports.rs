//! The registry of named exports that connections attach to.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::DynExport;

/// A registry of named exports, shared between the listener and its owner as `Arc<Exports>`.
///
/// Exports may be added and removed while the server runs. Removing (or replacing) an export
/// closes the connections attached to it once their in-flight requests have been answered.
#[derive(Default)]
pub struct Exports {
    entries: Mutex<BTreeMap<String, Entry>>,
}

struct Entry {
    export: DynExport,
    /// Flipped to `true` when the export is removed; each attached connection holds a receiver.
    removed: watch::Sender<bool>,
}

/// What a connection gets when it attaches to an export.
pub(crate) struct Attachment {
    pub(crate) export: DynExport,
    pub(crate) removed: watch::Receiver<bool>,
}

impl Exports {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `export` under `name`, returning the export it replaces (whose connections close).
    pub fn insert(&self, name: impl Into<String>, export: DynExport) -> Option<DynExport> {
        let entry = Entry {
            export,
            removed: watch::Sender::new(false),
        };
        let old = self.lock().insert(name.into(), entry);
        old.map(Entry::close)
    }

    /// Stops serving `name`; connections attached to it close after their in-flight requests.
    pub fn remove(&self, name: &str) -> Option<DynExport> {
        let old = self.lock().remove(name);
        old.map(Entry::close)
    }

    /// The export served under `name`, if any.
    pub fn get(&self, name: &str) -> Option<DynExport> {
        self.lock().get(name).map(|e| e.export.clone())
    }

    /// The names of all exports, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many connections are currently attached to `name` (0 if it is not served).
    pub fn connections(&self, name: &str) -> usize {
        self.lock()
            .get(name)
            .map_or(0, |e| e.removed.receiver_count())
    }

    pub(crate) fn attach(&self, name: &str) -> Option<Attachment> {
        self.lock().get(name).map(|e| Attachment {
            export: e.export.clone(),
            removed: e.removed.subscribe(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Entry {
    fn close(self) -> DynExport {
        self.removed.send_replace(true);
        self.export
    }
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("names", &self.names())
            .finish()
    }
}
