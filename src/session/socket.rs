//! One client's socket, whatever it is attached to: the writer task that
//! sends messages and keepalive pings and judges the client alive by what
//! it takes, reading the next meaningful message, and the Close frame that
//! tells the client how its session ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::process::ExitStatus;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::websocket::{Input, Protocol};

/// Messages queued for one client's writer.
pub(super) const OUTGOING_QUEUE: usize = 4;
/// How long the client gets to answer our Close.
pub(super) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The process exited and all its output was sent.
    Exited(ExitStatus),
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

/// Sends queued messages and keepalive pings until it has sent a Close
/// from the queue, or `finish` says how to end: with a Close frame of its
/// own (ahead of any queued output), or by just closing the sink, which also
/// flushes the protocol's answer to a client's Close.
///
/// Liveness is judged by the client taking data, not by what it sends: a
/// message that cannot be handed to the socket for `pong_timeout` (the
/// socket's buffers and our own are full) means the client is gone, however
/// many pings it sends meanwhile.
pub(super) async fn write_loop<Tx>(
    mut tx: Tx,
    mut queue: mpsc::Receiver<Message>,
    mut finish: oneshot::Receiver<Option<Message>>,
    (ping_interval, pong_timeout): (Duration, Duration),
    progress: Progress,
) -> WriterStop
where
    Tx: Sink<Message, Error = WsError> + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Pings go before queued output, so a steady stream of output
        // cannot starve them.
        let message = tokio::select! {
            biased;
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
        match deliver(&mut tx, message, pong_timeout).await {
            Ok(()) if is_close => return WriterStop::Done,
            Ok(()) if is_output => progress.mark(),
            Ok(()) => {}
            Err(stop) => return stop,
        }
    }
    match timeout(pong_timeout, tx.close()).await {
        Ok(_) => WriterStop::Done,
        Err(_) => WriterStop::Stalled,
    }
}

/// Hands `message` to the socket, waiting at most `pong_timeout` for the
/// client to take what is ahead of it. When our write buffer is full of what
/// the client has not taken (pongs to a flood of its pings), it waits for the
/// client to take it, then tries again.
async fn deliver<Tx>(tx: &mut Tx, message: Message, pong_timeout: Duration) -> Result<(), WriterStop>
where
    Tx: Sink<Message, Error = WsError> + Unpin,
{
    loop {
        match timeout(pong_timeout, tx.send(message.clone())).await {
            Err(_) => return Err(WriterStop::Stalled),
            Ok(Ok(())) => return Ok(()),
            Ok(Err(WsError::WriteBufferFull(_))) => match timeout(pong_timeout, tx.flush()).await {
                Err(_) => return Err(WriterStop::Stalled),
                Ok(Err(_)) => return Err(WriterStop::Failed),
                Ok(Ok(())) => {}
            },
            Ok(Err(_)) => return Err(WriterStop::Failed),
        }
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

/// The socket's last steps once a session's `ending` is known: after an
/// exit, `goodbye` (the exit status and the Close) goes through the queue,
/// behind all the output, and is waited for as long as the client reads;
/// otherwise the Close jumps the queue and the close handshake is bounded.
/// Reading goes on meanwhile, so a client that leaves is noticed; then it
/// reads until the client answers the Close, so unread input does not turn
/// the close into a reset that could cost the client the end of its output.
pub(super) async fn close_socket<I>(
    exited: bool,
    goodbye: Vec<Message>,
    queue: &mpsc::Sender<Message>,
    finish: oneshot::Sender<Option<Message>>,
    writer: &mut tokio_util::task::AbortOnDropHandle<WriterStop>,
    input: &mut I,
) where
    I: futures_util::future::FusedFuture + Unpin,
{
    let flush = async {
        if exited {
            for message in goodbye {
                let _ = queue.send(message).await;
            }
        } else {
            let _ = finish.send(goodbye.into_iter().next());
        }
        let _ = writer.await;
    };
    let bound = if exited { Duration::MAX } else { CLOSE_HANDSHAKE_TIMEOUT };
    tokio::select! {
        _ = timeout(bound, flush) => {}
        _ = &mut *input, if !input.is_terminated() => return,
    }
    if !input.is_terminated() {
        let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, input).await;
    }
}
