//! Starting a command as the leader of its own process group, on pipes or
//! on a pseudo-terminal, signalling the group, and making sure nothing of it
//! outlives its owner.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::settings::{EnvPolicy, SERVER_ENV_PREFIX};
use crate::contain::{self, FORK_GUARD, Identity, SessionCgroup};
use crate::spec::{CommandSpec, TerminalSize};
use crate::websocket::{OutputMode, OutputStream};

/// Largest output chunk: one read of a pipe or terminal.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

thread_local! {
    /// What outputs are read into: one buffer per worker thread, not one per
    /// session. A large read takes it along as its chunk (trimmed to what
    /// was read, not copied) and the next read gets a new one; a small read
    /// is copied out and the buffer stays.
    static SCRATCH: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// Reads at least this large keep the buffer they were read into (at most
/// twice their size: [`MAX_OUTPUT_CHUNK`]).
const KEEP_BUFFER_FROM: usize = MAX_OUTPUT_CHUNK / 2;

/// `TERM` of a tty session unless its spec sets one.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// How a process is started, beyond its command spec.
#[derive(Debug, Default)]
pub struct SpawnOptions<'a> {
    /// The environment it starts from.
    pub env: Option<&'a EnvPolicy>,
    /// Where stdout and stderr go in pipe mode.
    pub mode: Option<OutputMode>,
    /// Who it runs as; the server's user when `None`.
    pub identity: Option<&'a Identity>,
    /// Its session's cgroup, which it joins before its command runs.
    pub cgroup: Option<SessionCgroup>,
}

