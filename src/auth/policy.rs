//! [`Policy`]: what this server lets a command spec ask for, whatever the
//! backend says: which programs, which users, which environment variables.

use std::path::PathBuf;
use std::sync::Arc;

use glob::Pattern;

use super::AuthError;
use crate::spec::CommandSpec;

/// Variables a spec may set when `allowed_commands` is set and
/// `allowed_env` is not: a terminal's and a locale's, nothing that changes
/// what a program loads or runs (`LD_PRELOAD`, `PATH`, …).
pub const SAFE_ENV: [&str; 6] = ["TERM", "LANG", "LC_*", "TZ", "COLUMNS", "LINES"];

/// What a command spec may ask for; an empty list allows anything.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    commands: Arc<[PathBuf]>,
    users: Arc<[String]>,
    env: Option<Arc<[Pattern]>>,
}

impl Policy {
    /// Allows any command, no `user`, and any environment variable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only these absolute paths may run (none: any).
    pub fn commands(mut self, commands: impl IntoIterator<Item = PathBuf>) -> Self {
        self.commands = commands.into_iter().collect();
        self
    }

    /// A spec may name these users (none: a spec may not name one).
    pub fn users(mut self, users: impl IntoIterator<Item = String>) -> Self {
        self.users = users.into_iter().collect();
        self
    }

    /// A spec's `env` may set only variables matching these globs (`*`,
    /// `?`, `[…]`).
    pub fn env(mut self, globs: impl IntoIterator<Item = Pattern>) -> Self {
        self.env = Some(globs.into_iter().collect());
        self
    }

    /// Whether `spec` may run; the error says what is not allowed. (The
    /// attach form runs nothing: what it joins was checked when it started.)
    pub fn check(&self, spec: &CommandSpec) -> Result<(), AuthError> {
        if spec.attach.is_some() {
            return Ok(());
        }
        if !self.commands.is_empty() && !self.commands.contains(&spec.command) {
            return Err(AuthError::CommandNotAllowed(spec.command.clone()));
        }
        if let Some(user) = &spec.user
            && !self.users.iter().any(|u| u == user)
        {
            return Err(AuthError::UserNotAllowed(user.clone()));
        }
        if let Some(env) = &self.env
            && let Some(name) = spec.env.keys().find(|name| !env.iter().any(|glob| glob.matches(name)))
        {
            return Err(AuthError::EnvNotAllowed(name.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &[(&str, &str)], user: Option<&str>) -> CommandSpec {
        let mut spec = CommandSpec::new("/bin/sleep", ["1"]);
        spec.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        spec.user = user.map(String::from);
        spec
    }

    #[test]
    fn environment_globs_keep_the_loader_out() {
        let policy = Policy::new().env(SAFE_ENV.map(|g| Pattern::new(g).unwrap()));
        assert!(policy.check(&spec(&[("LANG", "C"), ("LC_ALL", "C"), ("TERM", "dumb")], None)).is_ok());
        let err = policy.check(&spec(&[("LD_PRELOAD", "/tmp/evil.so")], None)).unwrap_err();
        assert!(matches!(err, AuthError::EnvNotAllowed(name) if name == "LD_PRELOAD"));
        assert!(Policy::new().check(&spec(&[("LD_PRELOAD", "x")], None)).is_ok());
    }

    #[test]
    fn users_must_be_listed_and_commands_too() {
        let policy = Policy::new().users(["alice".to_string()]).commands(["/bin/sleep".into()]);
        assert!(policy.check(&spec(&[], Some("alice"))).is_ok());
        assert!(matches!(policy.check(&spec(&[], Some("root"))), Err(AuthError::UserNotAllowed(_))));
        assert!(matches!(Policy::new().check(&spec(&[], Some("alice"))), Err(AuthError::UserNotAllowed(_))));
        let other = CommandSpec::new("/bin/sh", Vec::<String>::new());
        assert!(matches!(policy.check(&other), Err(AuthError::CommandNotAllowed(_))));
    }
}
