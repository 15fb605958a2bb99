//! Where values come from: defaults, a TOML file, the environment and
//! command-line flags, merged by figment; and errors that name the key and
//! the source of a bad value.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::Config;
use super::redact::redact_text;

/// Prefix of every environment variable the server reads.
pub const ENV_PREFIX: &str = crate::session::SERVER_ENV_PREFIX;
/// The configuration file read when no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "ws-subprocess.toml";

/// How the sources of [`Config::figment`] name themselves in errors and in
/// [`Config::show`]: the built-in defaults, the environment and the flags
/// (the file is known by its path).
pub(super) const DEFAULT_SOURCE: &str = "default";
pub(super) const ENV_SOURCE: &str = "environment variable";
pub(super) const FLAG_SOURCE: &str = "command-line flag";

/// A configuration problem, naming the key and, when known, where its value
/// came from; one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// The sources of the configuration, lowest priority first:
    ///
    /// 1. built-in defaults ([`Config::default`]);
    /// 2. the TOML file: `config_file` if given (it must exist), else
    ///    `./ws-subprocess.toml` if present;
    /// 3. `WS_SUBPROCESS_*` environment variables (`WS_SUBPROCESS_CONFIG`
    ///    names the file and is not a setting);
    /// 4. `flags`, typically the command line.
    pub fn figment(config_file: Option<&Path>, flags: impl Provider) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Defaults);
        match config_file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(vec![format!(
                    "config file `{}` does not exist or is not a file",
                    path.display()
                )]));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        Ok(figment.merge(EnvVars(Env::prefixed(ENV_PREFIX).ignore(&["config"]))).merge(flags))
    }

    /// Extracts and validates a configuration from `figment`. Errors
    /// name the key and its source; a URL quoted in one has its password
    /// redacted, as [`Config::show`] would show it.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        extract_checked(figment)
            .map_err(|ConfigError(lines)| ConfigError(lines.iter().map(|line| redact_text(line)).collect()))
    }

    /// Reads the configuration from its usual sources (see
    /// [`Config::figment`]).
    pub fn load(config_file: Option<&Path>, flags: impl Provider) -> Result<Self, ConfigError> {
        Self::from_figment(&Self::figment(config_file, flags)?)
    }
}

/// [`Config::from_figment`], its errors as they come.
fn extract_checked(figment: &Figment) -> Result<Config, ConfigError> {
    reject_unknown_keys(figment)?;
    let config: Config = figment.extract().map_err(|e| {
        ConfigError(
            e.into_iter().map(|e| describe(figment, &e.path, &e.kind.to_string(), e.metadata.as_ref())).collect(),
        )
    })?;
    let problems: Vec<String> = config
        .problems()
        .into_iter()
        .map(|(key, why)| describe(figment, &[key.to_string()], why, figment.find_metadata(key)))
        .collect();
    if problems.is_empty() { Ok(config) } else { Err(ConfigError(problems)) }
}

/// Every key [`Config`] knows, from its serialized default.
fn known_keys() -> BTreeSet<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
        _ => unreachable!("Config serializes to a map"),
    }
}

/// Names the source of each unknown key, which serde's own error cannot do
/// once the sources are merged.
fn reject_unknown_keys(figment: &Figment) -> Result<(), ConfigError> {
    let known = known_keys();
    let data = figment.data().map_err(|e| ConfigError(vec![e.to_string()]))?;
    let problems: Vec<String> = data
        .values()
        .flat_map(|dict| dict.keys())
        .filter(|key| !known.contains(key.as_str()))
        .map(|key| describe(figment, std::slice::from_ref(key), "unknown key", figment.find_metadata(key)))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems)) }
}

fn describe(figment: &Figment, path: &[String], what: &str, metadata: Option<&Metadata>) -> String {
    // Profile names are an implementation detail of figment; users know keys.
    let path: Vec<&String> = path.iter().filter(|p| p.as_str() != "default").collect();
    let key = path.first().map(|s| s.as_str()).unwrap_or("configuration");
    match metadata {
        Some(md) => match &md.source {
            Some(figment::Source::File(file)) => format!("`{key}`: {what} [from {} `{}`]", md.name, file.display()),
            _ => format!("`{key}`: {what} [from {} `{}`]", md.name, md.interpolate(figment.profile(), &path)),
        },
        None => format!("`{key}`: {what}"),
    }
}

/// The built-in defaults ([`Config::default`]), reported as `default`.
struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULT_SOURCE).interpolater(|_, keys| keys.join("."))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::defaults(Config::default()).data()
    }
}

/// `WS_SUBPROCESS_*` variables, reported by their full names in errors.
struct EnvVars(Env);

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE)
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("_").to_ascii_uppercase()))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.0.data()
    }
}

