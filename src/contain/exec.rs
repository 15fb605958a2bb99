//! The crate's only unsafe code, kept to what has no safe wrapper: the hook
//! a forked child runs before `exec` (std's `pre_exec`), and marking the
//! descriptors the server inherited close-on-exec.
//!
//! The hook runs in the child between `fork` and `exec`, where only
//! async-signal-safe work is allowed: it makes raw system calls through
//! rustix on values prepared beforehand, and allocates nothing.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::{Resource, Rlimit};

/// What a child does to itself before its command runs.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// The session cgroup's `cgroup.procs`: the child moves itself in, so
    /// everything it starts is in the cgroup too.
    pub cgroup_procs: Option<OwnedFd>,
    /// Groups (supplementary, then primary) and user to switch to.
    pub identity: Option<ChildIdentity>,
}

/// The ids a child switches to, ready to use.
#[derive(Debug, Clone)]
pub struct ChildIdentity {
    /// Supplementary groups.
    pub groups: Vec<rustix::process::Gid>,
    /// Primary group.
    pub gid: rustix::process::Gid,
    /// User; `None` keeps the server's.
    pub uid: Option<rustix::process::Uid>,
}

impl ChildSetup {
    /// The hook: join the cgroup, no core dumps, drop to the identity
    /// (groups first: once the user changes, they cannot be).
    fn hook(self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        move || {
            if let Some(procs) = &self.cgroup_procs {
                rustix::io::write(procs, b"0")?;
            }
            rustix::process::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })?;
            if let Some(identity) = &self.identity {
                // The per-thread system calls: the child has one thread.
                rustix::thread::set_thread_groups(&identity.groups)?;
                rustix::thread::set_thread_gid(identity.gid)?;
                if let Some(uid) = identity.uid {
                    rustix::thread::set_thread_uid(uid)?;
                }
            }
            Ok(())
        }
    }

    /// Runs the hook in the child of `command`.
    pub fn install(self, command: &mut tokio::process::Command) {
        let hook = self.hook();
        // Safety: the hook only makes async-signal-safe system calls (see
        // the module docs).
        unsafe {
            command.pre_exec(hook);
        }
    }

    /// Runs the hook in the child of a terminal `command`, after it became
    /// the leader of a new session on its terminal.
    pub fn install_on_pty(self, command: pty_process::Command) -> pty_process::Command {
        let hook = self.hook();
        // Safety: as in `install`.
        unsafe { command.pre_exec(hook) }
    }
}

/// Marks every descriptor from 3 up close-on-exec, so that none the server
/// inherited from its launcher reaches a child. The server's own are
/// close-on-exec already; run this at start.
pub fn close_inherited_descriptors() -> io::Result<usize> {
    let mut marked = 0;
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in listed {
        // Safety: the descriptor is borrowed only for this call, and the
        // listing above saw it open (the directory's own descriptor, closed
        // by now, fails harmlessly with EBADF).
        let borrowed: BorrowedFd<'_> = unsafe { BorrowedFd::borrow_raw(fd) };
        match rustix::io::fcntl_getfd(borrowed) {
            Ok(flags) if !flags.contains(rustix::io::FdFlags::CLOEXEC) => {
                rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC)?;
                marked += 1;
            }
            _ => {}
        }
    }
    Ok(marked)
}

/// A copy of `fd` (close-on-exec) the child hook can own.
pub fn duplicate(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 3)?)
}
