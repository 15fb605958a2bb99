//! Reaping: the server is a child subreaper, so daemonized grandchildren of
//! a session become its children when their parent dies; as PID 1 (a
//! container without an init) every orphan does. Either way they are reaped
//! here, without touching the session leaders, which their `Process` reaps.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use rustix::process::{Pid, WaitOptions};

/// Held for reading while a child is being spawned and registered, and for
/// writing while orphans are reaped, so an orphan reaper never mistakes a
/// session leader that just exited for an orphan. (Opening a terminal holds
/// it for writing too; see `session::process`.)
pub(crate) static FORK_GUARD: RwLock<()> = RwLock::new(());

/// The server's own children (session leaders), which their `Process` reaps.
static LEADERS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Records a session leader; call while holding [`FORK_GUARD`] for reading.
pub(crate) fn register(pid: i32) {
    LEADERS.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashSet::new).insert(pid);
}

/// Forgets a session leader once it was reaped.
pub(crate) fn unregister(pid: i32) {
    if let Some(leaders) = LEADERS.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        leaders.remove(&pid);
    }
}

/// Makes this process a child subreaper and reaps orphans on every
/// `SIGCHLD`, for the life of the runtime. Only for a process that owns all
/// its children through [`Process`](crate::session::Process) (the binary):
/// anything else it spawned and left to tokio could be reaped here first.
pub fn start_reaping_orphans() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let mut child_signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        while child_signals.recv().await.is_some() {
            let _ = tokio::task::spawn_blocking(reap_orphans).await;
            // A scan reads the list of every child, and sessions end by the
            // hundred per second on a busy server: orphans wait for the next
            // scan, at most this long (signals meanwhile count as one).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    Ok(())
}

/// Reaps every child that has exited and is not a session leader.
fn reap_orphans() {
    let _exclusive = FORK_GUARD.write().unwrap_or_else(|p| p.into_inner());
    let leaders = LEADERS.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if leaders.contains(&pid) {
                continue;
            }
            if let Some(pid) = Pid::from_raw(pid) {
                // Not yet exited: `None`, and it is reaped on a later
                // SIGCHLD.
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
            }
        }
    }
}
