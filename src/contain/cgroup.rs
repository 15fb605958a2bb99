//! One cgroup v2 per session: every process of the session is in it, daemons
//! that called `setsid` included; `cgroup.kill` ends them all, and
//! `cgroup.events` tells when none is left.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Where per-session cgroups come from (config key `cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSetting {
    /// A child of the server's own cgroup when the unified hierarchy is
    /// writable; else process groups.
    Auto,
    /// Process groups only.
    Off,
    /// Children of this cgroup v2 directory.
    Dir(PathBuf),
}

impl FromStr for CgroupSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            path if path.starts_with('/') => Ok(Self::Dir(path.into())),
            _ => Err(format!("`{s}` is not `auto`, `off` or an absolute path")),
        }
    }
}

impl fmt::Display for CgroupSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Off => f.write_str("off"),
            Self::Dir(path) => path.display().fmt(f),
        }
    }
}

/// Limits of one session's cgroup; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `memory.max`, bytes.
    pub memory: Option<u64>,
    /// `pids.max`.
    pub pids: Option<u64>,
    /// `cpu.max`, in percent of one CPU.
    pub cpu_percent: Option<u32>,
}

impl CgroupLimits {
    /// The stricter of two limits, each field on its own.
    pub fn min(self, other: Self) -> Self {
        fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Self {
            memory: min(self.memory, other.memory),
            pids: min(self.pids, other.pids),
            cpu_percent: min(self.cpu_percent.map(u64::from), other.cpu_percent.map(u64::from)).map(|p| p as u32),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The controllers this server uses, where the hierarchy delegates them.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The cgroup that per-session cgroups are made in.
#[derive(Debug, Clone)]
pub struct CgroupRoot(Arc<Root>);

#[derive(Debug)]
struct Root {
    dir: PathBuf,
    /// Held while this server made `dir` (and so removes it when done): a
    /// shared lock that tells other servers it is alive.
    owned: Option<OwnedFd>,
    controllers: Vec<&'static str>,
    next: AtomicU64,
    events: EventWatch,
}

impl CgroupRoot {
    /// Sets up per-session cgroups as `setting` asks. `Ok(None)` for `off`;
    /// an error says why `auto` (or a directory) cannot be used, for the
    /// one log line that explains the fallback.
    pub fn setup(setting: &CgroupSetting) -> Result<Option<Self>, String> {
        Self::setup_carried(setting, None)
    }

    /// [`CgroupRoot::setup`] for a server that took over from the program
    /// before it (an in-place upgrade): with `auto`, the directory that
    /// program made and the lock that marks it alive ([`CgroupRoot::carried`]).
    pub fn setup_carried(setting: &CgroupSetting, carried: Option<(PathBuf, OwnedFd)>) -> Result<Option<Self>, String> {
        let (dir, owned) = match setting {
            CgroupSetting::Off => return Ok(None),
            CgroupSetting::Auto if carried.as_ref().is_some_and(|(dir, _)| dir.join("cgroup.procs").exists()) => {
                let (dir, lock) = carried.expect("checked");
                (dir, Some(lock))
            }
            CgroupSetting::Dir(dir) => {
                if !dir.join("cgroup.procs").exists() {
                    return Err(format!("`{}` is not a cgroup v2 directory", dir.display()));
                }
                (dir.clone(), None)
            }
            CgroupSetting::Auto => auto_dir()?,
        };
        if !dir.join("cgroup.kill").exists() {
            return Err("the kernel has no cgroup.kill (Linux 5.14 or later needed)".into());
        }
        let controllers = enable_controllers(&dir);
        let events = EventWatch::new().map_err(|e| format!("inotify: {e}"))?;
        let root = Self(Arc::new(Root { dir, owned, controllers, next: AtomicU64::new(1), events }));
        // A session cgroup that cannot be made now never will be.
        root.create(&CgroupLimits::default()).map_err(|e| format!("cannot create a session cgroup: {e}"))?;
        Ok(Some(root))
    }

    /// The directory session cgroups are made in.
    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// The directory, and the lock that marks it alive, when this server
    /// made it (`auto`): what an in-place upgrade carries to the successor.
    pub fn carried(&self) -> Option<(&Path, BorrowedFd<'_>)> {
        self.0.owned.as_ref().map(|lock| (self.0.dir.as_path(), lock.as_fd()))
    }

    /// The controllers (of `memory`, `pids`, `cpu`) sessions get.
    pub fn controllers(&self) -> &[&'static str] {
        &self.0.controllers
    }

    /// The cgroup `dir` of a session carried from the program before this
    /// one (an in-place upgrade), which made it in this root.
    pub fn adopt(&self, dir: &Path) -> io::Result<SessionCgroup> {
        if dir.parent() != Some(self.dir()) || !dir.join("cgroup.procs").exists() {
            return Err(io::Error::other(format!("`{}` is not a session cgroup of this root", dir.display())));
        }
        // Sessions made from now on get numbers after it.
        let n = dir.file_name().and_then(|n| n.to_str()?.strip_prefix("session-")?.parse::<u64>().ok());
        if let Some(n) = n {
            self.0.next.fetch_max(n + 1, Ordering::Relaxed);
        }
        SessionCgroup::open(dir.to_path_buf(), self.clone())
    }

    /// A new, empty cgroup for one session, with `limits` where the
    /// controllers allow (limits for missing controllers are logged and
    /// skipped).
    pub fn create(&self, limits: &CgroupLimits) -> io::Result<SessionCgroup> {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.0.dir.join(format!("session-{n}"));
        std::fs::create_dir(&dir)?;
        let cgroup = SessionCgroup::open(dir, self.clone());
        let cgroup = cgroup?;
        cgroup.apply(limits)?;
        Ok(cgroup)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if self.owned.is_some() {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// For `auto`: the cgroup v2 mount, the server's own cgroup in it, and a
/// directory for sessions there.
fn auto_dir() -> Result<(PathBuf, Option<OwnedFd>), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("mountinfo: {e}"))?;
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or("no cgroup v2 (unified) hierarchy is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).ok_or("the server is in no cgroup v2")?;
    let own_dir = mount.join(own.trim_start_matches('/'));
    if own == "/" {
        sweep_stale(&own_dir);
        // The root cgroup may hold processes and children alike. (Several
        // servers may share a process: tests, library users.)
        static SERVERS: AtomicU64 = AtomicU64::new(1);
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        // With a random part: servers in pid namespaces of their own may
        // all be PID 1.
        let mut random = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = own_dir.join(format!("ws-subprocess-{}-{n}-{random}", std::process::id()));
        let lock = create_locked(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        return Ok((dir, Some(lock)));
    }
    // A delegated cgroup (systemd `Delegate=yes`): a cgroup that hands
    // controllers to children may hold no process, so the server moves to a
    // leaf of its own beside the sessions.
    let leaf = own_dir.join("server");
    if !leaf.exists() {
        std::fs::create_dir(&leaf).map_err(|e| format!("cannot create `{}`: {e}", leaf.display()))?;
    }
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("cannot move the server into `{}`: {e}", leaf.display()))?;
    Ok((own_dir, None))
}

/// Creates `dir` and holds a shared `flock` on it for the server's life, so
/// a sweep by another server leaves it alone (a pid says nothing across pid
/// namespaces: a server run as PID 1 in a container of its own sees no
/// other server's pid). A sweep may remove it between the `mkdir` and the
/// lock: then again.
fn create_locked(dir: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    for _ in 0..3 {
        std::fs::create_dir(dir)?;
        let fd = match rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(err) => return Err(err.into()),
        };
        rustix::fs::flock(&fd, FlockOperation::LockShared)?;
        if dir.exists() {
            return Ok(fd);
        }
    }
    Err(io::Error::other("removed by another server's sweep while being created"))
}

/// Removes what servers that are gone (killed, say) left in `parent`: their
/// `ws-subprocess-<pid>-<n>` directories that no live server holds a lock
/// on (see [`create_locked`]), with their empty session cgroups. One that
/// still holds processes stays.
fn sweep_stale(parent: &Path) {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with("ws-subprocess-")) {
            continue;
        }
        let dir = entry.path();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(&dir, flags, Mode::empty()) else { continue };
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // its server is alive
        }
        if let Ok(sessions) = std::fs::read_dir(&dir) {
            for session in sessions.flatten().filter(|s| s.path().is_dir()) {
                let _ = std::fs::remove_dir(session.path());
            }
        }
        if std::fs::remove_dir(&dir).is_ok() {
            tracing::info!(cgroup = %dir.display(), "removed the cgroup of a server that is gone");
        }
    }
}

/// Enables what it can of [`CONTROLLERS`] for children of `dir`; returns
/// those children get.
fn enable_controllers(dir: &Path) -> Vec<&'static str> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for controller in CONTROLLERS {
        if !available.split_whitespace().any(|c| c == controller) {
            continue;
        }
        if std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}")).is_ok() {
            enabled.push(controller);
        }
    }
    enabled
}

