//! [`Shared`]: the one session engine. A session stands on its own: its
//! process, its output history (and, for a named session on a terminal, its
//! screen), its timers and its lifecycle; connections
//! ([attachments](super::attachment)) come and go.
//!
//! A plain session is the same engine with one writer, no replay and no
//! keep: its history holds only what its client has not taken yet (at most
//! one read), and the session ends as soon as its client leaves, for the
//! reason the client left. A named session keeps a bounded history for
//! replay and outlives its clients for `keep`.
//!
//! Where a session stands is plain data: the [`Engine`] it runs from (its
//! process, the input not yet written, the output read but not yet kept, its
//! [`Phase`] and deadlines) and the state behind [`Shared`]. [`Shared::run`]
//! starts from an engine and, when the session context's `handover` token
//! is cancelled, stops where it can go on and gives the engine back
//! ([`Run::Frozen`]), so that the program after this one can run it on.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::detached::history::{History, Read, Viewer};
use super::detached::record::Recorder;
use super::detached::transfer::{self, Piece};
use super::lifecycle::{ChunkSize, OutputTail, signal_stop, stop_by};
use super::process::{Feed, Process, ProcessOutput};
use super::socket::{Ending, Progress, sleep_until_some};
use crate::metrics::{Direction, Metrics};
use crate::session::SessionSettings;
use crate::spec::TerminalSize;
use crate::websocket::OutputStream;

/// How a shared session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    /// The process's exit status, once reaped.
    pub(crate) status: Option<ExitStatus>,
    /// Whether the out-of-memory killer ended it.
    pub(crate) oom: bool,
}

/// What kind of session it is: what it keeps for clients to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One client, for the life of the session: nothing is replayed, and
    /// the session ends when the client leaves.
    Plain,
    /// A session clients attach to and leave: its history is kept for
    /// replay, and it outlives its last writer for `keep`.
    Named {
        /// How long it runs on with no writer attached.
        keep: Duration,
        /// How many bytes of output it keeps for replay.
        history: usize,
    },
}

impl Kind {
    fn keep(self) -> Duration {
        match self {
            Kind::Plain => Duration::ZERO,
            Kind::Named { keep, .. } => keep,
        }
    }
}

/// What a writer asks of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Bytes for its input.
    Stdin(Bytes),
    /// No more input.
    EndStdin,
    /// A new terminal size.
    Resize(TerminalSize),
}

/// Lines of scrollback the terminal model keeps (the screen is what a
/// repaint shows; scrollback is not replayed).
const SCROLLBACK: usize = 0;

/// What a session is, for its log lines.
#[derive(Debug, Clone)]
pub(crate) struct About {
    /// Its number on this server (its span's `id`).
    pub(crate) number: u64,
    /// The command's path.
    pub(crate) command: String,
    /// The client that started it.
    pub(crate) peer: String,
    /// When it started.
    pub(crate) started: Instant,
}

/// A session, shared by its attachments.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: Option<String>,
    pub(crate) about: About,
    kind: Kind,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// The process's input: writers write in turn, each holding it while
    /// the process takes what it writes (a slow reader slows them).
    input: tokio::sync::Mutex<Inlet>,
    input_meter: prometheus_client::metrics::counter::Counter,
    writers: watch::Sender<usize>,
    next_writer: AtomicU64,
    /// Announces that a writer took output or left: room in the history.
    room: Notify,
    pub(crate) recorder: Option<Arc<Recorder>>,
    metrics: Metrics,
    /// Any input or output, for `idle_timeout`.
    activity: Progress,
    /// Bytes written to the process's input.
    bytes_in: AtomicU64,
    /// Bytes of output the writers took (the most any one took).
    bytes_out: AtomicU64,
    /// The writer whose input came last ([`NOBODY`] before any): the one a
    /// file transfer that starts is for.
    last_input: AtomicU64,
    /// Whether a file transfer runs (its input is not recorded).
    transferring: std::sync::atomic::AtomicBool,
    /// The CANs that ended the last input (a ZMODEM cancel is five).
    input_cans: std::sync::atomic::AtomicUsize,
}

