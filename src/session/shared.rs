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

use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::bridge::Outcome;
use super::detached::history::{History, Read};
use super::detached::record::Recorder;
use super::lifecycle::{ChunkSize, OutputTail, stop};
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
    },
}

impl Kind {
    fn keep(self) -> Duration {
        match self {
            Kind::Plain => Duration::ZERO,
            Kind::Named { keep } => keep,
        }
    }
}

/// What a writer asks of the process.
#[derive(Debug)]
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
/// Controls queued from writers to the process.
const CONTROL_QUEUE: usize = 64;

/// A detachable session, shared by its attachments.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: Option<String>,
    kind: Kind,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    controls: mpsc::Sender<Control>,
    writers: watch::Sender<usize>,
    next_writer: AtomicU64,
    /// Announces that a writer took output or left: room in the history.
    room: Notify,
    recorder: Option<Arc<Recorder>>,
    metrics: Metrics,
    /// Any input or output, for `idle_timeout`.
    activity: Progress,
    /// Bytes written to the process's input.
    bytes_in: AtomicU64,
    /// Bytes of output the writers took (the most any one took).
    bytes_out: AtomicU64,
}

struct State {
    history: History,
    screen: Option<vt100::Parser>,
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
}

impl Shared {
    /// A session of `process` (not yet running: see [`Shared::run`]),
    /// keeping `history` bytes of output (a plain session: as much as one
    /// read, until its client takes it).
    pub(crate) fn new(
        id: Option<String>,
        kind: Kind,
        process: &Process,
        size: TerminalSize,
        history: usize,
        recorder: Option<Arc<Recorder>>,
        metrics: Metrics,
    ) -> (Arc<Self>, mpsc::Receiver<Control>) {
        // Only a session that is replayed needs a model of its screen.
        let screen = (process.is_tty() && kind != Kind::Plain)
            .then(|| vt100::Parser::new(nonzero(size.rows), nonzero(size.cols), SCROLLBACK));
        let history = match kind {
            // Bounds how far output is read ahead of the client; what the
            // client took is forgotten at once (see `Shared::took`).
            Kind::Plain => History::new(crate::session::MAX_OUTPUT_CHUNK),
            Kind::Named { .. } => History::new(history),
        };
        let (controls, received) = mpsc::channel(CONTROL_QUEUE);
        let activity = Progress::default();
        activity.mark();
        let shared = Self {
            id,
            kind,
            state: Mutex::new(State {
                history,
                screen,
                ended: None,
                stopping: None,
                departure: None,
                taken: Vec::new(),
            }),
            changed: watch::Sender::new(0),
            controls,
            writers: watch::Sender::new(0),
            next_writer: AtomicU64::new(0),
            room: Notify::new(),
            recorder,
            metrics,
            activity,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        };
        (Arc::new(shared), received)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New output: kept, drawn, recorded, announced; once the history can
    /// keep it without dropping a byte an attached writer has not taken.
    /// Outputs read side by side each wait here with what they read, so
    /// together they never overfill the history, and one that has nothing
    /// to say holds no room from the other.
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
        if let Some(screen) = state.screen.as_mut() {
            screen.process(&data);
        }
        if let Some(recorder) = &self.recorder {
            recorder.output(&data);
        }
        Some(state.history.push(stream, data))
    }

    /// Where an attachment starts: at `since` when given (or the oldest
    /// kept byte, if `since` is older); without it, on a terminal, a
    /// repaint of the current screen and then what comes next; on pipes,
    /// the whole history.
    pub(crate) fn start_point(&self, since: Option<u64>) -> StartPoint {
        let state = self.lock();
        match (since, &state.screen) {
            (Some(since), _) => StartPoint { offset: since.max(state.history.start()), repaint: None },
            (None, Some(screen)) => StartPoint { offset: state.history.end(), repaint: Some(repaint(screen.screen())) },
            (None, None) => StartPoint { offset: state.history.start(), repaint: None },
        }
    }