/// One session's cgroup; removed (after killing what is left) when
/// dropped.
#[derive(Debug)]
pub struct SessionCgroup {
    dir: PathBuf,
    watch: i32,
    changed: Arc<Notify>,
    root: CgroupRoot,
    /// Set when another program takes the cgroup over: dropping it then
    /// leaves it as it is.
    released: std::sync::atomic::AtomicBool,
}

impl SessionCgroup {
    fn open(dir: PathBuf, root: CgroupRoot) -> io::Result<Self> {
        match root.0.events.watch(&dir.join("cgroup.events")) {
            Ok((watch, changed)) => Ok(Self { dir, watch, changed, root, released: Default::default() }),
            Err(err) => {
                let _ = std::fs::remove_dir(&dir);
                Err(err)
            }
        }
    }

    fn apply(&self, limits: &CgroupLimits) -> io::Result<()> {
        if limits.is_empty() {
            return Ok(());
        }
        let controllers = self.root.controllers();
        let set = |controller: &str, file: &str, value: String| {
            if controllers.contains(&controller) {
                std::fs::write(self.dir.join(file), value)
            } else {
                tracing::warn!(controller, "a session limit was asked for, but the controller is not delegated");
                Ok(())
            }
        };
        if let Some(bytes) = limits.memory {
            set("memory", "memory.max", bytes.to_string())?;
            // Swap would let the limit be exceeded on disk.
            let _ = std::fs::write(self.dir.join("memory.swap.max"), "0");
        }
        if let Some(pids) = limits.pids {
            set("pids", "pids.max", pids.to_string())?;
        }
        if let Some(percent) = limits.cpu_percent {
            // Per 100 ms period: 1000 µs per percent of one CPU.
            set("cpu", "cpu.max", format!("{} 100000", u64::from(percent) * 1000))?;
        }
        Ok(())
    }