/// No writer (see `Shared::last_input`).
const NOBODY: u64 = u64::MAX;

struct State {
    history: History,
    /// A named terminal session's screen (boxed: most sessions have none).
    screen: Option<Box<vt100::Parser>>,
    ended: Option<Ended>,
    /// Why the session is being stopped, once it is (a limit, the keep
    /// passed, the server shuts down): attachments tell their clients at
    /// once rather than after the process is gone.
    stopping: Option<Ending>,
    /// How the last writer left, which is why a plain session ends.
    departure: Option<Ending>,
    /// How far each attached writer (by id) has taken the output; writers
    /// are few.
    taken: Vec<(u64, u64)>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("history", &self.history).field("ended", &self.ended).finish_non_exhaustive()
    }
}

/// Where an attachment starts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StartPoint {
    /// The offset of the first session byte it gets.
    pub(crate) offset: u64,
    /// Bytes that redraw the current screen, sent first (no offset of
    /// their own).
    pub(crate) repaint: Option<Vec<u8>>,
    /// Where its live output starts (what is before is a replay).
    pub(crate) live_from: u64,
}

/// What a session's engine runs from: its process and where the session
/// stands. A new session's is [`Engine::start`]; a frozen one is handed
/// back by [`Shared::run`], to be carried on.
#[derive(Debug)]
pub(crate) struct Engine {
    /// The process, its input and outputs taken out (its input is the
    /// session's [`Inlet`]; its outputs are below).
    pub(crate) process: Process,
    /// Its outputs.
    pub(crate) outputs: Vec<Reading>,
    pub(crate) phase: Phase,
    /// With no writer attached: when `keep` runs out.
    pub(crate) keep_until: Option<Instant>,
    /// When `max_session_duration` is reached.
    pub(crate) time_limit: Option<Instant>,
}

/// One output of the process as the engine reads it.
#[derive(Debug)]
pub(crate) struct Reading {
    pub(crate) output: ProcessOutput,
    /// A chunk read from it that the history had no room for yet.
    pub(crate) held: Option<Bytes>,
    /// Whether it was read to its end.
    pub(crate) done: bool,
}

/// Where a session's lifecycle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The process runs; input and output flow.
    Running,
    /// The process was told to stop (`kill_signal`) for `reason`; what is
    /// left of it is killed at `kill_at`.
    Stopping { reason: Ending, kill_at: Instant },
    /// The leader is gone (it exited, or was stopped for `reason`); its
    /// outputs are read to their end.
    Draining { reason: Option<Ending> },
}

/// What a finished session did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it ended.
    pub ending: Ending,
    /// The process's exit status, once it was reaped.
    pub status: Option<ExitStatus>,
    /// Bytes written to the process's stdin.
    pub bytes_in: u64,
    /// Bytes of output its client took (the most any writer took).
    pub bytes_out: u64,
    /// Whether the out-of-memory killer ended the process.
    pub oom: bool,
}

/// How [`Shared::run`] came back.
#[derive(Debug)]
pub(crate) enum Run {
    /// The session is over.
    Ended(Outcome),
    /// Frozen for a hand-over; the engine goes on from here.
    Frozen(Box<Engine>),
}

impl Engine {
    /// The engine of a session of `process`, just started.
    pub(crate) fn start(mut process: Process, settings: &SessionSettings) -> Self {
        let outputs = process.outputs.drain(..).map(|output| Reading { output, held: None, done: false }).collect();
        Self {
            process,
            outputs,
            phase: Phase::Running,
            keep_until: None,
            time_limit: settings.max_session_duration.map(|limit| Instant::now() + limit),
        }
    }
}

/// What [`Shared::restore`] puts back: the state of a session carried from
/// the program before this one.
#[derive(Debug)]
pub(crate) struct Restored {
    /// The process's input, and what is still to be written to it.
    pub(crate) inlet: Inlet,
    pub(crate) history: History,
    pub(crate) standing: Standing,
}

/// What [`Shared::snapshot`] reads off a frozen session.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) kind: Kind,
    /// The history's bound, where it starts and its chunks.
    pub(crate) cap: usize,
    pub(crate) start: u64,
    pub(crate) chunks: Vec<(OutputStream, Bytes)>,
    pub(crate) standing: Standing,
}