/// A running command: its input, its outputs and its process group.
///
/// Dropping a `Process` that was not [finished](Process::finish) sends
/// `SIGKILL` to its whole group and reaps the leader in the background.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    group: ProcessGroup,
    tty: bool,
    /// Tells when the leader exits without reaping it, so its pid, and so
    /// the group id, stays reserved until the last signal to the group;
    /// `None` once reaped.
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
    /// Before its command runs, the child joins `options.cgroup`, turns core
    /// dumps off and becomes `options.identity`; it gets only descriptors
    /// 0–2, and none of the server's own `WS_SUBPROCESS_*` settings.
    ///
    /// The child is started without copying the server's page tables (see
    /// [`contain::spawn`]), so this costs the same however many sessions
    /// the server holds. A session holds one descriptor for the process
    /// (a pidfd) besides its input and outputs.
    pub fn spawn(spec: &CommandSpec, options: SpawnOptions<'_>) -> io::Result<Self> {
        let env = environment(spec, &options);
        let procs = options.cgroup.as_ref().map(SessionCgroup::open_procs).transpose()?;
        let cgroup = options.cgroup.map(Arc::new);
        let start = |stdio: [BorrowedFd<'_>; 3]| {
            let _spawning = FORK_GUARD.read().unwrap_or_else(|p| p.into_inner());
            let spawned = contain::spawn(contain::Spawn {
                program: &spec.command,
                args: &spec.args,
                env: &env,
                cwd: spec.cwd.as_deref(),
                stdio,
                terminal: spec.tty,
                cgroup_procs: procs.as_ref().map(AsFd::as_fd),
                identity: options.identity,
            })?;
            contain::register(spawned.pid.as_raw_nonzero().get());
            Ok::<_, io::Error>(spawned)
        };
        if spec.tty {
            let (pty, pts) = {
                // The terminal's descriptor is made close-on-exec only after
                // it is opened: no child may start in between.
                let _opening = FORK_GUARD.write().unwrap_or_else(|p| p.into_inner());
                pty_process::open().map_err(pty_error)?
            };
            let size = spec.size.unwrap_or_default();
            pty.resize(pty_process::Size::new(size.rows, size.cols)).map_err(pty_error)?;
            let spawned = start([pts.as_fd(), pts.as_fd(), pts.as_fd()])?;
            drop(pts);
            let (reader, writer) = pty.into_split();
            let outputs = vec![ProcessOutput { stream: OutputStream::Stdout, reader: OutputReader::Pty(reader) }];
            Self::new(spawned, true, cgroup, ProcessInput::Pty(writer), outputs)
        } else {
            let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io::Error::from);
            let (stdin_reader, stdin_writer) = pipe()?;
            let (out_reader, out_writer) = pipe()?;
            let (spawned, outputs) = match options.mode.unwrap_or(OutputMode::Merged) {
                OutputMode::Merged => {
                    let spawned = start([stdin_reader.as_fd(), out_writer.as_fd(), out_writer.as_fd()])?;
                    (spawned, vec![(OutputStream::Stdout, out_reader)])
                }
                OutputMode::Separate => {
                    let (err_reader, err_writer) = pipe()?;
                    let spawned = start([stdin_reader.as_fd(), out_writer.as_fd(), err_writer.as_fd()])?;
                    (spawned, vec![(OutputStream::Stdout, out_reader), (OutputStream::Stderr, err_reader)])
                }
            };
            // Only the process may keep the write ends of its outputs open,
            // or its output never ends.
            drop((stdin_reader, out_writer));
            let outputs = outputs
                .into_iter()
                .map(|(stream, reader)| {
                    let reader = pipe::Receiver::from_owned_fd(reader)?;
                    Ok(ProcessOutput { stream, reader: OutputReader::Pipe(reader) })
                })
                .collect::<io::Result<Vec<_>>>();
            let stdin = pipe::Sender::from_owned_fd(stdin_writer).map(ProcessInput::Pipe);
            match (outputs, stdin) {
                (Ok(outputs), Ok(stdin)) => Self::new(spawned, false, cgroup, stdin, outputs),
                (Err(err), _) | (_, Err(err)) => {
                    reap_in_background(spawned.pid, spawned.pidfd, true);
                    Err(err)
                }
            }
        }
    }

    fn new(
        spawned: contain::Spawned,
        tty: bool,
        cgroup: Option<Arc<SessionCgroup>>,
        stdin: ProcessInput,
        outputs: Vec<ProcessOutput>,
    ) -> io::Result<Self> {
        let contain::Spawned { pid, pidfd } = spawned;
        // Deprecated because an `AsyncFd` over a borrowed descriptor could
        // outlive it; this one owns its `OwnedFd`, which nothing else can
        // close. The replacement is an `unsafe fn`, and this module has no
        // unsafe code.
        #[allow(deprecated)]
        let pidfd = match AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE) {
            Ok(pidfd) => pidfd,
            Err(err) => {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                reap_blocking(pid);
                return Err(err);
            }
        };
        Ok(Self {
            pid,
            group: ProcessGroup { leader: pid, tty, cgroup },
            pidfd: Some(pidfd),
            tty,
            status: None,
            stdin: Some(stdin),
            outputs,
        })
    }

    /// The leader's process id, which is also the group id.
    pub fn id(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Whether the process runs on a terminal.
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// The process group (and cgroup), for signalling from elsewhere.
    pub fn group(&self) -> ProcessGroup {
        self.group.clone()
    }

    /// Whether the kernel's out-of-memory killer ended the process, which
    /// exited with `status`: a SIGKILL while the session's cgroup saw an
    /// OOM kill (known only with a cgroup).
    pub fn oom_killed(&self, status: ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(Signal::KILL.as_raw()) && self.group.cgroup.as_ref().is_some_and(|c| c.oom_killed())
    }

    /// Waits for the leader to exit and returns its status, but leaves it
    /// unreaped (a zombie) until [`Process::finish`]: while it is, its pid
    /// cannot be reused, so signals to its group cannot reach a stranger.
    pub async fn exited(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(pidfd) = &self.pidfd else { return Err(io::Error::other("the process was reaped")) };
        let status = wait_for_exit(pidfd, WaitIdOptions::NOWAIT).await?;
        self.status = Some(status);
        Ok(status)
    }

    /// Kills whatever is left of the session (its cgroup, or its group
    /// and, on a terminal, its session), off the async threads (sweeping a
    /// session reads `/proc`), then reaps the leader.
    pub async fn finish(&mut self) {
        let group = self.group.clone();
        let _ = tokio::task::spawn_blocking(move || group.kill_all()).await;
        if let Some(cgroup) = &self.group.cgroup {
            // The cgroup can only be removed once the kernel is done with
            // what it killed.
            let _ = tokio::time::timeout(Duration::from_secs(1), cgroup.emptied()).await;
        }
        if let Some(pidfd) = &self.pidfd {
            // Killed above, so it exits now if it had not.
            let _ = wait_for_exit(pidfd, WaitIdOptions::empty()).await;
            self.pidfd = None;
            contain::unregister(self.id());
        }
    }
}

