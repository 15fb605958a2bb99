//! The bridge between a WebSocket and a process, in either protocol.
//!
//! A plain session goes through three phases:
//!
//! 1. **Start** ([`Running::start`]): three loops run at once: output
//!    (each output of the process → socket, through a small bounded queue),
//!    input (socket → stdin, resizes) and the writer, which owns the
//!    socket's sending half and also sends keepalive pings. Each blocks when
//!    the other side is slow, so a slow client slows the process and memory
//!    stays flat.
//! 2. **Running** ([`Running::until_end`]), until one side ends: the
//!    process exited and all its output is queued, the client left or broke
//!    the protocol, a limit was reached, or the server shuts down. The
//!    [`Ending`] says which.
//! 3. **Ending** ([`Running::end`]): the other side is ended, both at once:
//!    the client gets the exit status or a Close frame saying why, and a
//!    process whose client is gone is [stopped](super::lifecycle::stop).
//!    Then nothing of the process is left, and the [`Outcome`] says what
//!    happened.
//!
//! The bridge is written against `Sink`/`Stream`, not a socket type, so it
//! runs on in-memory channels (see the tests below) as on a socket.

use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::{BoxFuture, Fuse};
use futures_util::{FutureExt, Sink, Stream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::detached::record::Recorder;
use super::lifecycle::{ChunkSize, OutputTail, stop};
use super::process::{Feed, Process, ProcessOutput};
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
    process: Process,
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
    let mut running = Running::start(process, protocol, tx, rx, context, recorder);
    let ending = running.until_end(context).await;
    running.end(ending, &context.settings).await
}

/// A session whose loops run.
struct Running<'a> {
    process: Process,
    protocol: Protocol,
    /// The writer task, which owns the socket's sending half.
    writer: AbortOnDropHandle<WriterStop>,
    /// What the writer sends, in order.
    queue: mpsc::Sender<Message>,
    /// Tells the writer how to stop; taken at the end.
    finish: Option<oneshot::Sender<Option<Message>>>,
    /// The output loops, which return the outputs, still open.
    output: AbortOnDropHandle<Vec<ProcessOutput>>,
    /// The input loop: how the client went, when it did.
    input: Fuse<BoxFuture<'a, Ending>>,
    /// Cancelled once the leader has exited: from then on, the output
    /// loops wait for leftovers only within bounds (see [`OutputTail`]).
    exited: CancellationToken,
    /// Cancelled once output has nowhere to go: it is read and dropped.
    discard: CancellationToken,
    /// Any input or output, for `idle_timeout`.
    activity: Progress,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    recorder: Option<Arc<Recorder>>,
    /// The leader's status, once it exited.
    status: Option<ExitStatus>,
    /// Outputs at their end, kept open until the process is reaped: the
    /// last close of a terminal's master side hangs the terminal up, which
    /// would send SIGHUP to a process that is still on its way out. `None`
    /// while the output loops run.
    drained: Option<Vec<ProcessOutput>>,
}

