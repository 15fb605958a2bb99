//! [`Sessions`]: the live sessions of a server, for shutting them down or
//! handing them over.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::carry::FrozenPart;

/// The live sessions of a server, for shutting them down, or for handing
/// them to the program that replaces this one (an in-place upgrade).
///
/// Clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    graceful: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    handover: Arc<Mutex<Handover>>,
}

/// The hand-over in progress, if any: its token, and what the sessions'
/// tasks left as they stopped.
#[derive(Debug, Default)]
struct Handover {
    token: CancellationToken,
    frozen: Vec<FrozenPart>,
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

    /// The token a session watches to stop where it can be carried on
    /// ([`Sessions::freeze`]): a child of the set's, so the sessions' loops,
    /// which look at it for every message, do not all wait on one lock.
    pub(crate) fn handover_token(&self) -> CancellationToken {
        self.lock().token.child_token()
    }

    /// What a session task leaves when it stops for a hand-over.
    pub(crate) fn deposit(&self, part: FrozenPart) {
        self.lock().frozen.push(part);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Handover> {
        self.handover.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every session where it can be carried on, and gives what
    /// their tasks left; then the set is open again, for sessions resumed
    /// here or started anew. Fails if a session does not stop within
    /// `limit`: then what stopped is given anyway, and the rest run on.
    pub(crate) async fn freeze(&self, limit: Duration) -> Result<Vec<FrozenPart>, Vec<FrozenPart>> {
        // The set's own token: every session's is a child of it.
        let token = self.lock().token.clone();
        token.cancel();
        self.tracker.close();
        let stopped = tokio::time::timeout(limit, self.tracker.wait()).await.is_ok();
        self.tracker.reopen();
        let frozen = {
            let mut handover = self.lock();
            handover.token = CancellationToken::new();
            std::mem::take(&mut handover.frozen)
        };
        if stopped { Ok(frozen) } else { Err(frozen) }
    }

    /// Hands every session to the program that replaces this one: each
    /// stops where it can go on (within `limit`), and is written into
    /// `handoff`, its descriptors held by it (see
    /// [`CarriedSessions`](super::CarriedSessions)). Clients of connections
    /// that cannot be carried (TLS this server terminates) get Close 1012.
    /// Returns how many sessions were written.
    ///
    /// Whatever happens next, the sessions are in `handoff`: either the
    /// successor takes them ([`upgrade::exec`](crate::upgrade::exec)), or
    /// they run on here ([`ServeSubprocess::resume`](super::ServeSubprocess::resume)).
    /// An `Err` says some did not stop in time: those run on here as they
    /// were, and the hand-over should not go ahead.
    pub async fn hand_over(&self, handoff: &mut crate::upgrade::Handoff, limit: Duration) -> Result<usize, usize> {
        let (frozen, all) = match self.freeze(limit).await {
            Ok(frozen) => (frozen, true),
            Err(frozen) => (frozen, false),
        };
        let carried = super::carry(frozen, handoff, super::next_session_number()).await;
        let count = carried.sessions.len();
        // Plain data always serializes.
        handoff.sessions = serde_json::value::to_raw_value(&carried).ok();
        if all { Ok(count) } else { Err(count) }
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