/// Where a session stands beside its history and its input: what a
/// snapshot reads and a restore puts back.
#[derive(Debug)]
pub(crate) struct Standing {
    /// The screen's size and a repaint of it.
    pub(crate) screen: Option<(TerminalSize, Vec<u8>)>,
    pub(crate) ended: Option<Ended>,
    pub(crate) stopping: Option<Ending>,
    pub(crate) departure: Option<Ending>,
    pub(crate) last_activity: Instant,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

impl Shared {
    /// A session of `process` (not yet running: see [`Shared::run`]),
    /// keeping the output its kind says (a plain session: as much as one
    /// read, until its client takes it).
    pub(crate) fn new(
        id: Option<String>,
        about: About,
        kind: Kind,
        process: &mut Process,
        size: TerminalSize,
        recorder: Option<Arc<Recorder>>,
        metrics: Metrics,
    ) -> Arc<Self> {
        // Only a session that is replayed needs a model of its screen.
        let screen = (process.is_tty() && kind != Kind::Plain)
            .then(|| Box::new(vt100::Parser::new(nonzero(size.rows), nonzero(size.cols), SCROLLBACK)));
        let history = match kind {
            // Bounds how far output is read ahead of the client; what the
            // client took is forgotten at once (see `Shared::took`).
            Kind::Plain => History::new(crate::session::MAX_OUTPUT_CHUNK),
            Kind::Named { history, .. } => History::new(history),
        };
        let restored = Restored {
            inlet: Inlet::new(Feed::new(process.stdin.take()), VecDeque::new()),
            history,
            standing: Standing {
                screen: None,
                ended: None,
                stopping: None,
                departure: None,
                last_activity: Instant::now(),
                bytes_in: 0,
                bytes_out: 0,
            },
        };
        let shared = Self::restore(id, about, kind, restored, recorder, metrics);
        if let Some(screen) = screen {
            shared.lock().screen = Some(screen);
        }
        shared
    }

