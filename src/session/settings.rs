//! [`SessionSettings`]: how sessions run, checked when they are built.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rustix::process::Signal;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How sessions run; see the config keys of the same names.
///
/// Built with [`SessionSettings::builder`], which refuses values that would
/// fail later (a zero ping interval, say), so a `SessionSettings` is always
/// usable:
///
/// ```
/// use std::time::Duration;
/// use ws_subprocess::session::SessionSettings;
///
/// let settings = SessionSettings::builder().kill_grace(Duration::from_millis(250)).build().unwrap();
/// assert_eq!(settings.kill_grace(), Duration::from_millis(250));
/// let zero = SessionSettings::builder().keepalive(Duration::ZERO, Duration::from_secs(1)).build();
/// assert_eq!(zero.unwrap_err().to_string(), "`ping_interval`: must be more than zero");
/// ```
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub(crate) kill_signal: KillSignal,
    pub(crate) kill_grace: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) max_write_buffer: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_session_duration: Option<Duration>,
    pub(crate) env: EnvPolicy,
    pub(crate) max_keep: Duration,
    pub(crate) max_history: usize,
    pub(crate) recording: Option<Recording>,
}

/// What a session needs from the service that started it, beside its
/// process and socket.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// How sessions run.
    pub settings: std::sync::Arc<SessionSettings>,
    /// Where it counts.
    pub metrics: crate::metrics::Metrics,
    /// Cancelled when the server shuts down: end gracefully.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when the server hands its sessions to the program that
    /// replaces it (an in-place upgrade): stop where the session can be
    /// carried on.
    pub handover: tokio_util::sync::CancellationToken,
}

/// Where and what sessions are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The directory `.cast` files are written to.
    pub dir: std::path::PathBuf,
    /// Record every session, not only those whose spec asks.
    pub all: bool,
    /// Record input too.
    pub input: bool,
}

impl SessionSettings {
    /// Default `kill_signal`.
    pub const DEFAULT_KILL_SIGNAL: KillSignal = KillSignal::Int;
    /// Default `kill_grace`.
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(1);
    /// Default `max_message_size`: 1 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
    /// Default `max_write_buffer`: 1 MiB.
    pub const DEFAULT_MAX_WRITE_BUFFER: usize = 1024 * 1024;
    /// Smallest `max_write_buffer`: room for the socket's own buffer, one
    /// output message and control frames.
    pub const MIN_MAX_WRITE_BUFFER: usize = 128 * 1024;
    /// Descriptors a session holds besides its connection's socket: the
    /// process's stdin, stdout and pidfd (a terminal session holds two).
    /// A pipe session of the channel protocols holds one more, for
    /// stderr: where the open-file limit cannot cover that, such a session
    /// is refused with 503 when the descriptors run out.
    pub const FDS_PER_SESSION: usize = 3;
    /// Descriptors a start holds for a moment on top: the other ends of the
    /// pipes, their copies in the child and the cgroup's `cgroup.procs`.
    /// Starts run on the runtime's threads, one at a time on each.
    pub const FDS_PER_START: usize = 10;
    /// Default `ping_interval`.
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
    /// Default `pong_timeout`.
    pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `max_keep`.
    pub const DEFAULT_MAX_KEEP: Duration = Duration::from_secs(3600);
    /// Default `max_history`: 1 MiB.
    pub const DEFAULT_MAX_HISTORY: usize = 1024 * 1024;
    /// Longest timer accepted: longer ones are surely mistakes, and would
    /// overflow clock arithmetic further down.
    pub const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

    /// Settings with the defaults, to change and then [build](SessionSettingsBuilder::build).
    pub fn builder() -> SessionSettingsBuilder {
        SessionSettingsBuilder(Self {
            kill_signal: Self::DEFAULT_KILL_SIGNAL,
            kill_grace: Self::DEFAULT_KILL_GRACE,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            max_write_buffer: Self::DEFAULT_MAX_WRITE_BUFFER,
            ping_interval: Self::DEFAULT_PING_INTERVAL,
            pong_timeout: Self::DEFAULT_PONG_TIMEOUT,
            idle_timeout: None,
            max_session_duration: None,
            env: EnvPolicy::default(),
            max_keep: Self::DEFAULT_MAX_KEEP,
            max_history: Self::DEFAULT_MAX_HISTORY,
            recording: None,
        })
    }

