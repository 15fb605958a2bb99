//! In-place upgrade (`SPEC §10`): the server executes its successor in its
//! own process (same PID, so systemd's main PID and every child stay its
//! own) and hands it what it carries in a versioned [`Handoff`]: the
//! listening sockets, every session (its process, pipes or terminal,
//! history, screen, timers, recording, and its connections, at a frame
//! boundary with the bytes read past it and the bytes not yet written),
//! and the single-use token memory.
//!
//! The steps, each a public function, which [`App`](crate::App) puts
//! together (a library user composing their own stack does the same):
//!
//! 1. [`preflight`]: run the successor with `--check-upgrade`; it reads the
//!    configuration and prints the hand-off versions it reads
//!    ([`CHECK_LINE`]). Unless that lists [`VERSION`] within
//!    [`PREFLIGHT_TIMEOUT`], nothing else happens.
//! 2. Stop accepting and let requests in progress finish
//!    ([`serve_until`](crate::server::serve_until) returns the listeners);
//!    carry them with [`Handoff::carry`].
//! 3. [`Sessions::hand_over`](crate::session::Sessions::hand_over): every
//!    session stops where it can go on and is written into the hand-off,
//!    its descriptors held by it (TLS connections, which cannot be
//!    carried, get Close 1012).
//! 4. [`exec`]: the hand-off is written into a memory file, the carried
//!    descriptors lose close-on-exec (while no child can be spawned), the
//!    signals the server handles are blocked (the mask survives `execve`;
//!    the successor unblocks them once it handles them again, so none
//!    kills it in between), and the successor runs with the same arguments
//!    plus `--upgrade-state FD`. If `execve` fails, all of it is undone and
//!    [`ServeSubprocess::resume`](crate::session::ServeSubprocess::resume)
//!    runs every session on here.
//! 5. The successor: [`Handoff::adopt`];
//!    [`CarriedSessions::claim_leaders`](crate::session::CarriedSessions::claim_leaders)
//!    before any orphan is reaped (a session's process may have exited in
//!    between, and its status is its session's); [`Handoff::take`] each
//!    listener; [`ServeSubprocess::resume`](crate::session::ServeSubprocess::resume).
//!
//! ```no_run
//! # async fn example(
//! #     sessions: ws_subprocess::session::Sessions,
//! #     service: ws_subprocess::session::ServeSubprocess,
//! #     listener: ws_subprocess::server::Listener,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::time::Duration;
//! use ws_subprocess::server::{ListenAddr, Listener};
//! use ws_subprocess::session::CarriedSessions;
//! use ws_subprocess::upgrade::{self, Handoff};
//!
//! // The program being replaced, once it stopped serving `listener`.
//! let successor = Path::new("/usr/bin/ws-subprocess");
//! let args = vec!["--config".into(), "/etc/ws-subprocess/ws-subprocess.toml".into()];
//! upgrade::preflight(successor, &args).await?;
//! let mut handoff = Handoff::new();
//! handoff.carry("listen", listener.as_fd(), "127.0.0.1:8866")?;
//! if sessions.hand_over(&mut handoff, Duration::from_secs(5)).await.is_ok() {
//!     // Returns only if the successor could not be executed.
//!     eprintln!("{}", upgrade::exec(successor, &args, &handoff));
//! }
//! // Still here: every session runs on.
//! service.resume(&mut handoff, &|socket| listener.carried(socket), None).await?;
//!
//! // The successor, started with `--upgrade-state FD`.
//! # let fd = 3;
//! let mut handoff = Handoff::adopt(fd)?;
//! CarriedSessions::claim_leaders(&handoff);
//! let addr: ListenAddr = "127.0.0.1:8866".parse()?;
//! let listener = match handoff.take("listen", &addr.to_string()) {
//!     Some(fd) => Listener::adopt(&addr, fd)?,
//!     None => Listener::bind(&addr).await?,
//! };
//! service.resume(&mut handoff, &|socket| listener.carried(socket), None).await?;
//! # Ok(()) }
//! ```

mod inherit;