impl<'a> Running<'a> {
    /// Starts the writer, the output loops and the input loop.
    fn start<Tx, Rx>(
        mut process: Process,
        protocol: Protocol,
        tx: Tx,
        rx: Rx,
        context: &SessionContext,
        recorder: Option<Arc<Recorder>>,
    ) -> Self
    where
        Tx: Sink<Message, Error = WsError> + Unpin + Send + 'static,
        Rx: Stream<Item = Result<Message, WsError>> + Unpin + Send + 'a,
    {
        let (settings, metrics) = (&*context.settings, &context.metrics);
        let bytes_in = Arc::new(AtomicU64::new(0));
        let bytes_out = Arc::new(AtomicU64::new(0));
        let exited = CancellationToken::new();
        let discard = CancellationToken::new();
        let (queue, queued) = mpsc::channel(OUTGOING_QUEUE);
        let (finish, finished) = oneshot::channel();
        let progress = Progress::default();
        let activity = Progress::default();
        activity.mark();
        let writer = AbortOnDropHandle::new(tokio::spawn(write_loop(
            tx,
            queued,
            finished,
            (settings.ping_interval, settings.pong_timeout),
            progress.clone(),
        )));
        let group = process.group();
        let pumps: Vec<_> = process
            .outputs
            .drain(..)
            .map(|output| {
                let out = Outgoing { protocol, queue: queue.clone(), discard: discard.clone() };
                let tail = OutputTail::new(exited.clone(), group.clone(), settings.kill_grace);
                let meter =
                    Meter::new(&bytes_out, &activity, metrics.bytes(Direction::out), recorder.clone(), Direction::out);
                pump_output(output, tail, out, meter)
            })
            .collect();
        let output = AbortOnDropHandle::new(tokio::spawn(futures_util::future::join_all(pumps)));
        let input_meter =
            Meter::new(&bytes_in, &activity, metrics.bytes(Direction::r#in), recorder.clone(), Direction::r#in);
        let input =
            pump_input(rx, protocol, Feed::new(process.stdin.take()), settings.pong_timeout, progress, input_meter)
                .boxed()
                .fuse();
        Self {
            process,
            protocol,
            writer,
            queue,
            finish: Some(finish),
            output,
            input,
            exited,
            discard,
            activity,
            bytes_in,
            bytes_out,
            recorder,
            status: None,
            drained: None,
        }
    }

    /// Runs until one side ends, and says how.
    async fn until_end(&mut self, context: &SessionContext) -> Ending {
        let settings = &*context.settings;
        let time_limit = settings.max_session_duration.map(|limit| Instant::now() + limit);
        let mut idle_check = settings.idle_timeout.map(|idle| Instant::now() + idle);
        loop {
            tokio::select! {
                result = self.process.exited(), if self.status.is_none() => match result {
                    Ok(status) => {
                        self.status = Some(status);
                        self.exited.cancel();
                    }
                    Err(err) => return Ending::Internal(err.to_string()),
                },
                outputs = &mut self.output, if self.drained.is_none() => {
                    self.drained = Some(outputs.unwrap_or_default());
                }
                ending = &mut self.input => return ending,
                // The writer only stops early when the socket failed or the
                // client took nothing for pong_timeout, which the input side
                // may not see (it waits on a full stdin, or pings keep coming).
                stopped = &mut self.writer => return Ending::ClientGone(match stopped {
                    Ok(WriterStop::Stalled) => "client took no data for pong_timeout".into(),
                    _ => "sending failed".into(),
                }),
                _ = context.shutdown.cancelled() => return Ending::Shutdown,
                // Once the process has exited, its output is drained (bounded
                // by kill_grace) and the exit reported; limits no longer apply.
                _ = sleep_until_some(time_limit), if self.status.is_none() => return Ending::TimeLimit,
                _ = sleep_until_some(idle_check), if self.status.is_none() => {
                    let idle = settings.idle_timeout.expect("checks only with a timeout");
                    match self.activity.idle_since() {
                        Some(last) if last + idle > Instant::now() => idle_check = Some(last + idle),
                        _ => return Ending::Idle,
                    }
                }
            }
            if let (Some(status), Some(_)) = (self.status, &self.drained) {
                return Ending::Exited(status);
            }
        }
    }

    /// Ends the side that is still there: the client gets the exit status
    /// (behind all the output) or a Close frame saying why the session
    /// ended; a process whose client is gone is stopped. Then whatever is
    /// left of the process is killed and reaped.
    ///
    /// It borrows the session rather than taking it: a session's task holds
    /// its future for the whole session, and a moved copy of every field
    /// would make it larger by as much.
    async fn end(&mut self, ending: Ending, settings: &SessionSettings) -> Outcome {
        let Self {
            process,
            protocol,
            writer,
            queue,
            finish,
            input,
            discard,
            bytes_in,
            bytes_out,
            recorder,
            status,
            drained,
            ..
        } = self;
        let protocol = *protocol;
        // A process the kernel killed for memory is said to be (SPEC §8).
        let oom = matches!(ending, Ending::Exited(status) if process.oom_killed(status));
        if let (Some(recorder), Ending::Exited(status)) = (&recorder, &ending) {
            recorder.exited(*status, oom);
        }
        let goodbye = match &ending {
            Ending::Exited(status) => protocol.exit(*status, oom),
            other => farewell(other),
        };
        if !matches!(ending, Ending::Exited(_)) {
            // Keep draining the pipe while the process is stopped, so it
            // meets `kill_signal` rather than a write error.
            discard.cancel();
        }
        let stop_process = async {
            if status.is_none() {
                *status = stop(process, settings).await;
            }
        };
        let closing = async {
            if matches!(ending, Ending::ClientGone(_)) || writer.is_finished() {
                return;
            }
            let (exited, finish) = (matches!(ending, Ending::Exited(_)), finish.take().expect("ends once"));
            close_socket(exited, goodbye, queue, finish, writer, input).await;
        };
        tokio::join!(stop_process, closing);
        // Whatever the leader left behind in its group (or, on a terminal,
        // its session) does not outlive the session.
        process.finish().await;
        drop(drained.take());
        Outcome {
            ending,
            status: *status,
            bytes_in: bytes_in.load(Ordering::Relaxed),
            bytes_out: bytes_out.load(Ordering::Relaxed),
            oom,
        }
    }
}

/// Where an output loop sends what it reads.
#[derive(Clone)]
struct Outgoing {
    protocol: Protocol,
    queue: mpsc::Sender<Message>,
    /// Set when the output has nowhere to go any more.
    discard: CancellationToken,
}

/// Copies an output to the queue, one message per read, until its end (see
/// [`OutputTail`]); once the output has nowhere to go, it is read and
/// dropped. Returns the output, still open, for the caller to close when
/// the process is gone.
async fn pump_output(mut pipe: ProcessOutput, mut tail: OutputTail, out: Outgoing, meter: Meter) -> ProcessOutput {
    while let Some(data) = tail.next(&mut pipe, ChunkSize::Sent).await {
        if out.discard.is_cancelled() {
            continue;
        }
        tokio::select! {
            sent = out.queue.send(out.protocol.output(pipe.stream, data.clone())) => match sent {
                Ok(()) => meter.add(&data),
                Err(_) => out.discard.cancel(),
            },
            _ = out.discard.cancelled() => {}
        }
    }
    pipe
}

/// Carries client messages to the process (see [`next_input`]) until the
/// client closes, breaks the protocol, or goes silent.
async fn pump_input<Rx>(
    mut rx: Rx,
    protocol: Protocol,
    mut feed: Feed,
    pong_timeout: Duration,
    progress: Progress,
    meter: Meter,
) -> Ending
where
    Rx: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match next_input(&mut rx, protocol, pong_timeout, &progress).await {
            Err(ending) => return ending,
            Ok(Input::Stdin(data)) => {
                if feed.write(&data).await {
                    meter.add(&data);
                }
            }
            Ok(Input::EndStdin) => feed.end().await,
            Ok(Input::Resize(size)) => {
                if feed.resize(size) {
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

/// The bridge on in-memory channels instead of a socket, with real
/// processes: what it sends, in what order, and what becomes of the process.
#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::SinkExt;
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    use tokio_util::sync::{CancellationToken, PollSender};

    use super::{Outcome, bridge};
    use crate::metrics::Metrics;
    use crate::session::process::{Process, SpawnOptions};
    use crate::session::{Ending, SessionContext, SessionSettings};
    use crate::spec::CommandSpec;
    use crate::websocket::Protocol;

    /// The test's end of the channels: what it sends reaches the bridge as
    /// the client's messages; what the bridge sends arrives here.
    struct Client {
        to_bridge: Option<mpsc::Sender<Result<Message, WsError>>>,
        from_bridge: mpsc::Receiver<Message>,
    }

    impl Client {
        async fn send(&self, message: Message) {
            self.to_bridge.as_ref().expect("still connected").send(Ok(message)).await.expect("bridge reads");
        }

        /// The next message that is not a ping.
        async fn next(&mut self) -> Option<Message> {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), self.from_bridge.recv()).await {
                    Ok(Some(Message::Ping(_))) => {}
                    Ok(other) => return other,
                    Err(_) => panic!("nothing from the bridge for 10 s"),
                }
            }
        }
    }

    fn context(settings: SessionSettings) -> SessionContext {
        SessionContext { settings: settings.into(), metrics: Metrics::new(), shutdown: CancellationToken::new() }
    }

    fn settings() -> SessionSettings {
        SessionSettings::builder().kill_grace(Duration::from_millis(500)).build().expect("valid settings")
    }

    /// Starts `command` and bridges it to channels that hold `capacity`
    /// messages on the way to the client; the bridge runs in a task.
    fn start(
        command: &[&str],
        capacity: usize,
        context: SessionContext,
    ) -> (Client, i32, tokio::task::JoinHandle<Outcome>) {
        let spec = CommandSpec::new(command[0], command[1..].iter().copied());
        let process = Process::spawn(&spec, SpawnOptions::default()).expect("spawn");
        let pid = process.id();
        let (to_client, from_bridge) = mpsc::channel(capacity);
        let (to_bridge, mut from_client) = mpsc::channel(16);
        let tx = PollSender::new(to_client).sink_map_err(|_| WsError::ConnectionClosed);
        let rx = futures_util::stream::poll_fn(move |cx| from_client.poll_recv(cx));
        let session = tokio::spawn(async move { bridge(process, Protocol::Raw, tx, rx, &context, None).await });
        (Client { to_bridge: Some(to_bridge), from_bridge }, pid, session)
    }

    /// Whether `pid` is gone, reaped (not a zombie).
    fn gone(pid: i32) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn input_is_echoed_and_a_client_close_stops_the_process() {
        let (mut client, pid, session) = start(&["/bin/cat"], 4, context(settings()));
        client.send(Message::Binary(Bytes::from_static(b"hello"))).await;
        assert_eq!(client.next().await, Some(Message::Binary(Bytes::from_static(b"hello"))));
        client.send(Message::Close(None)).await;
        let outcome = session.await.expect("bridge");
        assert_eq!(outcome.ending, Ending::ClientClosed);
        // `cat` met `kill_signal` (SIGINT by default).
        assert_eq!(outcome.status.and_then(|s| s.signal()), Some(rustix::process::Signal::INT.as_raw()));
        assert_eq!((outcome.bytes_in, outcome.bytes_out), (5, 5));
        assert!(gone(pid), "process {pid} outlived its session");
    }

    #[tokio::test]
    async fn all_output_arrives_before_the_exit_status() {
        let script = "head -c 300000 /dev/zero; exit 3";
        let (mut client, pid, session) = start(&["/bin/sh", "-c", script], 1, context(settings()));
        let mut received = 0;
        let close = loop {
            match client.next().await {
                Some(Message::Binary(data)) => {
                    received += data.len();
                    // A slow client: the process waits for it.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Some(Message::Close(frame)) => break frame.expect("a Close frame with a status"),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(received, 300_000);
        assert_eq!((close.code, close.reason.as_str()), (CloseCode::from(4003), "exit 3"));
        let outcome = session.await.expect("bridge");
        assert_eq!(outcome.status.and_then(|s| s.code()), Some(3));
        assert!(matches!(outcome.ending, Ending::Exited(_)), "{:?}", outcome.ending);
        assert_eq!(outcome.bytes_out, 300_000);
        assert!(gone(pid));
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_holds_the_process_back() {
        let (mut client, pid, session) = start(&["/usr/bin/yes"], 1, context(settings()));
        // `yes` writes gigabytes a second when nothing holds it back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The connection drops without a Close.
        client.to_bridge = None;
        let outcome = session.await.expect("bridge");
        assert!(matches!(outcome.ending, Ending::ClientGone(_)), "{:?}", outcome.ending);
        // What was queued: the channel's message, the writer's, the
        // outgoing queue's and the one an output loop holds, each at most
        // one read (64 KiB).
        let bound = (1 + 1 + super::OUTGOING_QUEUE as u64 + 1) * crate::session::MAX_OUTPUT_CHUNK as u64;
        assert!(outcome.bytes_out <= bound, "{} bytes queued for a client that read none", outcome.bytes_out);
        assert!(gone(pid));
        drop(client);
    }

    #[tokio::test]
    async fn a_leftover_outside_the_group_that_keeps_writing_does_not_hold_the_session() {
        // On a host without cgroups, a daemon that left the group (setsid)
        // keeps the output pipe full: the session still ends, with the
        // leader's status.
        let script = "setsid sh -c 'echo pid $$; exec yes' & sleep 0.3; exit 0";
        let (mut client, _, session) = start(&["/bin/sh", "-c", script], 4, context(settings()));
        let mut leftover = None;
        let mut seen = Vec::new();
        let close = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match client.next().await {
                    Some(Message::Binary(data)) if leftover.is_none() => {
                        seen.extend_from_slice(&data);
                        let text = String::from_utf8_lossy(&seen);
                        let pid = text.lines().find_map(|l| l.strip_prefix("pid ")?.trim().parse::<i32>().ok());
                        leftover = pid.map(Leftover);
                    }
                    // A slow client: the pipe never runs empty.
                    Some(Message::Binary(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                    other => return other,
                }
            }
        })
        .await;
        let leftover = leftover.expect("the daemon said its pid");
        let close = close.unwrap_or_else(|_| panic!("the session waited on daemon {} for 20 s", leftover.0));
        match close {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.reason.as_str(), "exit 0"),
            other => panic!("expected the exit status, got {other:?}"),
        }
        let outcome = session.await.expect("bridge");
        assert_eq!(outcome.status.and_then(|s| s.code()), Some(0));
    }

    /// A process the test started outside any group it can reach otherwise,
    /// killed when the test ends, however it ends.
    struct Leftover(i32);

    impl Drop for Leftover {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    #[tokio::test]
    async fn an_idle_session_is_closed_with_1008() {
        let settings = SessionSettings::builder()
            .kill_grace(Duration::from_millis(500))
            .idle_timeout(Some(Duration::from_millis(300)))
            .build()
            .expect("valid settings");
        let (mut client, pid, session) = start(&["/bin/sleep", "60"], 4, context(settings));
        match client.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::Policy, "idle timeout"))
            }
            other => panic!("expected a Close frame, got {other:?}"),
        }
        // The client answers the Close, as a WebSocket client does.
        client.send(Message::Close(None)).await;
        let outcome = session.await.expect("bridge");
        assert_eq!(outcome.ending, Ending::Idle);
        assert_eq!(outcome.status.and_then(|s| s.signal()), Some(rustix::process::Signal::INT.as_raw()));
        assert!(gone(pid));
    }
}