/// A process taken apart to be handed to another program (or put back
/// together after a hand-over that failed): its input and outputs travel on
/// their own, and nothing here signals, waits for or reaps it any more.
#[derive(Debug)]
pub(crate) struct ProcessParts {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) tty: bool,
    /// Its session's cgroup, left as it is.
    pub(crate) cgroup: Option<std::path::PathBuf>,
}

impl Process {
    /// Takes the process apart; its input and outputs were taken already.
    /// `None` once it was reaped.
    pub(crate) fn into_parts(mut self) -> Option<ProcessParts> {
        let pidfd = self.pidfd.take()?.into_inner();
        let cgroup = self.group.cgroup.as_ref().map(|cgroup| cgroup.release());
        Some(ProcessParts { pid: self.id(), pidfd, tty: self.tty, cgroup })
    }

    /// The process of `parts`, in its session's `cgroup`, with its input
    /// and outputs. Its pid is registered as a session leader here (the
    /// orphan reaper leaves it alone).
    pub(crate) fn from_parts(
        parts: ProcessParts,
        cgroup: Option<SessionCgroup>,
        stdin: Option<ProcessInput>,
        outputs: Vec<ProcessOutput>,
    ) -> io::Result<Self> {
        let pid = Pid::from_raw(parts.pid).ok_or_else(|| io::Error::other("no such process id"))?;
        contain::register(parts.pid);
        #[allow(deprecated)] // See `Process::new`.
        let pidfd = AsyncFd::with_interest(parts.pidfd, tokio::io::Interest::READABLE)?;
        Ok(Self {
            pid,
            group: ProcessGroup { leader: pid, tty: parts.tty, cgroup: cgroup.map(Arc::new) },
            tty: parts.tty,
            pidfd: Some(pidfd),
            status: None,
            stdin,
            outputs,
        })
    }
}

impl ProcessInput {
    /// The pipe's write end, taken out of the runtime (a terminal's input
    /// is carried with its output: see [`ProcessOutput::into_fd`]).
    pub(crate) fn into_pipe_fd(self) -> Option<OwnedFd> {
        match self {
            Self::Pipe(pipe) => pipe.into_nonblocking_fd().ok(),
            Self::Pty(_) => None,
        }
    }
}

impl ProcessOutput {
    /// The output's descriptor, taken out of the runtime: a pipe's read
    /// end, or, on a terminal, its master side, whole again with `input`
    /// (the terminal's write half) when there is one.
    pub(crate) fn into_fd(self, input: Option<ProcessInput>) -> io::Result<OwnedFd> {
        match (self.reader, input) {
            (OutputReader::Pipe(pipe), _) => pipe.into_nonblocking_fd(),
            (OutputReader::Pty(reader), Some(ProcessInput::Pty(writer))) => {
                reader.unsplit(writer).map(OwnedFd::from).map_err(pty_error)
            }
            (OutputReader::Pty(_), _) => Err(io::Error::other("a terminal's halves were parted")),
        }
    }

    /// The output of the pipe `fd`.
    pub(crate) fn from_pipe(stream: OutputStream, fd: OwnedFd) -> io::Result<Self> {
        Ok(Self { stream, reader: OutputReader::Pipe(pipe::Receiver::from_owned_fd(fd)?) })
    }

    /// The output, and the input, of the terminal `pty`.
    pub(crate) fn from_pty(pty: pty_process::Pty) -> (Self, ProcessInput) {
        let (reader, writer) = pty.into_split();
        (Self { stream: OutputStream::Stdout, reader: OutputReader::Pty(reader) }, ProcessInput::Pty(writer))
    }
}

impl ProcessInput {
    /// The input of the pipe `fd`.
    pub(crate) fn from_pipe(fd: OwnedFd) -> io::Result<Self> {
        pipe::Sender::from_owned_fd(fd).map(Self::Pipe)
    }
}

