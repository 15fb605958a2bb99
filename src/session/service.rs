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

use super::attachment::{Joining, attach};
use super::detached::record::Recorder;
use super::shared::{Kind, Shared, WriterGuard};
use super::{
    DEFAULT_TERM, Outcome, Process, SessionContext, SessionPermit, SessionSettings, Sessions, SharedSessions,
    SpawnOptions, bridge,
};
use crate::connection::PeerAddr;
use crate::contain::Containment;
use crate::metrics::Metrics;
use crate::query::SessionQuery;
use crate::reply::{self, Body};
use crate::spec::CommandSpec;
use crate::spec::Role;
use crate::websocket::{PendingSocket, Protocol, WebSocketUpgrade};

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
    detached: SharedSessions,
}

impl ServeSubprocess {
    /// A service whose sessions run with `settings` and are tracked in
    /// `sessions`.
    pub fn new(settings: SessionSettings, sessions: Sessions) -> Self {
        Self {
            settings: Arc::new(settings),
            sessions,
            metrics: Metrics::default(),
            containment: Containment::new(),
            detached: SharedSessions::new(),
        }
    }

    /// The named sessions this service runs (for a server that wants to
    /// know them; a fresh service has its own set).
    pub fn shared_sessions(&self) -> &SharedSessions {
        &self.detached
    }

    /// Runs its named sessions in `named`, shared with other services (the
    /// one it replaces on a reload): an id started by one can be attached
    /// through the other.
    pub fn named_sessions(mut self, named: SharedSessions) -> Self {
        self.detached = named;
        self
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
        // Parsed by the token layer; a stack that inserts the spec and the
        // upgrade itself gets it parsed here.
        let query = match request.extensions_mut().remove::<SessionQuery>() {
            Some(query) => query,
            None => match SessionQuery::parse(request.uri(), "") {
                Ok(query) => query,
                Err(err) => return reply::plain(StatusCode::BAD_REQUEST, &err.to_string()),
            },
        };
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
        let permit = extensions.remove::<SessionPermit>();
        let peer = extensions.get::<PeerAddr>().copied().unwrap_or_default();
        if let Some(id) = &spec.attach {
            // An attachment is no session of its own: its place is free.
            drop(permit);
            return self.attach(id, &spec, upgrade, query, peer);
        }
        let named = spec.session.as_ref().and_then(|session| session.id.as_deref());
        let reservation = match named.map(|id| self.detached.reserve(id)) {
            Some(None) => {
                tracing::info!(status = 409, "a session of this id runs already");
                return reply::plain(StatusCode::CONFLICT, "session exists");
            }
            Some(Some(reservation)) => Some(reservation),
            None => None,
        };
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
            // Setting a limit opens a file: the descriptors may run out here.
            Err(err) if is_out_of_resources(&err) => {
                tracing::warn!(cause = %err, status = 503, "no descriptors or processes left for a session's cgroup");
                return reply::retry_later("server at capacity");
            }
            Err(err) => {
                tracing::error!(cause = %err, status = 500, "cannot create the session's cgroup");
                return reply::plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot contain the session");
            }
        };
        let options =
            SpawnOptions { env: Some(&self.settings.env), mode: Some(protocol.output_mode()), identity, cgroup };
        let process = match Process::spawn(&spec, options) {
            Ok(process) => process,
            Err(err) if is_out_of_resources(&err) => {
                tracing::warn!(cause = %err, status = 503, "no descriptors or processes left for a session");
                return reply::retry_later("server at capacity");
            }
            Err(err) => {
                tracing::warn!(command = %spec.command.display(), cause = %err, status = 500, "process did not start");
                return reply::plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("process did not start: {}", err.kind()),
                );
            }
        };
        let number = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("session", id = number, peer = %peer, command = %spec.command.display(), pid = process.id());
        let recorder = span.in_scope(|| self.recorder(&spec, number));
        let (response, socket) = upgrade.accept(self.settings.websocket_config());
        let context = self.context();
        match (&spec.session, reservation) {
            (Some(session), reservation) => {
                let keep = session.keep.unwrap_or(self.settings.max_keep).min(self.settings.max_keep);
                let history = session
                    .history
                    .map_or(self.settings.max_history, |h| usize::try_from(h.as_u64()).unwrap_or(usize::MAX))
                    .min(self.settings.max_history);
                let size = spec.size.unwrap_or_default();
                let id = session.id.clone();
                let kind = Kind::Named { keep };
                let (shared, controls) =
                    Shared::new(id, kind, &process, size, history, recorder, context.metrics.clone());
                // The client that started it is its first writer before any
                // output is read, so it loses none.
                let first_writer = shared.writer();
                let mut reservation = reservation;
                if let Some(reservation) = reservation.as_mut() {
                    reservation.run(shared.clone());
                }
                let driver = context.clone();
                let running = shared.clone();
                self.sessions.spawn(
                    async move {
                        let _place = (permit, reservation);
                        let started = Instant::now();
                        tracing::info!(
                            args = spec.args.len(),
                            keep_s = keep.as_secs(),
                            history,
                            "named session started"
                        );
                        let _active = driver.metrics.session_started();
                        let outcome =
                            running.run(process, controls, driver.settings.clone(), driver.shutdown.clone()).await;
                        driver.metrics.process_exited(outcome.status, outcome.oom);
                        log_end(&outcome, started);
                    }
                    .instrument(span.clone()),
                );
                // The client that started it gets everything from the start.
                let joining = Joining { role: Role::Writer, since: Some(0), wants_info: query.session.is_some() };
                let attachment = run_attachment(shared, socket, protocol, joining, Some(first_writer), context);
                self.sessions.spawn(attachment.instrument(span));
            }
            (None, _) => {
                self.sessions.spawn(run_plain(process, socket, protocol, permit, recorder, context).instrument(span));
            }
        }
        response
    }

    /// What a session's tasks share with the service.
    fn context(&self) -> SessionContext {
        SessionContext {
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.sessions.shutdown_token(),
        }
    }

    /// Joins the running session `id`: 404 when there is none.
    fn attach(
        &self,
        id: &str,
        spec: &CommandSpec,
        upgrade: WebSocketUpgrade,
        query: SessionQuery,
        peer: PeerAddr,
    ) -> Response<Body> {
        let Some(shared) = self.detached.get(id) else {
            tracing::info!(status = 404, "attach to no running session");
            return reply::plain(StatusCode::NOT_FOUND, "no such session");
        };
        let protocol = upgrade.protocol();
        let joining = Joining { role: spec.role, since: query.since, wants_info: query.session.is_some() };
        let span = tracing::info_span!("attachment", session = id, peer = %peer, role = ?spec.role);
        let (response, socket) = upgrade.accept(self.settings.websocket_config());
        let context = self.context();
        self.sessions.spawn(run_attachment(shared, socket, protocol, joining, None, context).instrument(span));
        response
    }

    /// A recording of a session of `spec`, when this one is recorded.
    fn recorder(&self, spec: &CommandSpec, number: u64) -> Option<Arc<Recorder>> {
        let recording = self.settings.recording.as_ref()?;
        let asked = spec.session.as_ref().is_some_and(|s| s.record);
        if !(asked || recording.all) {
            return None;
        }
        let name = spec.session.as_ref().and_then(|s| s.id.clone()).unwrap_or_else(|| number.to_string());
        let command = std::iter::once(spec.command.display().to_string())
            .chain(spec.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let term = spec.env.get("TERM").map_or(DEFAULT_TERM, String::as_str);
        let size = spec.size.unwrap_or_default();
        match Recorder::create(&recording.dir, &name, size, &command, term, recording.input) {
            Ok(recorder) => {
                tracing::info!(file = %recorder.path().display(), "recording");
                self.metrics.recording_started();
                Some(Arc::new(recorder))
            }
            Err(err) => {
                tracing::warn!(cause = %err, dir = %recording.dir.display(), "cannot start the recording");
                None
            }
        }
    }
}

