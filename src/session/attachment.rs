//! [`attach`]: one connection to a session, as writer or observer: the
//! socket side of the engine (see [`Shared`]).
//!
//! Three loops run for a connection: following the session's output into a
//! small queue, the writer task that sends the queue and keepalive pings,
//! and reading the client's input. Each stops, when the session context's
//! `handover` token is cancelled, at a point the program after this one can
//! go on from ([`FrozenAttachment`]): the output offset it reached, the
//! messages not yet handed to the socket, the input read but not yet taken.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::FusedFuture;
use futures_util::{FutureExt, Sink, Stream};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::SessionContext;
use super::detached::history::{Hidden, Read, Viewer};
use super::detached::transfer::Span;
use super::queue::{self, Sender};
use super::shared::{Control, Ended, Kind, Shared, StartPoint, WriterGuard};
use super::socket::{
    CLOSE_HANDSHAKE_TIMEOUT, Ending, OUTGOING_QUEUE, Progress, WriterEnd, WriterStop, farewell, next_input, write_loop,
};
use crate::spec::Role;
use crate::websocket::{Hold, Input, OutputStream, Protocol};

/// How a connection joins a session.
#[derive(Debug, Clone)]
pub(crate) struct Joining {
    /// What it may do.
    pub(crate) role: Role,
    /// Where its output starts.
    pub(crate) start: Start,
    /// Whether it named the session (`?session=`), and so wants to be told
    /// where its output starts.
    pub(crate) wants_info: bool,
}

/// Where a connection's output starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// A new connection, which has `since` bytes of output already (see
    /// [`Shared::start_point`]).
    Since(Option<u64>),
    /// A connection carried from the program before this one, which goes
    /// on at `offset` as if nothing had happened.
    Resume {
        /// The next output byte it gets.
        offset: u64,
        /// Where its live output started (file transfers before it are a
        /// replay's).
        live_from: u64,
    },
}

/// How a connection to a session ended.
#[derive(Debug)]
pub(crate) enum AttachEnd<Tx, Rx> {
    /// It ended, for this reason.
    Ended(Ending),
    /// It stopped for a hand-over, and can be carried on.
    Frozen(FrozenAttachment<Tx, Rx>),
}

/// A connection stopped for a hand-over where the program after this one
/// can go on with it: everything it had sent is in the socket or in
/// `unsent`, and everything it had read and not passed on is `in_hand` (or,
/// for an unfinished message, still in the connection).
#[derive(Debug)]
pub(crate) struct FrozenAttachment<Tx, Rx> {
    /// The socket's halves.
    pub(crate) tx: Tx,
    pub(crate) rx: Rx,
    /// Messages not yet handed to the socket, in order.
    pub(crate) unsent: Vec<Message>,
    pub(crate) role: Role,
    /// The next session output byte it is to get.
    pub(crate) offset: u64,
    /// Where its live output started.
    pub(crate) live_from: u64,
    /// Whether it hears session info (the channel protocol, a named
    /// session).
    pub(crate) wants_info: bool,
    /// Input it read that the session had no room for yet.
    pub(crate) in_hand: Option<Control>,
    /// Set when its session had ended for it and it was saying goodbye:
    /// the program after only lets the client take the rest, until then.
    pub(crate) closing: Option<Instant>,
}

