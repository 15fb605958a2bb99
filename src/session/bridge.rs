//! The bridge between a WebSocket and a process, in either protocol.
//!
//! Three loops run at once: output (each output of the process → socket,
//! through a small bounded queue), input (socket → stdin, resizes) and the
//! writer, which owns the socket's sending half and also sends keepalive
//! pings. Each blocks when the other
//! side is slow, so a slow client slows the process and memory stays flat.
//! The bridge is written against `Sink`/`Stream`, not a socket type.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, Sink, Stream};
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use tokio_util::task::AbortOnDropHandle;

use super::detached::record::Recorder;
use super::process::{Process, ProcessGroup, ProcessInput, ProcessOutput};
use super::socket::{
    Ending, OUTGOING_QUEUE, Progress, WriterStop, close_socket, farewell, next_input, sleep_until_some, write_loop,
};
use super::{SessionContext, SessionSettings};
use crate::metrics::Direction;
use crate::websocket::{Input, Protocol};

/// What a finished session did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it ended.
    pub ending: Ending,
    /// The process's exit status, once it was reaped.
    pub status: Option<ExitStatus>,
    /// Bytes written to the process's stdin.
    pub bytes_in: u64,
    /// Bytes of output sent to the client.
    pub bytes_out: u64,
    /// Whether the out-of-memory killer ended the process.
    pub oom: bool,
}

