//! The command line of the `ws-subprocess` binary: one flag per setting
//! (made from [`SETTINGS`], so a setting is declared once), the original
//! program's single-dash flags, and the subcommands: `mint-token`, and the
//! operator's `config`, `completions` and `man`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};
use figment::Figment;

use crate::auth::BoxError;
use crate::config::{Config, ConfigError, FlagValues, SETTINGS, Setting};

/// The name the binary is installed and completed under.
pub const BIN_NAME: &str = "ws-subprocess";

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
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Check that this binary can take over a running server in an in-place upgrade: read the
    /// configuration as a start would (exit 2 if it is bad) and print the hand-off versions this
    /// binary reads
    #[arg(long)]
    pub check_upgrade: bool,

    /// The hand-off left by the program this one replaces (set by an in-place upgrade)
    #[arg(long = "upgrade-state", value_name = "FD", hide = true)]
    pub upgrade_state: Option<i32>,

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

    /// The configuration the server runs with, checked, and the figment it
    /// came from (which knows each value's source): the file, the
    /// environment and the flags of this command line (see
    /// [`Config::figment`]). Serving and `config` both read it here.
    pub fn load_config(&self) -> Result<(Config, Figment), ConfigError> {
        let figment = Config::figment(self.config_file().as_deref(), self.settings.clone())?;
        Ok((Config::from_figment(&figment)?, figment))
    }
}

/// Writes the completion script of the whole command line for `shell`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn Write) -> std::io::Result<()> {
    // Generated into memory first: the generators panic on a write error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN_NAME, &mut script);
    if shell == clap_complete::Shell::Bash {
        script = fix_bash_subcommand_states(&String::from_utf8_lossy(&script)).into_bytes();
    }
    out.write_all(&script)
}

/// Works around clap-rs/clap#6421: for a binary whose name has a hyphen,
/// clap_complete's bash script tracks the subcommand as
/// `ws__subprocess__subcmd__man` but matches `ws__subcmd__subprocess__subcmd__man`,
/// so nothing after a subcommand completes. Spelling the matches as the
/// tracking does fixes it; once clap_complete is fixed there is nothing to
/// replace.
fn fix_bash_subcommand_states(script: &str) -> String {
    let wrong = format!("{}__subcmd__", BIN_NAME.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", BIN_NAME.replace('-', "__"));
    script.replace(&wrong, &right)
}

/// Writes the man page (roff) of the whole command line, its subcommands
/// listed (as [`write_man_pages`] writes them: without `help`).
pub fn write_man_page(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command().disable_help_subcommand(true)).render(out)
}

/// Writes one man page per command into `dir` (`ws-subprocess.1`,
/// `ws-subprocess-config.1`, …), for packaging.
pub fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir)
}

