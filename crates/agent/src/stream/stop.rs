//! How a stream stops and starts again: the images' stamps at a clean stop, and the checks at
//! the next start that nothing changed them while no stream recorded their writes.

use std::path::Path;

use super::Stream;
use crate::state::ImageStamp;
use crate::{AgentError, alive};

impl Stream {
    /// Remember how the disk images look as the stream stops (see [`Stream::check_stopped`]).
    pub(crate) fn record_stop(&self, images: &[&Path]) -> Result<(), AgentError> {
        let stamps = images
            .iter()
            .map(|p| ImageStamp::of(p).map_err(AgentError::io("stat disk image", *p)))
            .collect::<Result<Vec<_>, _>>()?;
        self.update_state(|s| s.stopped_with = Some(stamps))
    }

    /// At a start: an error naming the first disk image that changed since the stream stopped
    /// (nothing tracked that change, so the replica cannot catch up from the stream). After a
    /// clean stop the images' stamps are compared; they stay until a repair replaces the
    /// stream. After an unclean one (no stamps) the logs were made again on the images before
    /// they were served ([`crate::redo`]) unless [`alive::check`] refused them, which it says
    /// again here.
    pub fn check_stopped(&self, images: &[&Path]) -> Result<(), AgentError> {
        let Some(stamps) = self.lock().state.stopped_with.clone() else {
            alive::check(&self.dir, images)?;
            return alive::begin(&self.dir);
        };
        for (i, (path, then)) in images.iter().zip(&stamps).enumerate() {
            let now = ImageStamp::of(path).map_err(AgentError::io("stat disk image", *path))?;
            if now != *then {
                return Err(AgentError::TrackingLost {
                    reason: format!(
                        "disk {i} ({}) changed while its replication was stopped",
                        path.display()
                    ),
                });
            }
        }
        self.update_state(|s| s.stopped_with = None)?;
        alive::begin(&self.dir)
    }
}
