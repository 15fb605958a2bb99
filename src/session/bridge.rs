//! The bridge between a WebSocket and a process, in either protocol: a
//! plain session, on the one session engine.
//!
//! The process side ([`Shared::run`]) reads each output into the session's
//! history (for a plain session, at most one read ahead of the client) and
//! feeds the input; the socket side ([`attach`]) follows the history to the
//! client through a small bounded queue, reads the client's input, and
//! sends keepalive pings. Each blocks when the other side is slow, so a
//! slow client slows the process and memory stays flat. When one side ends
//! (the process exited and all its output is sent, the client left or broke
//! the protocol, a limit was reached, the server shuts down) the other is
//! ended: the client gets the exit status or a Close frame saying why, and a
//! process whose client is gone is stopped (`lifecycle::signal_stop`, then
//! `lifecycle::stop_by`). Then
//! nothing of the process is left, and the [`Outcome`] says what happened.
//!
//! The bridge is written against `Sink`/`Stream`, not a socket type, so it
//! runs on in-memory channels (see the tests below) as on a socket.

use std::sync::Arc;

use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::SessionContext;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attachment::{Joining, Start, attach};
use super::detached::record::Recorder;
use super::process::Process;
use super::shared::{About, Engine, Kind, Outcome, Run, Shared};
use crate::spec::{Role, TerminalSize};
use crate::websocket::{Hold, Protocol};

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
    // A bridge runs to its end: its halves could not be handed over.
    let context = SessionContext { handover: CancellationToken::new(), ..context.clone() };
    let metrics = context.metrics.clone();
    let about = About { number: 0, command: String::new(), peer: String::new(), started: Instant::now() };
    let shared = Shared::new(None, about, Kind::Plain, &mut process, TerminalSize::default(), recorder, metrics);
    // The client is the writer before any output is read, so it loses none.
    let writer = shared.writer();
    let joining = Joining { role: Role::Writer, start: Start::Since(Some(0)), wants_info: false };
    let engine = Engine::start(process, &context.settings);
    let run = shared.clone().run(engine, context.settings.clone(), context.shutdown.clone(), context.handover.clone());
    let attached = attach(shared, (tx, rx, Hold::new()), protocol, joining, Some(writer), context.clone());
    match tokio::join!(run, attached).0 {
        Run::Ended(outcome) => outcome,
        Run::Frozen(_) => unreachable!("a bridge's hand-over token is never cancelled"),
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
        SessionContext {
            settings: settings.into(),
            metrics: Metrics::new(),
            shutdown: CancellationToken::new(),
            handover: CancellationToken::new(),
        }
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
        let bound =
            (1 + 1 + crate::session::socket::OUTGOING_QUEUE as u64 + 1) * crate::session::MAX_OUTPUT_CHUNK as u64;
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
