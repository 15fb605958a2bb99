//! Starting a command as the leader of its own process group, on pipes or
//! on a pseudo-terminal, signalling the group, and making sure nothing of it
//! outlives its owner.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};

use std::os::fd::AsFd;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};

use super::settings::EnvPolicy;
use crate::spec::{CommandSpec, TerminalSize};
use crate::websocket::{OutputMode, OutputStream};

/// `TERM` of a tty session unless its spec sets one.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// Spawns hold this for reading; opening a terminal holds it for writing.
/// The pty crate opens a terminal's master side and only then marks it
/// close-on-exec: a process forked in between would keep another session's
/// terminal (and could read its keystrokes).
static FORK_GUARD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A running command: its input, its outputs and its process group.
///
/// Dropping a `Process` sends `SIGKILL` to its whole group; the tokio runtime
/// reaps a leader that was not waited for.
#[derive(Debug)]
pub struct Process {
    child: Child,
    group: ProcessGroup,
    tty: bool,
    finished: bool,
    /// Tells when the leader exits without reaping it, so its pid, and so
    /// the group id, stays reserved until the last signal to the group.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// The process's input; `None` once taken.
    pub stdin: Option<ProcessInput>,
    /// The process's outputs; empty once taken.
    pub outputs: Vec<ProcessOutput>,
}

impl Process {
    /// Starts `spec` directly (no shell) as the leader of a new process
    /// group: on pipes, or, when `spec.tty` is set, on a new pseudo-terminal
    /// as a new session with that terminal as its controlling terminal.
    pub fn spawn(spec: &CommandSpec, env: &EnvPolicy, mode: OutputMode) -> io::Result<Self> {
        let mut command = Command::new(&spec.command);
        command.args(&spec.args);
        if env.clear {
            command.env_clear();
            for name in &env.pass {
                if let Some(value) = std::env::var_os(name) {
                    command.env(name, value);
                }
            }
        }
        if spec.tty {
            command.env("TERM", DEFAULT_TERM);
        }
        command.envs(&spec.env);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        if spec.tty {
            Self::spawn_on_pty(command, spec.size.unwrap_or_default())
        } else {
            Self::spawn_on_pipes(command, mode)
        }
    }

