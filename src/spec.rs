//! The command spec: what a token allows to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a verified token allows: one program, its arguments and environment.
///
/// A controller answers with this as JSON; unknown fields are ignored, as the
/// original Go program did.
///
/// ```
/// use ws_subprocess::CommandSpec;
///
/// let (spec, ignored) =
///     CommandSpec::from_json(br#"{"command": "/bin/echo", "args": ["hi"], "color": "red"}"#)
///         .unwrap();
/// assert_eq!(spec.command.to_str(), Some("/bin/echo"));
/// assert_eq!(spec.args, ["hi"]);
/// assert_eq!(ignored, ["color"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireSpec")]
pub struct CommandSpec {
    /// Absolute path of the program; it is run directly, never by a shell.
    /// Empty in the attach form.
    #[serde(skip_serializing_if = "is_empty_path")]
    pub command: PathBuf,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables added to (or overriding) the process environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the server's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Run on a pseudo-terminal (as a new session with a controlling
    /// terminal) instead of pipes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Initial terminal size for `tty`; 80x24 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TerminalSize>,
    /// The user to run as; it must be one of `allowed_users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Limits for this session, lower than the server's (never higher),
    /// where cgroup controllers allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Makes the session outlive its connection: a named, detachable session
    /// with a history, perhaps recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,
    /// The attach form: joins the running session of this id instead of
    /// starting a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
    /// With `attach`: what the client may do.
    #[serde(default, skip_serializing_if = "Role::is_writer")]
    pub role: Role,
}

fn is_empty_path(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// A command spec as it arrives: either form, checked by `TryFrom`.
#[derive(Deserialize)]
struct WireSpec {
    command: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    size: Option<TerminalSize>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    session: Option<SessionSpec>,
    #[serde(default)]
    attach: Option<String>,
    #[serde(default)]
    role: Role,
}

impl TryFrom<WireSpec> for CommandSpec {
    type Error = String;

    fn try_from(wire: WireSpec) -> Result<Self, String> {
        let command = match (wire.command, &wire.attach) {
            (Some(command), None) => command,
            (None, Some(_)) => PathBuf::new(),
            (None, None) => return Err("missing field `command` (or `attach`)".into()),
            (Some(_), Some(_)) => return Err("`command` and `attach` exclude each other".into()),
        };
        Ok(Self {
            command,
            args: wire.args,
            env: wire.env,
            cwd: wire.cwd,
            tty: wire.tty,
            size: wire.size,
            user: wire.user,
            limits: wire.limits,
            session: wire.session,
            attach: wire.attach,
            role: wire.role,
        })
    }
}

/// What makes a session detachable: `{"id": "u42-main", "keep": "10m",
/// "history": "256KiB", "record": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// The session's name (1–128 of `[A-Za-z0-9._-]`), by which clients
    /// attach; without one, nobody can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// How long the process outlives its last writer's connection (capped
    /// by `max_keep`).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub keep: Option<std::time::Duration>,
    /// How much output is kept for replay (capped by `max_history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bytesize::ByteSize>,
    /// Record the session (with `record_dir` set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
}

/// What an attached client may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Input and resizes.
    #[default]
    Writer,
    /// Output only; its input and resizes are ignored.
    Observer,
}

impl Role {
    fn is_writer(&self) -> bool {
        *self == Role::Writer
    }
}

/// Whether `id` can name a session: 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Per-session limits a spec may ask for: `{"memory": "256MiB", "pids": 64,
/// "cpu": "50%"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory, e.g. `"256MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bytesize::ByteSize>,
    /// Processes (and threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU time, in percent of one CPU, e.g. `"50%"` or `"200%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Percent>,
}

/// A share of one CPU, written `"50%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u32);

impl std::str::FromStr for Percent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().strip_suffix('%').map(|n| n.trim().parse::<u32>()) {
            Some(Ok(n)) if n > 0 => Ok(Self(n)),
            _ => Err(format!("`{s}` is not a percentage such as `50%`")),
        }
    }
}

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for TerminalSize {
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// Why a command spec cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The document is not JSON of the expected shape.
    #[error("not a command spec: {0}")]
    Malformed(String),
    /// `command` is empty or relative.
    #[error("command must be an absolute path")]
    RelativeCommand,
    /// `cwd` is relative.
    #[error("cwd must be an absolute path")]
    RelativeCwd,
    /// A string holds a NUL byte, which no process argument can carry.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// An environment variable name is empty or contains `=`.
    #[error("invalid environment variable name")]
    EnvName,
    /// A terminal size with no rows or columns.
    #[error("terminal size must be at least 1x1")]
    EmptySize,
    /// A session id that is not 1–128 of `[A-Za-z0-9._-]`.
    #[error("a session id is 1-128 of A-Z a-z 0-9 . _ -")]
    SessionId,
}

