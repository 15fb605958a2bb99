//! Sessions carried into the program that replaces this one (an in-place
//! upgrade, SPEC §10).
//!
//! Every task of a session stops where it can go on ([`FrozenPart`]: an
//! engine, an attachment); [`carry`] writes each session as plain data
//! ([`CarriedSession`]) whose descriptors (the process's pidfd, pipes or
//! terminal, the connections' sockets, the recording) travel in the
//! [`Handoff`] by number; [`restore`] builds the session again from that,
//! in the program that reads the hand-off, or in this one when the upgrade
//! failed. Times travel as readings of the monotonic clock, which both
//! programs share, so deadlines keep their instant.
//!
//! Connections whose TLS this server terminates cannot be carried: their
//! clients get Close 1012 `service restart` and, for a named session,
//! reattach; a plain session left without its client ends as if the
//! client had left.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, SplitStream};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::attachment::FrozenAttachment;
use super::detached::history::History;
use super::detached::record::{Recorder, RecorderParts};
use super::process::{Feed, Process, ProcessInput, ProcessOutput, ProcessParts};
use super::settings::KillSignal;
use super::shared::{About, Control, Ended, Engine, Inlet, Kind, Phase, Reading, Restored, Shared, Snapshot, Standing};
use super::socket::Ending;
use super::{SessionSettings, SessionSettingsBuilder};
use crate::connection::{OwnedSocket, PeerAddr, Transport};
use crate::contain::CgroupRoot;
use crate::metrics::Metrics;
use crate::spec::{Role, TerminalSize};
use crate::upgrade::Handoff;
use crate::websocket::{OutputStream, Protocol, Socket, Taken};

/// What a session's task leaves when it stops for a hand-over.
#[derive(Debug)]
pub(crate) enum FrozenPart {
    /// The session's engine: its process and where it stands.
    Engine { shared: Arc<Shared>, engine: Box<Engine>, settings: Arc<SessionSettings> },
    /// One connection to it.
    Attachment {
        shared: Arc<Shared>,
        settings: Arc<SessionSettings>,
        attachment: Box<FrozenAttachment<SplitSink<Socket, Message>, SplitStream<Socket>>>,
        protocol: Protocol,
        peer: PeerAddr,
    },
}

/// The sessions of a hand-off.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CarriedSessions {
    /// The number the next session gets (log lines stay unambiguous).
    pub next_number: u64,
    /// The sessions.
    pub sessions: Vec<CarriedSession>,
}

/// One session, as plain data; its descriptors are numbers in the
/// [`Handoff`].
#[derive(Debug, Serialize, Deserialize)]
pub struct CarriedSession {
    number: u64,
    id: Option<String>,
    /// How long a named session outlives its last writer; `None` for a
    /// plain session.
    keep: Option<Duration>,
    command: String,
    peer: String,
    started: Mono,
    settings: CarriedSettings,
    /// The process and where it stands; `None` once the session's process
    /// is over and only its clients are still being told so.
    engine: Option<CarriedEngine>,
    history: CarriedHistory,
    /// A terminal session's screen: its size and a repaint.
    screen: Option<(TerminalSize, B64)>,
    last_activity: Mono,
    ended: Option<CarriedEnded>,
    stopping: Option<Ending>,
    departure: Option<Ending>,
    recorder: Option<CarriedRecorder>,
    bytes_in: u64,
    bytes_out: u64,
    attachments: Vec<CarriedAttachment>,
}

/// A session's engine: its process, and where the session stands.
#[derive(Debug, Serialize, Deserialize)]
struct CarriedEngine {
    process: CarriedProcess,
    phase: CarriedPhase,
    keep_until: Option<Mono>,
    time_limit: Option<Mono>,
    /// Input not yet written to the process, in order.
    input: Vec<CarriedControl>,
    input_open: bool,
}