    /// The output at `offset`, and how the session ended if it did, or
    /// why it is being stopped.
    pub(crate) fn read(&self, offset: u64) -> (Read, Option<Ended>, Option<Ending>) {
        let state = self.lock();
        (state.history.read(offset), state.ended, state.stopping.clone())
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

    /// Counts a writer as attached until the guard is dropped; while none
    /// is, the `keep` clock runs. While one is, the session goes at its
    /// pace: output is read from the process only as far as the history
    /// can keep it without dropping a byte the writer has not taken (see
    /// [`Shared::took`]), so the writer loses nothing, as on a plain
    /// session. Observers never hold the session back.
    pub(crate) fn writer(self: &Arc<Self>) -> WriterGuard {
        let id = self.next_writer.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock();
            let start = state.history.start();
            state.taken.push((id, start));
        }
        self.writers.send_modify(|n| *n += 1);
        WriterGuard { shared: self.clone(), id }
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

    /// Hands a writer's input to the process (waiting while the process
    /// does not read it).
    pub(crate) async fn control(&self, control: Control) {
        if let (Control::Stdin(data), Some(recorder)) = (&control, &self.recorder) {
            recorder.input(data);
        }
        if matches!(control, Control::Stdin(_)) {
            self.activity.mark();
        }
        let _ = self.controls.send(control).await;
    }

    /// Runs the session until its process has exited and its output is in
    /// the history, or until it is stopped (the process gets `kill_signal`
    /// as if its client had left): `keep` passed with no writer attached
    /// (at once, for a plain session), nothing went either way for
    /// `idle_timeout`, `max_session_duration` passed, or the server shuts
    /// down. Returns how it ended.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut process: Process,
        controls: mpsc::Receiver<Control>,
        settings: Arc<SessionSettings>,
        shutdown: CancellationToken,
    ) -> Outcome {
        let group = process.group();
        let input_meter = self.metrics.bytes(Direction::r#in);
        let input = AbortOnDropHandle::new(tokio::spawn(feed(
            Feed::new(process.stdin.take()),
            controls,
            self.clone(),
            input_meter,
        )));
        let output_meter = self.metrics.bytes(Direction::out);
        // Cancelled once the leader has exited: from then on, the readers
        // wait for leftovers only within bounds (see `OutputTail`).
        let exited = CancellationToken::new();
        let readers: Vec<_> = process
            .outputs
            .drain(..)
            .map(|output| {
                let tail = OutputTail::new(exited.clone(), group.clone(), settings.kill_grace);
                AbortOnDropHandle::new(tokio::spawn(read(output, tail, self.clone(), output_meter.clone())))
            })
            .collect();
        let keep = self.kind.keep();
        let counts_detached = self.kind != Kind::Plain;
        let mut writers = self.writers.subscribe();
        let no_writer = |writers: &watch::Receiver<usize>| (*writers.borrow() == 0).then(|| Instant::now() + keep);
        let mut keep_until = no_writer(&writers);
        if counts_detached {
            self.metrics.detached(keep_until.is_some());
        }
        let time_limit = settings.max_session_duration.map(|limit| Instant::now() + limit);
        let mut idle_check = settings.idle_timeout.map(|idle| Instant::now() + idle);
        let mut status = None;
        let ending = loop {
            tokio::select! {
                result = process.exited() => {
                    status = result.ok();
                    break None;
                }
                Ok(()) = writers.changed() => {
                    let was = keep_until.is_some();
                    keep_until = no_writer(&writers);
                    if counts_detached && was != keep_until.is_some() {
                        self.metrics.detached(keep_until.is_some());
                    }
                }
                _ = sleep_until_some(keep_until) => break Some(match self.kind {
                    Kind::Plain => self.lock().departure.clone().unwrap_or(Ending::ClientGone("client left".into())),
                    Kind::Named { .. } => Ending::ClientGone("keep passed with no writer".into()),
                }),
                _ = shutdown.cancelled() => break Some(Ending::Shutdown),
                _ = sleep_until_some(time_limit) => break Some(Ending::TimeLimit),
                _ = sleep_until_some(idle_check) => {
                    let idle = settings.idle_timeout.expect("checks only with a timeout");
                    match self.activity.idle_since() {
                        Some(last) if last + idle > Instant::now() => idle_check = Some(last + idle),
                        _ => break Some(Ending::Idle),
                    }
                }
            }
        };
        if counts_detached && keep_until.is_some() {
            self.metrics.detached(false);
        }
        if let Some(ending) = &ending {
            self.lock().stopping = Some(ending.clone());
            self.changed.send_modify(|version| *version += 1);
            status = stop(&mut process, &settings).await;
        }
        // Output written before the exit is still read, as fast as writers
        // take it; leftovers holding the pipe open get `kill_grace`, then
        // SIGKILL, and a bounded wait.
        exited.cancel();
        let drained = futures_util::future::join_all(readers).await;
        drop(input);
        let oom = status.is_some_and(|status| process.oom_killed(status));
        let ended = Ended { status, oom };
        match (&self.recorder, status) {
            (Some(recorder), Some(status)) => recorder.exited(status, oom),
            (Some(recorder), None) => recorder.marker("ended"),
            (None, _) => {}
        }
        self.lock().ended = Some(ended);
        self.changed.send_modify(|version| *version += 1);
        process.finish().await;
        drop(drained);
        let ending = match (ending, status) {
            (Some(ending), _) => ending,
            (None, Some(status)) => Ending::Exited(status),
            (None, None) => Ending::Internal("waiting for the process failed".into()),
        };
        Outcome {
            ending,
            status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            oom,
        }
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
/// [`Shared::writer`]); returns it, still open (a terminal's master side
/// must outlive its process).
async fn read(
    mut output: ProcessOutput,
    mut tail: OutputTail,
    shared: Arc<Shared>,
    meter: prometheus_client::metrics::counter::Counter,
) -> ProcessOutput {
    // No read larger than the history, so a writer that took everything
    // always has room for the next one. A plain session's chunks are sent
    // and dropped; a named session's are kept.
    let size = match shared.kind {
        Kind::Plain => ChunkSize::Sent,
        Kind::Named { .. } => ChunkSize::Kept(shared.lock().history.cap().min(crate::session::MAX_OUTPUT_CHUNK)),
    };
    while let Some(data) = tail.next(&mut output, size).await {
        meter.inc_by(data.len() as u64);
        shared.push(output.stream, data).await;
    }
    output
}

/// Carries writers' input, input ends and resizes to the process.
async fn feed(
    mut feed: Feed,
    mut controls: mpsc::Receiver<Control>,
    shared: Arc<Shared>,
    meter: prometheus_client::metrics::counter::Counter,
) {
    while let Some(control) = controls.recv().await {
        match control {
            Control::Stdin(data) => {
                if feed.write(&data).await {
                    meter.inc_by(data.len() as u64);
                    shared.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Control::EndStdin => feed.end().await,
            Control::Resize(size) => {
                // The writer that acts last wins.
                if feed.resize(size) {
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