impl CommandSpec {
    /// A spec that runs `command` with `args`.
    pub fn new(command: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            tty: false,
            size: None,
            user: None,
            limits: None,
            session: None,
            attach: None,
            role: Role::Writer,
        }
    }

    /// Parses and validates a spec, returning it with the names of the fields
    /// that were ignored.
    pub fn from_json(body: &[u8]) -> Result<(Self, Vec<String>), SpecError> {
        let mut ignored = Vec::new();
        let mut de = serde_json::Deserializer::from_slice(body);
        let spec: Self = serde_ignored::deserialize(&mut de, |path| ignored.push(path.to_string()))
            .map_err(|e| SpecError::Malformed(e.to_string()))?;
        de.end().map_err(|e| SpecError::Malformed(e.to_string()))?;
        spec.validate()?;
        Ok((spec, ignored))
    }

    /// Checks what the operating system would otherwise reject late, or run
    /// in a surprising place: the command and `cwd` must be absolute paths.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(id) = &self.attach {
            if !valid_session_id(id) {
                return Err(SpecError::SessionId);
            }
            return Ok(());
        }
        if let Some(id) = self.session.as_ref().and_then(|s| s.id.as_deref())
            && !valid_session_id(id)
        {
            return Err(SpecError::SessionId);
        }
        if !self.command.is_absolute() {
            return Err(SpecError::RelativeCommand);
        }
        if has_nul(&self.command) {
            return Err(SpecError::Nul("command"));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::Nul("args"));
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                return Err(SpecError::EnvName);
            }
            if name.contains('\0') || value.contains('\0') {
                return Err(SpecError::Nul("env"));
            }
        }
        if self.size.is_some_and(|s| s.cols == 0 || s.rows == 0) {
            return Err(SpecError::EmptySize);
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                return Err(SpecError::RelativeCwd);
            }
            if has_nul(cwd) {
                return Err(SpecError::Nul("cwd"));
            }
        }
        Ok(())
    }
}

fn has_nul(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_default_to_empty() {
        let (spec, ignored) = CommandSpec::from_json(br#"{"command":"/bin/true"}"#).unwrap();
        assert!(spec.args.is_empty());
        assert!(ignored.is_empty());
    }

    #[test]
    fn relative_or_empty_command_is_rejected() {
        for body in [&br#"{"command":"bin/true"}"#[..], br#"{"command":""}"#] {
            assert_eq!(CommandSpec::from_json(body).unwrap_err(), SpecError::RelativeCommand);
        }
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        for body in [
            &br#"{"args":[]}"#[..],
            br#"{"command":"/bin/true","args":"x"}"#,
            br#"{"command":"/bin/true","args":[1]}"#,
            br#"{"command":"/bin/true"} trailing"#,
            b"<html>",
        ] {
            assert!(matches!(CommandSpec::from_json(body), Err(SpecError::Malformed(_))));
        }
    }

    #[test]
    fn the_attach_form_needs_no_command_and_checks_its_id() {
        let (spec, _) = CommandSpec::from_json(br#"{"attach":"u42-main","role":"observer"}"#).unwrap();
        assert_eq!((spec.attach.as_deref(), spec.role), (Some("u42-main"), Role::Observer));
        assert!(spec.command.as_os_str().is_empty());
        assert_eq!(CommandSpec::from_json(br#"{"attach":"a/b"}"#).unwrap_err(), SpecError::SessionId);
        assert!(matches!(
            CommandSpec::from_json(br#"{"attach":"a","command":"/bin/sh"}"#),
            Err(SpecError::Malformed(_))
        ));
        let (spec, _) =
            CommandSpec::from_json(br#"{"command":"/bin/sh","session":{"id":"x","keep":"10m","history":"1KiB"}}"#)
                .unwrap();
        let session = spec.session.unwrap();
        assert_eq!(session.keep, Some(std::time::Duration::from_secs(600)));
        assert_eq!(session.history.unwrap().as_u64(), 1024);
        assert!(valid_session_id("a.b_c-1") && !valid_session_id("") && !valid_session_id(&"x".repeat(129)));
    }

    #[test]
    fn nul_bytes_and_bad_env_names_are_rejected() {
        let mut spec = CommandSpec::new("/bin/echo", ["a\0b"]);
        assert_eq!(spec.validate(), Err(SpecError::Nul("args")));
        spec.args.clear();
        spec.env.insert("A=B".into(), "x".into());
        assert_eq!(spec.validate(), Err(SpecError::EnvName));
        spec.env.clear();
        spec.cwd = Some("tmp".into());
        assert_eq!(spec.validate(), Err(SpecError::RelativeCwd));
    }
}
