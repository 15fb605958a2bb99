//! [`ServeSubprocess`]: the innermost service.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::future::{Ready, ready};
use http::{Request, Response, StatusCode};
use tower::Service;
use tracing::Instrument;

use futures_util::stream::{SplitSink, SplitStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::attachment::{AttachEnd, Joining, Start, attach};
use super::carry::{CarriedSessions, CarryError, FrozenPart, RestoredSession};
use super::detached::Reservation;
use super::detached::record::Recorder;
use super::shared::{About, Engine, Kind, Run, Shared, WriterGuard};
use super::{
    DEFAULT_TERM, Ending, Outcome, Process, SessionContext, SessionPermit, SessionSettings, Sessions, SharedSessions,
    SpawnOptions,
};
use crate::connection::{Io, OwnedSocket, PeerAddr};
use crate::contain::Containment;
use crate::metrics::Metrics;
use crate::query::SessionQuery;
use crate::reply::{self, Body};
use crate::spec::CommandSpec;
use crate::spec::Role;
use crate::upgrade::Handoff;
use crate::websocket::{Conn, Hold, PendingSocket, Protocol, Socket, WebSocketUpgrade};

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// The number the next session gets (a hand-over carries it on).
pub(crate) fn next_session_number() -> u64 {
    NEXT_SESSION_ID.load(Ordering::Relaxed)
}

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
        let spdy = extensions.get::<crate::kubernetes::KubeExec>().is_some_and(|exec| exec.spdy);
        if spdy && let Some(spec) = extensions.remove::<CommandSpec>() {
            return self.refuse_spdy(&spec);
        }
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
        // `kubectl exec` without `-i`: the process reads no input, as in a pod.
        let no_input = extensions.get::<crate::kubernetes::KubeExec>().is_some_and(|exec| !exec.stdin);
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
        let mut process = match Process::spawn(&spec, options) {
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
        if no_input && !spec.tty {
            // Its pipe closed: the process sees the end of its input.
            process.stdin = None;
        }
        let number = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("session", id = number, peer = %peer, command = %spec.command.display(), pid = process.id());
        let recorder = span.in_scope(|| self.recorder(&spec, number));
        let (response, socket) = upgrade.accept(self.settings.websocket_config());
        let context = self.context();
        let about = About {
            number,
            command: spec.command.display().to_string(),
            peer: peer.to_string(),
            started: tokio::time::Instant::now(),
        };
        let size = spec.size.unwrap_or_default();
        let metrics = context.metrics.clone();
        let (id, kind) = match &spec.session {
            Some(session) => {
                let keep = session.keep.unwrap_or(self.settings.max_keep).min(self.settings.max_keep);
                let history = session
                    .history
                    .map_or(self.settings.max_history, |h| usize::try_from(h.as_u64()).unwrap_or(usize::MAX))
                    .min(self.settings.max_history);
                (session.id.clone(), Kind::Named { keep, history })
            }
            None => (None, Kind::Plain),
        };
        let shared = Shared::new(id, about, kind, &mut process, size, recorder, metrics);
        // The client that started it is its first writer before any output
        // is read, so it loses none.
        let first_writer = shared.writer();
        let mut reservation = reservation;
        if let Some(reservation) = reservation.as_mut() {
            reservation.run(shared.clone());
        }
        span.in_scope(|| match kind {
            Kind::Named { keep, history } => {
                tracing::info!(args = spec.args.len(), keep_s = keep.as_secs(), history, "named session started")
            }
            _ => tracing::info!("session started"),
        });
        let engine = Engine::start(process, &self.settings);
        let place = (permit, reservation);
        let driver = run_engine(shared.clone(), engine, place, true, context.clone(), self.sessions.clone());
        self.sessions.spawn(driver.instrument(span.clone()));
        // The client that started it gets everything from the start (and
        // where it starts, when it named the session, which only a named
        // one may: see `session_matches`).
        let joining = Joining { role: Role::Writer, start: Start::Since(Some(0)), wants_info: query.session.is_some() };
        let connection = Connection { protocol, peer };
        let attachment =
            run_attachment(shared, socket, connection, joining, Some(first_writer), context, self.sessions.clone());
        self.sessions.spawn(attachment.instrument(span));
        response
    }

    /// What a session's tasks share with the service.
    fn context(&self) -> SessionContext {
        SessionContext {
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.sessions.shutdown_token(),
            handover: self.sessions.handover_token(),
        }
    }

    /// kubectl's SPDY exec or attach, allowed by the backend: what the
    /// WebSocket would have been refused for (a session missing or taken),
    /// else 400 naming the kubectl it needs. Nothing starts.
    fn refuse_spdy(&self, spec: &CommandSpec) -> Response<Body> {
        if let Some(id) = &spec.attach
            && self.detached.get(id).is_none()
        {
            return reply::plain(StatusCode::NOT_FOUND, "no such session");
        }
        let named = spec.session.as_ref().and_then(|session| session.id.as_deref());
        if named.is_some_and(|id| self.detached.get(id).is_some()) {
            return reply::plain(StatusCode::CONFLICT, "session exists");
        }
        tracing::info!(status = 400, "kubectl asked over SPDY");
        reply::plain(StatusCode::BAD_REQUEST, crate::kubernetes::SPDY_REFUSED)
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
        let connection = Connection { protocol: upgrade.protocol(), peer };
        let joining =
            Joining { role: spec.role, start: Start::Since(query.since), wants_info: query.session.is_some() };
        let span = tracing::info_span!("attachment", session = id, peer = %peer, role = ?spec.role);
        let (response, socket) = upgrade.accept(self.settings.websocket_config());
        let context = self.context();
        let attachment = run_attachment(shared, socket, connection, joining, None, context, self.sessions.clone());
        self.sessions.spawn(attachment.instrument(span));
        response
    }

    /// Runs the sessions `handoff` carries (written by
    /// [`Sessions::hand_over`] in the program before this one, or in this
    /// one when its hand-over failed) on from where they stopped, taking
    /// their descriptors from it. `connection` makes each carried socket a
    /// connection of the server's (the binary's:
    /// [`Listener::carried`](crate::server::Listener::carried), so it
    /// counts among the listener's); each session takes a place in `limit`
    /// when given (beyond its maximum if need be: it runs already). Returns
    /// how many sessions run on.
    pub async fn resume(
        &self,
        handoff: &mut Handoff,
        connection: &(dyn Fn(OwnedSocket) -> std::io::Result<Box<dyn Io>> + Sync),
        limit: Option<&super::SessionLimitLayer>,
    ) -> Result<usize, CarryError> {
        let carried = CarriedSessions::from_handoff(handoff)?;
        let permit = || limit.map(super::SessionLimitLayer::take_carried);
        Ok(self.resume_carried(carried, handoff, connection, &permit).await)
    }

    async fn resume_carried(
        &self,
        carried: CarriedSessions,
        handoff: &mut Handoff,
        connection: &(dyn Fn(OwnedSocket) -> std::io::Result<Box<dyn Io>> + Sync),
        permit: &(dyn Fn() -> Option<SessionPermit> + Sync),
    ) -> usize {
        NEXT_SESSION_ID.fetch_max(carried.next_number, Ordering::Relaxed);
        let cgroups = self.containment.cgroup_root();
        let mut resumed = 0;
        for session in carried.sessions {
            let number = session.number();
            let restored = match session.restore(handoff, &self.settings, cgroups, self.metrics.clone()) {
                Ok(restored) => restored,
                Err(err) => {
                    tracing::error!(session = number, cause = %err, "a carried session cannot run on");
                    continue;
                }
            };
            let RestoredSession { shared, engine, settings, attachments } = restored;
            let about = &shared.about;
            let pid = engine.as_ref().map_or(0, |engine| engine.process.id());
            let span = tracing::info_span!("session", id = number, peer = %about.peer, command = %about.command, pid);
            let context = SessionContext { settings, ..self.context() };
            // A session whose process is over only tells its clients so.
            let reservation = match shared.id.as_ref().filter(|_| engine.is_some()) {
                Some(id) => match self.detached.reserve(id) {
                    Some(mut reservation) => {
                        reservation.run(shared.clone());
                        Some(reservation)
                    }
                    None => {
                        span.in_scope(|| tracing::error!("a carried session's id runs already; it ends"));
                        continue;
                    }
                },
                None => None,
            };
            // Writers count before the engine runs: its keep clock must not
            // start for a session whose writer comes along.
            let mut connections = Vec::new();
            for attachment in attachments {
                let guard = (attachment.role == Role::Writer && attachment.closing.is_none())
                    .then(|| shared.writer_at(attachment.offset));
                let io = match connection(attachment.socket) {
                    Ok(io) => io,
                    Err(err) => {
                        span.in_scope(|| tracing::warn!(cause = %err, "a carried connection is lost"));
                        continue;
                    }
                };
                let conn = Conn::resumed(io, attachment.unread, attachment.unsent);
                let connection = Connection { protocol: attachment.protocol, peer: attachment.peer };
                if let Some(until) = attachment.closing {
                    self.sessions.spawn(finish_closing(conn, until).instrument(span.clone()));
                    continue;
                }
                let socket = WebSocketStream::from_raw_socket(
                    conn,
                    tungstenite::protocol::Role::Server,
                    Some(context.settings.websocket_config()),
                )
                .await;
                let joining = Joining {
                    role: attachment.role,
                    start: Start::Resume { offset: attachment.offset, live_from: attachment.live_from },
                    wants_info: attachment.wants_info,
                };
                connections.push((socket, connection, joining, guard));
            }
            resumed += 1;
            let place = (engine.as_ref().and_then(|_| permit()), reservation);
            if let Some(engine) = engine {
                let driver = run_engine(shared.clone(), engine, place, false, context.clone(), self.sessions.clone());
                self.sessions.spawn(driver.instrument(span.clone()));
            }
            for (socket, connection, joining, guard) in connections {
                let attachment = attach_socket(
                    shared.clone(),
                    socket,
                    connection,
                    joining,
                    guard,
                    context.clone(),
                    self.sessions.clone(),
                );
                self.sessions.spawn(attachment.instrument(span.clone()));
            }
        }
        resumed
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

/// A connection's facts that its session keeps.
#[derive(Debug, Clone, Copy)]
struct Connection {
    protocol: Protocol,
    peer: PeerAddr,
}

/// A place among the sessions, and a named session's id.
type Place = (Option<SessionPermit>, Option<Reservation>);

/// A session's engine, in a task of its own; its connections come and go
/// in theirs (a plain session's one connection too).
fn run_engine(
    shared: Arc<Shared>,
    engine: Engine,
    place: Place,
    fresh: bool,
    context: SessionContext,
    sessions: Sessions,
) -> impl Future<Output = ()> + Send + 'static {
    let settings = context.settings.clone();
    // Made (and boxed) here, not in the block: what it takes is held once,
    // by it.
    let run =
        Box::pin(shared.clone().run(engine, settings.clone(), context.shutdown.clone(), context.handover.clone()));
    async move {
        let _place = place;
        let _active = if fresh { context.metrics.session_started() } else { context.metrics.session_carried() };
        after_run(run.await, &shared, settings, &context, &sessions);
    }
}

/// The end of an engine's run: the session's last line, or, frozen, its
/// engine left for the hand-over.
fn after_run(
    run: Run,
    shared: &Arc<Shared>,
    settings: Arc<SessionSettings>,
    context: &SessionContext,
    sessions: &Sessions,
) {
    match run {
        Run::Ended(outcome) => {
            context.metrics.process_exited(outcome.status, outcome.oom);
            log_end(&outcome, shared.about.started.into_std());
        }
        Run::Frozen(engine) => {
            sessions.deposit(FrozenPart::Engine { shared: shared.clone(), engine, settings });
        }
    }
}

/// The end of a connection: frozen, it is left for the hand-over.
fn after_attach(
    end: AttachEnd<SplitSink<Socket, Message>, SplitStream<Socket>>,
    shared: &Arc<Shared>,
    connection: Connection,
    context: &SessionContext,
    sessions: &Sessions,
) {
    match end {
        AttachEnd::Ended(ending) => {
            if shared.kind() != Kind::Plain {
                tracing::info!(ending = ?ending, "detached");
            }
        }
        AttachEnd::Frozen(attachment) => sessions.deposit(FrozenPart::Attachment {
            shared: shared.clone(),
            settings: context.settings.clone(),
            attachment: Box::new(attachment),
            protocol: connection.protocol,
            peer: connection.peer,
        }),
    }
}

/// One new connection to a session.
async fn run_attachment(
    shared: Arc<Shared>,
    socket: PendingSocket,
    connection: Connection,
    joining: Joining,
    guard: Option<WriterGuard>,
    context: SessionContext,
    sessions: Sessions,
) {
    let socket = match socket.ready().await {
        Ok(socket) => socket,
        Err(err) => {
            if guard.is_some() {
                // A plain session's process is stopped for it.
                shared.departed(&Ending::ClientGone("client left before the upgrade completed".into()));
            }
            return tracing::info!(cause = %err, "client left before the upgrade completed");
        }
    };
    if shared.kind() != Kind::Plain {
        tracing::info!(role = ?joining.role, start = ?joining.start, "attached");
    }
    // A task of its own, sized for the connection's life rather than for
    // its upgrade too.
    let attached = attach_socket(shared, socket, connection, joining, guard, context, sessions.clone());
    sessions.spawn(attached.instrument(tracing::Span::current()));
}

/// A connection to a session, on its socket.
fn attach_socket(
    shared: Arc<Shared>,
    mut socket: Socket,
    connection: Connection,
    joining: Joining,
    guard: Option<WriterGuard>,
    context: SessionContext,
    sessions: Sessions,
) -> impl Future<Output = ()> + Send + 'static {
    let hold = Hold::new();
    socket.get_mut().hold_with(hold.clone());
    let (tx, rx) = socket.split();
    // Made (and boxed) here, not in the block: what it takes is held once,
    // by it.
    let attached =
        Box::pin(attach(shared.clone(), (tx, rx, hold), connection.protocol, joining, guard, context.clone()));
    async move { after_attach(attached.await, &shared, connection, &context, &sessions) }
}

/// A connection carried while its session was saying goodbye to it: the
/// client gets the rest (the status and the Close), and until `until` to
/// answer; then the connection is closed.
async fn finish_closing(mut conn: Conn, until: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout_at(until, async {
        if conn.flush().await.is_err() {
            return;
        }
        let mut buf = [0; 1024];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The one line a session logs when it ends.
fn log_end(outcome: &Outcome, started: std::time::Instant) {
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