/// A figment provider for settings given as command-line flags: each
/// `(key, value)` pair is reported as the flag `--key-name`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlagValues(Dict);

impl FlagValues {
    /// No flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (a config key such as `kill_grace`) to `value`.
    pub fn set(&mut self, key: &str, value: impl serde::Serialize) -> &mut Self {
        let value = Value::serialize(value).expect("flag values serialize");
        self.0.insert(key.to_string(), value);
        self
    }

    /// The flag (`kill-grace`) of one setting given, if any was.
    pub fn first_flag(&self) -> Option<String> {
        self.0.keys().next().map(|key| key.replace('_', "-"))
    }

    /// Sets `key` to `text` as typed on a command line, read the way an
    /// environment variable is (`5` is a number, `true` a boolean, `[a, b]`
    /// a list, anything else a string).
    pub fn set_text(&mut self, key: &str, text: &str) -> &mut Self {
        let value: Value = text.parse().expect("parsing text into a value cannot fail");
        self.0.insert(key.to_string(), value);
        self
    }
}

impl Provider for FlagValues {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAG_SOURCE).interpolater(|_, keys| format!("--{}", keys.join(".").replace('_', "-")))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
// `Jail` closures return figment's large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use figment::Jail;

    use super::*;
    use crate::server::ListenAddr;

    fn load_in_jail(flags: FlagValues) -> Result<Config, ConfigError> {
        Config::load(None, flags)
    }

    #[test]
    fn defaults_match_the_spec() {
        Jail::expect_with(|_| {
            let config = load_in_jail(FlagValues::new()).unwrap();
            assert_eq!(config, Config::default());
            assert_eq!(config.listen, ListenAddr::Tcp("127.0.0.1:8866".into()));
            assert_eq!(config.max_message_size.as_u64(), 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags_win() {
        Jail::expect_with(|jail| {
            jail.create_file(
                DEFAULT_CONFIG_FILE,
                "path = \"/file\"\nkill_grace = \"3s\"\nmax_sessions = 7\ntoken_param = \"t\"\n",
            )?;
            jail.set_env("WS_SUBPROCESS_KILL_GRACE", "250ms");
            jail.set_env("WS_SUBPROCESS_MAX_SESSIONS", "8");
            let mut flags = FlagValues::new();
            flags.set_text("max_sessions", "9");
            let config = load_in_jail(flags).unwrap();
            assert_eq!(config.path, "/file");
            assert_eq!(config.kill_grace, Duration::from_millis(250));
            assert_eq!(config.max_sessions, 9);
            assert_eq!(config.token_param, "t");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_its_source() {
        Jail::expect_with(|jail| {
            jail.create_file(DEFAULT_CONFIG_FILE, "kill_grce = \"3s\"\n")?;
            let err = load_in_jail(FlagValues::new()).unwrap_err().to_string();
            assert!(err.contains("`kill_grce`: unknown key"), "{err}");
            assert!(err.contains("ws-subprocess.toml"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_NOPE", "1");
            let err = load_in_jail(FlagValues::new()).unwrap_err().to_string();
            assert!(err.contains("WS_SUBPROCESS_NOPE"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_key_and_source() {
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_KILL_GRACE", "soon");
            let err = load_in_jail(FlagValues::new()).unwrap_err().to_string();
            assert!(err.contains("kill_grace") && err.contains("WS_SUBPROCESS_KILL_GRACE"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set("kill_grace", "2days");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(err.contains("`kill_grace`: must be at most 24h"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set("listen", "unix:/tmp/ws.sock").set("metrics_listen", "unix:/tmp/ws.sock");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(err.contains("`metrics_listen`: must differ from listen"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set("path", "ws");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(err.contains("`path`") && err.contains("--path"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set_text("controller_forward_headers", "cookie,bad header");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(
                err.contains("`controller_forward_headers`") && err.contains("--controller-forward-headers"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn lists_accept_comma_separated_strings() {
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_ALLOWED_COMMANDS", "/bin/cat, /bin/echo");
            jail.set_env("WS_SUBPROCESS_ALLOWED_ORIGINS", r#"["https://a.example"]"#);
            jail.set_env("WS_SUBPROCESS_CONTROLLER_FORWARD_HEADERS", "Cookie, x-user");
            let config = load_in_jail(FlagValues::new()).unwrap();
            assert_eq!(config.allowed_commands, [PathBuf::from("/bin/cat"), "/bin/echo".into()]);
            assert_eq!(config.allowed_origins, ["https://a.example"]);
            assert_eq!(config.controller_forward_headers, [http::header::COOKIE, "x-user".parse().unwrap()]);
            Ok(())
        });
    }
}