/// Waits until the process of `pidfd` has exited; reaps it unless `options`
/// has `NOWAIT`.
async fn wait_for_exit(pidfd: &AsyncFd<OwnedFd>, options: WaitIdOptions) -> io::Result<ExitStatus> {
    loop {
        let mut ready = pidfd.readable().await?;
        match rustix::process::waitid(
            WaitId::PidFd(pidfd.get_ref().as_fd()),
            options | WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        )? {
            Some(info) => return Ok(exit_status(&info)),
            None => ready.clear_ready(),
        }
    }
}

/// Reaps `pid`, which was sent `SIGKILL` or is about to exit, without
/// blocking the caller: in a task of the current runtime, or else a thread.
fn reap_in_background(pid: Pid, pidfd: OwnedFd, kill: bool) {
    if kill {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
    let reaped = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG);
    if matches!(reaped, Ok(Some(_)) | Err(_)) {
        contain::unregister(pid.as_raw_nonzero().get());
        return;
    }
    #[allow(deprecated)] // See `Process::new`.
    match (tokio::runtime::Handle::try_current(), AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)) {
        (Ok(runtime), Ok(pidfd)) => {
            runtime.spawn(async move {
                let _ = wait_for_exit(&pidfd, WaitIdOptions::empty()).await;
                contain::unregister(pid.as_raw_nonzero().get());
            });
        }
        _ => {
            std::thread::spawn(move || reap_blocking(pid));
        }
    }
}

/// Reaps `pid`, blocking until it has exited.
fn reap_blocking(pid: Pid) {
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    contain::unregister(pid.as_raw_nonzero().get());
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
        if let Some(pidfd) = self.pidfd.take() {
            self.group.kill_all();
            reap_in_background(self.pid, pidfd.into_inner(), false);
        }
    }
}

/// Variables of the server's that no child gets: its settings (which may
/// hold secrets), and systemd's `NOTIFY_SOCKET` (a child could tell the
/// service manager the server is ready, reloading or stopping).
fn is_server_variable(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(SERVER_ENV_PREFIX.as_bytes()) || name == "NOTIFY_SOCKET"
}

/// The environment of a process: the server's, or only `pass_env` with
/// `clear_env`, minus the server's own variables ([`is_server_variable`]);
/// then the identity's `HOME`, `USER`, `LOGNAME` and
/// `SHELL`; `TERM` on a terminal; then the spec's `env`.
fn environment(spec: &CommandSpec, options: &SpawnOptions<'_>) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    let policy = options.env.cloned().unwrap_or_default();
    let server_env: Box<dyn Iterator<Item = (OsString, OsString)>> = if policy.clear {
        Box::new(policy.pass.iter().filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?))))
    } else {
        Box::new(std::env::vars_os())
    };
    env.extend(server_env.filter(|(name, _)| !is_server_variable(name)));
    if let Some(identity) = options.identity {
        env.extend(identity.env().map(|(name, value)| (name.into(), value.into())));
    }
    if spec.tty {
        env.insert("TERM".into(), DEFAULT_TERM.into());
    }
    env.extend(spec.env.iter().map(|(name, value)| (name.into(), value.into())));
    env
}

fn pty_error(err: pty_process::Error) -> io::Error {
    match err {
        pty_process::Error::Io(err) => err,
        other => io::Error::other(other.to_string()),
    }
}

/// Where client input goes: a pipe, or the terminal.
#[derive(Debug)]
pub enum ProcessInput {
    /// The write end of the stdin pipe.
    Pipe(pipe::Sender),
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

    /// Writes some of `data` (one write): how many bytes. Stopping it
    /// before it is done writes nothing.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Self::Pipe(pipe) => pipe.write(data).await,
            Self::Pty(pty) => pty.write(data).await,
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

/// A process's input as its session feeds it: what clients send, until a
/// client ends it or the process stops reading for good (then further input
/// is dropped); resizes as long as it is a terminal.
///
/// A chunk is written in as many writes as the process takes; the writing
/// may stop between two of them (a hand-over) and go on later, or in the
/// program after this one, with [`Feed::unwritten`].
#[derive(Debug)]
pub(crate) struct Feed {
    input: Option<ProcessInput>,
    open: bool,
    /// The process stopped reading for good (a terminal's input is kept
    /// anyway: its master side is one with the output).
    dead: bool,
    /// The chunk being written, and how much of it is.
    writing: Option<(bytes::Bytes, usize)>,
}

impl Feed {
    pub(crate) fn new(input: Option<ProcessInput>) -> Self {
        Self { input, open: true, dead: false, writing: None }
    }

