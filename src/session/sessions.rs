//! [`Sessions`]: the live sessions of a server, for shutting them down.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The live sessions of a server, for shutting them down.
///
/// Clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    graceful: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
}

impl Sessions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a session task in the set.
    pub(crate) fn spawn(&self, session: impl Future<Output = ()> + Send + 'static) {
        let hard = self.hard.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = session => {}
                // Dropping the session kills its process group.
                _ = hard.cancelled() => {}
            }
        });
    }

    /// The token a session watches to end itself gracefully.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.graceful.clone()
    }

    /// Whether [`Sessions::shutdown`] was called: no session may start now.
    pub fn is_shutting_down(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Asks every session to end: clients get Close 1001 and process groups
    /// are signalled as if the client had left.
    pub fn shutdown(&self) {
        self.graceful.cancel();
    }

    /// Drops every session at once; their process groups get `SIGKILL`.
    pub fn abort(&self) {
        self.hard.cancel();
    }

    /// Sessions running now.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every session has ended. Sessions started later are
    /// still tracked, but the wait can end once the set is empty.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
