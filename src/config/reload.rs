//! What a reload may change: every setting but those naming the server's
//! sockets and identity, which only an upgrade changes (`SPEC §10`).

use serde_json::Value;

use super::redact::redact;
use super::show::toml_value;
use super::{Config, SETTINGS};

/// Settings a reload keeps as they are, with a warning: they name sockets
/// already bound, the process's identity, or how the log is written. Whether
/// the endpoint serves TLS at all (`tls_cert_file` set or not) is one too;
/// a reload changes the certificate and key, not that.
pub const UPGRADE_ONLY: &[&str] =
    &["listen", "metrics_listen", "http2", "cgroup", "run_as_user", "run_as_group", "log_format"];

impl Config {
    /// `self`, a configuration read for a reload of a server running with
    /// `current`, with every [`UPGRADE_ONLY`] setting (and TLS on or off)
    /// as `current` has it; and the names of those that `self` had changed.
    pub fn for_reload(mut self, current: &Config) -> (Config, Vec<&'static str>) {
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($key:ident),+) => {$(
                if self.$key != current.$key {
                    self.$key = current.$key.clone();
                    kept.push(stringify!($key));
                }
            )+};
        }
        keep!(listen, metrics_listen, http2, cgroup, run_as_user, run_as_group, log_format);
        if self.tls_cert_file.is_some() != current.tls_cert_file.is_some() {
            self.tls_cert_file = current.tls_cert_file.clone();
            self.tls_key_file = current.tls_key_file.clone();
            kept.push("tls_cert_file");
        }
        (self, kept)
    }

    /// What differs in `new`, one `key = value` line each (as
    /// [`Config::show`] prints them, secrets redacted), in the order of
    /// [`SETTINGS`].
    pub fn changes(&self, new: &Config) -> Vec<String> {
        let (before, after) = (to_value(self), to_value(new));
        SETTINGS
            .iter()
            .map(|setting| setting.key)
            .filter(|key| before[key] != after[key])
            .map(|key| match redact(key, &after[key]) {
                Value::Null => format!("{key} = <unset>"),
                value => format!("{key} = {}", toml_value(&value)),
            })
            .collect()
    }
}

fn to_value(config: &Config) -> Value {
    serde_json::to_value(config).expect("the configuration serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_sockets_and_identity_and_names_what_it_kept() {
        let current =
            Config { tls_cert_file: Some("a.pem".into()), tls_key_file: Some("a.key".into()), ..Config::default() };
        let asked = Config {
            listen: "127.0.0.1:9".parse().unwrap(),
            run_as_user: Some("nobody".into()),
            tls_cert_file: Some("b.pem".into()),
            tls_key_file: Some("b.key".into()),
            max_sessions: 7,
            ..Config::default()
        };
        let (config, kept) = asked.for_reload(&current);
        assert_eq!(kept, ["listen", "run_as_user"]);
        assert_eq!((config.listen, config.run_as_user), (current.listen.clone(), None));
        // A new certificate is taken; TLS off is not.
        assert_eq!(config.tls_cert_file.as_deref(), Some(std::path::Path::new("b.pem")));
        assert_eq!(config.max_sessions, 7);
        let (config, kept) = Config::default().for_reload(&current);
        assert_eq!(kept, ["tls_cert_file"]);
        assert_eq!(config.tls_key_file, current.tls_key_file);
        assert!(UPGRADE_ONLY.iter().all(|key| SETTINGS.iter().any(|s| s.key == *key)));
    }

    #[test]
    fn changes_are_listed_with_secrets_redacted() {
        let old = Config::default();
        let new = Config {
            max_sessions: 9,
            controller_url: "http://user:hunter2@127.0.0.1/c".parse().unwrap(),
            log_level: Some("debug".into()),
            ..Config::default()
        };
        let changes = old.changes(&new);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.iter().any(|c| c == "max_sessions = 9"), "{changes:?}");
        assert!(changes.iter().any(|c| c == "log_level = \"debug\""), "{changes:?}");
        assert!(!changes.iter().any(|c| c.contains("hunter2")), "{changes:?}");
        assert!(new.changes(&new).is_empty());
    }
}