/// Runs one connection to `shared` until the session ends (the client gets
/// the rest of its output and the exit status), the client leaves or falls
/// behind the history (Close 1008 `too slow`), the server shuts down, or the
/// connection is frozen for a hand-over. A slow observer slows nobody else:
/// the process writes into the history, and each connection reads it at its
/// own pace; a writer holds the session to its pace only as far as the
/// history is full (see [`Shared::writer_at`]). `guard` is the writer's
/// place when it was taken before the session started (its first client).
pub(crate) async fn attach<Tx, Rx>(
    shared: Arc<Shared>,
    (tx, rx, hold): (Tx, Rx, Hold),
    protocol: Protocol,
    joining: Joining,
    guard: Option<WriterGuard>,
    context: SessionContext,
) -> AttachEnd<Tx, Rx>
where
    Tx: Sink<Message, Error = WsError> + Unpin + Send + 'static,
    Rx: Stream<Item = Result<Message, WsError>> + Unpin + Send,
{
    let (settings, metrics, shutdown, freeze) =
        (&*context.settings, &context.metrics, &context.shutdown, &context.handover);
    let start = match joining.start {
        Start::Since(since) => shared.start_point(since),
        // A connection carried on from the program before: what it reads
        // next is as live as it was.
        Start::Resume { offset, live_from } => StartPoint { offset, repaint: None, live_from },
    };
    let resumed = matches!(joining.start, Start::Resume { .. });
    // The client that started the session reads it live from its first
    // byte, whenever it got to reading.
    let start = if guard.is_some() && !resumed { StartPoint { live_from: 0, ..start } } else { start };
    // What the program after this one needs to go on as this one would.
    let carried = (joining.role, start.live_from, joining.wants_info);
    let writer_guard = guard.or_else(|| (joining.role == Role::Writer).then(|| shared.writer_at(start.offset)));
    let writer_id = writer_guard.as_ref().map(WriterGuard::id);
    if shared.kind() != Kind::Plain && !resumed {
        metrics.attached(joining.role);
    }
    let progress = Progress::default();
    let (queue, queued) = queue::queue(OUTGOING_QUEUE);
    if !resumed {
        // The queue is new and longer than the introduction.
        if joining.wants_info {
            let info = serde_json::json!({
                "session": shared.id,
                "offset": start.offset,
                "repaint": start.repaint.as_ref().map_or(0, Vec::len),
                "role": joining.role,
            });
            let _ = queue.try_send(protocol.session_info(info.to_string().as_bytes()));
        }
        if let Some(repaint) = start.repaint {
            let _ = queue.try_send(protocol.output(OutputStream::Stdout, repaint.into()));
        }
    }
    let (finish, finished) = oneshot::channel();
    let mut writer = AbortOnDropHandle::new(tokio::spawn(write_loop(
        tx,
        queued,
        finished,
        (settings.ping_interval, settings.pong_timeout),
        progress.clone(),
        (freeze.clone(), hold),
    )));
    let offset = AtomicU64::new(start.offset);
    let mut parts = Parts { writer: None, rx: None, in_hand: None };
    let mut input = pin!(read_input(rx, protocol, settings.pong_timeout, progress, writer_id, &shared, freeze).fuse());
    let ended = {
        let viewer = Viewer { writer: writer_id, live_from: start.live_from };
        let announce = joining.wants_info.then_some(joining.role);
        let follow = follow(&shared, &offset, queue.clone(), protocol, (viewer, announce), freeze);
        tokio::select! {
            followed = follow => match followed {
                Followed::Ended(Ended { status: Some(status), oom }) => {
                    Some((Ending::Exited(status), protocol.exit(status, oom)))
                }
                Followed::Ended(Ended { status: None, .. }) => {
                    let ending = Ending::Internal("the process's status is unknown".into());
                    let goodbye = farewell(&ending);
                    Some((ending, goodbye))
                }
                Followed::TooSlow => Some((Ending::TooSlow, farewell(&Ending::TooSlow))),
                Followed::Stopped(reason) => {
                    let goodbye = farewell(&reason);
                    Some((reason, goodbye))
                }
                Followed::Gone => Some((Ending::ClientGone("sending failed".into()), Vec::new())),
                Followed::Frozen => None,
            },
            (rx, read) = &mut input => {
                parts.rx = Some(rx);
                match read {
                    InputEnd::Ended(ending) => {
                        let goodbye = farewell(&ending);
                        Some((ending, goodbye))
                    }
                    InputEnd::Frozen(in_hand) => {
                        parts.in_hand = in_hand;
                        None
                    }
                }
            }
            stopped = &mut writer => match stopped {
                Ok(frozen @ WriterEnd::Frozen { .. }) => {
                    parts.writer = Some(frozen);
                    None
                }
                Ok(WriterEnd::Stopped(stop)) => Some((Ending::ClientGone(stop.why().into()), Vec::new())),
                Err(_) => Some((Ending::ClientGone("sending failed".into()), Vec::new())),
            },
            _ = shutdown.cancelled() => Some((Ending::Shutdown, farewell(&Ending::Shutdown))),
        }
    };
    let Some((ending, goodbye)) = ended else {
        // Frozen: whatever the other loops hold is gathered, and the
        // connection goes on in the program after this one.
        drop(writer_guard);
        let gathered = parts.gather(&mut writer, &mut input, Vec::new(), offset.load(Ordering::Relaxed), carried, None);
        return Box::pin(gathered).await;
    };
    if writer_guard.is_some() {
        shared.departed(&ending);
    }
    drop(writer_guard);
    if matches!(ending, Ending::ClientGone(_)) {
        return AttachEnd::Ended(ending);
    }
    if writer.is_finished() && parts.writer.is_none() {
        match (&mut writer).await {
            Ok(frozen @ WriterEnd::Frozen { .. }) => parts.writer = Some(frozen),
            _ => return AttachEnd::Ended(ending),
        }
    }
    // The last steps: after an exit, the status and Close go through the
    // queue, behind all the output, and are waited for as long as the
    // client reads; otherwise the Close jumps the queue and the close
    // handshake is bounded. Reading goes on meanwhile, so a client that
    // leaves is noticed; then it reads until the client answers the Close,
    // so unread input does not turn the close into a reset that could cost
    // the client the end of its output.
    let exited = matches!(ending, Ending::Exited(_));
    let mut left = goodbye;
    // The goodbye message being queued: a hand-over that stops the queuing
    // finds it here, not lost with the future.
    let mut sending = None;
    // Held until the writer is done: a dropped `finish` tells it to stop.
    let mut finish = Some(finish);
    let frozen = parts.writer.is_some() || {
        let said = async {
            if exited {
                loop {
                    if sending.is_none() {
                        if left.is_empty() {
                            return;
                        }
                        sending = Some(left.remove(0));
                    }
                    queue.send_or_keep(&mut sending).await;
                    if sending.is_some() {
                        // The writer is gone.
                        return;
                    }
                }
            } else if let Some(finish) = finish.take() {
                let _ = finish.send(left.drain(..).next());
            }
        };
        let bound = (!exited).then(|| Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
        // Boxed, as every step but the main one: a connection's task keeps
        // room for its largest step for all its life.
        let closing = Box::pin(async {
            said.await;
            match timeout_at_some(bound, &mut writer).await {
                Some(Ok(frozen @ WriterEnd::Frozen { .. })) => Some(frozen),
                _ => None,
            }
        });
        tokio::select! {
            frozen_writer = closing => match frozen_writer {
                Some(frozen_writer) => {
                    parts.writer = Some(frozen_writer);
                    true
                }
                None => false,
            },
            (rx, read) = &mut input, if parts.rx.is_none() => {
                if !matches!(read, InputEnd::Frozen(_)) {
                    // The client left.
                    return AttachEnd::Ended(ending);
                }
                parts.rx = Some(rx);
                true
            }
            _ = freeze.cancelled() => true,
        }
    };
    if let Some(message) = sending.take() {
        left.insert(0, message);
    }
    if frozen {
        let closing_until = Some(Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
        let gathered =
            parts.gather(&mut writer, &mut input, left, offset.load(Ordering::Relaxed), carried, closing_until);
        return Box::pin(gathered).await;
    }
    drop(finish);
    if parts.rx.is_none() {
        // The Close is out; a hand-over waits a little for the answer, but
        // not as long.
        let mut answered = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, &mut input));
        tokio::select! {
            _ = &mut answered => {}
            _ = freeze.cancelled() => {
                let _ = tokio::time::timeout(FREEZE_CLOSE_WAIT, answered).await;
            }
        }
    }
    AttachEnd::Ended(ending)
}

