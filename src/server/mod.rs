//! Serving: listening sockets, the accept loop, HTTP connections, and
//! graceful shutdown, for any service. Nothing here knows the configuration
//! or the stack; [`App`](crate::App) puts them together.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use ws_subprocess::server::{self, Listener, ServeSettings};
//! use ws_subprocess::session::Sessions;
//!
//! let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap()).await?;
//! let hello = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//! });
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! server::serve(listener, hello, ServeSettings::default(), Sessions::new(), shutdown).await;
//! # Ok(()) }
//! ```
//!
//! - `listener`: [`Listener`], a bound TCP or Unix socket, optionally TLS;
//! - `settings`: [`ServeSettings`], timeouts and caps;
//! - `limits`: connection caps, in all and per address;
//! - `activity`: what a connection's requests are doing, for its deadlines;
//! - `tls`: [`tls_acceptor`] from PEM files;
//! - `serve`: [`serve`], the accept loop and shutdown.

mod activity;
mod limits;
mod listener;
mod serve;
mod settings;
mod tls;

pub use listener::{ListenAddr, Listener};
pub use serve::{Served, Stop, raise_open_file_limit, serve, serve_live, serve_until};
pub use settings::{ServeSettings, ServeSettingsBuilder};
pub use tls::{ClientCa, TlsError, tls_acceptor};
