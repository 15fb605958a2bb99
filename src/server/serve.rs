//! [`serve`]: the accept loop, each connection in its own task, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::Instrument;

use super::activity::Activity;
use super::limits::{Caps, Counted};
use super::{Listener, ServeSettings};
use crate::connection::{ClientCert, Io, PeerAddr, Secure, X_CLIENT_CERT_SHA256, X_CLIENT_CERT_SUBJECT};
use crate::live::Live;
use crate::metrics::Refusal;
use crate::session::Sessions;

/// Serves `app` on `listener` until `shutdown` completes. Every request
/// carries the connection's [`PeerAddr`] and [`Secure`] in its extensions,
/// and its verified [`ClientCert`] when it presented one; the
/// `X-Client-Cert-*` headers a client sends are dropped.
///
/// Each connection must deliver a complete request head within
/// `request_header_timeout` of being accepted (TLS handshake and protocol
/// detection included); a connection idle that long between requests, or
/// whose client takes nothing of a response for that long, is closed too
/// (HTTP/1.1 and HTTP/2 alike). Connections beyond
/// `max_connections`, or beyond `max_connections_per_ip` from one address,
/// are closed at once. HTTP/1.1 only, unless `http2` is set.
///
/// After `shutdown`: stop accepting, let HTTP connections finish, end every
/// session in `sessions` (clients get Close 1001, process groups are
/// signalled), and return within `shutdown_timeout`, killing whatever is
/// left.
pub async fn serve<S, B>(
    listener: Listener,
    app: S,
    settings: ServeSettings,
    sessions: Sessions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_live(listener, app, Live::new(settings), sessions, shutdown).await
}

/// [`serve`] with settings a reload may replace: each connection is
/// accepted and served under the settings current when it arrives (its
/// caps, timeouts and head size; `shutdown_timeout` is read at shutdown).
/// Whether HTTP/2 is served is fixed by the settings at the start.
pub async fn serve_live<S, B>(
    listener: Listener,
    app: S,
    settings: Live<ServeSettings>,
    sessions: Sessions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stop = async {
        shutdown.await;
        Stop::Shutdown
    };
    serve_until(listener, app, settings, sessions, stop).await;
}

/// What ends [`serve_until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Shut down as [`serve`] does.
    Shutdown,
    /// Hand the listener over (an in-place upgrade): stop accepting, let
    /// each connection finish the request it has begun (or, if it has
    /// begun none, its first), then close it; leave sessions running.
    Handover,
}

/// How [`serve_until`] ended.
#[derive(Debug)]
pub enum Served {
    /// Shut down; every session is over.
    ShutDown,
    /// The listener, handed back after a [`Stop::Handover`]: connection
    /// attempts wait in its backlog. Every HTTP connection is closed (or
    /// was still busy after `shutdown_timeout`, and is left to the caller's
    /// `execve`); sessions run on.
    HandedOver(Listener),
}