/// How long a connection that was told goodbye waits for the client's
/// answer once a hand-over began: the hand-over waits for it.
const FREEZE_CLOSE_WAIT: Duration = Duration::from_millis(250);

/// Waits for `future` until `at`, or for as long as it takes.
async fn timeout_at_some<F: std::future::Future>(at: Option<Instant>, future: F) -> Option<F::Output> {
    match at {
        Some(at) => timeout_at(at, future).await.ok(),
        None => Some(future.await),
    }
}

/// What a connection's loops handed back as they stopped.
struct Parts<Tx, Rx> {
    writer: Option<WriterEnd<Tx>>,
    rx: Option<Rx>,
    in_hand: Option<Control>,
}

impl<Tx, Rx> Parts<Tx, Rx> {
    /// Waits for whichever loops have not stopped yet (each stops at once,
    /// frozen) and puts together the frozen connection; one that ended for
    /// another reason meanwhile (the socket failed, the client left) is not
    /// carried.
    async fn gather<F>(
        mut self,
        writer: &mut AbortOnDropHandle<WriterEnd<Tx>>,
        input: &mut std::pin::Pin<&mut futures_util::future::Fuse<F>>,
        left: Vec<Message>,
        offset: u64,
        (role, live_from, wants_info): (Role, u64, bool),
        closing: Option<Instant>,
    ) -> AttachEnd<Tx, Rx>
    where
        F: std::future::Future<Output = (Rx, InputEnd)>,
    {
        if self.rx.is_none() && !input.is_terminated() {
            let (rx, read) = input.await;
            match read {
                InputEnd::Frozen(in_hand) => self.in_hand = in_hand,
                InputEnd::Ended(ending) if closing.is_none() => return AttachEnd::Ended(ending),
                // Leaving while being told goodbye.
                InputEnd::Ended(_) => {}
            }
            self.rx = Some(rx);
        }
        if self.writer.is_none() {
            self.writer = writer.await.ok();
        }
        let (Some(WriterEnd::Frozen { tx, in_hand, queue: mut queued, mut finish }), Some(rx)) = (self.writer, self.rx)
        else {
            return AttachEnd::Ended(Ending::ClientGone("the connection ended during a hand-over".into()));
        };
        let mut unsent: Vec<Message> = in_hand.into_iter().collect();
        match finish.try_recv() {
            // A Close that jumped the queue: nothing queued follows it.
            Ok(Some(close)) => unsent.push(close),
            _ => {
                while let Some(message) = queued.try_recv() {
                    unsent.push(message);
                }
                unsent.extend(left);
            }
        }
        AttachEnd::Frozen(FrozenAttachment {
            tx,
            rx,
            unsent,
            role,
            offset,
            live_from,
            wants_info,
            in_hand: self.in_hand,
            closing,
        })
    }
}

