//! Sessions: the handshake, the process, and the bridge between them.
//!
//! [`ServeSubprocess`] is the innermost service of the stack. It expects a
//! [`CommandSpec`](crate::CommandSpec) in the request extensions (put there
//! by [`TokenAuthLayer`](crate::auth::TokenAuthLayer)), starts the process,
//! answers `101 Switching Protocols`, and runs the session in a task that
//! [`Sessions`] tracks, so a server can end every session on shutdown.

mod bridge;
mod handshake;
mod limit;
mod process;
pub mod protocol;
mod service;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bridge::{Ending, MAX_OUTPUT_CHUNK, Outcome, bridge};
pub use handshake::{Handshake, HandshakeRejection};
pub use limit::{SessionLimit, SessionLimitLayer, SessionPermit};
pub use process::{
    DEFAULT_TERM, EnvPolicy, OutputMode, OutputStream, Process, ProcessGroup, ProcessInput, ProcessOutput,
};
pub use protocol::Protocol;
pub use service::ServeSubprocess;

use crate::config::{Config, KillSignal};

/// How sessions run; see the keys of the same names in [`Config`].
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// First signal to the process group when the client leaves (tty
    /// sessions get `SIGHUP`, as from a terminal hanging up).
    pub kill_signal: KillSignal,
    /// Wait after `kill_signal` (and after exit, for leftover output) before
    /// `SIGKILL`.
    pub kill_grace: Duration,
    /// Largest message accepted from a client; larger ones close with 1009.
    pub max_message_size: usize,
    /// Interval between pings.
    pub ping_interval: Duration,
    /// A client silent for this long is gone.
    pub pong_timeout: Duration,
    /// End a session with no input or output for this long.
    pub idle_timeout: Option<Duration>,
    /// End a session this long after it started.
    pub max_session_duration: Option<Duration>,
    /// The environment processes start with.
    pub env: EnvPolicy,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self::from(&Config::default())
    }
}

impl From<&Config> for SessionSettings {
    fn from(config: &Config) -> Self {
        Self {
            kill_signal: config.kill_signal,
            kill_grace: config.kill_grace,
            max_message_size: config.max_message_size.as_u64() as usize,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            idle_timeout: config.idle_timeout,
            max_session_duration: config.max_session_duration,
            env: EnvPolicy { clear: config.clear_env, pass: config.pass_env.clone() },
        }
    }
}

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
