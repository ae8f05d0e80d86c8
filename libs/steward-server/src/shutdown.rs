//! Process signals.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, listened for from the moment [`Signals::install`]
/// returns: install before doing slow work, so that a signal arriving during
/// start-up still leads to an orderly stop instead of the default action.
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = self.terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        }
    }
}
