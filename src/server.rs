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
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tower::Service;
use tower_http::add_extension::AddExtension;
use tracing::Instrument;

use crate::app::{self, BuildError};
use crate::config::{Config, ListenAddr};
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

/// Whether the client's connection is TLS, in the request extensions of
/// every request the server passes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Secure(pub bool);

/// Bound on a client's TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's byte stream, whatever carries it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A bound socket: TCP or Unix, optionally with TLS.
pub struct Listener {
    socket: Socket,
    user_timeout: Option<Duration>,
    tls: Option<TlsAcceptor>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("socket", &self.socket).field("tls", &self.tls.is_some()).finish()
    }
}

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read `{path}`: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("tls_cert_file: no PEM certificate in `{0}`")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("tls_key_file: no PEM private key in `{0}`")]
    NoKey(PathBuf),
    /// rustls refused the certificate and key.
    #[error("tls_cert_file/tls_key_file: {0}")]
    Rejected(#[from] tokio_rustls::rustls::Error),
}

/// A TLS acceptor for the certificate chain and private key in these PEM
/// files (TLS 1.2 and 1.3, rustls with aws-lc-rs).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto};
    let read = |path: &Path| std::fs::read(path).map_err(|cause| TlsError::Read { path: path.to_path_buf(), cause });
    let cert_pem = read(cert_file)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|_| TlsError::NoKey(key_file.to_path_buf()))?;
    let config = ServerConfig::builder_with_provider(std::sync::Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
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
        Ok(Self { socket, user_timeout: None, tls: None })
    }

    /// Serves TLS (`wss://`) on this socket.
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
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
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Serves the stack built from `config` on `listener` until `shutdown`
/// completes, then shuts down gracefully (see [`serve`]). TCP connections
/// get `pong_timeout` as their `TCP_USER_TIMEOUT`; with `tls_cert_file` and
/// `tls_key_file`, the listener serves TLS.
pub async fn run(listener: Listener, config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let sessions = Sessions::new();
    let app = app::build(config, sessions.clone())?;
    let mut listener = listener.with_tcp_user_timeout(config.pong_timeout);
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        listener = listener.with_tls(tls_acceptor(cert, key)?);
    }
    serve(listener, app, sessions, config.shutdown_timeout, shutdown).await;
    Ok(())
}

/// Serves `app` on `listener` until `shutdown` completes. Then: stop
/// accepting, let HTTP connections finish, end every session in `sessions`
/// (clients get Close 1001, process groups are signalled), and return within
/// `shutdown_timeout`, killing whatever is left.
pub async fn serve<S, B>(
    listener: Listener,
    app: S,
    sessions: Sessions,
    shutdown_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
        let secure = Secure(listener.tls.is_some());
        let service = TowerToHyperService::new(AddExtension::new(AddExtension::new(app.clone(), secure), peer));
        let (tls, builder, watcher) = (listener.tls.clone(), builder.clone(), connections.watcher());
        let span = tracing::debug_span!("connection", peer = %peer);
        tokio::spawn(
            async move {
                // The TLS handshake runs here, not in the accept loop, so a
                // slow client delays only itself.
                let io: Box<dyn Io> = match tls {
                    None => Box::new(io),
                    Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(err)) => return tracing::debug!(cause = %err, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    },
                };
                let connection = watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
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
        // Connections first: a request still being authorized finishes
        // (with 503: sessions are shutting down) before the last session is
        // waited for, so none can start after that wait.
        connections.shutdown().await;
        sessions.wait().await;
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