pub(crate) use inherit::pty_master;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The version of the hand-off this program writes. Version 2 carries
/// sessions; version 1 (listeners and token memory only) is read as a
/// hand-off with none.
pub const VERSION: u32 = 2;
/// The versions of the hand-off this program reads.
pub const READS: &[u32] = &[1, 2];
/// How `--check-upgrade` names the versions it reads: this, then the
/// versions separated by commas.
pub const CHECK_LINE: &str = "ws-subprocess hand-off versions: ";
/// How long a successor may take to answer `--check-upgrade`.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);
/// The flag that tells a successor where its hand-off is.
pub const STATE_FLAG: &str = "--upgrade-state";

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The successor could not be run, or failed its check.
    #[error("the new binary `{binary}` failed its check: {why}")]
    Preflight {
        /// The binary.
        binary: String,
        /// What went wrong.
        why: String,
    },
    /// The hand-off could not be written, read or used.
    #[error("hand-off: {0}")]
    Handoff(String),
    /// An upgrade cannot be carried out now.
    #[error("{0}")]
    Refused(String),
    /// `execve` failed; the old program serves on.
    #[error("cannot execute the new binary")]
    Exec(#[source] io::Error),
}

fn handoff_error(err: impl std::fmt::Display) -> UpgradeError {
    UpgradeError::Handoff(err.to_string())
}

/// The line `--check-upgrade` prints.
pub fn check_line() -> String {
    let versions: Vec<String> = READS.iter().map(u32::to_string).collect();
    format!("{CHECK_LINE}{}", versions.join(","))
}

