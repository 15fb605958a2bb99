//! The command line of the `ws-subprocess` binary: one flag per setting
//! (made from [`SETTINGS`], so a setting is declared once), the original
//! program's single-dash flags, and the `mint-token` subcommand.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::auth::BoxError;
use crate::config::{Config, FlagValues, SETTINGS, Setting};

/// Runs a verified command per WebSocket connection and attaches its
/// stdin/stdout/stderr to the socket. A token decides what runs.
///
/// Every setting can also come from `ws-subprocess.toml` or a
/// `WS_SUBPROCESS_<NAME>` environment variable; flags win over the
/// environment, which wins over the file. Durations read like `5s` or
/// `250ms`; lists are comma-separated. Single-dash forms of the original
/// program (`-listen`, `-controller-url`) keep working.
#[derive(Debug, Parser)]
#[command(name = "ws-subprocess", version, max_term_width = 100)]
pub struct Cli {
    /// TOML configuration file (else $WS_SUBPROCESS_CONFIG, else
    /// ./ws-subprocess.toml if present)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The settings given as flags.
    #[command(flatten)]
    pub settings: FlagValues,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

impl Cli {
    /// Parses `args` (the program name first), accepting the Go program's
    /// single-dash flags; exits with usage on error, as clap does.
    pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Self {
        Self::parse_from(go_style_args(args))
    }

    /// The configuration file named by `--config` or `WS_SUBPROCESS_CONFIG`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| std::env::var_os("WS_SUBPROCESS_CONFIG").map(PathBuf::from))
    }
}

/// What the binary can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Print a signed JWT that runs COMMAND, for trying a JWT deployment.
    ///
    /// Example: ws-subprocess mint-token --secret-file secret --ttl 60s -- /bin/echo hi
    MintToken(MintToken),
}

/// The arguments of `mint-token`.
#[derive(Debug, clap::Args)]
pub struct MintToken {
    /// HMAC secret file (the server's jwt_secret_file)
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "private_key_file",
        required_unless_present = "private_key_file"
    )]
    pub secret_file: Option<PathBuf>,
    /// PEM private key file (RSA, EC P-256/P-384 in PKCS#8, or Ed25519)
    #[arg(long, value_name = "PATH")]
    pub private_key_file: Option<PathBuf>,
    /// Signing algorithm [default: HS256 with --secret-file; RS256, ES256 or EdDSA must be named for a private key]
    #[arg(long, value_name = "ALG")]
    pub alg: Option<String>,
    /// Lifetime of the token
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// `kid` header, for key sets
    #[arg(long)]
    pub kid: Option<String>,
    /// `iss` claim
    #[arg(long)]
    pub iss: Option<String>,
    /// `aud` claim
    #[arg(long)]
    pub aud: Option<String>,
    /// Omit `jti`, making the token reusable until it expires
    #[arg(long)]
    pub no_jti: bool,
    /// Environment variable for the process, NAME=VALUE (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory for the process
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Absolute path of the command, then its arguments
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl MintToken {
    /// Signs a token for the command (see `ws-subprocess mint-token --help`).
    #[cfg(feature = "jwt")]
    pub fn token(&self) -> Result<String, BoxError> {
        use crate::auth::jwt::{mint, read_secret};
        let (command, rest) = self.command.split_first().ok_or("no command")?;
        let mut spec = crate::CommandSpec::new(command, rest.iter().cloned());
        for pair in &self.env {
            let (name, value) = pair.split_once('=').ok_or_else(|| format!("--env {pair}: expected NAME=VALUE"))?;
            spec.env.insert(name.into(), value.into());
        }
        spec.cwd = self.cwd.clone();
        spec.validate()?;
        let mut claims = mint::Claims::expiring_in(self.ttl);
        claims.iss = self.iss.clone();
        claims.aud = self.aud.clone();
        if self.no_jti {
            claims.jti = None;
        }
        let alg = |default: &str| -> Result<jsonwebtoken::Algorithm, BoxError> {
            let name = self.alg.as_deref().unwrap_or(default);
            name.parse().map_err(|_| format!("--alg {name}: unknown algorithm").into())
        };
        Ok(match (&self.secret_file, &self.private_key_file) {
            (Some(secret), _) => mint::hmac(&read_secret(secret)?, alg("HS256")?, &spec, claims)?,
            (None, Some(key)) => {
                let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
                let alg = alg("").map_err(|_| "--alg is required with --private-key-file")?;
                mint::private_key(&pem, alg, self.kid.clone(), &spec, claims)?
            }
            (None, None) => return Err("--secret-file or --private-key-file is required".into()),
        })
    }

    /// Signs a token for the command: not in this build.
    #[cfg(not(feature = "jwt"))]
    pub fn token(&self) -> Result<String, BoxError> {
        Err("this build has no JWT support (feature `jwt`)".into())
    }
}

