//! One client's socket, whatever it is attached to: the writer task that
//! sends messages and keepalive pings and judges the client alive by what
//! it takes, reading the next meaningful message, and the Close frame that
//! tells the client how its session ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use std::future::poll_fn;
use std::process::ExitStatus;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::queue::Receiver;
use crate::websocket::{Hold, Input, Protocol};

/// Messages queued for one client's writer.
pub(super) const OUTGOING_QUEUE: usize = 4;
/// How long the client gets to answer our Close.
pub(super) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ending {
    /// The process exited and all its output was sent.
    Exited(#[serde(with = "raw_status")] ExitStatus),
    /// The client sent Close.
    ClientClosed,
    /// The connection broke or the client stopped answering pings.
    ClientGone(String),
    /// The client sent a message over `max_message_size`.
    MessageTooBig,
    /// The client broke the WebSocket protocol.
    ProtocolError(String),
    /// The server is shutting down.
    Shutdown,
    /// Nothing went either way for `idle_timeout`.
    Idle,
    /// The session reached `max_session_duration`.
    TimeLimit,
    /// Waiting for the process failed.
    Internal(String),
    /// An attached client fell further behind than the session's history.
    TooSlow,
}

/// An exit status as the number `wait` gives.
pub(crate) mod raw_status {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    pub(crate) fn serialize<S: serde::Serializer>(status: &ExitStatus, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(status.into_raw())
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ExitStatus, D::Error> {
        <i32 as serde::Deserialize>::deserialize(d).map(ExitStatus::from_raw)
    }
}

pub(super) fn close_frame(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// The messages that end a session for a reason other than its process's
/// exit: a Close frame saying why, or nothing when the client closed or
/// vanished (the protocol answers a client's Close itself).
pub(super) fn farewell(ending: &Ending) -> Vec<Message> {
    match ending {
        Ending::Shutdown => vec![close_frame(CloseCode::Away, "server shutting down")],
        Ending::Idle => vec![close_frame(CloseCode::Policy, "idle timeout")],
        Ending::TimeLimit => vec![close_frame(CloseCode::Policy, "session time limit")],
        Ending::TooSlow => vec![close_frame(CloseCode::Policy, "too slow")],
        Ending::MessageTooBig => vec![close_frame(CloseCode::Size, "message too big")],
        Ending::ProtocolError(_) => vec![close_frame(CloseCode::Protocol, "protocol error")],
        Ending::Internal(_) => vec![close_frame(CloseCode::Error, "internal error")],
        Ending::ClientClosed | Ending::ClientGone(_) | Ending::Exited(_) => Vec::new(),
    }
}

/// The next message of the client that means something (see
/// [`Protocol::input`]), or how reading ended: the client closed, broke the
/// protocol, or was silent for `pong_timeout` while taking no output either
/// (pings go out every `ping_interval`, so a live client is never that
/// silent).
pub(super) async fn next_input<Rx>(
    rx: &mut Rx,
    protocol: Protocol,
    pong_timeout: Duration,
    progress: &Progress,
) -> Result<Input, Ending>
where
    Rx: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let message = match timeout(pong_timeout, rx.next()).await {
            // A client still taking output is alive, even if its pong is
            // stuck behind a long backlog.
            Err(_) if progress.within(pong_timeout) => continue,
            Err(_) => return Err(Ending::ClientGone("no answer to pings".into())),
            Ok(None) => return Err(Ending::ClientGone("connection closed without a Close frame".into())),
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))) => {
                return Err(Ending::MessageTooBig);
            }
            Ok(Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)))) => {
                return Err(Ending::ClientGone("connection reset".into()));
            }
            Ok(Some(Err(err @ (WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_))))) => {
                return Err(Ending::ProtocolError(err.to_string()));
            }
            Ok(Some(Err(err))) => return Err(Ending::ClientGone(err.to_string())),
        };
        match protocol.input(message) {
            Input::Close => return Err(Ending::ClientClosed),
            Input::Ignored(why) => tracing::debug!(why, "client message ignored"),
            input => return Ok(input),
        }
    }
}

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterStop {
    /// It sent its last message or closed the sink, as asked.
    Done,
    /// The socket failed.
    Failed,
    /// The client took nothing for `pong_timeout` while something waited
    /// for it.
    Stalled,
}

