//! How a session's processes end, whatever the session is attached to:
//! stopped when their client is gone, and their output read to its end
//! once the leader has exited, without waiting forever for leftovers.
//!
//! Apart from dropping or [finishing](Process::finish) a [`Process`], this
//! is the one place that decides when a session's processes get `SIGKILL`.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use rustix::process::Signal;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use super::SessionSettings;
use super::process::{Process, ProcessGroup, ProcessOutput};

/// Ends a process whose client is gone: `kill_signal` to the group (for a
/// terminal, `SIGHUP`: the terminal hung up), then, once `kill_grace` has
/// passed, `SIGKILL` to whatever of the session is left (its whole cgroup,
/// when it has one). Returns as soon as nothing of the session is left, so
/// its place is free at once. Returns the leader's status.
pub(crate) async fn stop(process: &mut Process, settings: &SessionSettings) -> Option<ExitStatus> {
    let group = process.group();
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

/// How much of an output one read takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChunkSize {
    /// Up to [`MAX_OUTPUT_CHUNK`](super::MAX_OUTPUT_CHUNK), for chunks that
    /// are sent and dropped (see [`ProcessOutput::read_chunk`]).
    Sent,
    /// Up to this many bytes, each chunk in a buffer of its size, for
    /// chunks that are kept (see [`ProcessOutput::read_chunk_up_to`]).
    Kept(usize),
}

/// Reads one output of a session to its end: to end of file while the
/// leader runs; once it has exited (`exited` is cancelled), waiting for more
/// output is bounded by `grace`: then the group gets `SIGKILL` (`yes &`
/// would otherwise hold the pipe open forever), and if the pipe is still
/// open one more `grace` later (something outside the group holds it),
/// reading gives up. Data already in the pipe is always read first: the
/// bounds apply only while it is empty, so a slow client loses nothing.
#[derive(Debug)]
pub(crate) struct OutputTail {
    exited: CancellationToken,
    group: ProcessGroup,
    grace: Duration,
    deadline: Option<Instant>,
    killed: bool,
}

impl OutputTail {
    pub(crate) fn new(exited: CancellationToken, group: ProcessGroup, grace: Duration) -> Self {
        Self { exited, group, grace, deadline: None, killed: false }
    }

    /// The next chunk of `output`, or `None` at its end (end of file, a
    /// failed read, or given up on).
    pub(crate) async fn next(&mut self, output: &mut ProcessOutput, size: ChunkSize) -> Option<Bytes> {
        loop {
            if let Some(at) = self.deadline
                && !self.killed
                && Instant::now() >= at
            {
                self.kill();
            }
            let read = match self.deadline {
                None => tokio::select! {
                    read = read(output, size) => Some(read),
                    _ = self.exited.cancelled() => {
                        self.deadline = Some(Instant::now() + self.grace);
                        continue;
                    }
                },
                // The timeout only fires when the pipe is empty.
                Some(at) => timeout_at(at, read(output, size)).await.ok(),
            };
            match read {
                Some(Ok(data)) if data.is_empty() => return None,
                Some(Ok(data)) => return Some(data),
                Some(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Some(Err(err)) => {
                    tracing::debug!(cause = %err, "output failed");
                    return None;
                }
                None if !self.killed => self.kill(),
                None => {
                    tracing::warn!("output still open after its process group was killed; giving up on it");
                    return None;
                }
            }
        }
    }

    fn kill(&mut self) {
        self.group.kill();
        self.killed = true;
        self.deadline = Some(Instant::now() + self.grace);
    }
}

async fn read(output: &mut ProcessOutput, size: ChunkSize) -> io::Result<Bytes> {
    match size {
        ChunkSize::Sent => output.read_chunk().await,
        ChunkSize::Kept(limit) => output.read_chunk_up_to(limit).await,
    }
}
