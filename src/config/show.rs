//! The effective configuration as an operator reads it: one TOML
//! `key = value` line per setting, followed by a comment naming where the
//! value came from, with secrets redacted. What `ws-subprocess config`
//! prints.
//!
//! No setting holds a secret inline today: the JWT secret and the TLS key
//! are read from files, whose paths are shown. What can carry one is a URL
//! (`controller_url`, `jwt_jwks_url`, a `redis://` `jwt_replay_store`): its
//! userinfo and the values of query parameters named like credentials are
//! redacted, in every string value, whatever its key. A key named like a
//! secret (`*secret*`, `*password*`, `*token*`, …) has its whole value
//! redacted, unless it names a file or directory or is `token_param`, so
//! that a secret-bearing setting added later is hidden without anyone
//! remembering to list it here.

use figment::{Figment, Source};
use serde_json::Value;

use super::load::{DEFAULT_SOURCE, ENV_SOURCE, FLAG_SOURCE};
use super::redact::redact;
use super::{Config, SETTINGS};

/// Comments start in this column at most, so that long values do not push
/// every comment far to the right.
const MAX_ALIGN: usize = 48;

impl Config {
    /// Every setting, in the order of [`SETTINGS`], as a TOML
    /// `key = value` line followed by a comment naming where the value came
    /// from: `default`, `file PATH`, `env WS_SUBPROCESS_NAME` or
    /// `flag --name`. An unset setting is a commented-out line. Secrets
    /// print as [`REDACTED`](super::REDACTED) (see `config::redact`).
    ///
    /// `figment` is the one `self` was extracted from (see
    /// [`Config::figment`]); values are shown as `self` holds them, after
    /// parsing, so `5000ms` reads `5s`.
    ///
    /// ```
    /// use figment::{Figment, providers::Serialized};
    /// use ws_subprocess::Config;
    /// use ws_subprocess::config::FlagValues;
    ///
    /// let mut flags = FlagValues::new();
    /// flags.set_text("max_sessions", "9");
    /// let figment = Figment::from(Serialized::defaults(Config::default())).merge(flags);
    /// let config = Config::from_figment(&figment).unwrap();
    /// let shown = config.show(&figment);
    /// let line = shown.lines().find(|line| line.starts_with("max_sessions = ")).unwrap();
    /// assert!(line.starts_with("max_sessions = 9 ") && line.ends_with("# flag --max-sessions"));
    /// ```
    pub fn show(&self, figment: &Figment) -> String {
        let values = serde_json::to_value(self).expect("the configuration serializes");
        let lines: Vec<(String, String)> = SETTINGS
            .iter()
            .map(|setting| {
                let key = setting.key;
                let line = match redact(key, &values[key]) {
                    Value::Null => format!("# {key} = <unset>"),
                    value => format!("{key} = {}", toml_value(&value)),
                };
                (line, source(figment, key))
            })
            .collect();
        let width = lines.iter().map(|(line, _)| line.len()).filter(|&len| len <= MAX_ALIGN).max().unwrap_or(0);
        let mut out = String::from(
            "# The effective configuration, each value followed by where it came from;\n\
             # secrets are shown as \"<redacted>\".\n",
        );
        for (line, source) in lines {
            out.push_str(&format!("{line:width$}  # {source}\n"));
        }
        out
    }
}

/// Where the value of `key` came from, as `default`, `file PATH`,
/// `env NAME` or `flag --name`.
fn source(figment: &Figment, key: &str) -> String {
    // Keys without a value (`None` options) are serde defaults.
    let Some(metadata) = figment.find_metadata(key) else { return DEFAULT_SOURCE.into() };
    let name = || metadata.interpolate(figment.profile(), &[key]);
    match (&metadata.source, metadata.name.as_ref()) {
        // Absolute, so that the operator sees which file was read.
        (Some(Source::File(path)), _) => {
            format!("file {}", std::path::absolute(path).as_deref().unwrap_or(path).display())
        }
        (_, DEFAULT_SOURCE) => DEFAULT_SOURCE.into(),
        (_, ENV_SOURCE) => format!("env {}", name()),
        (_, FLAG_SOURCE) => format!("flag {}", name()),
        // A figment built by a library user, e.g. with `Serialized::defaults`.
        (_, other) => format!("{other} {}", name()),
    }
}

/// A JSON value written as TOML (the configuration has no nested tables).
pub(super) fn toml_value(value: &Value) -> String {
    match value {
        // JSON's string escapes are all valid in TOML basic strings.
        Value::String(_) | Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let pairs: Vec<String> =
                map.iter().map(|(k, v)| format!("{} = {}", Value::String(k.clone()), toml_value(v))).collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        Value::Null => "\"\"".into(),
    }
}

