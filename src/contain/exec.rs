//! The crate's only unsafe code, kept to what has no safe wrapper: starting
//! a child the way `posix_spawn` does, with the setup a session needs done
//! in the child before its command runs; and marking the descriptors the
//! server inherited close-on-exec.
//!
//! Starting a process from a server that holds thousands of sessions must
//! not cost more than from an idle one. `fork` copies the page tables (they
//! grow with the server's memory) and the descriptor table (it grows with
//! its sessions), and the child then closes every descriptor one by one at
//! `execve`. So the child is a `clone` with `CLONE_VM | CLONE_VFORK |
//! CLONE_FILES`, which copies neither, and the first thing it does is
//! `close_range(N, ~0, CLOSE_RANGE_UNSHARE)`, which gives it a table of its
//! own holding only the descriptors below `N`. Its standard streams (and the
//! cgroup's `cgroup.procs`) are put in a few reserved low slots first, so
//! `N` stays small whatever the server holds.
//!
//! The child shares the server's memory until it calls `execve`, while the
//! calling thread waits. So everything it uses is prepared beforehand, and it
//! only makes system calls: no allocation, no lock, no glibc function that
//! keeps process-wide state (the ids are changed with raw system calls, not
//! glibc's `setuid`, which would signal every thread of the server). All
//! signals are blocked around the `clone`; the child resets every handler to
//! its default before it unblocks them.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::libc;
use nix::sched::CloneFlags;

use super::Identity;

/// A process to start.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// The program, run directly (no shell, no `PATH` search).
    pub program: &'a Path,
    /// Its arguments after the program name.
    pub args: &'a [String],
    /// Its whole environment.
    pub env: &'a BTreeMap<OsString, OsString>,
    /// Its working directory; the server's when `None`.
    pub cwd: Option<&'a Path>,
    /// What becomes its descriptors 0, 1 and 2 (it gets no other).
    pub stdio: [BorrowedFd<'a>; 3],
    /// Lead a new session whose controlling terminal is `stdio[0]` (a
    /// terminal), instead of a new process group.
    pub terminal: bool,
    /// The session cgroup's `cgroup.procs`: the child moves itself in before
    /// its command runs, so everything it starts is in the cgroup too.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// Groups and user to switch to.
    pub identity: Option<&'a Identity>,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its process id.
    pub pid: rustix::process::Pid,
    /// A pidfd: tells when it exits, and reaps it.
    pub pidfd: OwnedFd,
}

/// Stack of the child until it calls `execve`: the setup needs little.
const CHILD_STACK: usize = 64 * 1024;