    /// A session as the program before this one left it (see
    /// [`Shared::snapshot`]), not yet running.
    pub(crate) fn restore(
        id: Option<String>,
        about: About,
        kind: Kind,
        restored: Restored,
        recorder: Option<Arc<Recorder>>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let Restored { inlet, mut history, standing } = restored;
        // Transfers are kept from observers, replays and recordings; a
        // plain session unrecorded has none of them.
        if kind != Kind::Plain || recorder.is_some() {
            history.watch_transfers();
        }
        let transferring = history.transfer().is_some();
        let screen = standing.screen.map(|(size, repaint)| {
            let mut parser = Box::new(vt100::Parser::new(nonzero(size.rows), nonzero(size.cols), SCROLLBACK));
            parser.process(&repaint);
            parser
        });
        let input_meter = metrics.bytes(Direction::r#in);
        let shared = Self {
            id,
            about,
            kind,
            state: Mutex::new(State {
                history,
                screen,
                ended: standing.ended,
                stopping: standing.stopping,
                departure: standing.departure,
                taken: Vec::new(),
            }),
            changed: watch::Sender::new(0),
            input: tokio::sync::Mutex::new(inlet),
            input_meter,
            writers: watch::Sender::new(0),
            next_writer: AtomicU64::new(0),
            room: Notify::new(),
            recorder,
            metrics,
            activity: Progress::marked_at(standing.last_activity),
            bytes_in: AtomicU64::new(standing.bytes_in),
            bytes_out: AtomicU64::new(standing.bytes_out),
            last_input: AtomicU64::new(NOBODY),
            transferring: std::sync::atomic::AtomicBool::new(transferring),
            input_cans: Default::default(),
        };
        Arc::new(shared)
    }

    /// Where a frozen session stands, beside its engine: what
    /// [`Shared::restore`] takes back.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let screen = state.screen.as_ref().map(|parser| {
            let (rows, cols) = parser.screen().size();
            (TerminalSize { cols: cols.get(), rows: rows.get() }, repaint(parser.screen()))
        });
        Snapshot {
            kind: self.kind,
            cap: state.history.cap(),
            start: state.history.start(),
            chunks: state.history.chunks().collect(),
            standing: Standing {
                screen,
                ended: state.ended,
                stopping: state.stopping.clone(),
                departure: state.departure.clone(),
                last_activity: self.activity.idle_since().unwrap_or_else(Instant::now),
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: self.bytes_out.load(Ordering::Relaxed),
            },
        }
    }

    /// The process's input, taken out of a frozen session (whose tasks
    /// have all stopped): to be carried on.
    pub(crate) fn take_input(&self) -> Inlet {
        match self.input.try_lock() {
            Ok(mut inlet) => std::mem::replace(&mut *inlet, Inlet::new(Feed::new(None), VecDeque::new())),
            Err(_) => Inlet::new(Feed::new(None), VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New output: kept, drawn, recorded, announced; once the history can
    /// keep it without dropping a byte an attached writer has not taken.
    /// Outputs read side by side each wait here with what they read, so
    /// together they never overfill the history, and one that has nothing
    /// to say holds no room from the other. Stopped before it is done, it
    /// has kept nothing.
    async fn push(&self, stream: OutputStream, data: Bytes) {
        let mut data = Some(data);
        // Usually there is room: no waiter is registered for that.
        let dropped = loop {
            if let Some(dropped) = self.push_if_room(stream, &mut data) {
                break dropped;
            }
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(dropped) = self.push_if_room(stream, &mut data) {
                break dropped;
            }
            room.await;
        };
        if dropped > 0 && self.kind != Kind::Plain {
            self.metrics.history_dropped(dropped);
        }
        self.activity.mark();
        self.changed.send_modify(|version| *version += 1);
    }

    /// [`Shared::push`] at once, when there is room: how many bytes the
    /// history dropped.
    fn push_if_room(&self, stream: OutputStream, data: &mut Option<Bytes>) -> Option<u64> {
        let mut state = self.lock();
        let len = data.as_ref().map_or(0, Bytes::len) as u64;
        let keep_from = (state.history.end() + len).saturating_sub(state.history.cap() as u64);
        if state.taken.iter().any(|&(_, taken)| taken < keep_from) {
            return None;
        }
        let data = data.take()?;
        let owner = Some(self.last_input.load(Ordering::Relaxed)).filter(|&id| id != NOBODY);
        let input_total = self.bytes_in.load(Ordering::Relaxed);
        let pushed = state.history.push_from(stream, data.clone(), owner, input_total);
        // The screen and the recording get what is not a file transfer.
        let show = |bytes: &[u8], state: &mut State| {
            if let Some(screen) = state.screen.as_mut() {
                screen.process(bytes);
            }
            if let Some(recorder) = &self.recorder {
                recorder.output(bytes);
            }
        };
        match &pushed.pieces {
            None => show(&data, &mut state),
            Some(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Shown(range) => show(&data[range.clone()], &mut state),
                        Piece::Ended(span) => {
                            if let Some(recorder) = &self.recorder {
                                recorder.marker(&span.marker(input_total));
                            }
                        }
                        Piece::Started(_) => {}
                    }
                }
                self.transferring.store(state.history.transfer().is_some(), Ordering::Relaxed);
            }
        }
        Some(pushed.dropped)
    }

    /// Where an attachment starts: at `since` when given (or the oldest
    /// kept byte, if `since` is older); without it, on a terminal, a
    /// repaint of the current screen and then what comes next; on pipes,
    /// the whole history.
    pub(crate) fn start_point(&self, since: Option<u64>) -> StartPoint {
        let state = self.lock();
        let live_from = state.history.end();
        match (since, &state.screen) {
            (Some(since), _) => StartPoint { offset: since.max(state.history.start()), repaint: None, live_from },
            (None, Some(screen)) => {
                StartPoint { offset: live_from, repaint: Some(repaint(screen.screen())), live_from }
            }
            (None, None) => StartPoint { offset: state.history.start(), repaint: None, live_from },
        }
    }

    /// The output at `offset`, and how the session ended if it did, or
    /// why it is being stopped.
    pub(crate) fn read(&self, offset: u64, viewer: Viewer) -> (Read, Option<Ended>, Option<Ending>) {
        let state = self.lock();
        (state.history.read_as(offset, viewer), state.ended, state.stopping.clone())
    }

    /// Where the transfer that started at `start` ended, once it did.
    pub(crate) fn transfer_end(&self, start: u64) -> Option<u64> {
        self.lock().history.transfer_end(start)
    }

    /// Writer `id` sent `data`: a file transfer that starts now is for it,
    /// and a ZMODEM cancel in it ends the one running (once the sender's
    /// data in flight has drained).
    pub(crate) fn input_from(&self, id: u64, data: &[u8]) {
        self.last_input.store(id, Ordering::Relaxed);
        if !self.transferring.load(Ordering::Relaxed) {
            return;
        }
        let (cancels, run) = transfer::cancels(self.input_cans.load(Ordering::Relaxed), data);
        self.input_cans.store(run, Ordering::Relaxed);
        if cancels {
            self.lock().history.transfer_cancelled();
        }
    }

    /// What kind of session it is.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// A writer left, so: for a plain session, that is why it ends.
    pub(crate) fn departed(&self, ending: &Ending) {
        self.lock().departure = Some(ending.clone());
    }

    /// Output and endings are announced here.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How the session ended, if it did.
    pub(crate) fn ended(&self) -> Option<Ended> {
        self.lock().ended
    }

    /// Counts a writer as attached until the guard is dropped, having taken
    /// the output up to `offset`; while none is, the `keep` clock runs.
    /// While one is, the session goes at its pace: output is read from the
    /// process only as far as the history can keep it without dropping a
    /// byte the writer has not taken (see [`Shared::took`]), so the writer
    /// loses nothing, as on a plain session. Observers never hold the
    /// session back.
    pub(crate) fn writer_at(self: &Arc<Self>, offset: u64) -> WriterGuard {
        let id = self.next_writer.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock();
            let offset = offset.max(state.history.start());
            state.taken.push((id, offset));
        }
        self.writers.send_modify(|n| *n += 1);
        WriterGuard { shared: self.clone(), id }
    }

    /// [`Shared::writer_at`] the oldest kept byte.
    pub(crate) fn writer(self: &Arc<Self>) -> WriterGuard {
        self.writer_at(0)
    }

    /// Writer `id` has taken the output up to `offset`.
    pub(crate) fn took(&self, id: u64, offset: u64) {
        {
            let mut state = self.lock();
            if let Some((_, taken)) = state.taken.iter_mut().find(|(writer, _)| *writer == id) {
                *taken = offset;
            }
            // Nobody replays a plain session: what its writers took goes.
            if self.kind == Kind::Plain {
                let oldest = state.taken.iter().map(|&(_, taken)| taken).min().unwrap_or(offset);
                state.history.forget_before(oldest);
            }
        }
        self.bytes_out.fetch_max(offset, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Hands a writer's input to the process, waiting its turn and while
    /// the process does not read it. Gives it back if `freeze` comes before
    /// its turn; once it is being written, what is left of it stays in the
    /// input for the program after this one.
    pub(crate) async fn control(&self, control: Control, freeze: &CancellationToken) -> Result<(), Control> {
        let mut inlet = tokio::select! {
            biased;
            inlet = self.input.lock() => inlet,
            _ = freeze.cancelled() => return Err(control),
        };
        inlet.pending.push_back(control);
        inlet.write_pending(self, freeze).await;
        Ok(())
    }

    /// Runs the session from `engine` until its process has exited and its
    /// output is in the history, or until it is stopped (the process gets
    /// `kill_signal` as if its client had left): `keep` passed with no
    /// writer attached (at once, for a plain session), nothing went either
    /// way for `idle_timeout`, `max_session_duration` passed, or the server
    /// shuts down. Returns how it ended, or, once `freeze` is cancelled,
    /// the engine to go on from.
    pub(crate) fn run(
        self: Arc<Self>,
        engine: Engine,
        settings: Arc<SessionSettings>,
        shutdown: CancellationToken,
        freeze: CancellationToken,
    ) -> impl std::future::Future<Output = Run> + Send + 'static {
        // Taken apart here, not in the block, so the engine is not held
        // twice (whole, and in its parts) for the session's life.
        let Engine { process, outputs, phase, keep_until, time_limit } = engine;
        async move {
            let mut process = process;
            let group = process.group();
            // Input carried from before is written first, whether or not a
            // writer sends more.
            let input = {
                let (shared, freeze) = (self.clone(), freeze.clone());
                let flush = async move { shared.input.lock().await.write_pending(&shared, &freeze).await };
                AbortOnDropHandle::new(tokio::spawn(flush))
            };
            let output_meter = self.metrics.bytes(Direction::out);
            // Cancelled once the leader has exited: from then on, the readers
            // wait for leftovers only within bounds (see `OutputTail`).
            let exited = CancellationToken::new();
            if matches!(phase, Phase::Draining { .. }) {
                exited.cancel();
            }
            let readers: Vec<_> = outputs
                .into_iter()
                .map(|reading| {
                    let tail = OutputTail::new(exited.clone(), group.clone(), settings.kill_grace);
                    let reader = read(reading, tail, self.clone(), output_meter.clone(), freeze.clone());
                    AbortOnDropHandle::new(tokio::spawn(reader))
                })
                .collect();
            let parts = Parts { input, readers };
            let keep = self.kind.keep();
            let counts_detached = self.kind != Kind::Plain;
            let mut writers = self.writers.subscribe();
            // The keep clock of a session carried with no writer goes on.
            let no_writer = |writers: &watch::Receiver<usize>, carried: Option<Instant>| {
                (*writers.borrow() == 0).then(|| carried.unwrap_or_else(|| Instant::now() + keep))
            };
            let mut keep_until = no_writer(&writers, keep_until);
            let mut status = None;
            let reason = match phase {
                Phase::Running => {
                    if counts_detached {
                        self.metrics.detached(keep_until.is_some());
                    }
                    let mut idle_check = settings.idle_timeout.map(|idle| Instant::now() + idle);
                    let reason = loop {
                        tokio::select! {
                            result = process.exited() => {
                                status = result.ok();
                                break None;
                            }
                            Ok(()) = writers.changed() => {
                                let was = keep_until.is_some();
                                keep_until = no_writer(&writers, None);
                                if counts_detached && was != keep_until.is_some() {
                                    self.metrics.detached(keep_until.is_some());
                                }
                            }
                            _ = shutdown.cancelled() => break Some(Ending::Shutdown),
                            // One timer for the three deadlines.
                            _ = sleep_until_some([keep_until, time_limit, idle_check].into_iter().flatten().min()) => {
                                let now = Instant::now();
                                if keep_until.is_some_and(|at| at <= now) {
                                    break Some(match self.kind {
                                        Kind::Plain => self.lock().departure.clone().unwrap_or(Ending::ClientGone("client left".into())),
                                        Kind::Named { .. } => Ending::ClientGone("keep passed with no writer".into()),
                                    });
                                }
                                if time_limit.is_some_and(|at| at <= now) {
                                    break Some(Ending::TimeLimit);
                                }
                                if let (Some(at), Some(idle)) = (idle_check, settings.idle_timeout) && at <= now {
                                    match self.activity.idle_since() {
                                        Some(last) if last + idle > now => idle_check = Some(last + idle),
                                        _ => break Some(Ending::Idle),
                                    }
                                }
                            }
                            _ = freeze.cancelled() => {
                                if counts_detached && keep_until.is_some() {
                                    self.metrics.detached(false);
                                }
                                return Box::pin(parts.frozen(&self, process, Phase::Running, keep_until, time_limit)).await;
                            }
                        }
                    };
                    if counts_detached && keep_until.is_some() {
                        self.metrics.detached(false);
                    }
                    if let Some(reason) = &reason {
                        self.lock().stopping = Some(reason.clone());
                        self.changed.send_modify(|version| *version += 1);
                    }
                    reason.map(|reason| (reason, signal_stop(&process, &settings)))
                }
                Phase::Stopping { reason, kill_at } => Some((reason, kill_at)),
                Phase::Draining { reason } => {
                    status = process.exited().await.ok();
                    reason.map(|reason| (reason, Instant::now()))
                }
            };
            let ending = match reason {
                Some((reason, kill_at)) if status.is_none() => {
                    // Boxed, as every step but the main loop: a session's task
                    // keeps room for its largest step for all its life.
                    tokio::select! {
                        stopped = Box::pin(stop_by(&mut process, kill_at)) => status = stopped,
                        _ = freeze.cancelled() => {
                            let phase = Phase::Stopping { reason, kill_at };
                            return Box::pin(parts.frozen(&self, process, phase, None, time_limit)).await;
                        }
                    }
                    Some(reason)
                }
                Some((reason, _)) => Some(reason),
                None => None,
            };
            // Output written before the exit is still read, as fast as writers
            // take it; leftovers holding the pipe open get `kill_grace`, then
            // SIGKILL, and a bounded wait.
            exited.cancel();
            let Parts { input, readers } = parts;
            let mut drained = Vec::with_capacity(readers.len());
            for reader in readers {
                drained.extend(reader.await.ok());
            }
            if drained.iter().any(|reading| !reading.done) {
                // Frozen while draining.
                let parts = Parts { input, readers: Vec::new() };
                let phase = Phase::Draining { reason: ending };
                let mut frozen = Box::pin(parts.frozen(&self, process, phase, None, time_limit)).await;
                if let Run::Frozen(engine) = &mut frozen {
                    engine.outputs = drained;
                }
                return frozen;
            }
            drop(input);
            // The process is gone: its input is closed.
            drop(self.input.lock().await.feed.take_input());
            let oom = status.is_some_and(|status| process.oom_killed(status));
            let ended = Ended { status, oom };
            match (&self.recorder, status) {
                (Some(recorder), Some(status)) => recorder.exited(status, oom),
                (Some(recorder), None) => recorder.marker("ended"),
                (None, _) => {}
            }
            self.lock().ended = Some(ended);
            self.changed.send_modify(|version| *version += 1);
            Box::pin(process.finish()).await;
            drop(drained);
            if self.kind == Kind::Plain {
                // A plain session is over once its client has its output: what
                // it took is what the session sent.
                let mut writers = self.writers.subscribe();
                tokio::select! {
                    _ = writers.wait_for(|n| *n == 0) => {}
                    _ = freeze.cancelled() => {}
                }
            }
            let ending = match (ending, status) {
                (Some(ending), _) => ending,
                (None, Some(status)) => Ending::Exited(status),
                (None, None) => Ending::Internal("waiting for the process failed".into()),
            };
            Run::Ended(Outcome {
                ending,
                status,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: self.bytes_out.load(Ordering::Relaxed),
                oom,
            })
        }
    }
}