#[cfg(test)]
// `Jail` closures return figment's large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;
    use crate::config::redact::{is_secret_key, redact_text, redact_url};
    use crate::config::{DEFAULT_CONFIG_FILE, FlagValues};

    fn shown(flags: FlagValues) -> String {
        let figment = Config::figment(None, flags).unwrap();
        Config::from_figment(&figment).unwrap().show(&figment)
    }

    fn line<'a>(shown: &'a str, key: &str) -> &'a str {
        let prefix = format!("{key} = ");
        shown.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("no {key} in\n{shown}"))
    }

    #[test]
    fn every_setting_once_with_its_source() {
        Jail::expect_with(|jail| {
            jail.create_file(DEFAULT_CONFIG_FILE, "path = \"/file\"\n")?;
            jail.set_env("WS_SUBPROCESS_KILL_GRACE", "250ms");
            let mut flags = FlagValues::new();
            flags.set_text("max_sessions", "9");
            let shown = shown(flags);
            for setting in SETTINGS {
                let count = shown
                    .lines()
                    .filter(|line| {
                        line.starts_with(&format!("{} = ", setting.key))
                            || line.starts_with(&format!("# {} = ", setting.key))
                    })
                    .count();
                assert_eq!(count, 1, "{}:\n{shown}", setting.key);
            }
            assert!(line(&shown, "path").starts_with("path = \"/file\" "), "{shown}");
            let file = jail.directory().join(DEFAULT_CONFIG_FILE);
            assert!(line(&shown, "path").ends_with(&format!("# file {}", file.display())), "{shown}");
            assert!(line(&shown, "kill_grace").ends_with("# env WS_SUBPROCESS_KILL_GRACE"), "{shown}");
            assert!(line(&shown, "kill_grace").starts_with("kill_grace = \"250ms\" "), "{shown}");
            assert!(line(&shown, "max_sessions").ends_with("# flag --max-sessions"), "{shown}");
            assert!(line(&shown, "listen").ends_with("# default"), "{shown}");
            assert!(shown.lines().any(|l| l.starts_with("# idle_timeout = <unset> ") && l.ends_with("# default")));
            Ok(())
        });
    }

    #[test]
    fn the_output_is_toml_that_reads_back() {
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_ALLOWED_COMMANDS", "/bin/cat,/bin/echo");
            jail.set_env("WS_SUBPROCESS_IDLE_TIMEOUT", "15m");
            let shown = shown(FlagValues::new());
            jail.clear_env();
            jail.create_file("shown.toml", &shown)?;
            let again = Config::load(Some("shown.toml".as_ref()), FlagValues::new()).unwrap();
            assert_eq!(again.allowed_commands, ["/bin/cat", "/bin/echo"].map(std::path::PathBuf::from));
            assert_eq!(again.idle_timeout, Some(std::time::Duration::from_secs(15 * 60)));
            Ok(())
        });
    }

    #[test]
    fn url_passwords_and_credential_parameters_are_redacted() {
        let cases = [
            ("redis://:hunter2@cache:6379/0", Some("redis://:<redacted>@cache:6379/0")),
            ("redis://app:hunter2@cache:6379/0", Some("redis://app:<redacted>@cache:6379/0")),
            ("https://ghp_abc@git.example/x", Some("https://<redacted>@git.example/x")),
            (
                "http://c.example/auth?tenant=a&api_key=hunter2&access_token=t2#frag",
                Some("http://c.example/auth?tenant=a&api_key=<redacted>&access_token=<redacted>#frag"),
            ),
            ("http://127.0.0.1/ws-controller", None),
            ("http://c.example/check?tenant=a", None),
            ("redis://cache:6379/0", None),
            ("memory", None),
            ("127.0.0.1:8866", None),
            ("unix:/run/ws.sock", None),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_url(text).as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn error_messages_lose_the_secrets_of_urls_even_broken_ones() {
        let cases = [
            (
                "`jwt_replay_store`: `rediss://:hunter2@x` is neither `memory` nor a `redis://` URL [from env]",
                "`jwt_replay_store`: `rediss://:<redacted>@x` is neither `memory` nor a `redis://` URL [from env]",
            ),
            (
                "`controller_url`: invalid IPv6 address: \"http://u:hunter2@[bad\" [from flag `--controller-url`]",
                "`controller_url`: invalid IPv6 address: \"http://u:<redacted>@[bad\" [from flag `--controller-url`]",
            ),
            ("bad: redis://:pa/ss@host:1/0 here", "bad: redis://:<redacted>@host:1/0 here"),
            (
                "`path`: must start with `/` [from file `/etc/ws.toml`]",
                "`path`: must start with `/` [from file `/etc/ws.toml`]",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_text(text), expected);
        }
    }

    #[test]
    fn keys_named_like_secrets_are_redacted_but_not_paths() {
        for key in ["jwt_secret", "redis_password", "controller_token", "api_key", "tls_private_key"] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["jwt_secret_file", "tls_key_file", "token_param", "record_dir", "max_sessions"] {
            assert!(!is_secret_key(key), "{key}");
        }
        // No setting of this version holds a secret inline; should one be
        // added under a secret's name, it is redacted without a change here.
        let inline: Vec<&str> = SETTINGS.iter().map(|s| s.key).filter(|key| is_secret_key(key)).collect();
        assert_eq!(inline, Vec::<&str>::new());
    }

    #[test]
    fn no_secret_reaches_the_output() {
        Jail::expect_with(|jail| {
            jail.create_file(
                DEFAULT_CONFIG_FILE,
                "controller_url = \"https://ctl:file-secret-1@c.example/check?token=file-secret-2\"\n",
            )?;
            jail.set_env("WS_SUBPROCESS_JWT_REPLAY_STORE", "redis://:env-secret-3@cache:6379/0");
            let mut flags = FlagValues::new();
            flags.set_text("jwt_jwks_url", "https://u:flag-secret-4@issuer.example/jwks.json");
            let shown = shown(flags);
            for secret in ["file-secret-1", "file-secret-2", "env-secret-3", "flag-secret-4"] {
                assert!(!shown.contains(secret), "{secret} in\n{shown}");
            }
            assert!(
                line(&shown, "controller_url")
                    .starts_with("controller_url = \"https://ctl:<redacted>@c.example/check?token=<redacted>\""),
                "{shown}"
            );
            assert!(line(&shown, "jwt_replay_store").contains("redis://:<redacted>@cache:6379/0"), "{shown}");
            assert!(line(&shown, "jwt_jwks_url").contains("https://u:<redacted>@issuer.example"), "{shown}");
            Ok(())
        });
    }
}