    /// The process no longer reads its input: a pipe is closed.
    fn stopped_reading(&mut self) {
        self.dead = true;
        if matches!(self.input, Some(ProcessInput::Pipe(_))) {
            self.input = None;
        }
    }

    /// A feed as the program before this one left it: `open` unless the
    /// input was ended, with `unwritten` still to write.
    pub(crate) fn resumed(input: Option<ProcessInput>, open: bool, unwritten: Option<bytes::Bytes>) -> Self {
        Self { input, open, dead: false, writing: unwritten.map(|data| (data, 0)) }
    }

    /// Starts writing `data`, after the chunk being written (see
    /// [`Feed::write_on`]).
    pub(crate) fn start(&mut self, data: bytes::Bytes) {
        self.writing = Some(match self.writing.take() {
            Some((before, done)) => ([&before[done..], &data[..]].concat().into(), 0),
            None => (data, 0),
        });
    }

    /// Writes the rest of the chunk being written: its length once it is
    /// all written, `None` when the input is gone (the rest is dropped).
    /// Stopped in between, it loses nothing: the rest stays
    /// ([`Feed::unwritten`]).
    pub(crate) async fn write_on(&mut self) -> Option<usize> {
        loop {
            let (data, done) = self.writing.as_mut()?;
            if *done == data.len() {
                let len = data.len();
                self.writing = None;
                return Some(len);
            }
            let Some(input) = self.input.as_mut().filter(|_| self.open && !self.dead) else {
                self.writing = None;
                return None;
            };
            match input.write(&data[*done..]).await {
                Ok(n) if n > 0 => *done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    self.stopped_reading();
                    self.writing = None;
                    return None;
                }
            }
        }
    }

    /// Whether a chunk is being written.
    pub(crate) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// What is left of the chunk being written.
    pub(crate) fn unwritten(&self) -> Option<bytes::Bytes> {
        self.writing.as_ref().map(|(data, done)| data.slice(*done..))
    }

    /// Whether the input was not ended.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// The input, taken out (to be carried).
    pub(crate) fn take_input(&mut self) -> Option<ProcessInput> {
        self.input.take()
    }

    /// No more input: a pipe closes; a terminal gets ^D and stays, for
    /// resizes.
    pub(crate) async fn end(&mut self) {
        if let Some(input) = self.input.as_mut().filter(|_| self.open) {
            self.open = false;
            if input.end().await {
                self.input = None;
            }
        }
    }

    /// Resizes the terminal; `false` when there is none.
    pub(crate) fn resize(&self, size: TerminalSize) -> bool {
        self.input.as_ref().is_some_and(|input| input.resize(size))
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
    /// Reads what is there, up to [`MAX_OUTPUT_CHUNK`] bytes; empty at the
    /// end. A terminal reports its end (every holder of its other side
    /// gone) as `EIO`, which is the end here too.
    ///
    /// The bytes are read through a buffer of the worker thread's, so a
    /// session that waits for output holds no buffer of its own. For a
    /// chunk that is sent and dropped: a large one may keep the buffer it
    /// was read into (at most twice its size) rather than be copied.
    pub async fn read_chunk(&mut self) -> io::Result<bytes::Bytes> {
        self.read(MAX_OUTPUT_CHUNK, true).await
    }

    /// [`ProcessOutput::read_chunk`], reading at most `limit` bytes (at
    /// most [`MAX_OUTPUT_CHUNK`]), each chunk in a buffer of exactly its
    /// size: for chunks that are kept (a detachable session's history).
    pub async fn read_chunk_up_to(&mut self, limit: usize) -> io::Result<bytes::Bytes> {
        self.read(limit, false).await
    }

    async fn read(&mut self, limit: usize, keep_buffer: bool) -> io::Result<bytes::Bytes> {
        let limit = limit.clamp(1, MAX_OUTPUT_CHUNK);
        std::future::poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                scratch.reserve(MAX_OUTPUT_CHUNK);
                match self.poll_read_into(cx, scratch, limit) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(bytes::Bytes::new())),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => return Poll::Pending,
                }
                // What is there already joins this chunk: a terminal hands
                // out at most a few KiB per read, and each chunk costs a
                // message. Nothing is waited for.
                while scratch.len() < limit {
                    let room = limit - scratch.len();
                    match self.poll_read_into(cx, scratch, room) {
                        Poll::Ready(Ok(n)) if n > 0 => {}
                        // The end, an error or nothing more: the next call
                        // sees it.
                        _ => break,
                    }
                }
                if !keep_buffer || scratch.len() < KEEP_BUFFER_FROM {
                    return Poll::Ready(Ok(bytes::Bytes::copy_from_slice(scratch)));
                }
                Poll::Ready(Ok(std::mem::take(scratch).freeze()))
            })
        })
        .await
    }

    /// One read of at most `room` bytes appended to `buf`: how many, 0 at
    /// the end.
    fn poll_read_into(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut bytes::BytesMut,
        room: usize,
    ) -> Poll<io::Result<usize>> {
        use bytes::BufMut;
        let mut buf = buf.limit(room);
        match &mut self.reader {
            OutputReader::Pipe(pipe) => tokio_util::io::poll_read_buf(std::pin::Pin::new(pipe), cx, &mut buf),
            OutputReader::Pty(pty) => match tokio_util::io::poll_read_buf(std::pin::Pin::new(pty), cx, &mut buf) {
                Poll::Ready(Err(err)) if err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    Poll::Ready(Ok(0))
                }
                other => other,
            },
        }
    }
}