/// The engine's tasks: writing the input carried from before, and one
/// reader per output.
struct Parts {
    input: AbortOnDropHandle<()>,
    readers: Vec<AbortOnDropHandle<Reading>>,
}

impl Parts {
    /// Waits for the tasks, which stop at once when frozen, and puts the
    /// engine back together.
    async fn frozen(
        self,
        shared: &Shared,
        process: Process,
        phase: Phase,
        keep_until: Option<Instant>,
        time_limit: Option<Instant>,
    ) -> Run {
        let Self { input, readers } = self;
        let mut outputs = Vec::with_capacity(readers.len());
        for reader in readers {
            // A reader that failed has nothing left to carry.
            outputs.extend(reader.await.ok());
        }
        // The input stays with the session (see [`Shared::take_input`]).
        let _ = (input.await, shared);
        Run::Frozen(Box::new(Engine { process, outputs, phase, keep_until, time_limit }))
    }
}

/// Removes a writer when dropped.
#[derive(Debug)]
pub(crate) struct WriterGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl WriterGuard {
    /// Which writer this is, for [`Shared::took`].
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().taken.retain(|(writer, _)| *writer != self.id);
        self.shared.room.notify_waiters();
        self.shared.writers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Reads an output into the session until its end (see [`OutputTail`]), as
/// fast as the history can keep it for attached writers (see
/// [`Shared::writer_at`]); returns it, still open (a terminal's master side
/// must outlive its process), or, frozen, with the chunk it held.
async fn read(
    mut reading: Reading,
    mut tail: OutputTail,
    shared: Arc<Shared>,
    meter: prometheus_client::metrics::counter::Counter,
    freeze: CancellationToken,
) -> Reading {
    // No read larger than the history, so a writer that took everything
    // always has room for the next one. A plain session's chunks are sent
    // and dropped; a named session's are kept.
    let size = match shared.kind {
        Kind::Plain => ChunkSize::Sent,
        Kind::Named { .. } => ChunkSize::Kept(shared.lock().history.cap().min(crate::session::MAX_OUTPUT_CHUNK)),
    };
    if reading.done {
        return reading;
    }
    let stream = reading.output.stream;
    loop {
        let data = match reading.held.take() {
            Some(data) => data,
            None => {
                let next = tokio::select! {
                    biased;
                    _ = freeze.cancelled() => return reading,
                    next = tail.next(&mut reading.output, size) => next,
                };
                let Some(data) = next else { break };
                meter.inc_by(data.len() as u64);
                data
            }
        };
        tokio::select! {
            biased;
            _ = shared.push(stream, data.clone()) => {}
            _ = freeze.cancelled() => {
                reading.held = Some(data);
                return reading;
            }
        }
    }
    reading.done = true;
    reading
}

/// The process's input: the input itself, and what is still to be written
/// to it, in order (input carried from before, and each writer's, which
/// waits its turn here while the process does not read).
#[derive(Debug)]
pub(crate) struct Inlet {
    pub(crate) feed: Feed,
    pub(crate) pending: VecDeque<Control>,
}

impl Inlet {
    pub(crate) fn new(feed: Feed, pending: VecDeque<Control>) -> Self {
        Self { feed, pending }
    }

