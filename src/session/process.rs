//! Starting a command as the leader of its own process group, signalling the
//! group, and making sure nothing of it outlives its owner.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};

use rustix::process::{Pid, Signal};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};

use crate::spec::CommandSpec;

/// How a process's environment is built.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    /// Start from an empty environment instead of the server's.
    pub clear: bool,
    /// With `clear`, the server variables still passed through.
    pub pass: Vec<String>,
}

/// A running command: its stdin, its output pipe (stdout and stderr share
/// it, so their order is kept), and its process group.
///
/// Dropping a `Process` sends `SIGKILL` to its whole group; the tokio runtime
/// reaps a leader that was not waited for.
#[derive(Debug)]
pub struct Process {
    child: Child,
    group: ProcessGroup,
    /// The write end of the process's stdin; `None` once closed.
    pub stdin: Option<ChildStdin>,
    /// The read end of the pipe holding the process's stdout and stderr.
    pub output: Option<pipe::Receiver>,
}

impl Process {
    /// Starts `spec` directly (no shell) as the leader of a new process group.
    pub fn spawn(spec: &CommandSpec, env: &EnvPolicy) -> io::Result<Self> {
        let (reader, writer) = io::pipe()?;
        let mut command = Command::new(&spec.command);
        command.args(&spec.args).stdin(Stdio::piped()).stdout(writer.try_clone()?).stderr(writer).process_group(0);
        if env.clear {
            command.env_clear();
            for name in &env.pass {
                if let Some(value) = std::env::var_os(name) {
                    command.env(name, value);
                }
            }
        }
        command.envs(&spec.env);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn()?;
        // The command holds our copies of the pipe's write end; only the
        // process may keep it open, or the output never ends.
        drop(command);
        let pid = child.id().and_then(|id| Pid::from_raw(id as i32)).ok_or_else(|| io::Error::other("no pid"))?;
        let group = ProcessGroup(pid);
        let output = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
        Ok(Self { stdin: child.stdin.take(), output: Some(output), child, group })
    }

    /// The leader's process id, which is also the group id.
    pub fn id(&self) -> i32 {
        self.group.0.as_raw_nonzero().get()
    }

    /// The process group, for signalling from elsewhere.
    pub fn group(&self) -> ProcessGroup {
        self.group
    }

    /// Waits for the leader to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.group.signal(Signal::KILL);
    }
}

/// A process group that can be signalled.
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup(Pid);

impl ProcessGroup {
    /// Whether any process (zombies included) is still in the group.
    pub fn exists(self) -> bool {
        rustix::process::test_kill_process_group(self.0).is_ok()
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