/// How reading the client's input ended.
#[derive(Debug)]
enum InputEnd {
    /// The client closed, left or broke the protocol.
    Ended(Ending),
    /// Frozen, with the input the session had no room for yet.
    Frozen(Option<Control>),
}

/// Passes the client's input to the session (a writer's; an observer's is
/// read and dropped) until the client closes, breaks the protocol, goes
/// silent, or the connection is frozen. Gives back the stream.
async fn read_input<Rx>(
    mut rx: Rx,
    protocol: Protocol,
    pong_timeout: Duration,
    progress: Progress,
    writer: Option<u64>,
    shared: &Shared,
    freeze: &CancellationToken,
) -> (Rx, InputEnd)
where
    Rx: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let input = tokio::select! {
            biased;
            _ = freeze.cancelled() => return (rx, InputEnd::Frozen(None)),
            input = next_input(&mut rx, protocol, pong_timeout, &progress) => input,
        };
        let control = match input {
            Err(ending) => return (rx, InputEnd::Ended(ending)),
            Ok(_) if writer.is_none() => continue,
            Ok(Input::Stdin(data)) => {
                if let Some(id) = writer {
                    shared.input_from(id, &data);
                }
                Control::Stdin(data)
            }
            Ok(Input::EndStdin) => Control::EndStdin,
            Ok(Input::Resize(size)) => Control::Resize(size),
            Ok(Input::Close | Input::Ignored(_)) => continue,
        };
        if let Err(control) = shared.control(control, freeze).await {
            return (rx, InputEnd::Frozen(Some(control)));
        }
    }
}

/// How following the history ended.
enum Followed {
    /// The session ended, and all its output was queued.
    Ended(Ended),
    /// The connection fell further behind than the history reaches.
    TooSlow,
    /// The session is being stopped for this reason (a limit, the server
    /// shutting down), which the client hears at once.
    Stopped(Ending),
    /// The connection's writer is gone.
    Gone,
    /// Frozen for a hand-over.
    Frozen,
}