    /// Wait after `kill_signal` (and after exit, for leftover output)
    /// before `SIGKILL`.
    pub fn kill_grace(&self) -> Duration {
        self.kill_grace
    }

    /// Limits of the WebSocket connection a session runs on: the largest
    /// message read, and the bytes queued to the client. Output waits while
    /// the socket's own buffer is full, so only control frames (a flood of
    /// pongs) could fill the rest; a pong that does not fit replaces the one
    /// waiting.
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        let max = self.max_message_size;
        let write_buffer = (self.max_write_buffer / 4).min(128 * 1024);
        WebSocketConfig::default()
            // Read 1 KiB at a time (larger messages grow the buffer as they
            // come): tungstenite keeps its read buffer filled to this size,
            // so the default 128 KiB would be resident in every session.
            .read_buffer_size(1024)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .write_buffer_size(write_buffer)
            .max_write_buffer_size(self.max_write_buffer)
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self::builder().0
    }
}

/// Changes [`SessionSettings`]; see [`SessionSettings::builder`].
#[derive(Debug, Clone)]
pub struct SessionSettingsBuilder(SessionSettings);

impl From<SessionSettings> for SessionSettingsBuilder {
    /// Changes `settings`.
    fn from(settings: SessionSettings) -> Self {
        Self(settings)
    }
}

impl SessionSettingsBuilder {
    /// First signal to the process group when the client leaves (terminal
    /// sessions get `SIGHUP`, as from a terminal hanging up).
    pub fn kill_signal(mut self, signal: KillSignal) -> Self {
        self.0.kill_signal = signal;
        self
    }

    /// Wait after the kill signal (and after exit, for leftover output)
    /// before `SIGKILL`.
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.0.kill_grace = grace;
        self
    }

    /// Largest message accepted from a client; larger ones close with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.0.max_message_size = bytes;
        self
    }

    /// Bytes queued to one client (output, pongs, control frames); a client
    /// that takes nothing for `pong_timeout` while this is full is gone.
    pub fn max_write_buffer(mut self, bytes: usize) -> Self {
        self.0.max_write_buffer = bytes;
        self
    }

    /// Pings every `ping_interval`; a client silent for `pong_timeout` (and
    /// taking no output) is gone.
    pub fn keepalive(mut self, ping_interval: Duration, pong_timeout: Duration) -> Self {
        self.0.ping_interval = ping_interval;
        self.0.pong_timeout = pong_timeout;
        self
    }

    /// End a session with no input or output for this long.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.0.idle_timeout = timeout;
        self
    }

    /// End a session this long after it started.
    pub fn max_session_duration(mut self, limit: Option<Duration>) -> Self {
        self.0.max_session_duration = limit;
        self
    }

    /// The environment processes start with.
    pub fn env(mut self, env: EnvPolicy) -> Self {
        self.0.env = env;
        self
    }

    /// Named sessions: how long a process may outlive its last writer at
    /// most, and how much output it may keep for replay at most.
    pub fn detachable(mut self, max_keep: Duration, max_history: usize) -> Self {
        self.0.max_keep = max_keep;
        self.0.max_history = max_history;
        self
    }

    /// Records sessions so.
    pub fn recording(mut self, recording: Option<Recording>) -> Self {
        self.0.recording = recording;
        self
    }

    /// The settings, or every problem with them.
    pub fn build(self) -> Result<SessionSettings, InvalidSettings> {
        let s = &self.0;
        let mut problems = Vec::new();
        if s.max_message_size == 0 {
            problems.push(("max_message_size", "must be more than zero"));
        }
        if s.max_write_buffer < SessionSettings::MIN_MAX_WRITE_BUFFER {
            problems.push(("max_write_buffer", "must be at least 128KiB"));
        }
        if s.idle_timeout.is_some_and(|d| d.is_zero()) {
            problems.push(("idle_timeout", "must be more than zero (leave it unset for no limit)"));
        }
        if s.max_session_duration.is_some_and(|d| d.is_zero()) {
            problems.push(("max_session_duration", "must be more than zero (leave it unset for no limit)"));
        }
        if s.ping_interval.is_zero() {
            problems.push(("ping_interval", "must be more than zero"));
        }
        if s.pong_timeout <= s.ping_interval {
            problems.push(("pong_timeout", "must be longer than ping_interval"));
        }
        if s.max_history == 0 {
            problems.push(("max_history", "must be more than zero"));
        }
        if s.recording.as_ref().is_some_and(|r| !r.dir.is_dir()) {
            problems.push(("record_dir", "is not a directory"));
        }
        let timers = [
            ("kill_grace", Some(s.kill_grace)),
            ("ping_interval", Some(s.ping_interval)),
            ("pong_timeout", Some(s.pong_timeout)),
            ("idle_timeout", s.idle_timeout),
            ("max_session_duration", s.max_session_duration),
        ];
        for (key, value) in timers {
            if value.is_some_and(|v| v > SessionSettings::MAX_TIMER) {
                problems.push((key, "must be at most 24h"));
            }
        }
        if problems.is_empty() { Ok(self.0) } else { Err(InvalidSettings(problems)) }
    }
}