/// The flag of one setting: `--key-name VALUE`, or for a boolean setting
/// `--key-name [BOOL]` (alone it means `true`). The help is the setting's
/// doc comment and its default.
fn flag(setting: &Setting, default: &serde_json::Value) -> Arg {
    let mut help: String = setting.help.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    let default = match default {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    if let Some(default) = default {
        help.push_str(&format!(" [default: {default}]"));
    }
    let arg = Arg::new(setting.key)
        .long(setting.key.replace('_', "-"))
        .value_name(setting.value_name)
        .help(help)
        .action(ArgAction::Set);
    if setting.value_name == "BOOL" { arg.num_args(0..=1).default_missing_value("true") } else { arg }
}

impl clap::Args for FlagValues {
    fn augment_args(command: clap::Command) -> clap::Command {
        let defaults = serde_json::to_value(Config::default()).expect("the defaults serialize");
        command.args(SETTINGS.iter().map(|setting| flag(setting, &defaults[setting.key])))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for FlagValues {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = FlagValues::new();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in SETTINGS {
            if let Some(text) = matches.get_one::<String>(setting.key) {
                self.set_text(setting.key, text);
            }
        }
        Ok(())
    }
}

/// Rewrites the Go program's single-dash long flags (`-listen :8866`,
/// `-controller-url=URL`) to their double-dash form.
fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let longs: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    let mut past_separator = false;
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(text) = arg.to_str() else { return arg };
            past_separator |= text == "--";
            let name = text.strip_prefix('-').filter(|n| !n.starts_with('-')).map(|n| n.split('=').next().unwrap_or(n));
            match name {
                Some(name) if i > 0 && !past_separator && longs.contains(&name) => format!("-{text}").into(),
                _ => arg,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_single_dash_flags_are_rewritten() {
        let args = ["ws", "-listen", ":1", "-controller-url=http://c/x", "-h", "--path", "/x", "--", "-listen"];
        let out: Vec<OsString> = go_style_args(args.map(OsString::from));
        let expected = ["ws", "--listen", ":1", "--controller-url=http://c/x", "-h", "--path", "/x", "--", "-listen"];
        assert_eq!(out, expected.map(OsString::from));
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_flag_with_its_help_and_default() {
        let command = Cli::command();
        for setting in SETTINGS {
            let flag = setting.key.replace('_', "-");
            let arg = command.get_arguments().find(|a| a.get_long() == Some(&flag)).expect("a flag per setting");
            let help = arg.get_help().unwrap().to_string();
            assert!(help.starts_with(setting.help.lines().next().unwrap().trim()), "{flag}: {help}");
        }
        let help = command.clone().render_help().to_string();
        assert!(help.contains("--kill-grace <DURATION>"), "{help}");
        assert!(help.contains("[default: 1s]"), "{help}");
    }

    #[test]
    fn flags_become_settings_read_like_the_environment() {
        let cli = Cli::parse_args(
            ["ws", "--max-sessions", "9", "--clear-env", "--allowed-commands", "/bin/a,/bin/b"].map(OsString::from),
        );
        let figment = figment::Figment::from(figment::providers::Serialized::defaults(Config::default()));
        let config = Config::from_figment(&figment.merge(cli.settings)).unwrap();
        assert_eq!(config.max_sessions, 9);
        assert!(config.clear_env);
        assert_eq!(config.allowed_commands, [PathBuf::from("/bin/a"), "/bin/b".into()]);
    }
}