/// Queues the session's output from `offset` on, as it comes, as `viewer`
/// may receive it; `offset` moves past each message once it is queued. A
/// file transfer it does not receive becomes one line, told (with the
/// session info, when `announce` names the role to say) as repaint bytes
/// that are not session output, and a second info when it is over.
async fn follow(
    shared: &Shared,
    offset: &AtomicU64,
    queue: Sender<Message>,
    protocol: Protocol,
    (viewer, announce): (Viewer, Option<Role>),
    freeze: &CancellationToken,
) -> Followed {
    let mut changed = shared.subscribe();
    let took = |offset| {
        if let Some(id) = viewer.writer {
            shared.took(id, offset);
        }
    };
    let send = async |message: Message| -> Option<Followed> {
        tokio::select! {
            biased;
            sent = queue.send(message) => sent.is_err().then_some(Followed::Gone),
            _ = freeze.cancelled() => Some(Followed::Frozen),
        }
    };
    // Where the client stands before and after a transfer it does not get.
    let info = |at: u64, repaint: usize, span: &Span, over: bool| {
        let transfer = serde_json::json!({"protocol": span.protocol, "direction": span.direction, "over": over});
        let info = serde_json::json!({"session": shared.id, "offset": at, "repaint": repaint, "role": announce,
                                      "transfer": transfer});
        protocol.session_info(info.to_string().as_bytes())
    };
    // The transfer whose note went out, and the one skipped while it ran
    // (its end, fixed later, may be right where this client stands: it
    // still hears that it is past it).
    let mut noted = None;
    let mut running: Option<Span> = None;
    took(offset.load(Ordering::Relaxed));
    loop {
        changed.mark_unchanged();
        if let Some(span) = &running
            && let Some(end) = shared.transfer_end(span.start)
            && end <= offset.load(Ordering::Relaxed)
        {
            let over = info(offset.load(Ordering::Relaxed), 0, span, true);
            running = None;
            if announce.is_some()
                && let Some(stopped) = send(over).await
            {
                return stopped;
            }
        }
        let (read, ended, stopping) = shared.read(offset.load(Ordering::Relaxed), viewer);
        if let Some(reason @ (Ending::Idle | Ending::TimeLimit | Ending::Shutdown)) = stopping {
            return Followed::Stopped(reason);
        }
        let at_end = match read {
            Read::Chunk(stream, data) => {
                let len = data.len() as u64;
                // The history keeps its own reference; the message shares it.
                if let Some(stopped) = send(protocol.output(stream, data)).await {
                    return stopped;
                }
                offset.fetch_add(len, Ordering::Relaxed);
                took(offset.load(Ordering::Relaxed));
                false
            }
            Read::Hidden(Hidden { span, skip_to }) => {
                if noted != Some(span.start) {
                    noted = Some(span.start);
                    let note = span.note();
                    if announce.is_some()
                        && let Some(stopped) = send(info(span.start, note.len(), &span, false)).await
                    {
                        return stopped;
                    }
                    if let Some(stopped) = send(protocol.output(OutputStream::Stdout, note.into())).await {
                        return stopped;
                    }
                }
                let moved = skip_to > offset.load(Ordering::Relaxed);
                offset.store(skip_to, Ordering::Relaxed);
                took(skip_to);
                if span.end.is_some() {
                    // Past it: the client's count of session bytes is right again.
                    running = None;
                    if announce.is_some()
                        && let Some(stopped) = send(info(skip_to, 0, &span, true)).await
                    {
                        return stopped;
                    }
                    false
                } else {
                    running = Some(span);
                    !moved
                }
            }
            Read::Dropped { .. } => return Followed::TooSlow,
            Read::AtEnd => true,
        };
        if at_end {
            match ended {
                Some(ended) => return Followed::Ended(ended),
                None => tokio::select! {
                    changed = changed.changed() => if changed.is_err() {
                        return Followed::Gone;
                    },
                    _ = freeze.cancelled() => return Followed::Frozen,
                },
            }
        }
    }
}

impl WriterStop {
    /// Why a client whose writer stopped so is gone.
    fn why(self) -> &'static str {
        match self {
            WriterStop::Stalled => "client took no data for pong_timeout",
            WriterStop::Done | WriterStop::Failed => "sending failed",
        }
    }
}