/// How the writer ended: stopped, or frozen for a hand-over with the sink
/// and everything it had not handed to the sink yet.
#[derive(Debug)]
pub(super) enum WriterEnd<Tx> {
    /// See [`WriterStop`].
    Stopped(WriterStop),
    /// Stopped where another program can go on (see [`write_loop`]).
    Frozen {
        /// The sink, with nothing of its own left to flush beyond what a
        /// holding connection keeps.
        tx: Tx,
        /// A message it had not handed to the sink yet, then the queue.
        in_hand: Option<Message>,
        queue: Receiver<Message>,
        /// How it was to end, if it had not read that yet.
        finish: oneshot::Receiver<Option<Message>>,
    },
}

/// Sends queued messages and keepalive pings until it has sent a Close
/// from the queue, or `finish` says how to end: with a Close frame of its
/// own (ahead of any queued output), or by just closing the sink, which also
/// flushes the protocol's answer to a client's Close.
///
/// Liveness is judged by the client taking data, not by what it sends: a
/// message that cannot be handed to the socket for `pong_timeout` (the
/// socket's buffers and our own are full) means the client is gone, however
/// many pings it sends meanwhile.
///
/// Once `freeze` is cancelled it stops between steps, sets `hold` (the
/// connection keeps whatever the sink writes from then on: see
/// [`Conn`](crate::websocket::Conn)) and gives back the sink and what it
/// had not handed to it: the connection is being handed over.
pub(super) fn write_loop<Tx>(
    tx: Tx,
    queue: Receiver<Message>,
    finish: oneshot::Receiver<Option<Message>>,
    keepalive: (Duration, Duration),
    progress: Progress,
    (freeze, hold): (CancellationToken, Hold),
) -> impl std::future::Future<Output = WriterEnd<Tx>>
where
    Tx: Sink<Message, Error = WsError> + Unpin,
{
    // Made here, not in the block: what it takes is held once, by it.
    let writing = write_until(tx, queue, finish, keepalive, progress, freeze);
    async move {
        let end = writing.await;
        if matches!(end, WriterEnd::Frozen { .. }) {
            hold.set();
        }
        end
    }
}

