//! [`serve`]: the accept loop, each connection in its own task, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::Service;
use tower_http::add_extension::AddExtension;
use tracing::Instrument;

use super::Listener;
use crate::connection::Secure;
use crate::session::Sessions;

/// Bound on a client's TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's byte stream, whatever carries it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Serves `app` on `listener` until `shutdown` completes. Every request
/// carries the connection's [`PeerAddr`](crate::connection::PeerAddr) and
/// [`Secure`] in its extensions. After `shutdown`: stop accepting, let HTTP
/// connections finish, end every session in `sessions` (clients get Close
/// 1001, process groups are signalled), and return within
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
