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

/// Ends a process whose client is gone, first step: `kill_signal` to the
/// group (for a terminal, `SIGHUP`: the terminal hung up). Returns when
/// the `SIGKILL` is due ([`stop_by`]).
pub(crate) fn signal_stop(process: &Process, settings: &SessionSettings) -> Instant {
    process.group().signal(if process.is_tty() { Signal::HUP } else { settings.kill_signal.signal() });
    Instant::now() + settings.kill_grace
}

/// Ends a process whose client is gone, once the signal went out
/// ([`signal_stop`]): waits for the leader and the rest of the session
/// until `kill_at`, then `SIGKILL`s whatever of the session is left (its
/// whole cgroup, when it has one). Returns as soon as nothing of the
/// session is left, so its place is free at once. Returns the leader's
/// status.
pub(crate) async fn stop_by(process: &mut Process, kill_at: Instant) -> Option<ExitStatus> {
    let group = process.group();
    let status = match timeout_at(kill_at, process.exited()).await {
        Ok(result) => result.ok(),
        Err(_) => {
            group.kill();
            return process.exited().await.ok();
        }
    };
    // The leader is gone; the rest of the session gets the rest of the
    // grace.
    if timeout_at(kill_at, group.emptied()).await.is_err() {
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

/// After its processes are killed, a pipe holds at most this much of what
/// they wrote (Linux's default `pipe-max-size`, the most a process may set
/// its pipe to without privilege); more means a writer outside the group.
const LEFT_IN_PIPE: u64 = 1024 * 1024;

/// Reads one output of a session to its end: to end of file while the
/// leader runs. Once it has exited (`exited` is cancelled), the rest of the
/// group gets `grace` to finish writing; then the group gets `SIGKILL`
/// (`yes &` would otherwise hold the pipe open forever), and what the
/// killed processes left in the pipe is still read. Reading gives up when,
/// after the kill, it has waited `grace` in all for the pipe, or more has
/// arrived than a pipe holds: something outside the group (a process that
/// left it, on a host without cgroups) holds the pipe and writes.
///
/// Only waiting for the pipe counts, not the time a chunk takes to be sent,
/// so a slow client loses nothing its processes wrote.
#[derive(Debug)]
pub(crate) struct OutputTail {
    exited: CancellationToken,
    group: ProcessGroup,
    grace: Duration,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The leader runs: no bound.
    Running,
    /// The leader exited; the group is killed at this instant.
    Exited { kill_at: Instant },
    /// The group was killed: how long reads may still wait in all, and
    /// how much more may arrive.
    Killed { wait_left: Duration, bytes_left: u64 },
    /// Something outside the group writes: no more reads.
    GaveUp,
}

impl OutputTail {
    pub(crate) fn new(exited: CancellationToken, group: ProcessGroup, grace: Duration) -> Self {
        Self { exited, group, grace, phase: Phase::Running }
    }

    /// The next chunk of `output`, or `None` at its end (end of file, a
    /// failed read, or given up on).
    pub(crate) async fn next(&mut self, output: &mut ProcessOutput, size: ChunkSize) -> Option<Bytes> {
        loop {
            if let Phase::Exited { kill_at } = self.phase
                && Instant::now() >= kill_at
            {
                self.kill();
            }
            let read = match self.phase {
                Phase::GaveUp => return None,
                // Not biased to the read: a pipe that always has data must
                // not hide the exit.
                Phase::Running => tokio::select! {
                    read = read(output, size) => Some(read),
                    _ = self.exited.cancelled() => {
                        self.phase = Phase::Exited { kill_at: Instant::now() + self.grace };
                        continue;
                    }
                },
                // The timeouts only fire when the pipe is empty.
                Phase::Exited { kill_at } => timeout_at(kill_at, read(output, size)).await.ok(),
                Phase::Killed { wait_left, bytes_left } => {
                    let began = Instant::now();
                    let read = timeout_at(began + wait_left, read(output, size)).await.ok();
                    let wait_left = wait_left.saturating_sub(began.elapsed());
                    let got = match &read {
                        Some(Ok(data)) => data.len() as u64,
                        _ => 0,
                    };
                    self.phase = if read.is_none() || got > 0 && (wait_left.is_zero() || got > bytes_left) {
                        tracing::warn!("output still written after its process group was killed; giving up on it");
                        // What arrived is passed on; the next call ends.
                        Phase::GaveUp
                    } else {
                        Phase::Killed { wait_left, bytes_left: bytes_left - got }
                    };
                    read
                }
            };
            match read {
                Some(Ok(data)) if data.is_empty() => return None,
                Some(Ok(data)) => return Some(data),
                Some(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Some(Err(err)) => {
                    tracing::debug!(cause = %err, "output failed");
                    return None;
                }
                // The pipe stayed empty until the kill (or, after it, for
                // the rest of the wait: given up above).
                None => self.kill(),
            }
        }
    }

    fn kill(&mut self) {
        if matches!(self.phase, Phase::Killed { .. } | Phase::GaveUp) {
            return;
        }
        self.group.kill();
        self.phase = Phase::Killed { wait_left: self.grace, bytes_left: LEFT_IN_PIPE };
    }
}

async fn read(output: &mut ProcessOutput, size: ChunkSize) -> io::Result<Bytes> {
    match size {
        ChunkSize::Sent => output.read_chunk().await,
        ChunkSize::Kept(limit) => output.read_chunk_up_to(limit).await,
    }
}