    fn spawn_on_pipes(mut command: Command, mode: OutputMode) -> io::Result<Self> {
        let (out_reader, out_writer) = io::pipe()?;
        let mut outputs = vec![(OutputStream::Stdout, out_reader)];
        command.stdin(Stdio::piped()).process_group(0);
        match mode {
            OutputMode::Merged => {
                command.stdout(out_writer.try_clone()?).stderr(out_writer);
            }
            OutputMode::Separate => {
                let (err_reader, err_writer) = io::pipe()?;
                command.stdout(out_writer).stderr(err_writer);
                outputs.push((OutputStream::Stderr, err_reader));
            }
        }
        let mut child = {
            let _forking = FORK_GUARD.read().unwrap_or_else(|p| p.into_inner());
            command.spawn()?
        };
        // The command holds our copies of the pipes' write ends; only the
        // process may keep them open, or the output never ends.
        drop(command);
        let outputs = outputs
            .into_iter()
            .map(|(stream, reader)| {
                let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
                Ok(ProcessOutput { stream, reader: OutputReader::Pipe(reader) })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let stdin = child.stdin.take().map(ProcessInput::Pipe);
        Ok(Self {
            group: ProcessGroup::of(&child, false)?,
            pidfd: pidfd_of(&child),
            child,
            tty: false,
            finished: false,
            status: None,
            stdin,
            outputs,
        })
    }

    fn spawn_on_pty(command: Command, size: TerminalSize) -> io::Result<Self> {
        let (pty, pts) = {
            let _opening = FORK_GUARD.write().unwrap_or_else(|p| p.into_inner());
            pty_process::open().map_err(pty_error)?
        };
        pty.resize(pty_process::Size::new(size.rows, size.cols)).map_err(pty_error)?;
        // A new session makes the process a group leader too, so no
        // `process_group` here (setsid would fail with EPERM).
        let child = {
            let _forking = FORK_GUARD.read().unwrap_or_else(|p| p.into_inner());
            pty_process::Command::from(command).spawn(pts).map_err(pty_error)?
        };
        let (reader, writer) = pty.into_split();
        Ok(Self {
            group: ProcessGroup::of(&child, true)?,
            pidfd: pidfd_of(&child),
            child,
            tty: true,
            finished: false,
            status: None,
            stdin: Some(ProcessInput::Pty(writer)),
            outputs: vec![ProcessOutput { stream: OutputStream::Stdout, reader: OutputReader::Pty(reader) }],
        })
    }

    /// The leader's process id, which is also the group id.
    pub fn id(&self) -> i32 {
        self.group.0.as_raw_nonzero().get()
    }

    /// Whether the process runs on a terminal.
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// The process group, for signalling from elsewhere.
    pub fn group(&self) -> ProcessGroup {
        self.group
    }

    /// Waits for the leader to exit and returns its status, but leaves it
    /// unreaped (a zombie) until [`Process::finish`]: while it is, its pid
    /// cannot be reused, so signals to its group cannot reach a stranger.
    /// Without pidfd support, this reaps at once.
    pub async fn exited(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = match &self.pidfd {
            None => self.child.wait().await?,
            Some(pidfd) => loop {
                let mut ready = pidfd.readable().await?;
                let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
                match rustix::process::waitid(WaitId::PidFd(pidfd.get_ref().as_fd()), options)? {
                    Some(info) => break exit_status(&info),
                    None => ready.clear_ready(),
                }
            },
        };
        self.status = Some(status);
        Ok(status)
    }

    /// Kills whatever is left of the group (and, on a terminal, of the
    /// session), off the async threads (sweeping a session reads `/proc`),
    /// then reaps the leader.
    pub async fn finish(&mut self) {
        let group = self.group;
        let _ = tokio::task::spawn_blocking(move || group.kill_all()).await;
        self.finished = true;
        let _ = self.child.wait().await;
    }
}

fn pidfd_of(child: &Child) -> Option<AsyncFd<OwnedFd>> {
    let pid = Pid::from_raw(child.id()? as i32)?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // Deprecated because an `AsyncFd` over a borrowed descriptor could
    // outlive it; this one owns its `OwnedFd`, which nothing else can close.
    // The replacement is an `unsafe fn`, and this crate forbids unsafe code.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()
}

/// The status `waitid` reported, as the standard library represents it.
fn exit_status(info: &rustix::process::WaitIdStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (info.exit_status(), info.terminating_signal()) {
        (Some(code), _) => ExitStatus::from_raw((code & 0xff) << 8),
        (None, Some(signal)) => ExitStatus::from_raw((signal & 0x7f) | if info.dumped() { 0x80 } else { 0 }),
        (None, None) => ExitStatus::from_raw(0xff << 8),
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.finished {
            self.group.kill_all();
        }
    }
}

fn pty_error(err: pty_process::Error) -> io::Error {
    match err {
        pty_process::Error::Io(err) => err,
        other => io::Error::other(other.to_string()),
    }
}

/// The session id of `pid`, from `/proc/<pid>/stat` (`getsid` would do, but
/// rustix asserts that a session id is never 0, which it is for the few
/// processes outside any session).
fn session_of(pid: Pid) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    // The command name may hold spaces and parentheses; the fields after it
    // are state, ppid, pgrp, session.
    stat.rsplit_once(") ")?.1.split(' ').nth(3)?.parse().ok()
}

/// Where client input goes: a pipe, or the terminal.
#[derive(Debug)]
pub enum ProcessInput {
    /// The write end of the stdin pipe.
    Pipe(ChildStdin),
    /// The terminal's master side.
    Pty(pty_process::OwnedWritePty),
}

impl ProcessInput {
    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Pipe(pipe) => pipe.write_all(data).await,
            Self::Pty(pty) => pty.write_all(data).await,
        }
    }

    /// Resizes the terminal; `false` when there is none.
    pub fn resize(&self, size: TerminalSize) -> bool {
        match self {
            Self::Pipe(_) => false,
            Self::Pty(pty) => pty.resize(pty_process::Size::new(size.rows, size.cols)).is_ok(),
        }
    }

    /// Ends the input: a pipe is to be closed (returns `true`: drop it); a
    /// terminal gets its end-of-file character, ^D (a terminal has no other
    /// way to say "no more input"), and stays, for resizes.
    pub async fn end(&mut self) -> bool {
        match self {
            Self::Pipe(_) => true,
            Self::Pty(pty) => {
                let _ = pty.write_all(&[0x04]).await;
                false
            }
        }
    }
}

/// One output of a process.
#[derive(Debug)]
pub struct ProcessOutput {
    /// Which stream it is.
    pub stream: OutputStream,
    reader: OutputReader,
}

#[derive(Debug)]
enum OutputReader {
    Pipe(pipe::Receiver),
    Pty(pty_process::OwnedReadPty),
}

impl ProcessOutput {
    /// Reads what is there, up to `buf.len()`; `Ok(0)` at the end. A
    /// terminal reports its end (every holder of its other side gone) as
    /// `EIO`, which is the end here too.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.reader {
            OutputReader::Pipe(pipe) => pipe.read(buf).await,
            OutputReader::Pty(pty) => match pty.read(buf).await {
                Err(err) if err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => Ok(0),
                other => other,
            },
        }
    }
}

/// A process group that can be signalled: the leader's, and for a
/// terminal, the leader's whole session (a shell's jobs each get a group of
/// their own).
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup(Pid, bool);

impl ProcessGroup {
    fn of(child: &Child, session: bool) -> io::Result<Self> {
        let pid = child.id().and_then(|id| Pid::from_raw(id as i32)).ok_or_else(|| io::Error::other("no pid"))?;
        Ok(Self(pid, session))
    }

    /// `SIGKILL` to the group and, for a terminal session, to every
    /// process still in the session.
    pub fn kill_all(self) {
        self.signal(Signal::KILL);
        if !self.1 {
            return;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()).and_then(Pid::from_raw) else {
                continue;
            };
            if session_of(pid) == Some(self.0.as_raw_nonzero().get()) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }

    /// Sends `signal` to every process in the group; a group that is already
    /// gone is not an error.
    pub fn signal(self, signal: Signal) {
        match rustix::process::kill_process_group(self.0, signal) {
            Ok(()) => {}
            Err(rustix::io::Errno::SRCH) => {}
            Err(err) => {
                tracing::warn!(pgid = self.0.as_raw_nonzero().get(), cause = %err, "cannot signal process group")
            }
        }
    }
}