async fn write_until<Tx>(
    mut tx: Tx,
    mut queue: Receiver<Message>,
    mut finish: oneshot::Receiver<Option<Message>>,
    (ping_interval, pong_timeout): (Duration, Duration),
    progress: Progress,
    freeze: CancellationToken,
) -> WriterEnd<Tx>
where
    Tx: Sink<Message, Error = WsError> + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Output carried from a program before this one goes out first.
    match step(&freeze, pong_timeout, poll_fn(|cx| tx.poll_flush_unpin(cx))).await {
        Step::Done => {}
        Step::Frozen => return WriterEnd::Frozen { tx, in_hand: None, queue, finish },
        Step::Stop(stop) => return WriterEnd::Stopped(stop),
    }
    loop {
        // Pings go before queued output, so a steady stream of output
        // cannot starve them.
        let message = tokio::select! {
            biased;
            _ = freeze.cancelled() => return WriterEnd::Frozen { tx, in_hand: None, queue, finish },
            last = &mut finish => match last {
                Ok(Some(close)) => close,
                Ok(None) | Err(_) => break,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
            message = queue.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let is_close = matches!(message, Message::Close(_));
        let is_output = matches!(message, Message::Binary(_) | Message::Text(_));
        match deliver(&mut tx, message, pong_timeout, &freeze).await {
            Delivery::Sent if is_close => return WriterEnd::Stopped(WriterStop::Done),
            Delivery::Sent if is_output => progress.mark(),
            Delivery::Sent => {}
            Delivery::Stop(stop) => return WriterEnd::Stopped(stop),
            Delivery::Frozen(in_hand) => return WriterEnd::Frozen { tx, in_hand, queue, finish },
        }
    }
    match timeout(pong_timeout, tx.close()).await {
        Ok(_) => WriterEnd::Stopped(WriterStop::Done),
        Err(_) => WriterEnd::Stopped(WriterStop::Stalled),
    }
}

/// What handing a message to the socket came to.
enum Delivery {
    Sent,
    Stop(WriterStop),
    /// Frozen; the message, if the sink had not taken it yet.
    Frozen(Option<Message>),
}

/// What one step of a delivery came to.
enum Step {
    Done,
    Stop(WriterStop),
    Frozen,
}

/// Waits for `step` of the sink, at most `pong_timeout`, unless frozen
/// first.
async fn step(
    freeze: &CancellationToken,
    pong_timeout: Duration,
    step: impl std::future::Future<Output = Result<(), WsError>>,
) -> Step {
    tokio::select! {
        biased;
        result = timeout(pong_timeout, step) => match result {
            Err(_) => Step::Stop(WriterStop::Stalled),
            Ok(Ok(())) => Step::Done,
            Ok(Err(_)) => Step::Stop(WriterStop::Failed),
        },
        _ = freeze.cancelled() => Step::Frozen,
    }
}

/// Hands `message` to the socket, waiting at most `pong_timeout` for the
/// client to take what is ahead of it. When our write buffer is full of what
/// the client has not taken (pongs to a flood of its pings), it waits for the
/// client to take it, then tries again. Each step is one the sink can stop
/// at for a hand-over, and the message is given back if the sink had not
/// taken it.
async fn deliver<Tx>(tx: &mut Tx, message: Message, pong_timeout: Duration, freeze: &CancellationToken) -> Delivery
where
    Tx: Sink<Message, Error = WsError> + Unpin,
{
    loop {
        match step(freeze, pong_timeout, poll_fn(|cx| tx.poll_ready_unpin(cx))).await {
            Step::Done => {}
            Step::Stop(stop) => return Delivery::Stop(stop),
            Step::Frozen => return Delivery::Frozen(Some(message)),
        }
        match tx.start_send_unpin(message.clone()) {
            Ok(()) => break,
            Err(WsError::WriteBufferFull(_)) => {
                match step(freeze, pong_timeout, poll_fn(|cx| tx.poll_flush_unpin(cx))).await {
                    Step::Done => {}
                    Step::Stop(stop) => return Delivery::Stop(stop),
                    Step::Frozen => return Delivery::Frozen(Some(message)),
                }
            }
            Err(_) => return Delivery::Stop(WriterStop::Failed),
        }
    }
    match step(freeze, pong_timeout, poll_fn(|cx| tx.poll_flush_unpin(cx))).await {
        Step::Done => Delivery::Sent,
        Step::Stop(stop) => Delivery::Stop(stop),
        Step::Frozen => Delivery::Frozen(None),
    }
}

/// When the writer last handed a message to the socket: a client that keeps
/// taking output is alive even while its pong waits behind that output.
#[derive(Debug, Clone)]
pub(super) struct Progress {
    origin: std::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self { origin: std::time::Instant::now(), last_ms: Arc::default() }
    }
}

impl Progress {
    /// Progress last marked at `at` (an instant in the past).
    pub(super) fn marked_at(at: Instant) -> Self {
        Self { origin: at.into_std().min(std::time::Instant::now()), last_ms: Arc::default() }
    }

    pub(super) fn mark(&self) {
        self.last_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn within(&self, window: Duration) -> bool {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last) < window
    }

    /// When it was last marked.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Instant::from_std(self.origin).checked_add(last)
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