    /// The directory of this cgroup.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves the cgroup to another program (an in-place upgrade): once
    /// this is dropped, nothing in it is killed and it is not removed.
    /// Returns its directory.
    pub fn release(&self) -> PathBuf {
        self.released.store(true, Ordering::Release);
        self.dir.clone()
    }

    /// Opens `cgroup.procs` for writing: a process that writes `0` to it
    /// moves itself in. Opened for each start, not held: a session's
    /// descriptors are what limits how many sessions a server holds.
    pub fn open_procs(&self) -> io::Result<OwnedFd> {
        let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC;
        Ok(rustix::fs::open(self.dir.join("cgroup.procs"), flags, rustix::fs::Mode::empty())?)
    }

    /// Whether no process is left in it.
    pub fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l == "populated 0"))
            .unwrap_or(true)
    }

    /// Waits until no process is left in it.
    pub async fn emptied(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_empty() {
                return;
            }
            // A change is announced by inotify; the timeout is a backstop
            // in case an event is ever missed.
            let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
        }
    }

    /// Kills every process in it at once (`cgroup.kill`).
    pub fn kill(&self) {
        if let Err(err) = std::fs::write(self.dir.join("cgroup.kill"), "1")
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %self.dir.display(), cause = %err, "cannot kill the session's cgroup");
        }
    }

    /// Whether the kernel's out-of-memory killer ended a process of it.
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|events| {
                events.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|kills| kills > 0)
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        self.root.0.events.unwatch(self.watch);
        if self.released.load(Ordering::Acquire) {
            return;
        }
        if !self.is_empty() {
            self.kill();
        }
        let busy = |result: &io::Result<()>| matches!(result, Err(err) if err.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()));
        if !busy(&std::fs::remove_dir(&self.dir)) {
            return;
        }
        // Killed processes are still on their way out, and the kernel needs
        // a moment: retried off the async threads, which serve every other
        // session meanwhile.
        let dir = self.dir.clone();
        let retry = move || {
            for _ in 0..50 {
                std::thread::sleep(Duration::from_millis(2));
                if !busy(&std::fs::remove_dir(&dir)) {
                    return;
                }
            }
            tracing::warn!(cgroup = %dir.display(), "cannot remove the session's cgroup");
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(retry)),
            Err(_) => retry(),
        }
    }
}