/// Runs `binary` with `args` and `--check-upgrade` (stdin closed, stderr
/// passed on) and checks that it reads this program's [`VERSION`]: an exit
/// of 0 and a [`CHECK_LINE`] that lists it, within [`PREFLIGHT_TIMEOUT`].
pub async fn preflight(binary: &Path, args: &[OsString]) -> Result<(), UpgradeError> {
    let failed = |why: String| UpgradeError::Preflight { binary: binary.display().to_string(), why };
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .arg("--check-upgrade")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    // The server's orphan reaper must leave this child to its own wait
    // (else the wait fails with ECHILD): it is registered as a leader from
    // its spawn to its end.
    let child = {
        let _spawning = crate::contain::FORK_GUARD.read().unwrap_or_else(|p| p.into_inner());
        let child = command.spawn().map_err(|err| failed(err.to_string()))?;
        if let Some(pid) = child.id() {
            crate::contain::register(pid as i32);
        }
        child
    };
    let pid = child.id();
    let waited = tokio::time::timeout(PREFLIGHT_TIMEOUT, child.wait_with_output()).await;
    if let Some(pid) = pid {
        crate::contain::unregister(pid as i32);
    }
    let output = match waited {
        Err(_) => return Err(failed(format!("no answer within {}s", PREFLIGHT_TIMEOUT.as_secs()))),
        Ok(Err(err)) => return Err(failed(err.to_string())),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        return Err(failed(format!("it exited with {}", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reads = stdout.lines().find_map(|line| line.strip_prefix(CHECK_LINE));
    let Some(reads) = reads else { return Err(failed("it does not say which hand-off versions it reads".into())) };
    if !reads.split(',').any(|v| v.trim() == VERSION.to_string()) {
        return Err(failed(format!("it reads hand-off versions {reads}, not {VERSION}")));
    }
    Ok(())
}

/// What one program hands its successor. Descriptors are named by number
/// and kept open across `execve`; everything else is plain data.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Handoff {
    /// The version of this hand-off ([`VERSION`] when written here).
    pub version: u32,
    /// Carried descriptors by name (e.g. `listen`, `metrics_listen`) and
    /// what each was for (e.g. the address it was bound for).
    pub descriptors: BTreeMap<String, Carried>,
    /// Used JWT ids and the UNIX time each stays used until.
    pub used_token_ids: Vec<(String, u64)>,
    /// In-place upgrades that led to the program reading this, this one
    /// included.
    pub upgrades: u64,
    /// The sessions, with their processes and connections (see
    /// [`session::carry`](crate::session::CarriedSessions)); their
    /// descriptors are held here ([`Handoff::keep`]).
    /// Kept as JSON text: read into its own types by whoever takes it,
    /// with no tree of values in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Box<serde_json::value::RawValue>>,
    /// Every carried descriptor's number, named or not (written by
    /// [`Handoff::write`]).
    #[serde(default, skip_serializing)]
    held_numbers: Vec<RawFd>,
    #[serde(skip)]
    held: Vec<OwnedFd>,
}

/// A hand-off as written: every field, and the numbers of all its
/// descriptors.
#[derive(Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    handoff: &'a Handoff,
    held_numbers: &'a [RawFd],
}

/// One carried descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Carried {
    /// Its number in the successor (the same as in the program before).
    pub fd: RawFd,
    /// What it is, for the successor to check, e.g. `tcp 127.0.0.1:8866`.
    pub what: String,
}

impl Handoff {
    /// An empty hand-off of this program's [`VERSION`].
    pub fn new() -> Self {
        Self { version: VERSION, ..Self::default() }
    }

    /// Carries `fd` under `name`, described by `what`; the hand-off keeps a
    /// duplicate open until it is executed or dropped.
    pub fn carry(&mut self, name: &str, fd: BorrowedFd<'_>, what: &str) -> io::Result<()> {
        let held = fd.try_clone_to_owned()?;
        self.descriptors.insert(name.into(), Carried { fd: held.as_raw_fd(), what: what.into() });
        self.held.push(held);
        Ok(())
    }

    /// Carries `fd` itself (no duplicate); returns the number it has here
    /// and in the successor.
    pub fn keep(&mut self, fd: OwnedFd) -> RawFd {
        let number = fd.as_raw_fd();
        self.held.push(fd);
        number
    }

    /// Takes back the descriptor carried as `number` ([`Handoff::keep`]),
    /// once.
    pub fn take_fd(&mut self, number: RawFd) -> Option<OwnedFd> {
        let at = self.held.iter().position(|fd| fd.as_raw_fd() == number)?;
        Some(self.held.swap_remove(at))
    }

    /// How many descriptors it carries.
    pub fn descriptor_count(&self) -> usize {
        self.held.len()
    }

    /// Writes this hand-off into a memory file (close-on-exec until
    /// [`exec`] carries it), ready to be read from the start.
    pub fn write(&self) -> Result<OwnedFd, UpgradeError> {
        let fd = rustix::fs::memfd_create("ws-subprocess-handoff", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| handoff_error(io::Error::from(e)))?;
        let mut file = std::io::BufWriter::new(std::fs::File::from(fd));
        let numbers: Vec<RawFd> = self.held.iter().map(AsRawFd::as_raw_fd).collect();
        let written = Written { handoff: self, held_numbers: &numbers };
        serde_json::to_writer(&mut file, &written).map_err(handoff_error)?;
        let mut file = file.into_inner().map_err(|e| handoff_error(e.into_error()))?;
        file.flush().map_err(handoff_error)?;
        file.rewind().map_err(handoff_error)?;
        Ok(file.into())
    }

    /// Reads the hand-off the program before this one left at descriptor
    /// `fd` and takes every descriptor it names. Refuses a version this
    /// program does not read.
    pub fn adopt(fd: RawFd) -> Result<Self, UpgradeError> {
        let mut file = std::fs::File::from(inherit::adopt(fd).map_err(handoff_error)?);
        // Read whole and parsed at once (a stream is parsed byte by byte):
        // the sessions are kept as text, so this is the only large copy.
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut text).map_err(handoff_error)?;
        let mut handoff: Handoff = serde_json::from_slice(&text).map_err(handoff_error)?;
        drop(text);
        let mut numbers = std::mem::take(&mut handoff.held_numbers);
        if !READS.contains(&handoff.version) {
            return Err(handoff_error(format!("version {} is not one this program reads", handoff.version)));
        }
        // Version 1 listed only the named ones.
        numbers.extend(handoff.descriptors.values().map(|carried| carried.fd));
        numbers.sort_unstable();
        numbers.dedup();
        for number in numbers {
            handoff.held.push(inherit::adopt(number).map_err(handoff_error)?);
        }
        Ok(handoff)
    }

    /// Takes the descriptor carried as `name`, if there is one and it is
    /// what `what` says.
    pub fn take(&mut self, name: &str, what: &str) -> Option<OwnedFd> {
        let carried = self.descriptors.get(name).filter(|carried| carried.what == what)?.clone();
        self.descriptors.remove(name);
        let at = self.held.iter().position(|fd| fd.as_raw_fd() == carried.fd)?;
        Some(self.held.swap_remove(at))
    }
}