/// Starts `spawn`: a new process group (or session, on a terminal), in the
/// cgroup, with no core dumps, as the identity, with only `stdio` open. An
/// error says why the process could not start (`execve`'s, for a missing
/// program).
pub fn spawn(spawn: Spawn<'_>) -> io::Result<Spawned> {
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let program = cstring(spawn.program.as_os_str().as_bytes())?;
    let mut argv = vec![program.clone()];
    for arg in spawn.args {
        argv.push(cstring(arg.as_bytes())?);
    }
    let envp: Vec<CString> = spawn
        .env
        .iter()
        .map(|(name, value)| cstring(&[name.as_bytes(), b"=", value.as_bytes()].concat()))
        .collect::<io::Result<_>>()?;
    let cwd = spawn.cwd.map(|cwd| cstring(cwd.as_os_str().as_bytes())).transpose()?;
    let argv_ptrs: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_ptrs: Vec<*const libc::c_char> =
        envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let slots = slots()?;
    // One start at a time: the slots hold its descriptors.
    let _starting = slots.lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut sources: Vec<RawFd> = spawn.stdio.iter().map(AsRawFd::as_raw_fd).collect();
    sources.extend(spawn.cgroup_procs.map(|fd| fd.as_raw_fd()));
    let placed = Placed::new(slots, &sources)?;
    let [in_slot, out_slot, err_slot, procs_slot] = slots.numbers;
    let keep_below = slots.keep_below;
    let procs = spawn.cgroup_procs.map(|_| procs_slot);
    let identity = spawn.identity;
    let terminal = spawn.terminal;
    let error = AtomicI32::new(0);
    let mut stack = vec![0u8; CHILD_STACK];

    let child = || -> isize {
        // Safety (the whole closure): it runs in the child, on its own
        // stack, in memory shared with the waiting caller; it only makes
        // system calls on the values prepared above.
        unsafe {
            let fail = |what: i32| -> isize {
                let errno = *libc::__errno_location();
                error.store(if errno != 0 { errno } else { what }, Ordering::SeqCst);
                libc::_exit(127)
            };
            // Handlers of the server would run in the child, on shared
            // memory, and ignored signals would stay ignored in the command
            // (SIGPIPE is, in a Rust program): every signal back to its
            // default, then unblock them all.
            let mut default = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
            default.sa_sigaction = libc::SIG_DFL;
            for signal in 1..libc::SIGRTMAX() {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::sigaction(signal, &default, std::ptr::null_mut());
                }
            }
            let mut empty = MaybeUninit::<libc::sigset_t>::zeroed();
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
            // A descriptor table of its own with only the slots and below
            // (Linux 5.9); before that, a copy of the whole table. Until
            // then the table is the server's: nothing may change in it.
            if libc::syscall(libc::SYS_close_range, keep_below, u32::MAX, libc::CLOSE_RANGE_UNSHARE) < 0
                && libc::unshare(libc::CLONE_FILES) < 0
            {
                return fail(libc::ENOSYS);
            }
            if terminal {
                if libc::setsid() < 0 {
                    return fail(libc::EPERM);
                }
            } else if libc::setpgid(0, 0) < 0 {
                return fail(libc::EPERM);
            }
            for (target, source) in [in_slot, out_slot, err_slot].iter().enumerate() {
                if libc::dup2(*source, target as i32) < 0 {
                    return fail(libc::EBADF);
                }
            }
            if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return fail(libc::ENOTTY);
            }
            if let Some(procs) = procs
                && libc::write(procs, b"0".as_ptr().cast(), 1) != 1
            {
                return fail(libc::EIO);
            }
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::setrlimit(libc::RLIMIT_CORE, &no_core) < 0 {
                return fail(libc::EPERM);
            }
            if let Some(cwd) = &cwd
                && libc::chdir(cwd.as_ptr()) < 0
            {
                return fail(libc::ENOENT);
            }
            if let Some(identity) = identity {
                // Raw system calls: glibc's wrappers would signal every
                // thread of the server (whose memory this is) to follow.
                let groups = &identity.groups;
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
                    || libc::syscall(libc::SYS_setresgid, identity.gid, identity.gid, identity.gid) < 0
                    || libc::syscall(libc::SYS_setresuid, identity.uid, identity.uid, identity.uid) < 0
                {
                    return fail(libc::EPERM);
                }
            }
            // Nothing but 0-2 reaches the command: the slots go too (and,
            // before Linux 5.9, whatever the server forgot to make
            // close-on-exec: see `close_inherited_descriptors`).
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            fail(libc::ENOEXEC)
        }
    };

    // Safety: all signals are blocked for the clone and restored after it;
    // `CLONE_VFORK` keeps this thread (and so everything the child borrows)
    // waiting until the child has called `execve` or exited.
    let pid = unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::zeroed();
        let mut previous = MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), previous.as_mut_ptr());
        let cloned = nix::sched::clone(
            Box::new(child),
            &mut stack,
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK | CloneFlags::CLONE_FILES,
            Some(libc::SIGCHLD),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, previous.as_ptr(), std::ptr::null_mut());
        cloned
    }
    .map_err(io::Error::from)?;
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).ok_or_else(|| io::Error::other("no pid"))?;
    drop(placed);
    let failed = error.load(Ordering::SeqCst);
    if failed != 0 {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        return Err(io::Error::from_raw_os_error(failed));
    }
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => Ok(Spawned { pid, pidfd }),
        Err(err) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            // Out of descriptors keeps its errno: the caller answers 503.
            if err == rustix::io::Errno::NOSYS {
                Err(io::Error::other(format!("pidfd_open (Linux 5.3 or later is needed): {err}")))
            } else {
                Err(io::Error::from(err))
            }
        }
    }
}

/// Four descriptors kept open on `/dev/null`, as low as they could be
/// had: a start puts the child's stdin, stdout, stderr and `cgroup.procs`
/// there, and the child keeps only the descriptors up to them.
struct Slots {
    null: OwnedFd,
    _held: [OwnedFd; 4],
    numbers: [RawFd; 4],
    /// The first descriptor number above the slots.
    keep_below: u32,
    lock: std::sync::Mutex<()>,
}