/// The settings a session started with, which it keeps.
#[derive(Debug, Serialize, Deserialize)]
struct CarriedSettings {
    kill_signal: KillSignal,
    kill_grace: Duration,
    max_message_size: usize,
    max_write_buffer: usize,
    ping_interval: Duration,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_session_duration: Option<Duration>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedProcess {
    pid: i32,
    pidfd: RawFd,
    tty: bool,
    cgroup: Option<PathBuf>,
    /// The pipe to its stdin (on a terminal: whether it has input).
    stdin: Option<RawFd>,
    /// The terminal's master side.
    pty: Option<RawFd>,
    outputs: Vec<CarriedOutput>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedOutput {
    stream: OutputStream,
    /// The pipe (`None` on a terminal: it is `pty`).
    fd: Option<RawFd>,
    /// Read, not yet kept.
    held: Option<B64>,
    done: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedHistory {
    cap: usize,
    start: u64,
    chunks: Vec<(OutputStream, B64)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum CarriedPhase {
    Running,
    Stopping { reason: Ending, kill_at: Mono },
    Draining { reason: Option<Ending> },
}

#[derive(Debug, Serialize, Deserialize)]
enum CarriedControl {
    Stdin(B64),
    EndStdin,
    Resize(TerminalSize),
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedEnded {
    status: Option<i32>,
    oom: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedRecorder {
    fd: RawFd,
    path: PathBuf,
    started: Mono,
    input: bool,
    output_carry: B64,
    input_carry: B64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedAttachment {
    socket: RawFd,
    transport: Transport,
    peer: Option<std::net::SocketAddr>,
    protocol: Protocol,
    role: Role,
    offset: u64,
    /// Where its live output started (0 from a program that did not say).
    #[serde(default)]
    live_from: u64,
    /// Whether it hears session info.
    #[serde(default)]
    wants_info: bool,
    /// Input bytes read past the last whole message.
    unread: B64,
    /// Output bytes (whole frames, or the rest of one) not yet written.
    unsent: B64,
    /// Input read but not yet taken by the session.
    in_hand: Option<CarriedControl>,
    /// Saying goodbye until then.
    closing: Option<Mono>,
}

/// A reading of the monotonic clock, in nanoseconds: the same clock in
/// both programs, so an instant carried is the same instant.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Mono(i128);

impl Mono {
    fn now() -> i128 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
    }

    fn of(at: Instant) -> Self {
        let now = Instant::now();
        let offset = if at >= now { (at - now).as_nanos() as i128 } else { -((now - at).as_nanos() as i128) };
        Self(Self::now() + offset)
    }

    fn of_std(at: std::time::Instant) -> Self {
        Self::of(Instant::from_std(at))
    }

    fn instant(self) -> Instant {
        let offset = self.0 - Self::now();
        let now = Instant::now();
        let magnitude = Duration::from_nanos(offset.unsigned_abs().min(u128::from(u64::MAX)) as u64);
        if offset >= 0 { now + magnitude } else { now.checked_sub(magnitude).unwrap_or(now) }
    }
}

/// Bytes, written as base64.
#[derive(Debug, Clone, Default)]
struct B64(Bytes);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map(|b| Self(b.into())).map_err(serde::de::Error::custom)
    }
}

impl From<Control> for CarriedControl {
    fn from(control: Control) -> Self {
        match control {
            Control::Stdin(data) => Self::Stdin(B64(data)),
            Control::EndStdin => Self::EndStdin,
            Control::Resize(size) => Self::Resize(size),
        }
    }
}

impl From<CarriedControl> for Control {
    fn from(control: CarriedControl) -> Self {
        match control {
            CarriedControl::Stdin(data) => Self::Stdin(data.0),
            CarriedControl::EndStdin => Self::EndStdin,
            CarriedControl::Resize(size) => Self::Resize(size),
        }
    }
}

/// Why a hand-off could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CarryError(String);

fn carry_error(what: impl std::fmt::Display) -> CarryError {
    CarryError(what.to_string())
}

/// How long the clients of connections that cannot be carried get for
/// their Close 1012.
const TLS_GOODBYE: Duration = Duration::from_millis(500);

/// Writes the sessions whose tasks left `parts` into `handoff`: data in
/// [`Handoff::sessions`], descriptors held by it. Connections that cannot
/// be carried are closed with 1012 here. `next_number` is the number the
/// next session would get.
pub(crate) async fn carry(parts: Vec<FrozenPart>, handoff: &mut Handoff, next_number: u64) -> CarriedSessions {
    let mut sessions: BTreeMap<usize, Gathered> = BTreeMap::new();
    let mut goodbyes = Vec::new();
    for part in parts {
        match part {
            FrozenPart::Engine { shared, engine, settings } => {
                let gathered = sessions.entry(Arc::as_ptr(&shared) as usize).or_insert_with(|| Gathered::new(&shared));
                gathered.engine = Some(*engine);
                gathered.settings = Some(settings);
            }
            FrozenPart::Attachment { shared, settings, attachment, protocol, peer } => {
                let gathered = sessions.entry(Arc::as_ptr(&shared) as usize).or_insert_with(|| Gathered::new(&shared));
                gathered.settings.get_or_insert(settings);
                let FrozenAttachment { tx, rx, unsent, role, offset, live_from, wants_info, in_hand, closing } =
                    *attachment;
                let Ok(mut socket) = tx.reunite(rx) else { continue };
                if !socket.get_ref().carryable() {
                    goodbyes.push(async move {
                        let close = CloseFrame { code: CloseCode::Restart, reason: "service restart".into() };
                        let _ = tokio::time::timeout(TLS_GOODBYE, socket.close(Some(close))).await;
                    });
                    continue;
                }
                // The connection holds what is written now: whole frames.
                for message in unsent {
                    let _ = socket.feed(message).await;
                }
                let _ = socket.flush().await;
                let Some(Taken { socket: owned, unread, unsent }) = socket.get_mut().take_socket() else { continue };
                let (transport, fd) = owned.into_parts();
                gathered.attachments.push(CarriedAttachment {
                    socket: handoff.keep(fd),
                    transport,
                    peer: peer.0,
                    protocol,
                    role,
                    offset,
                    live_from,
                    wants_info,
                    unread: B64(unread.into()),
                    unsent: B64(unsent.into()),
                    in_hand: in_hand.map(Into::into),
                    closing: closing.map(Mono::of),
                });
            }
        }
    }
    futures_util::future::join_all(goodbyes).await;
    let mut carried = CarriedSessions { next_number, sessions: Vec::new() };
    for (_, gathered) in sessions {
        match gathered.write(handoff) {
            Ok(session) => carried.sessions.push(session),
            Err(err) => tracing::error!(cause = %err, "a session could not be carried and ends"),
        }
    }
    carried
}

/// A session's parts, as they come in.
struct Gathered {
    shared: Arc<Shared>,
    engine: Option<Engine>,
    settings: Option<Arc<SessionSettings>>,
    attachments: Vec<CarriedAttachment>,
}

impl Gathered {
    fn new(shared: &Arc<Shared>) -> Self {
        Self { shared: shared.clone(), engine: None, settings: None, attachments: Vec::new() }
    }

    /// The session as data, its descriptors kept in `handoff`.
    fn write(self, handoff: &mut Handoff) -> Result<CarriedSession, CarryError> {
        let Self { shared, engine, settings, mut attachments } = self;
        let settings = settings.ok_or_else(|| carry_error("nothing of the session was frozen"))?;
        let snapshot = shared.snapshot();
        let Snapshot { kind, cap, start, chunks, standing: snapshot } = snapshot;
        if engine.is_none() && snapshot.ended.is_none() {
            return Err(carry_error("a running session's connection without its engine"));
        }
        let engine = engine.map(|engine| write_engine(engine, &shared, &mut attachments, handoff)).transpose()?;
        let recorder = shared.recorder.as_ref().and_then(|recorder| recorder.hand_over()).map(
            |RecorderParts { file, path, started, input, output_carry, input_carry }| CarriedRecorder {
                fd: handoff.keep(file.into()),
                path,
                started: Mono::of_std(started),
                input,
                output_carry: B64(output_carry.into()),
                input_carry: B64(input_carry.into()),
            },
        );
        let mut departure = snapshot.departure;
        let writer_carried = attachments.iter().any(|a| a.role == Role::Writer && a.closing.is_none());
        if kind == Kind::Plain && !writer_carried && departure.is_none() {
            departure = Some(Ending::ClientGone("the server restarted without its connection".into()));
        }
        Ok(CarriedSession {
            number: shared.about.number,
            id: shared.id.clone(),
            keep: match kind {
                Kind::Plain => None,
                Kind::Named { keep, .. } => Some(keep),
            },
            command: shared.about.command.clone(),
            peer: shared.about.peer.clone(),
            started: Mono::of(shared.about.started),
            settings: CarriedSettings {
                kill_signal: settings.kill_signal,
                kill_grace: settings.kill_grace,
                max_message_size: settings.max_message_size,
                max_write_buffer: settings.max_write_buffer,
                ping_interval: settings.ping_interval,
                pong_timeout: settings.pong_timeout,
                idle_timeout: settings.idle_timeout,
                max_session_duration: settings.max_session_duration,
            },
            engine,
            history: CarriedHistory {
                cap,
                start,
                chunks: chunks.into_iter().map(|(stream, data)| (stream, B64(data))).collect(),
            },
            screen: snapshot.screen.map(|(size, repaint)| (size, B64(repaint.into()))),
            last_activity: Mono::of(snapshot.last_activity),
            ended: snapshot.ended.map(|ended| CarriedEnded {
                status: ended.status.map(std::os::unix::process::ExitStatusExt::into_raw),
                oom: ended.oom,
            }),
            stopping: snapshot.stopping,
            departure,
            recorder,
            bytes_in: snapshot.bytes_in,
            bytes_out: snapshot.bytes_out,
            attachments,
        })
    }
}

/// A session's engine as data, its descriptors kept in `handoff`; the
/// input its connections held joins the rest.
fn write_engine(
    engine: Engine,
    shared: &Shared,
    attachments: &mut [CarriedAttachment],
    handoff: &mut Handoff,
) -> Result<CarriedEngine, CarryError> {
    let Engine { process, outputs, phase, keep_until, time_limit } = engine;
    let Inlet { mut feed, pending } = shared.take_input();
    // Input in order: what was being written, what waited its turn, what
    // the connections held.
    let mut input: Vec<CarriedControl> =
        feed.unwritten().map(|data| CarriedControl::Stdin(B64(data))).into_iter().collect();
    input.extend(pending.into_iter().map(Into::into));
    for attachment in attachments.iter_mut() {
        if let Some(control) = attachment.in_hand.take() {
            input.push(control);
        }
    }
    let input_open = feed.is_open();
    let mut stdin = feed.take_input();
    let tty = process.is_tty();
    let mut pty = None;
    let mut carried_outputs = Vec::with_capacity(outputs.len());
    for Reading { output, held, done } in outputs {
        let stream = output.stream;
        let fd = if tty {
            pty = Some(handoff.keep(output.into_fd(stdin.take()).map_err(carry_error)?));
            None
        } else {
            Some(handoff.keep(output.into_fd(None).map_err(carry_error)?))
        };
        carried_outputs.push(CarriedOutput { stream, fd, held: held.map(B64), done });
    }
    let stdin = stdin.and_then(ProcessInput::into_pipe_fd).map(|fd| handoff.keep(fd));
    let ProcessParts { pid, pidfd, tty, cgroup } =
        process.into_parts().ok_or_else(|| carry_error("the process was reaped already"))?;
    Ok(CarriedEngine {
        process: CarriedProcess { pid, pidfd: handoff.keep(pidfd), tty, cgroup, stdin, pty, outputs: carried_outputs },
        phase: match phase {
            Phase::Running => CarriedPhase::Running,
            Phase::Stopping { reason, kill_at } => CarriedPhase::Stopping { reason, kill_at: Mono::of(kill_at) },
            Phase::Draining { reason } => CarriedPhase::Draining { reason },
        },
        keep_until: keep_until.map(Mono::of),
        time_limit: time_limit.map(Mono::of),
        input,
        input_open,
    })
}

/// A session built again from its data: not yet running.
#[derive(Debug)]
pub(crate) struct RestoredSession {
    pub(crate) shared: Arc<Shared>,
    /// `None` for a session whose process is over.
    pub(crate) engine: Option<Engine>,
    pub(crate) settings: Arc<SessionSettings>,
    pub(crate) attachments: Vec<RestoredAttachment>,
}

/// A connection built again: its socket and what it had in flight.
#[derive(Debug)]
pub(crate) struct RestoredAttachment {
    pub(crate) socket: OwnedSocket,
    pub(crate) peer: PeerAddr,
    pub(crate) protocol: Protocol,
    pub(crate) role: Role,
    pub(crate) offset: u64,
    pub(crate) live_from: u64,
    pub(crate) wants_info: bool,
    pub(crate) unread: Vec<u8>,
    pub(crate) unsent: Vec<u8>,
    pub(crate) closing: Option<Instant>,
}

impl CarriedSession {
    /// The session's number.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Builds the session again, taking its descriptors from `handoff`;
    /// `base` gives the settings a session does not carry (new sessions'
    /// defaults), `cgroups` the root its cgroup is in.
    pub(crate) fn restore(
        self,
        handoff: &mut Handoff,
        base: &SessionSettings,
        cgroups: Option<&CgroupRoot>,
        metrics: Metrics,
    ) -> Result<RestoredSession, CarryError> {
        let mut take = |number: RawFd| -> Result<OwnedFd, CarryError> {
            handoff.take_fd(number).ok_or_else(|| carry_error(format!("descriptor {number} was not carried")))
        };
        let (engine, inlet) = match self.engine {
            Some(engine) => {
                let (engine, inlet) = restore_engine(engine, &mut take, cgroups)?;
                (Some(engine), inlet)
            }
            None => (None, Inlet::new(Feed::new(None), VecDeque::new())),
        };
        let recorder = match self.recorder {
            Some(CarriedRecorder { fd, path, started, input, output_carry, input_carry }) => {
                let file = std::fs::File::from(take(fd)?);
                Some(Arc::new(Recorder::resumed(RecorderParts {
                    file,
                    path,
                    started: started.instant().into_std(),
                    input,
                    output_carry: output_carry.0.to_vec(),
                    input_carry: input_carry.0.to_vec(),
                })))
            }
            None => None,
        };
        let CarriedSettings {
            kill_signal,
            kill_grace,
            max_message_size,
            max_write_buffer,
            ping_interval,
            pong_timeout,
            idle_timeout,
            max_session_duration,
        } = self.settings;
        let settings = SessionSettingsBuilder::from(base.clone())
            .kill_signal(kill_signal)
            .kill_grace(kill_grace)
            .max_message_size(max_message_size)
            .max_write_buffer(max_write_buffer)
            .keepalive(ping_interval, pong_timeout)
            .idle_timeout(idle_timeout)
            .max_session_duration(max_session_duration)
            .build()
            .unwrap_or_else(|_| base.clone());
        let cap = self.history.cap;
        let history = History::restored(
            cap,
            self.history.start,
            self.history.chunks.into_iter().map(|(stream, data)| (stream, data.0)),
        );
        let standing = Standing {
            screen: self.screen.map(|(size, repaint)| (size, repaint.0.to_vec())),
            ended: self.ended.map(|ended| Ended {
                status: ended.status.map(std::os::unix::process::ExitStatusExt::from_raw),
                oom: ended.oom,
            }),
            stopping: self.stopping,
            departure: self.departure,
            last_activity: self.last_activity.instant(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        };
        let restored = Restored { inlet, history, standing };
        let kind = match self.keep {
            Some(keep) => Kind::Named { keep, history: cap },
            None => Kind::Plain,
        };
        let about =
            About { number: self.number, command: self.command, peer: self.peer, started: self.started.instant() };
        let shared = Shared::restore(self.id, about, kind, restored, recorder, metrics);
        let mut attachments = Vec::with_capacity(self.attachments.len());
        for attachment in self.attachments {
            let fd = take(attachment.socket)?;
            attachments.push(RestoredAttachment {
                socket: OwnedSocket::from_parts(attachment.transport, fd),
                peer: PeerAddr(attachment.peer),
                protocol: attachment.protocol,
                role: attachment.role,
                offset: attachment.offset,
                live_from: attachment.live_from,
                wants_info: attachment.wants_info,
                unread: attachment.unread.0.to_vec(),
                unsent: attachment.unsent.0.to_vec(),
                closing: attachment.closing.map(Mono::instant),
            });
        }
        Ok(RestoredSession { shared, engine, settings: Arc::new(settings), attachments })
    }
}

/// An engine built again, its descriptors taken with `take`.
fn restore_engine(
    engine: CarriedEngine,
    take: &mut impl FnMut(RawFd) -> Result<OwnedFd, CarryError>,
    cgroups: Option<&CgroupRoot>,
) -> Result<(Engine, Inlet), CarryError> {
    let CarriedProcess { pid, pidfd, tty, cgroup, stdin, pty, outputs } = engine.process;
    let pidfd = take(pidfd)?;
    let mut stdin_input = match stdin {
        Some(fd) => Some(ProcessInput::from_pipe(take(fd)?).map_err(carry_error)?),
        None => None,
    };
    let mut terminal = match pty {
        Some(fd) => {
            let pty = crate::upgrade::pty_master(take(fd)?).map_err(carry_error)?;
            let (output, input) = ProcessOutput::from_pty(pty);
            stdin_input = Some(input);
            Some(output)
        }
        None => None,
    };
    let mut readings = Vec::with_capacity(outputs.len());
    for CarriedOutput { stream, fd, held, done } in outputs {
        let output = match fd {
            Some(fd) => ProcessOutput::from_pipe(stream, take(fd)?).map_err(carry_error)?,
            None => terminal.take().ok_or_else(|| carry_error("a terminal output without its terminal"))?,
        };
        readings.push(Reading { output, held: held.map(|b| b.0), done });
    }
    let cgroup = match (cgroup, cgroups) {
        (Some(dir), Some(root)) => Some(root.adopt(&dir).map_err(carry_error)?),
        (Some(dir), None) => {
            return Err(carry_error(format!("its cgroup {} is in no root this server uses", dir.display())));
        }
        (None, _) => None,
    };
    let parts = ProcessParts { pid, pidfd, tty, cgroup: None };
    let process = Process::from_parts(parts, cgroup, None, Vec::new()).map_err(carry_error)?;
    let mut input: VecDeque<Control> = engine.input.into_iter().map(Into::into).collect();
    // The first chunk may be the rest of one being written.
    let unwritten = match input.front() {
        Some(Control::Stdin(_)) => match input.pop_front() {
            Some(Control::Stdin(data)) => Some(data),
            _ => None,
        },
        _ => None,
    };
    let inlet = Inlet::new(Feed::resumed(stdin_input, engine.input_open, unwritten), input);
    let engine = Engine {
        process,
        outputs: readings,
        phase: match engine.phase {
            CarriedPhase::Running => Phase::Running,
            CarriedPhase::Stopping { reason, kill_at } => Phase::Stopping { reason, kill_at: kill_at.instant() },
            CarriedPhase::Draining { reason } => Phase::Draining { reason },
        },
        keep_until: engine.keep_until.map(Mono::instant),
        time_limit: engine.time_limit.map(Mono::instant),
    };
    Ok((engine, inlet))
}

impl CarriedSessions {
    /// Registers the processes of the sessions `handoff` carries as this
    /// program's session leaders, so that the orphan reaper leaves them
    /// (and their exit statuses) to their sessions. Call it before orphans
    /// are reaped ([`harden_process`](crate::contain::harden_process)): one
    /// may have exited during the upgrade.
    pub fn claim_leaders(handoff: &Handoff) {
        if let Ok(carried) = Self::from_handoff(handoff) {
            for engine in carried.sessions.iter().filter_map(|session| session.engine.as_ref()) {
                crate::contain::register(engine.process.pid);
            }
        }
    }

    /// Reads the sessions of `handoff` (none in a hand-off without them).
    pub fn from_handoff(handoff: &Handoff) -> Result<Self, CarryError> {
        match &handoff.sessions {
            Some(sessions) => serde_json::from_str(sessions.get()).map_err(carry_error),
            None => Ok(Self::default()),
        }
    }
}
