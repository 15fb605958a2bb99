//! [`ServeSubprocess`]: the innermost service.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::future::{Ready, ready};
use http::{Request, Response, StatusCode};
use tower::Service;
use tracing::Instrument;

use super::{Process, SessionPermit, SessionSettings, Sessions, SpawnOptions, bridge};
use crate::connection::PeerAddr;
use crate::contain::Containment;
use crate::metrics::Metrics;
use crate::reply::{self, Body};
use crate::spec::CommandSpec;
use crate::websocket::WebSocketUpgrade;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Starts the command of an authorized request, answers `101`, and bridges
/// the upgraded connection to the process.
///
/// The request must carry a [`CommandSpec`] and a [`WebSocketUpgrade`] in
/// its extensions, as [`TokenAuthLayer`](crate::auth::TokenAuthLayer) leaves
/// them. The process starts *before* the answer, so a command that cannot
/// start gets a `500` saying why, and no `101` is ever sent without a
/// process.
#[derive(Debug, Clone)]
pub struct ServeSubprocess {
    settings: Arc<SessionSettings>,
    sessions: Sessions,
    metrics: Metrics,
    containment: Containment,
}

impl ServeSubprocess {
    /// A service whose sessions run with `settings` and are tracked in
    /// `sessions`.
    pub fn new(settings: SessionSettings, sessions: Sessions) -> Self {
        Self { settings: Arc::new(settings), sessions, metrics: Metrics::default(), containment: Containment::new() }
    }

    /// Contains sessions so: cgroups, limits, users.
    pub fn containment(mut self, containment: Containment) -> Self {
        self.containment = containment;
        self
    }

    /// Counts sessions, bytes and exits in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl<B> Service<Request<B>> for ServeSubprocess {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        ready(Ok(self.start(&mut request)))
    }
}

impl ServeSubprocess {
    fn start<B>(&self, request: &mut Request<B>) -> Response<Body> {
        let extensions = request.extensions_mut();
        let (Some(spec), Some(upgrade)) = (extensions.remove::<CommandSpec>(), extensions.remove::<WebSocketUpgrade>())
        else {
            tracing::error!(
                "request reached ServeSubprocess without a CommandSpec and a WebSocketUpgrade; \
                 is TokenAuthLayer in the stack?"
            );
            return reply::plain(StatusCode::INTERNAL_SERVER_ERROR, "server misconfigured");
        };
        if self.sessions.is_shutting_down() {
            return reply::plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        let protocol = upgrade.protocol();
        let identity = match self.containment.identity_for(&spec) {
            Ok(identity) => identity,
            Err(user) => {
                tracing::warn!(user, status = 403, "the spec names a user this server does not know");
                return reply::plain(StatusCode::FORBIDDEN, "user not allowed");
            }
        };
        let cgroup = match self.containment.cgroup_for(&spec) {
            Ok(cgroup) => cgroup,
            Err(err) => {
                tracing::error!(cause = %err, status = 500, "cannot create the session's cgroup");
                return reply::plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot contain the session");
            }
        };
        let options =
            SpawnOptions { env: Some(&self.settings.env), mode: Some(protocol.output_mode()), identity, cgroup };
        let mut process = match Process::spawn(&spec, options) {
            Ok(process) => process,
            Err(err) => {
                tracing::warn!(command = %spec.command.display(), cause = %err, status = 500, "process did not start");
                return reply::plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("process did not start: {}", err.kind()),
                );
            }
        };
        let permit = extensions.remove::<SessionPermit>();
        let peer = extensions.get::<PeerAddr>().copied().unwrap_or_default();
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("session", id, peer = %peer, command = %spec.command.display(), pid = process.id());
        let (response, socket) = upgrade.accept(self.settings.websocket_config());
        let settings = self.settings.clone();
        let metrics = self.metrics.clone();
        let shutdown = self.sessions.shutdown_token();
        self.sessions.spawn(
            async move {
                let _permit = permit;
                let started = Instant::now();
                let socket = match socket.ready().await {
                    Ok(socket) => socket,
                    Err(err) => {
                        tracing::info!(cause = %err, "client left before the upgrade completed");
                        process.finish().await;
                        return;
                    }
                };
                tracing::info!(args = spec.args.len(), "session started");
                let _active = metrics.session_started();
                let (tx, rx) = socket.split();
                let outcome = bridge(process, protocol, tx, rx, &settings, &metrics, shutdown).await;
                metrics.process_exited(outcome.status, outcome.oom);
                tracing::info!(
                    ending = ?outcome.ending,
                    oom = outcome.oom,
                    status = %outcome.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
                    duration_ms = started.elapsed().as_millis() as u64,
                    bytes_in = outcome.bytes_in,
                    bytes_out = outcome.bytes_out,
                    "session ended"
                );
            }
            .instrument(span),
        );
        response
    }
}