/// One inotify instance for every session's `cgroup.events`, with a task
/// that wakes whoever waits on a file that changed.
#[derive(Debug)]
struct EventWatch {
    inotify: Arc<AsyncFd<OwnedFd>>,
    waiters: Arc<Mutex<HashMap<i32, Arc<Notify>>>>,
}

impl EventWatch {
    fn new() -> io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        // An `AsyncFd` over a descriptor it owns; see `Process` for why the
        // deprecated constructor is the safe one here.
        #[allow(deprecated)]
        let inotify = Arc::new(AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?);
        let waiters: Arc<Mutex<HashMap<i32, Arc<Notify>>>> = Arc::default();
        let (reader, wake) = (inotify.clone(), waiters.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
                loop {
                    let Ok(mut ready) = reader.readable().await else { return };
                    let mut events = inotify::Reader::new(reader.get_ref(), &mut buf);
                    loop {
                        match events.next() {
                            Ok(event) => {
                                if let Some(notify) = wake.lock().unwrap_or_else(|p| p.into_inner()).get(&event.wd()) {
                                    notify.notify_waiters();
                                }
                            }
                            Err(rustix::io::Errno::AGAIN) => {
                                ready.clear_ready();
                                break;
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
        }
        Ok(Self { inotify, waiters })
    }

    fn watch(&self, file: &Path) -> io::Result<(i32, Arc<Notify>)> {
        let wd = inotify::add_watch(self.inotify.get_ref(), file, inotify::WatchFlags::MODIFY)?;
        let notify = Arc::new(Notify::new());
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(wd, notify.clone());
        Ok((wd, notify))
    }

    fn unwatch(&self, wd: i32) {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&wd);
        let _ = inotify::remove_watch(self.inotify.get_ref(), wd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_auto_off_or_a_path() {
        assert_eq!("auto".parse(), Ok(CgroupSetting::Auto));
        assert_eq!("off".parse(), Ok(CgroupSetting::Off));
        assert_eq!("/sys/fs/cgroup/x".parse(), Ok(CgroupSetting::Dir("/sys/fs/cgroup/x".into())));
        assert!("x".parse::<CgroupSetting>().is_err());
    }

    #[test]
    fn limits_take_the_stricter_of_each() {
        let config = CgroupLimits { memory: Some(100), pids: None, cpu_percent: Some(50) };
        let spec = CgroupLimits { memory: Some(200), pids: Some(5), cpu_percent: Some(20) };
        assert_eq!(config.min(spec), CgroupLimits { memory: Some(100), pids: Some(5), cpu_percent: Some(20) });
    }
}