/// Executes `binary` in place of this program with `args` and
/// [`STATE_FLAG`], carrying `handoff` (see the module docs). Returns only
/// if that failed, with everything undone.
pub fn exec(binary: &Path, args: &[OsString], handoff: &Handoff) -> UpgradeError {
    use std::os::unix::process::CommandExt;
    let state = match handoff.write() {
        Ok(state) => state,
        Err(err) => return err,
    };
    let mut carried: Vec<BorrowedFd<'_>> = handoff.held.iter().map(AsFd::as_fd).collect();
    carried.push(state.as_fd());
    // No child may be spawned while the carried descriptors are open to one.
    let _no_spawns = crate::contain::hold_spawns();
    let blocked = block_handled_signals();
    let set = |carry: bool| carried.iter().try_for_each(|fd| inherit::carry_across_exec(*fd, carry));
    let err = match set(true) {
        Ok(()) => {
            std::process::Command::new(binary).args(args).arg(STATE_FLAG).arg(state.as_raw_fd().to_string()).exec()
        }
        Err(err) => err,
    };
    let _ = set(false);
    restore_signals(blocked);
    UpgradeError::Exec(err)
}

/// The signals the server handles, whose default action would end it.
const HANDLED: [nix::sys::signal::Signal; 4] = [
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGUSR2,
];

fn handled() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in HANDLED {
        set.add(signal);
    }
    set
}

/// Blocks [`HANDLED`] in this thread; returns the mask before.
fn block_handled_signals() -> Option<nix::sys::signal::SigSet> {
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&handled()), Some(&mut old))
        .ok()
        .map(|()| old)
}

fn restore_signals(old: Option<nix::sys::signal::SigSet>) {
    if let Some(old) = old {
        let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
}

/// Unblocks the signals a program before this one blocked for the
/// `execve`; call once this program handles them (a signal that came in
/// between is delivered now).
pub fn unblock_handled_signals() {
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK, Some(&handled()), None);
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_handoff_reads_back_with_its_descriptors() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut handoff = Handoff::new();
        handoff.carry("socket", writer.as_fd(), "a pair").unwrap();
        handoff.used_token_ids.push(("jti".into(), 42));
        let state = handoff.write().unwrap();
        // As the successor would see them: open at the same numbers.
        let numbers: Vec<RawFd> = handoff.held.iter().map(|fd| fd.as_raw_fd()).collect();
        let held = std::mem::take(&mut handoff.held);
        std::mem::forget(held);
        let fd = state.as_raw_fd();
        std::mem::forget(state);
        let mut adopted = Handoff::adopt(fd).unwrap();
        assert_eq!(adopted.used_token_ids, [("jti".to_string(), 42)]);
        assert!(adopted.take("socket", "something else").is_none());
        let taken = adopted.take("socket", "a pair").unwrap();
        assert_eq!(taken.as_raw_fd(), numbers[0]);
        let flags = rustix::io::fcntl_getfd(&taken).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "an adopted descriptor must not reach children");
        let mut peer = std::os::unix::net::UnixStream::from(taken);
        peer.write_all(b"x").unwrap();
        let mut buf = [0; 1];
        (&reader).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let handoff = Handoff { version: 999, ..Handoff::new() };
        let state = handoff.write().unwrap();
        let fd = state.as_raw_fd();
        std::mem::forget(state);
        assert!(matches!(Handoff::adopt(fd), Err(UpgradeError::Handoff(why)) if why.contains("999")));
    }
}