static SLOTS: std::sync::OnceLock<Slots> = std::sync::OnceLock::new();

/// Holds back every [`spawn`] until the guard is dropped: while a
/// descriptor is made inheritable for an `execve` of the server itself, no
/// child may be started and inherit it.
pub fn hold_spawns() -> Option<std::sync::MutexGuard<'static, ()>> {
    slots().ok().map(|slots| slots.lock.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The slots, reserved on first use. Call early, while the lowest
/// descriptors are free, so a child's table stays small (the server does,
/// in [`harden_process`](super::harden_process)).
pub fn reserve_spawn_slots() -> io::Result<()> {
    slots().map(|_| ())
}

fn slots() -> io::Result<&'static Slots> {
    if let Some(slots) = SLOTS.get() {
        return Ok(slots);
    }
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let held = [
        rustix::io::fcntl_dupfd_cloexec(&null, 3)?,
        rustix::io::fcntl_dupfd_cloexec(&null, 3)?,
        rustix::io::fcntl_dupfd_cloexec(&null, 3)?,
        rustix::io::fcntl_dupfd_cloexec(&null, 3)?,
    ];
    let numbers = [held[0].as_raw_fd(), held[1].as_raw_fd(), held[2].as_raw_fd(), held[3].as_raw_fd()];
    let keep_below = numbers.iter().copied().max().unwrap_or(2) as u32 + 1;
    let slots = Slots { null, _held: held, numbers, keep_below, lock: std::sync::Mutex::new(()) };
    // Whoever lost a race drops its own descriptors.
    let _ = SLOTS.set(slots);
    Ok(SLOTS.get().expect("just set"))
}

/// The sources of a start put in their slots (close-on-exec: only the
/// child's `dup2` makes them its streams); back on `/dev/null` when
/// dropped, so the slots hold nothing of a session.
struct Placed<'a> {
    slots: &'a Slots,
    count: usize,
}

impl<'a> Placed<'a> {
    fn new(slots: &'a Slots, sources: &[RawFd]) -> io::Result<Self> {
        let mut placed = Self { slots, count: 0 };
        for (source, slot) in sources.iter().zip(slots.numbers) {
            // Safety: `slot` is a descriptor the slots own and nothing else
            // uses; `source` is borrowed by the caller for the call.
            if unsafe { libc::dup3(*source, slot, libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
            placed.count += 1;
        }
        Ok(placed)
    }
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        for slot in &self.slots.numbers[..self.count] {
            // Safety: as in `Placed::new`.
            unsafe { libc::dup3(self.slots.null.as_raw_fd(), *slot, libc::O_CLOEXEC) };
        }
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn run(program: &str, args: &[&str], terminal: bool) -> io::Result<(String, i32)> {
        let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = BTreeMap::from([(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))]);
        let spawned = spawn(Spawn {
            program: Path::new(program),
            args: &args,
            env: &env,
            cwd: Some(Path::new("/")),
            stdio: [null.as_fd(), out_w.as_fd(), out_w.as_fd()],
            terminal,
            cgroup_procs: None,
            identity: None,
        })?;
        drop(out_w);
        let mut output = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(out_r), &mut output).unwrap();
        let status =
            rustix::process::waitpid(Some(spawned.pid), rustix::process::WaitOptions::empty()).unwrap().unwrap().1;
        Ok((output, status.exit_status().unwrap_or(-1)))
    }

    #[test]
    fn a_child_gets_its_arguments_environment_directory_and_only_three_descriptors() {
        let (output, status) =
            run("/bin/sh", &["-c", "echo $0 $PATH; pwd; ls /proc/$$/fd; exit 3", "x"], false).unwrap();
        assert_eq!(output, "x /usr/bin:/bin\n/\n0\n1\n2\n");
        assert_eq!(status, 3);
    }

    #[test]
    fn a_child_leads_its_own_group_and_has_no_core_dumps() {
        let (output, _) = run("/bin/sh", &["-c", "ps -o pid=,pgid= -p $$; ulimit -c"], false).unwrap();
        let mut fields = output.split_whitespace();
        let (pid, pgid) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(pid, pgid, "{output}");
        assert_eq!(fields.next(), Some("0"));
    }

    #[test]
    fn a_missing_program_is_an_error_of_its_own() {
        let err = run("/no/such/program", &[], false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
