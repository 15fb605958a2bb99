//! Sessions: the process, and the bridge between it and the WebSocket.
//!
//! [`ServeSubprocess`] is the innermost service of the stack. It expects a
//! [`CommandSpec`](crate::CommandSpec) and a
//! [`WebSocketUpgrade`](crate::websocket::WebSocketUpgrade) in the request
//! extensions (put there by [`TokenAuthLayer`](crate::auth::TokenAuthLayer)),
//! starts the process, answers `101 Switching Protocols`, and runs the
//! session in a task that [`Sessions`] tracks, so a server can end every
//! session on shutdown. [`SessionLimitLayer`] stands further out in the
//! stack and holds a place for each session it lets through.
//!
//! - `settings`: [`SessionSettings`], checked when built;
//! - `sessions`: [`Sessions`], the live set;
//! - `limit`: [`SessionLimitLayer`];
//! - `service`: [`ServeSubprocess`];
//! - `process`: starting, signalling and reaping a [`Process`];
//! - `lifecycle`: how a session's processes end: stopped when their
//!   client is gone, their output read to its end, leftovers killed;
//! - `shared`: the one session engine, the process side of every session:
//!   its history, its timers, its end;
//! - `attachment`: the socket side: one connection to a session;
//! - `bridge`: the [`bridge`] between a process and one socket, a plain
//!   session;
//! - `queue`: the small queue between a connection's tasks;
//! - `socket`: one client's socket: its writer, its input, its Close;
//! - `carry`: sessions carried into the program that replaces this one;
//! - `detached`: what named sessions add: their history for replay, their
//!   registry, recordings.

mod attachment;
mod bridge;
mod carry;
mod detached;
mod lifecycle;
mod limit;
mod process;
mod queue;
mod service;
mod sessions;
mod settings;
mod shared;
mod socket;

pub use bridge::bridge;
pub(crate) use carry::carry;
pub use carry::{CarriedSession, CarriedSessions, CarryError};
pub use detached::SharedSessions;
pub use detached::record::Recorder;
pub use limit::{SessionLimit, SessionLimitLayer, SessionPermit};
pub use process::{DEFAULT_TERM, MAX_OUTPUT_CHUNK, Process, ProcessGroup, ProcessInput, ProcessOutput, SpawnOptions};
pub use service::ServeSubprocess;
pub(crate) use service::next_session_number;
pub use sessions::Sessions;
pub use settings::{
    EnvPolicy, InvalidSettings, KillSignal, Recording, SERVER_ENV_PREFIX, SessionContext, SessionSettings,
    SessionSettingsBuilder,
};
pub use shared::Outcome;
pub use socket::Ending;
