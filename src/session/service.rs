//! [`ServeSubprocess`]: the innermost service.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::future::{Ready, ready};
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tower::Service;
use tracing::Instrument;

use super::{Handshake, Process, Protocol, SessionPermit, SessionSettings, Sessions, bridge};
use crate::reply::{self, Body};
use crate::server::PeerAddr;
use crate::spec::CommandSpec;
use http::header::SEC_WEBSOCKET_PROTOCOL;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Starts the command of an authorized request, answers `101`, and bridges
/// the upgraded connection to the process.
///
/// The process starts *before* the answer, so a command that cannot start
/// gets a `500` saying why, and no `101` is ever sent without a process.
#[derive(Debug, Clone)]
pub struct ServeSubprocess {
    settings: Arc<SessionSettings>,
    sessions: Sessions,
}

impl ServeSubprocess {
    /// A service whose sessions run with `settings` and are tracked in
    /// `sessions`.
    pub fn new(settings: SessionSettings, sessions: Sessions) -> Self {
        Self { settings: Arc::new(settings), sessions }
    }

    fn websocket_config(&self) -> WebSocketConfig {
        let max = self.settings.max_message_size;
        WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max))
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
        let Some(spec) = request.extensions_mut().remove::<CommandSpec>() else {
            tracing::error!("request reached ServeSubprocess without a CommandSpec; is TokenAuthLayer in the stack?");
            return reply::plain(StatusCode::INTERNAL_SERVER_ERROR, "server misconfigured");
        };
        let checked = match request.extensions_mut().remove::<Handshake>() {
            Some(handshake) => Ok(handshake),
            None => Handshake::validate_request(request),
        };
        let handshake = match checked {
            Ok(handshake) => handshake,
            Err(rejection) => {
                return reply::with_headers(rejection.status(), &rejection.to_string(), rejection.response_headers());
            }
        };
        if self.sessions.shutdown_token().is_cancelled() {
            return reply::plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        let protocol = Protocol::negotiate(crate::auth::offered_protocols(request.headers()));
        let mut process = match Process::spawn(&spec, &self.settings.env, protocol.output_mode()) {
            Ok(process) => process,
            Err(err) => {
                tracing::warn!(command = %spec.command.display(), cause = %err, status = 500, "process did not start");
                return reply::plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("process did not start: {}", err.kind()),
                );
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut *request);
        let permit = request.extensions_mut().remove::<SessionPermit>();
        let peer = request.extensions().get::<PeerAddr>().copied().unwrap_or_default();
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("session", id, peer = %peer, command = %spec.command.display(), pid = process.id());
        let settings = self.settings.clone();
        let config = self.websocket_config();
        let shutdown = self.sessions.shutdown_token();
        self.sessions.spawn(
            async move {
                let _permit = permit;
                let started = Instant::now();
                let upgraded = match on_upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(err) => {
                        tracing::info!(cause = %err, "client left before the upgrade completed");
                        process.finish().await;
                        return;
                    }
                };
                tracing::info!(args = spec.args.len(), "session started");
                let _active = crate::metrics::global().session_started();
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                let (tx, rx) = socket.split();
                let outcome = bridge(process, protocol, tx, rx, &settings, shutdown).await;
                crate::metrics::global().process_exited(outcome.status);
                tracing::info!(
                    ending = ?outcome.ending,
                    status = %outcome.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
                    duration_ms = started.elapsed().as_millis() as u64,
                    bytes_in = outcome.bytes_in,
                    bytes_out = outcome.bytes_out,
                    "session ended"
                );
            }
            .instrument(span),
        );
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = handshake.response_headers();
        // Only a protocol this server speaks is ever named, never the bearer
        // token protocol a client may also have offered.
        if let Some(name) = protocol.name() {
            response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, http::HeaderValue::from_static(name));
        }
        response
    }
}
