//! The [`Rauc`] trait.

use std::path::Path;

use tokio::sync::mpsc;

use crate::{InstallEvent, MarkOutcome, MarkState, RaucError, RaucStatus, SlotRef};

/// The RAUC facility: status, marks and installs.
#[async_trait::async_trait]
pub trait Rauc: Send + Sync + 'static {
    /// Everything RAUC reports now: properties, primary slot, slot status
    /// (while RAUC installs, the table read before, with
    /// [`RaucStatus::slots_note`] saying so), and which slot is on trial.
    async fn status(&self) -> Result<RaucStatus, RaucError>;

    /// Sets `state` on `slot` (`Mark`).
    async fn mark(&self, state: MarkState, slot: &SlotRef) -> Result<MarkOutcome, RaucError>;

    /// Starts installing the bundle file `bundle` (`InstallBundle`) and
    /// returns its events: progress, then one [`InstallEvent::Completed`].
    /// An error here means RAUC did not start (e.g. it is busy).
    async fn install(&self, bundle: &Path) -> Result<mpsc::Receiver<InstallEvent>, RaucError>;
}
