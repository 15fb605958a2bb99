//! Serving: the accept loop, HTTP connections, and graceful shutdown.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ws_subprocess::{Config, server};
//!
//! let config = Config::default();
//! let listener = server::Listener::bind(&config.listen).await?;
//! server::run(listener, &config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;
use tower::Service;
use tower_http::add_extension::AddExtension;
use tracing::Instrument;

use crate::app::{self, BuildError};
use crate::config::{Config, ListenAddr};
use crate::reply::Body;
use crate::session::Sessions;

/// The client's address, in the request extensions of every request the
/// server passes on (`None` on a Unix socket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerAddr(pub Option<SocketAddr>);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("local"),
        }
    }
}

/// A bound socket: TCP or Unix.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    user_timeout: Option<Duration>,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    /// A Unix socket listener and the path it owns.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A Unix socket left behind by an earlier run is replaced;
    /// any other file at that path is an error.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Self> {
        let socket = match addr {
            ListenAddr::Tcp(addr) => Socket::Tcp(TcpListener::bind(addr.as_str()).await?),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                Socket::Unix(UnixListener::bind(path)?, path.clone())
            }
        };
        Ok(Self { socket, user_timeout: None })
    }

    /// Aborts a TCP connection whose sent data stays unacknowledged this
    /// long (`TCP_USER_TIMEOUT`), so a peer that vanished without a trace
    /// is noticed even while the server only sends.
    pub fn with_tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.user_timeout = Some(timeout);
        self
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match &self.socket {
            Socket::Tcp(listener) => Ok(ListenAddr::Tcp(listener.local_addr()?.to_string())),
            Socket::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }

    async fn accept(&self) -> io::Result<(Either<TcpStream, UnixStream>, PeerAddr)> {
        match &self.socket {
            Socket::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                if let Some(timeout) = self.user_timeout {
                    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
                    let _ = rustix::net::sockopt::set_tcp_user_timeout(&stream, ms);
                }
                Ok((Either::Left(stream), PeerAddr(Some(peer))))
            }
            Socket::Unix(listener, _) => Ok((Either::Right(listener.accept().await?.0), PeerAddr(None))),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The service stack could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Serves the stack built from `config` on `listener` until `shutdown`
/// completes, then shuts down gracefully (see [`serve`]). TCP connections
/// get `pong_timeout` as their `TCP_USER_TIMEOUT`.
pub async fn run(listener: Listener, config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let sessions = Sessions::new();
    let app = app::build(config, sessions.clone())?;
    let listener = listener.with_tcp_user_timeout(config.pong_timeout);
    serve(listener, app, sessions, config.shutdown_timeout, shutdown).await;
    Ok(())
}

/// Serves `app` on `listener` until `shutdown` completes. Then: stop
/// accepting, let HTTP connections finish, end every session in `sessions`
/// (clients get Close 1001, process groups are signalled), and return within
/// `shutdown_timeout`, killing whatever is left.
pub async fn serve<S>(
    listener: Listener,
    app: S,
    sessions: Sessions,
    shutdown_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    // With a timer, hyper bounds how long a client may take to send its
    // request headers.
    builder.http1().timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(err) => {
                    backoff.wait(err).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(AddExtension::new(app.clone(), peer));
        let connection =
            connections.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned());
        let span = tracing::debug_span!("connection", peer = %peer);
        tokio::spawn(
            async move {
                if let Err(err) = connection.await {
                    tracing::debug!(cause = %err, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!(sessions = sessions.active(), "shutting down");
    sessions.shutdown();
    let everything = async {
        tokio::join!(connections.shutdown(), sessions.wait());
    };
    if tokio::time::timeout(shutdown_timeout, everything).await.is_err() {
        tracing::warn!(sessions = sessions.active(), "shutdown timeout passed; killing what is left");
        sessions.abort();
        let _ = tokio::time::timeout(Duration::from_millis(200), sessions.wait()).await;
    }
    tracing::info!("stopped");
}

/// Backs off after accept errors such as `EMFILE`, so a full file table
/// does not turn the accept loop into a busy loop.
#[derive(Debug)]
struct AcceptBackoff(Duration);

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self(Duration::from_millis(5))
    }
}

impl AcceptBackoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    async fn wait(&mut self, err: io::Error) {
        // A connection that died in the backlog is no reason to slow down.
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
        ) {
            return;
        }
        tracing::error!(cause = %err, retry_ms = self.0.as_millis() as u64, "accept failed");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }
}

/// Raises this process's open-file soft limit to its hard limit, since every
/// session holds several descriptors. Returns the new limit.
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(limit.current)
}
