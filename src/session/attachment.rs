//! [`attach`]: one connection to a session, as writer or observer: the
//! socket side of the engine (see [`Shared`]).

use std::sync::Arc;

use futures_util::{FutureExt, Sink, Stream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::task::AbortOnDropHandle;

use super::SessionContext;
use super::detached::history::Read;
use super::shared::{Control, Ended, Kind, Shared, WriterGuard};
use super::socket::{Ending, OUTGOING_QUEUE, Progress, close_socket, farewell, next_input, write_loop};
use crate::spec::Role;
use crate::websocket::{Input, OutputStream, Protocol};

/// How a connection joins a shared session.
#[derive(Debug, Clone)]
pub(crate) struct Joining {
    /// What it may do.
    pub(crate) role: Role,
    /// Session output it already has (`since=N`).
    pub(crate) since: Option<u64>,
    /// Whether it named the session (`?session=`), and so wants to be told
    /// where its output starts.
    pub(crate) wants_info: bool,
}

/// Runs one connection to `shared` until the session ends (the client gets
/// the rest of its output and the exit status), the client leaves or falls
/// behind the history (Close 1008 `too slow`), or the server shuts down. A
/// slow observer slows nobody else: the process writes into the history,
/// and each connection reads it at its own pace; a writer holds the
/// session to its pace only as far as the history is full (see
/// [`Shared::writer`]). `guard` is the writer's place when it was taken
/// before the session started (its first client).
pub(crate) async fn attach<Tx, Rx>(
    shared: Arc<Shared>,
    tx: Tx,
    rx: Rx,
    protocol: Protocol,
    joining: Joining,
    guard: Option<WriterGuard>,
    context: &SessionContext,
) -> Ending
where
    Tx: Sink<Message, Error = WsError> + Unpin + Send + 'static,
    Rx: Stream<Item = Result<Message, WsError>> + Unpin + Send,
{
    let (settings, metrics, shutdown) = (&*context.settings, &context.metrics, &context.shutdown);
    let writer_guard = guard.or_else(|| (joining.role == Role::Writer).then(|| shared.writer()));
    let writer_id = writer_guard.as_ref().map(WriterGuard::id);
    if shared.kind() != Kind::Plain {
        metrics.attached(joining.role);
    }
    let progress = Progress::default();
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let (finish, finished) = oneshot::channel();
    let mut writer = AbortOnDropHandle::new(tokio::spawn(write_loop(
        tx,
        out_rx,
        finished,
        (settings.ping_interval, settings.pong_timeout),
        progress.clone(),
    )));
    let start = shared.start_point(joining.since);
    let mut intro = Vec::new();
    if joining.wants_info {
        let info = serde_json::json!({
            "session": shared.id,
            "offset": start.offset,
            "repaint": start.repaint.as_ref().map_or(0, Vec::len),
            "role": joining.role,
        });
        intro.push(protocol.session_info(info.to_string().as_bytes()));
    }
    if let Some(repaint) = &start.repaint {
        intro.push(protocol.output(OutputStream::Stdout, repaint.clone().into()));
    }
    let follow = follow(shared.clone(), start.offset, intro, out_tx.clone(), protocol, writer_id).fuse();
    tokio::pin!(follow);
    let is_writer = writer_guard.is_some();
    let to_process = shared.clone();
    let mut input = Box::pin(
        async move {
            let shared = to_process;
            let mut rx = rx;
            loop {
                match next_input(&mut rx, protocol, settings.pong_timeout, &progress).await {
                    Err(ending) => return ending,
                    Ok(_) if !is_writer => {}
                    Ok(Input::Stdin(data)) => shared.control(Control::Stdin(data)).await,
                    Ok(Input::EndStdin) => shared.control(Control::EndStdin).await,
                    Ok(Input::Resize(size)) => shared.control(Control::Resize(size)).await,
                    Ok(Input::Close | Input::Ignored(_)) => {}
                }
            }
        }
        .fuse(),
    );
    let (ending, goodbye) = tokio::select! {
        followed = &mut follow => match followed {
            Followed::Ended(Ended { status: Some(status), oom }) => (Ending::Exited(status), protocol.exit(status, oom)),
            Followed::Ended(Ended { status: None, .. }) => {
                let ending = Ending::Internal("the process's status is unknown".into());
                let goodbye = farewell(&ending);
                (ending, goodbye)
            }
            Followed::TooSlow => (Ending::TooSlow, farewell(&Ending::TooSlow)),
            Followed::Stopped(reason) => {
                let goodbye = farewell(&reason);
                (reason, goodbye)
            }
            Followed::Gone => (Ending::ClientGone("sending failed".into()), Vec::new()),
        },
        ending = &mut input => {
            let goodbye = farewell(&ending);
            (ending, goodbye)
        }
        _ = &mut writer => (Ending::ClientGone("sending failed".into()), Vec::new()),
        _ = shutdown.cancelled() => (Ending::Shutdown, farewell(&Ending::Shutdown)),
    };
    if writer_guard.is_some() {
        shared.departed(&ending);
    }
    drop(writer_guard);
    if matches!(ending, Ending::ClientGone(_)) || writer.is_finished() {
        return ending;
    }
    let exited = matches!(ending, Ending::Exited(_));
    close_socket(exited, goodbye, &out_tx, finish, &mut writer, &mut input).await;
    ending
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
}

/// Queues `intro`, then the session's output from `offset` on, as it comes.
async fn follow(
    shared: Arc<Shared>,
    mut offset: u64,
    intro: Vec<Message>,
    queue: mpsc::Sender<Message>,
    protocol: Protocol,
    writer: Option<u64>,
) -> Followed {
    let mut changed = shared.subscribe();
    let took = |offset| {
        if let Some(id) = writer {
            shared.took(id, offset);
        }
    };
    took(offset);
    for message in intro {
        if queue.send(message).await.is_err() {
            return Followed::Gone;
        }
    }
    loop {
        changed.mark_unchanged();
        let (read, ended, stopping) = shared.read(offset);
        if let Some(reason @ (Ending::Idle | Ending::TimeLimit | Ending::Shutdown)) = stopping {
            return Followed::Stopped(reason);
        }
        match read {
            Read::Chunk(stream, data) => {
                offset += data.len() as u64;
                // The history keeps its own reference; the message shares it.
                if queue.send(protocol.output(stream, data)).await.is_err() {
                    return Followed::Gone;
                }
                took(offset);
            }
            Read::Dropped { .. } => return Followed::TooSlow,
            Read::AtEnd => match ended {
                Some(ended) => return Followed::Ended(ended),
                None => {
                    if changed.changed().await.is_err() {
                        return Followed::Gone;
                    }
                }
            },
        }
    }
}