    /// Writes what was begun, then what waits, in order, until all is
    /// written or `freeze` is cancelled (then the rest stays here).
    async fn write_pending(&mut self, shared: &Shared, freeze: &CancellationToken) {
        loop {
            if self.feed.is_writing() {
                tokio::select! {
                    biased;
                    written = self.feed.write_on() => if let Some(n) = written {
                        shared.input_meter.inc_by(n as u64);
                        shared.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    },
                    _ = freeze.cancelled() => return,
                }
                continue;
            }
            if freeze.is_cancelled() {
                return;
            }
            let Some(control) = self.pending.pop_front() else { return };
            match control {
                // Written at the top of the loop.
                Control::Stdin(data) => {
                    // An upload's bytes stay out of the recording.
                    if let Some(recorder) = &shared.recorder
                        && !shared.transferring.load(Ordering::Relaxed)
                    {
                        recorder.input(&data);
                    }
                    shared.activity.mark();
                    self.feed.start(data);
                }
                Control::EndStdin => self.feed.end().await,
                Control::Resize(size) => {
                    // The writer that acts last wins.
                    if self.feed.resize(size) {
                        if let Some(screen) = shared.lock().screen.as_mut() {
                            screen.set_size(nonzero(size.rows), nonzero(size.cols));
                        }
                        if let Some(recorder) = &shared.recorder {
                            recorder.resize(size);
                        }
                    }
                }
            }
        }
    }
}

/// Escape sequences that redraw `screen` on a terminal that may show
/// anything: the right screen buffer, cleared, the contents, the cursor and
/// the input modes.
fn repaint(screen: &vt100::Screen) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Switch to the screen buffer the program uses (full-screen programs use
    // the alternate one), then draw it.
    bytes.extend_from_slice(if screen.alternate_screen() { b"\x1b[?1049h" } else { b"\x1b[?1049l" });
    bytes.extend_from_slice(b"\x1b[H\x1b[2J");
    bytes.extend_from_slice(screen.state_formatted().as_bytes());
    bytes
}

fn nonzero(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).unwrap_or(std::num::NonZeroU16::MIN)
}