/// [`serve_live`] until `stop` says how to stop.
pub async fn serve_until<S, B>(
    listener: Listener,
    app: S,
    settings: Live<ServeSettings>,
    sessions: Sessions,
    stop: impl Future<Output = Stop>,
) -> Served
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let shutdown = stop;
    let mut current = settings.get();
    let http2 = current.http2;
    let mut http = Http::new(&current, http2);
    let limits = listener.limits.clone();
    // Connection tasks, and the signal that asks them to finish gracefully
    // (hyper-util's `GracefulShutdown` cannot watch an HTTP/1-only
    // connection with upgrades).
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let handover = Arc::new(AtomicBool::new(false));
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    let why = loop {
        let (io, peer) = tokio::select! {
            biased;
            why = &mut shutdown => break why,
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
        let now = settings.get();
        if !Arc::ptr_eq(&now, &current) {
            http = Http::new(&now, http2);
            current = now;
        }
        let caps = Caps {
            max: current.max_connections,
            max_per_ip: current.max_connections_per_ip,
            trusted: &current.trusted_proxies,
        };
        let place = match limits.admit(peer, caps) {
            Ok(place) => place,
            Err(reason) => {
                // Closed at once: the descriptor is back before the next
                // accept.
                drop(io);
                current.metrics.refused(reason);
                refusals.note(reason, peer, limits.open());
                continue;
            }
        };
        // The connection's clock starts now: its first request head (and
        // the TLS handshake before it) is due `request_header_timeout` on.
        let activity = Activity::new();
        let deadline = Instant::now() + current.request_header_timeout;
        let io = Counted { io, _place: place };
        let app = app.clone();
        let tls = listener.tls.as_ref().map(Live::get);
        let (http, stop, metrics, handover) = (http.clone(), stop.clone(), current.metrics.clone(), handover.clone());
        let idle_timeout = current.request_header_timeout;
        let span = tracing::debug_span!("connection", peer = %peer);
        connections.spawn(
            async move {
                // The TLS handshake runs here, not in the accept loop, so a
                // slow client delays only itself; it counts against the
                // request head's deadline.
                let mut facts = ConnectionFacts { peer, secure: Secure(tls.is_some()), cert: None };
                let io: Box<dyn Io> = match tls {
                    None => Box::new(io),
                    Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            // Only a certificate the verifier accepted is
                            // there at all.
                            facts.cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|der| ClientCert::from_der(der));
                            Box::new(stream)
                        }
                        Ok(Err(err)) => return tracing::debug!(cause = %err, "TLS handshake failed"),
                        Err(_) => {
                            metrics.refused(Refusal::header_timeout);
                            return tracing::debug!("TLS handshake timed out");
                        }
                    },
                };
                let io = TokioIo::new(io);
                let stamped = tower::util::MapRequest::new(app, move |request| facts.stamp(request));
                let service = TowerToHyperService::new(activity.track(stamped));
                let result = match &http {
                    Http::One(builder) => {
                        drive!(
                            builder.serve_connection(io, service).with_upgrades(),
                            activity,
                            idle_timeout,
                            stop,
                            handover,
                            metrics
                        )
                    }
                    Http::Auto(builder) => {
                        drive!(
                            builder.serve_connection_with_upgrades(io, service),
                            activity,
                            idle_timeout,
                            stop,
                            handover,
                            metrics
                        )
                    }
                };
                if let Some(Err(err)) = result {
                    tracing::debug!(cause = %err, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    };
    if why == Stop::Handover {
        tracing::info!(sessions = sessions.active(), "handing the listener over");
        handover.store(true, Ordering::Release);
        stop.cancel();
        connections.close();
        if tokio::time::timeout(settings.get().shutdown_timeout, connections.wait()).await.is_err() {
            tracing::warn!("connections still busy after shutdown_timeout are left behind");
        }
        return Served::HandedOver(listener);
    }
    drop(listener);
    tracing::info!(sessions = sessions.active(), "shutting down");
    sessions.shutdown();
    let everything = async {
        // Connections first: a request still being authorized finishes
        // (with 503: sessions are shutting down) before the last session is
        // waited for, so none can start after that wait.
        stop.cancel();
        connections.close();
        connections.wait().await;
        sessions.wait().await;
    };
    if tokio::time::timeout(settings.get().shutdown_timeout, everything).await.is_err() {
        tracing::warn!(sessions = sessions.active(), "shutdown timeout passed; killing what is left");
        sessions.abort();
        let _ = tokio::time::timeout(Duration::from_millis(200), sessions.wait()).await;
    }
    tracing::info!("stopped");
    Served::ShutDown
}

/// The HTTP side of connections: HTTP/1.1 alone (hyper-util's automatic
/// builder would still serve HTTP/2 to a client that sends its preface), or
/// HTTP/1.1 and HTTP/2 told apart by the first bytes.
#[derive(Clone)]
enum Http {
    One(hyper::server::conn::http1::Builder),
    Auto(hyper_util::server::conn::auto::Builder<TokioExecutor>),
}

impl Http {
    fn new(settings: &ServeSettings, http2: bool) -> Self {
        // hyper's own header timer covers the heads of later requests on a
        // kept-alive connection (from the end of the previous one). The
        // read buffer, and so a request head, is bounded: beyond it, 431.
        if !http2 {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(settings.request_header_timeout)
                .max_header_size(settings.max_header_size)
                .max_buf_size(settings.max_header_size);
            return Self::One(builder);
        }
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.request_header_timeout)
            .max_buf_size(settings.max_header_size);
        let (interval, timeout) = settings.keepalive;
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_size).unwrap_or(u32::MAX))
            .max_concurrent_streams(128)
            .keep_alive_interval(Some(interval))
            .keep_alive_timeout(timeout);
        Self::Auto(builder)
    }
}