/// What a session's processes are: a cgroup when there is one, else the
/// leader's process group and, for a terminal, the leader's whole session (a
/// shell's jobs each get a group of their own).
#[derive(Debug, Clone)]
pub struct ProcessGroup {
    leader: Pid,
    tty: bool,
    cgroup: Option<Arc<SessionCgroup>>,
}

impl ProcessGroup {
    /// Sends `signal` to every process in the group; a group that is already
    /// gone is not an error.
    pub fn signal(&self, signal: Signal) {
        match rustix::process::kill_process_group(self.leader, signal) {
            Ok(()) => {}
            Err(rustix::io::Errno::SRCH) => {}
            Err(err) => {
                tracing::warn!(pgid = self.leader.as_raw_nonzero().get(), cause = %err, "cannot signal process group")
            }
        }
    }

    /// `SIGKILL` to everything of the session that can be reached without
    /// reading `/proc`: the cgroup (daemons included) and the group.
    pub fn kill(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        self.signal(Signal::KILL);
    }

    /// [`ProcessGroup::kill`], and without a cgroup, on a terminal, every
    /// process still in the leader's session (this reads `/proc`: call it
    /// off the async threads).
    pub fn kill_all(&self) {
        self.kill();
        if self.cgroup.is_some() || !self.tty {
            return;
        }
        for pid in processes_where(|stat| stat.session == self.leader_raw()) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }

    /// Waits until none of the session's processes is left but the leader's
    /// unreaped remains: the cgroup is empty, or without one, no other
    /// process is in the group (or, on a terminal, the session).
    pub async fn emptied(&self) {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.emptied().await;
        }
        let (leader, tty) = (self.leader_raw(), self.tty);
        loop {
            let others = tokio::task::spawn_blocking(move || {
                processes_where(|stat| stat.pid != leader && (stat.pgrp == leader || tty && stat.session == leader))
                    .next()
                    .is_some()
            })
            .await
            .unwrap_or(false);
            if !others {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn leader_raw(&self) -> i32 {
        self.leader.as_raw_nonzero().get()
    }
}

/// What `/proc/<pid>/stat` says of a process's place.
struct Stat {
    pid: i32,
    pgrp: i32,
    session: i32,
}

/// The live processes (zombies left out) whose stat matches.
fn processes_where(matches: impl Fn(&Stat) -> bool) -> impl Iterator<Item = Pid> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries.filter_map(move |entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // The command name may hold spaces and parentheses; the fields after
        // it are state, ppid, pgrp, session.
        let mut fields = stat.rsplit_once(") ")?.1.split(' ');
        let state = fields.next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        let session = fields.next()?.parse().ok()?;
        (state != "Z" && matches(&Stat { pid, pgrp, session })).then(|| Pid::from_raw(pid)).flatten()
    })
}