/// What the binary can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Print a signed JWT that runs COMMAND, for trying a JWT deployment.
    ///
    /// Example: ws-subprocess mint-token --secret-file secret --ttl 60s -- /bin/echo hi
    MintToken(Box<MintToken>),
    /// Open a terminal (or pipes) to a session on a server: the `kubectl exec -it` of it.
    ///
    /// On a terminal: raw mode, resizes, the remote exit status as this one's (a signal N is
    /// 128 + N). Off one: stdin streamed, stdout and stderr kept apart. The token comes from
    /// --token-file or $WS_SUBPROCESS_TOKEN (never from a flag: `ps` shows them). A named session
    /// (--session) is joined again after a dropped connection, losing nothing; Ctrl-] then d
    /// leaves it running. Exits 255 with one line saying why when no connection can be made.
    ///
    /// Example: WS_SUBPROCESS_TOKEN=… ws-subprocess connect wss://host/ws --session u42-main
    #[cfg(feature = "client")]
    Connect(Box<crate::client::ConnectArgs>),
    /// Print the configuration the server would run with, and where each value came from.
    ///
    /// Reads the file, the environment and the flags as a start does, and checks them the same
    /// way (exit 2 naming the problem). Setting flags and --config go before or after `config`.
    /// Each `key = value` line ends with its source: default, file PATH, env NAME or flag --NAME.
    /// Secrets (URL passwords, credential query parameters) print as `<redacted>`; paths of
    /// secret files are shown.
    ///
    /// Example: ws-subprocess --config /etc/ws-subprocess.toml --max-sessions 9 config
    Config,
    /// Print a completion script for SHELL.
    ///
    /// Example: ws-subprocess completions bash > /etc/bash_completion.d/ws-subprocess
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    ///
    /// Example: ws-subprocess man | man -l -
    Man {
        /// Write ws-subprocess.1 and a page per subcommand into DIR instead
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
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
    /// Bind the token to this client certificate (PEM): only a TLS client that presents it may
    /// use the token (the `cnf` claim `x5t#S256`, RFC 8705)
    #[arg(long, value_name = "PATH")]
    pub bind_cert: Option<PathBuf>,
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
        if let Some(path) = &self.bind_cert {
            use tokio_rustls::rustls::pki_types::CertificateDer;
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            let cert = CertificateDer::from_pem_file(path)
                .map_err(|e| format!("--bind-cert {}: no PEM certificate ({e})", path.display()))?;
            claims = claims.bound_to(&crate::connection::ClientCert::from_der(&cert));
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
        .help_heading("Settings")
        // Before or after a subcommand, as cargo's and kubectl's flags.
        .global(true)
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
    // `Jail` closures return figment's large error type by design.
    #[allow(clippy::result_large_err)]
    fn config_reads_the_flags_before_it_as_a_start_does() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_KILL_GRACE", "250ms");
            let cli = Cli::parse_args(["ws", "--max-sessions", "9", "config"].map(OsString::from));
            assert!(matches!(cli.command, Some(Subcommand::Config)));
            let (config, figment) = cli.load_config().unwrap();
            assert_eq!(config.max_sessions, 9);
            let shown = config.show(&figment);
            let line = |key: &str| shown.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap().to_string();
            assert!(line("max_sessions").ends_with("# flag --max-sessions"), "{shown}");
            assert!(line("kill_grace").ends_with("# env WS_SUBPROCESS_KILL_GRACE"), "{shown}");

            let cli = Cli::parse_args(["ws", "--max-sessions", "0", "config"].map(OsString::from));
            let err = cli.load_config().unwrap_err().to_string();
            assert!(err.contains("`max_sessions`: must be at least 1"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn settings_and_config_are_read_after_a_subcommand_too() {
        let max_sessions = |cli: Cli| {
            let figment = figment::Figment::from(figment::providers::Serialized::defaults(Config::default()));
            Config::from_figment(&figment.merge(cli.settings)).unwrap().max_sessions
        };
        for args in [
            &["ws", "--config", "x.toml", "--max-sessions", "9", "config"][..],
            &["ws", "config", "--config", "x.toml", "--max-sessions", "9"],
            &["ws", "--config", "x.toml", "config", "--max-sessions=9"],
            // The original program's single-dash flags as well.
            &["ws", "config", "-config", "x.toml", "-max-sessions", "9"],
        ] {
            let cli = Cli::parse_args(args.iter().map(OsString::from));
            assert!(matches!(cli.command, Some(Subcommand::Config)), "{args:?}");
            assert_eq!(cli.config.as_deref(), Some(Path::new("x.toml")), "{args:?}");
            assert_eq!(max_sessions(cli), 9, "{args:?}");
        }
    }

    #[test]
    fn the_package_upgrades_servers_and_no_subcommand() {
        // debian/postinst sends SIGUSR2 to every running ws-subprocess but
        // those running a subcommand (SIGUSR2 would kill a `connect`).
        let postinst = include_str!("../debian/postinst");
        let skipped = postinst.lines().find(|line| line.contains("grep -qx")).expect("the skip list");
        for subcommand in Cli::command().get_subcommands().map(|c| c.get_name().to_string()).chain(["help".into()]) {
            assert!(skipped.contains(&format!(" -e {subcommand} ")), "debian/postinst would upgrade `{subcommand}`");
        }
    }

    #[test]
    fn bash_completion_states_match_their_cases() {
        let mut script = Vec::new();
        write_completions(clap_complete::Shell::Bash, &mut script).unwrap();
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("cmd=\"ws__subprocess__subcmd__man\""), "{script}");
        assert!(script.contains("\n        ws__subprocess__subcmd__man)\n"), "{script}");
        assert!(!script.contains("ws__subcmd__subprocess"), "{script}");
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