/// Drives a hyper connection to its end: closes it if its first request
/// head is not in `$timeout` after its accept (hyper's timers cover neither
/// protocol detection nor HTTP/2); closes it gracefully once it has been
/// idle or stalled (see [`Activity`]) for `$timeout`, and drops it if it is
/// so for `$timeout` again after that; shuts it down gracefully once `$stop` is
/// cancelled (on a `$handover`, only once it is idle after a request: the
/// request in progress, or the first, is served). `None`
/// when it was closed for a deadline. (A macro, since the
/// connection types share these methods but no trait.)
macro_rules! drive {
    ($connection:expr, $activity:expr, $timeout:expr, $stop:expr, $handover:expr, $metrics:expr) => {{
        let connection = $connection;
        tokio::pin!(connection);
        let activity = $activity;
        let (mut closing, mut stopping, mut after_first) = (false, false, false);
        loop {
            let until = activity.deadline($timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    break Some(result.map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into));
                }
                _ = activity.changed() => {
                    if after_first && activity.idle_after_request() {
                        after_first = false;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                _ = sleep_until_some(until) => {
                    if !activity.any_request() {
                        $metrics.refused(Refusal::header_timeout);
                        tracing::debug!("no request head in time; closing");
                        break None;
                    }
                    // Something may have happened meanwhile.
                    if activity.deadline($timeout).is_none_or(|at| at > Instant::now()) {
                        continue;
                    }
                    if closing || stopping {
                        tracing::debug!("still idle or stalled after a graceful close; dropping it");
                        break None;
                    }
                    tracing::debug!("idle or stalled for request_header_timeout; closing");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = $stop.cancelled(), if !stopping => {
                    stopping = true;
                    // On a hand-over, a request in progress is answered as
                    // usual (a shutdown now would make it `Connection:
                    // close`, which spoils a 101), as is the first of a
                    // connection that has sent none yet; the connection
                    // closes once it is idle after one.
                    if $handover.load(Ordering::Acquire) && !activity.idle_after_request() {
                        after_first = true;
                    } else if !closing {
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }};
}
use drive;

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs refused connections: each at debug level, and a warning at most
/// every ten seconds, so a flood of them cannot flood the log.
#[derive(Debug, Default)]
struct RefusalLog {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl RefusalLog {
    fn note(&mut self, reason: Refusal, peer: PeerAddr, open: usize) {
        tracing::debug!(peer = %peer, reason = ?reason, "connection refused");
        self.since_warning += 1;
        if self.last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(reason = ?reason, refused = self.since_warning, open, "connections refused at their cap");
            self.since_warning = 0;
            self.last_warning = Some(Instant::now());
        }
    }
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

/// What the server knows of a connection, for each of its requests.
#[derive(Clone)]
struct ConnectionFacts {
    peer: PeerAddr,
    secure: Secure,
    cert: Option<ClientCert>,
}

impl ConnectionFacts {
    /// `request` with these facts in its extensions, and rid of the
    /// identity headers only the server may state.
    fn stamp<B>(&self, mut request: Request<B>) -> Request<B> {
        let headers = request.headers_mut();
        // Forged identity: a controller must only ever see the server's.
        headers.remove(X_CLIENT_CERT_SUBJECT);
        headers.remove(X_CLIENT_CERT_SHA256);
        let extensions = request.extensions_mut();
        extensions.insert(self.peer);
        extensions.insert(self.secure);
        if let Some(cert) = &self.cert {
            extensions.insert(cert.clone());
        }
        request
    }
}