/// Runs `process` against a WebSocket's halves until one side ends, then
/// ends the other: a client that leaves gets its process group signalled
/// (`kill_signal`, then `SIGKILL` after `kill_grace`); a process that exits
/// gets all its output sent, then a Close frame with its exit status.
///
/// With a `recorder`, output, input (if it records input), resizes and the
/// exit are recorded as they happen.
pub async fn bridge<Tx, Rx>(
    mut process: Process,
    protocol: Protocol,
    tx: Tx,
    rx: Rx,
    context: &SessionContext,
    recorder: Option<Arc<Recorder>>,
) -> Outcome
where
    Tx: Sink<Message, Error = WsError> + Unpin + Send + 'static,
    Rx: Stream<Item = Result<Message, WsError>> + Unpin + Send,
{
    let (settings, metrics, shutdown) = (&*context.settings, &context.metrics, context.shutdown.clone());
    let group = process.group();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let exited = CancellationToken::new();
    let discard = CancellationToken::new();
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let (finish, finished) = oneshot::channel();

    let progress = Progress::default();
    // Any input or output, for `idle_timeout`.
    let activity = Progress::default();
    activity.mark();
    let time_limit = settings.max_session_duration.map(|limit| Instant::now() + limit);
    let mut idle_check = settings.idle_timeout.map(|idle| Instant::now() + idle);
    let mut writer = AbortOnDropHandle::new(tokio::spawn(write_loop(
        tx,
        out_rx,
        finished,
        (settings.ping_interval, settings.pong_timeout),
        progress.clone(),
    )));
    let end = OutputEnd {
        exited: exited.clone(),
        discard: discard.clone(),
        group: group.clone(),
        grace: settings.kill_grace,
    };
    let pumps: Vec<_> = process
        .outputs
        .drain(..)
        .map(|output| {
            pump_output(
                output,
                protocol,
                out_tx.clone(),
                end.clone(),
                Meter::new(&bytes_out, &activity, metrics.bytes(Direction::out), recorder.clone(), Direction::out),
            )
        })
        .collect();
    let mut output = AbortOnDropHandle::new(tokio::spawn(futures_util::future::join_all(pumps)));
    let mut input = Box::pin(
        pump_input(
            rx,
            protocol,
            process.stdin.take(),
            settings.pong_timeout,
            progress,
            Meter::new(&bytes_in, &activity, metrics.bytes(Direction::r#in), recorder.clone(), Direction::r#in),
        )
        .fuse(),
    );

    let mut status = None;
    let mut output_done = false;
    // Outputs at their end are kept open until the process is reaped: the
    // last close of a terminal's master side hangs the terminal up, which
    // would send SIGHUP to a process that is still on its way out.
    let mut drained: Vec<ProcessOutput> = Vec::new();
    let ending = loop {
        tokio::select! {
            result = process.exited(), if status.is_none() => match result {
                Ok(s) => {
                    status = Some(s);
                    exited.cancel();
                }
                Err(err) => break Ending::Internal(err.to_string()),
            },
            outputs = &mut output, if !output_done => {
                output_done = true;
                drained = outputs.unwrap_or_default();
            }
            end = &mut input => break end,
            // The writer only stops early when the socket failed or the
            // client took nothing for pong_timeout, which the input side
            // may not see (it waits on a full stdin, or pings keep coming).
            stopped = &mut writer => break Ending::ClientGone(match stopped {
                Ok(WriterStop::Stalled) => "client took no data for pong_timeout".into(),
                _ => "sending failed".into(),
            }),
            _ = shutdown.cancelled() => break Ending::Shutdown,
            // Once the process has exited, its output is drained (bounded
            // by kill_grace) and the exit reported; limits no longer apply.
            _ = sleep_until_some(time_limit), if status.is_none() => break Ending::TimeLimit,
            _ = sleep_until_some(idle_check), if status.is_none() => {
                let idle = settings.idle_timeout.expect("checks only with a timeout");
                match activity.idle_since() {
                    Some(last) if last + idle > Instant::now() => idle_check = Some(last + idle),
                    _ => break Ending::Idle,
                }
            }
        }
        if let (Some(status), true) = (status, output_done) {
            break Ending::Exited(status);
        }
    };

    // A process the kernel killed for memory is said to be (SPEC §8).
    let oom = matches!(ending, Ending::Exited(status) if status.signal() == Some(9)) && process.oom_killed();
    if let (Some(recorder), Ending::Exited(status)) = (&recorder, &ending) {
        recorder.marker(&crate::websocket::protocol::exit_close_frame(*status, oom).reason);
    }
    let goodbye = match &ending {
        Ending::Exited(status) => protocol.exit(*status, oom),
        other => farewell(other),
    };
    if !matches!(ending, Ending::Exited(_)) {
        // Keep draining the pipe while the process is stopped, so it meets
        // `kill_signal` rather than a write error.
        discard.cancel();
    }
    let stop_process = async {
        if status.is_none() {
            status = stop(&mut process, &group, settings).await;
        }
    };
    let closing = async {
        if matches!(ending, Ending::ClientGone(_)) || writer.is_finished() {
            return;
        }
        let exited = matches!(ending, Ending::Exited(_));
        close_socket(exited, goodbye, &out_tx, finish, &mut writer, &mut input).await;
    };
    tokio::join!(stop_process, closing);
    // Whatever the leader left behind in its group (or, on a terminal, its
    // session) does not outlive the session.
    process.finish().await;
    drop(drained);
    Outcome {
        ending,
        status,
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        oom,
    }
}

/// Ends a process whose client is gone: `kill_signal` to the group (for a
/// terminal, `SIGHUP`: the terminal hung up), then, once `kill_grace` has
/// passed, `SIGKILL` to whatever of the session is left (its whole cgroup,
/// when it has one). Returns as soon as nothing of the session is left, so
/// its place is free at once. Returns the leader's status.
pub(crate) async fn stop(
    process: &mut Process,
    group: &ProcessGroup,
    settings: &SessionSettings,
) -> Option<ExitStatus> {
    group.signal(if process.is_tty() { Signal::HUP } else { settings.kill_signal.signal() });
    let deadline = Instant::now() + settings.kill_grace;
    let status = match timeout_at(deadline, process.exited()).await {
        Ok(result) => result.ok(),
        Err(_) => {
            group.kill();
            return process.exited().await.ok();
        }
    };
    // The leader is gone; the rest of the session gets the rest of the
    // grace.
    if timeout_at(deadline, group.emptied()).await.is_err() {
        group.kill();
    }
    status
}

/// When and how the output loop stops waiting for a pipe that a leftover
/// grandchild may hold open.
#[derive(Clone)]
struct OutputEnd {
    exited: CancellationToken,
    /// Set when the output has nowhere to go any more.
    discard: CancellationToken,
    group: ProcessGroup,
    grace: Duration,
}

/// Copies an output to the queue, one message per read, until end of file;
/// once the output has nowhere to go, it is read and dropped. Returns the
/// output, still open, for the caller to close when the process is gone. Once the leader has exited, waiting for more output is bounded by
/// `grace`; then the group gets `SIGKILL`, and if the pipe is still open
/// after one more `grace` (something outside the group holds it), the loop
/// gives up.
async fn pump_output(
    mut pipe: ProcessOutput,
    protocol: Protocol,
    queue: mpsc::Sender<Message>,
    end: OutputEnd,
    meter: Meter,
) -> ProcessOutput {
    let mut deadline = None;
    let mut killed = false;
    loop {
        // `kill_grace` after the exit, leftovers get SIGKILL even if they
        // keep the pipe busy (`yes &` would otherwise delay the Close
        // forever); what is already in the pipe is still read.
        if let Some(at) = deadline
            && !killed
            && Instant::now() >= at
        {
            end.group.kill();
            killed = true;
            deadline = Some(Instant::now() + end.grace);
        }
        let read = match deadline {
            None => tokio::select! {
                read = pipe.read_chunk() => Some(read),
                _ = end.exited.cancelled() => {
                    deadline = Some(Instant::now() + end.grace);
                    continue;
                }
            },
            // Data already in the pipe is always read first: the timeout
            // only fires when the pipe is empty.
            Some(at) => timeout_at(at, pipe.read_chunk()).await.ok(),
        };
        let data = match read {
            Some(Ok(data)) if data.is_empty() => return pipe,
            Some(Ok(data)) => data,
            Some(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
            Some(Err(err)) => {
                tracing::debug!(cause = %err, "output pipe failed");
                return pipe;
            }
            None if !killed => {
                end.group.kill();
                killed = true;
                deadline = Some(Instant::now() + end.grace);
                continue;
            }
            None => {
                tracing::warn!("output pipe still open after its process group was killed; giving up on it");
                return pipe;
            }
        };
        if end.discard.is_cancelled() {
            continue;
        }
        tokio::select! {
            sent = queue.send(protocol.output(pipe.stream, data.clone())) => match sent {
                Ok(()) => meter.add(&data),
                Err(_) => end.discard.cancel(),
            },
            _ = end.discard.cancelled() => {}
        }
    }
}

/// Carries client messages to the process (see [`next_input`]) until the
/// client closes, breaks the protocol, or goes silent. Once the input is
/// closed (by the client, or because the process stopped reading for good),
/// further input is dropped.
async fn pump_input<Rx>(
    mut rx: Rx,
    protocol: Protocol,
    mut stdin: Option<ProcessInput>,
    pong_timeout: Duration,
    progress: Progress,
    meter: Meter,
) -> Ending
where
    Rx: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut stdin_open = true;
    loop {
        match next_input(&mut rx, protocol, pong_timeout, &progress).await {
            Err(ending) => return ending,
            Ok(Input::Stdin(data)) => {
                if let Some(input) = stdin.as_mut().filter(|_| stdin_open) {
                    if input.write_all(&data).await.is_err() {
                        stdin = None;
                    } else {
                        meter.add(&data);
                    }
                }
            }
            Ok(Input::EndStdin) => {
                if let Some(input) = stdin.as_mut().filter(|_| stdin_open) {
                    stdin_open = false;
                    // A pipe closes; a terminal gets ^D and stays, for resizes.
                    if input.end().await {
                        stdin = None;
                    }
                }
            }
            Ok(Input::Resize(size)) => {
                if stdin.as_ref().is_some_and(|input| input.resize(size)) {
                    meter.resized(size);
                } else {
                    tracing::debug!("resize ignored: not a terminal session");
                }
            }
            Ok(Input::Close | Input::Ignored(_)) => {}
        }
    }
}

/// Counts the bytes of one direction, marks the session active, and
/// records them when the session is recorded.
#[derive(Debug, Clone)]
struct Meter {
    bytes: Arc<AtomicU64>,
    activity: Progress,
    metric: prometheus_client::metrics::counter::Counter,
    recorder: Option<Arc<Recorder>>,
    direction: Direction,
}

impl Meter {
    fn new(
        bytes: &Arc<AtomicU64>,
        activity: &Progress,
        metric: prometheus_client::metrics::counter::Counter,
        recorder: Option<Arc<Recorder>>,
        direction: Direction,
    ) -> Self {
        Self { bytes: bytes.clone(), activity: activity.clone(), metric, recorder, direction }
    }

    /// Counts `data` here and in the metrics, as it flows.
    fn add(&self, data: &[u8]) {
        let n = data.len() as u64;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.activity.mark();
        self.metric.inc_by(n);
        if let Some(recorder) = &self.recorder {
            match self.direction {
                Direction::out => recorder.output(data),
                Direction::r#in => recorder.input(data),
            }
        }
    }

    /// The terminal was resized.
    fn resized(&self, size: crate::spec::TerminalSize) {
        if let Some(recorder) = &self.recorder {
            recorder.resize(size);
        }
    }
}