/// A plain session: the process bridged to one connection.
async fn run_plain(
    mut process: Process,
    socket: PendingSocket,
    protocol: Protocol,
    permit: Option<SessionPermit>,
    recorder: Option<Arc<Recorder>>,
    context: SessionContext,
) {
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
    tracing::info!("session started");
    let _active = context.metrics.session_started();
    let (tx, rx) = socket.split();
    let outcome = bridge(process, protocol, tx, rx, &context, recorder).await;
    context.metrics.process_exited(outcome.status, outcome.oom);
    log_end(&outcome, started);
}

/// One connection to a named session.
async fn run_attachment(
    shared: Arc<Shared>,
    socket: PendingSocket,
    protocol: Protocol,
    joining: Joining,
    guard: Option<WriterGuard>,
    context: SessionContext,
) {
    let socket = match socket.ready().await {
        Ok(socket) => socket,
        Err(err) => return tracing::info!(cause = %err, "client left before the upgrade completed"),
    };
    let role = joining.role;
    tracing::info!(role = ?role, since = ?joining.since, "attached");
    let (tx, rx) = socket.split();
    let ending = attach(shared, tx, rx, protocol, joining, guard, &context).await;
    tracing::info!(ending = ?ending, "detached");
}

/// The one line a session logs when it ends.
fn log_end(outcome: &Outcome, started: Instant) {
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

/// Whether a start failed for want of descriptors or processes (the
/// server's, the system's or the user's): the server is at capacity, and the
/// client may try again later.
fn is_out_of_resources(err: &std::io::Error) -> bool {
    [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE, rustix::io::Errno::AGAIN]
        .iter()
        .any(|errno| err.raw_os_error() == Some(errno.raw_os_error()))
}