/// Settings that cannot work: each problem names its setting (by its config
/// key) and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSettings(pub Vec<(&'static str, &'static str)>);

impl fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, problem)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "`{key}`: {problem}")?;
        }
        Ok(())
    }
}

/// The prefix of the server's own environment variables (its settings,
/// which may hold secrets): no process gets them, whatever its policy.
pub const SERVER_ENV_PREFIX: &str = "WS_SUBPROCESS_";

/// How a process's environment is built. Variables named
/// [`SERVER_ENV_PREFIX`]`*` never reach it, even through `pass`.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    /// Start from an empty environment instead of the server's.
    pub clear: bool,
    /// With `clear`, the server variables still passed through.
    pub pass: Vec<String>,
}

/// Signals a session may be ended with before `SIGKILL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KillSignal {
    /// `SIGHUP`
    Hup,
    /// `SIGINT`
    Int,
    /// `SIGQUIT`
    Quit,
    /// `SIGTERM`
    Term,
    /// `SIGKILL`: no grace at all.
    Kill,
    /// `SIGUSR1`
    Usr1,
    /// `SIGUSR2`
    Usr2,
}

const SIGNAL_NAMES: [(KillSignal, &str); 7] = [
    (KillSignal::Hup, "SIGHUP"),
    (KillSignal::Int, "SIGINT"),
    (KillSignal::Quit, "SIGQUIT"),
    (KillSignal::Term, "SIGTERM"),
    (KillSignal::Kill, "SIGKILL"),
    (KillSignal::Usr1, "SIGUSR1"),
    (KillSignal::Usr2, "SIGUSR2"),
];

impl KillSignal {
    /// The operating-system signal.
    pub fn signal(self) -> Signal {
        match self {
            Self::Hup => Signal::HUP,
            Self::Int => Signal::INT,
            Self::Quit => Signal::QUIT,
            Self::Term => Signal::TERM,
            Self::Kill => Signal::KILL,
            Self::Usr1 => Signal::USR1,
            Self::Usr2 => Signal::USR2,
        }
    }
}

impl FromStr for KillSignal {
    type Err = String;

    /// Accepts `SIGINT`, `INT` or `sigint`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        SIGNAL_NAMES.iter().find(|(_, n)| *n == name).map(|(sig, _)| *sig).ok_or_else(|| {
            format!("unknown signal `{s}`; one of SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGKILL, SIGUSR1, SIGUSR2")
        })
    }
}

impl fmt::Display for KillSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = SIGNAL_NAMES.iter().find(|(sig, _)| sig == self).map(|(_, n)| *n);
        f.write_str(name.unwrap_or("SIGKILL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!("SIGTERM".parse(), Ok(KillSignal::Term));
        assert_eq!("hup".parse(), Ok(KillSignal::Hup));
        assert!("SIGFOO".parse::<KillSignal>().is_err());
        assert_eq!(KillSignal::Int.to_string(), "SIGINT");
    }

    #[test]
    fn build_names_every_problem() {
        let err = SessionSettings::builder()
            .keepalive(Duration::from_secs(10), Duration::from_secs(5))
            .max_message_size(0)
            .idle_timeout(Some(Duration::ZERO))
            .kill_grace(Duration::from_secs(25 * 3600))
            .build()
            .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, ["max_message_size", "idle_timeout", "pong_timeout", "kill_grace"]);
    }

    #[test]
    fn defaults_build() {
        let settings = SessionSettings::builder().build().unwrap();
        assert_eq!(settings.kill_grace(), SessionSettings::DEFAULT_KILL_GRACE);
        assert_eq!(settings.max_message_size, SessionSettings::DEFAULT_MAX_MESSAGE_SIZE);
    }
}
