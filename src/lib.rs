//! # ws-subprocess
//!
//! An HTTP/WebSocket server that runs a *verified* command as a process and
//! attaches its stdin, stdout and stderr to the WebSocket. The server never
//! decides what to run: a token does.
//!
//! A request travels through a tower stack, outermost first:
//! [`Routes`](routes::Routes) (the endpoint path, `/healthz`, 404),
//! [`OriginLayer`](origin::OriginLayer), [`SessionLimitLayer`](session::SessionLimitLayer)
//! (503 beyond `max_sessions`), and [`TokenAuthLayer`](auth::TokenAuthLayer),
//! which finds the token, validates the WebSocket handshake into a
//! [`WebSocketUpgrade`](websocket::WebSocketUpgrade) and asks an
//! [`Authorizer`](auth::Authorizer) backend (the remote
//! [`ControllerAuthorizer`](auth::ControllerAuthorizer) by default, or the
//! local JWT verifier) for a [`CommandSpec`]. The innermost service,
//! [`ServeSubprocess`](session::ServeSubprocess), starts the process in its
//! own process group (on pipes, or on a pseudo-terminal), answers `101`, and
//! bridges the upgraded connection to the process, in the raw protocol or
//! the Kubernetes exec channel protocol, until either side ends.
//! [`server::serve`] serves any such stack with hyper and shuts it down
//! gracefully; [`App`] builds the binary's stack from a [`Config`] and
//! serves it. Every piece is public, so a library user can compose their
//! own stack with tower's `ServiceBuilder` and tower-http layers, with their
//! own backend, or inside an axum `Router` (`tests/library.rs` does both).
//!
//! ## Layout, in the order of a request's story
//!
//! - [`app`]: the composition root, [`App`], built from a [`Config`];
//! - [`cli`], [`config`]: flags, and settings from every source;
//! - [`server`]: listening, connections, shutdown;
//! - [`routes`], [`kubernetes`], [`forwarded`], [`origin`]: the outer layers;
//! - [`auth`]: the token layer and its backends;
//! - [`session`]: the session limit, the process, the bridge;
//! - [`contain`]: cgroups, identities, the child's setup, reaping;
//! - [`websocket`]: the handshake and the protocols spoken over the socket;
//! - [`connection`], [`spec`], [`query`], [`metrics`], [`reply`], [`report`]: what the
//!   others share.
//!
//! ## Features
//!
//! - `jwt` (default): the JWT backend, [`auth::jwt`], with its in-memory and
//!   Redis replay stores and token minting. Without it, `auth = "jwt"` is a
//!   startup error and the `jsonwebtoken` and `redis` crates are not built.
//! - `client` (default): [`client`], the `ws-subprocess connect` terminal
//!   client, and the system trust store it verifies servers with.

// Unsafe code is allowed in two modules only: `contain::exec` (starting a
// child) and `upgrade::inherit` (taking over descriptors across `execve`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod connection;
pub mod contain;
pub mod forwarded;
pub mod kubernetes;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod query;
pub mod reply;
pub mod report;
pub mod routes;
pub mod server;
pub mod session;
pub mod spec;
pub mod upgrade;
pub mod websocket;

pub use app::App;
pub use config::Config;
pub use metrics::Metrics;
pub use spec::CommandSpec;
