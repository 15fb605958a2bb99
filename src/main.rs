//! The `ws-subprocess` binary: flags → [`Config`] → logging → [`server::run`].

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use serde::Serialize;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ws_subprocess::app::{self, App};
use ws_subprocess::config::{FlagValues, LogFormat};
use ws_subprocess::session::Sessions;
use ws_subprocess::{Config, server};

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
struct Cli {
    /// TOML configuration file (else $WS_SUBPROCESS_CONFIG, else
    /// ./ws-subprocess.toml if present)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: SettingFlags,

    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Print a signed JWT that runs COMMAND, for trying a JWT deployment.
    ///
    /// Example: ws-subprocess mint-token --secret-file secret --ttl 60s -- /bin/echo hi
    MintToken(MintToken),
}

#[derive(Debug, clap::Args)]
struct MintToken {
    /// HMAC secret file (the server's jwt_secret_file)
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "private_key_file",
        required_unless_present = "private_key_file"
    )]
    secret_file: Option<PathBuf>,
    /// PEM private key file (RSA, EC P-256/P-384 in PKCS#8, or Ed25519)
    #[arg(long, value_name = "PATH")]
    private_key_file: Option<PathBuf>,
    /// Signing algorithm [default: HS256 with --secret-file; RS256, ES256 or EdDSA must be named for a private key]
    #[arg(long, value_name = "ALG")]
    alg: Option<String>,
    /// Lifetime of the token
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// `kid` header, for key sets
    #[arg(long)]
    kid: Option<String>,
    /// `iss` claim
    #[arg(long)]
    iss: Option<String>,
    /// `aud` claim
    #[arg(long)]
    aud: Option<String>,
    /// Omit `jti`, making the token reusable until it expires
    #[arg(long)]
    no_jti: bool,
    /// Environment variable for the process, NAME=VALUE (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Working directory for the process
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Absolute path of the command, then its arguments
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// One flag per config key; unset flags leave the key to the other sources.
#[derive(Debug, clap::Args, Serialize)]
struct SettingFlags {
    /// Address to serve on: HOST:PORT, :PORT or unix:/PATH [default: 127.0.0.1:8866]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// The WebSocket endpoint [default: /ws]
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// Token backend: controller or jwt [default: controller]
    #[arg(long, value_name = "BACKEND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    /// Query parameter carrying the token [default: token]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token_param: Option<String>,
    /// URL of the controller asked about each token [default: http://127.0.0.1/ws-controller]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_url: Option<String>,
    /// Bound on the whole controller request, connect included [default: 5s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_timeout: Option<String>,
    /// Extra client request headers copied to the controller, e.g. cookie
    #[arg(long, value_name = "NAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_forward_headers: Option<String>,
    /// JWT algorithms accepted, e.g. HS256 or RS256,ES256,EdDSA (required for --auth jwt)
    #[arg(long, value_name = "ALGS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_algorithms: Option<String>,
    /// File holding the HMAC secret (at least 32 bytes)
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_secret_file: Option<String>,
    /// PEM public key file (RSA, EC or Ed25519)
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_public_key_file: Option<String>,
    /// JSON Web Key Set file; keys selected by kid
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_jwks_file: Option<String>,
    /// JSON Web Key Set URL; cached, refreshed on an unknown kid
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_jwks_url: Option<String>,
    /// Required iss claim
    #[arg(long, value_name = "ISSUER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_issuer: Option<String>,
    /// Required aud claim
    #[arg(long, value_name = "AUDIENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_audience: Option<String>,
    /// Clock skew allowed for exp and nbf [default: 5s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_leeway: Option<String>,
    /// Reject tokens whose exp - iat exceeds this
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_max_lifetime: Option<String>,
    /// Reject tokens without jti
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_require_jti: Option<bool>,
    /// Where used jtis are remembered: memory, or redis://HOST:PORT to share them [default: memory]
    #[arg(long, value_name = "STORE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_replay_store: Option<String>,
    /// If set, only these absolute command paths may run
    #[arg(long, value_name = "PATHS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_commands: Option<String>,
    /// If set, the Origin header must equal one of these
    #[arg(long, value_name = "ORIGINS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_origins: Option<String>,
    /// Start processes with an empty environment (plus --pass-env and the spec's env)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    clear_env: Option<bool>,
    /// Server variables passed through when --clear-env is on
    #[arg(long, value_name = "NAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pass_env: Option<String>,
    /// First signal to the process group when a session ends early [default: SIGINT]
    #[arg(long, value_name = "SIGNAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_signal: Option<String>,
    /// Wait after the kill signal (and after exit, for leftover output) before SIGKILL [default: 1s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_grace: Option<String>,
    /// Concurrent sessions; beyond it requests get 503 [default: 1024]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sessions: Option<usize>,
    /// Largest message accepted from a client; larger closes with 1009 [default: 1MiB]
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_size: Option<String>,
    /// Interval between keepalive pings [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_interval: Option<String>,
    /// A client silent this long is dropped [default: 60s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pong_timeout: Option<String>,
    /// End a session with no input or output for this long [default: no limit]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    /// End a session this long after it started [default: no limit]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_session_duration: Option<String>,
    /// Bound on graceful shutdown [default: 10s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout: Option<String>,
    /// PEM certificate chain; with --tls-key-file, serve wss:// directly
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<String>,
    /// PEM private key of --tls-cert-file
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key_file: Option<String>,
    /// Serve the files of this directory beside the endpoint (e.g. a terminal page)
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    static_dir: Option<String>,
    /// Serve Prometheus metrics at /metrics on this address [default: off]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    /// Log format: text or json; the level comes from RUST_LOG [default: text]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
}

impl SettingFlags {
    fn provider(&self) -> FlagValues {
        let mut flags = FlagValues::new();
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) {
            for (key, value) in map {
                flags.set(&key, value);
            }
        }
        flags
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

fn main() -> ExitCode {
    let cli = Cli::parse_from(go_style_args(std::env::args_os()));
    if let Some(Subcommand::MintToken(args)) = &cli.command {
        return match mint_token(args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("ws-subprocess mint-token: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let config_file = cli.config.clone().or_else(|| std::env::var_os("WS_SUBPROCESS_CONFIG").map(PathBuf::from));
    let config = match Config::load(config_file.as_deref(), cli.settings.provider()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ws-subprocess: configuration error\n{err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let sessions = Sessions::new();
    // Keys and the like are read here: a bad one is a configuration error.
    let app = match app::build(&config, sessions.clone()) {
        Ok(app) => app,
        Err(err) => {
            eprintln!("ws-subprocess: configuration error\n{err}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => match server::tls_acceptor(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(err) => {
                eprintln!("ws-subprocess: configuration error\n{err}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ws-subprocess: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config, app, sessions, tls));
    // Sessions are already over; idle blocking threads (DNS lookups of the
    // controller) need not be waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ws-subprocess: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, app: App, sessions: Sessions, tls: Option<TlsAcceptor>) -> anyhow::Result<()> {
    match server::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit = ?limit, "open-file limit raised"),
        Err(err) => tracing::warn!(cause = %err, "cannot raise the open-file limit"),
    }
    let listener =
        server::Listener::bind(&config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    // A peer that vanished is noticed even while the server only sends.
    let mut listener = listener.with_tcp_user_timeout(config.pong_timeout);
    if let Some(acceptor) = tls {
        listener = listener.with_tls(acceptor);
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        path = %config.path,
        backend = ?config.auth,
        tls = config.tls_cert_file.is_some(),
        "listening"
    );
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = &config.metrics_listen {
        let metrics = server::Listener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(addr = %metrics.local_addr()?, "serving metrics");
        let stop = metrics_stop.clone().cancelled_owned();
        tokio::spawn(server::serve(
            metrics,
            ws_subprocess::metrics::service(),
            Sessions::new(),
            Duration::from_secs(1),
            stop,
        ));
    }
    server::serve(listener, app, sessions, config.shutdown_timeout, shutdown_signal()).await;
    metrics_stop.cancel();
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}

/// Signs a token for `args.command` (see `ws-subprocess mint-token --help`).
#[cfg(feature = "jwt")]
fn mint_token(args: &MintToken) -> anyhow::Result<String> {
    use ws_subprocess::auth::jwt::{mint, read_secret};
    let (command, rest) = args.command.split_first().context("no command")?;
    let mut spec = ws_subprocess::CommandSpec::new(command, rest.iter().cloned());
    for pair in &args.env {
        let (name, value) = pair.split_once('=').with_context(|| format!("--env {pair}: expected NAME=VALUE"))?;
        spec.env.insert(name.into(), value.into());
    }
    spec.cwd = args.cwd.clone();
    spec.validate()?;
    let mut claims = mint::Claims::expiring_in(args.ttl);
    claims.iss = args.iss.clone();
    claims.aud = args.aud.clone();
    if args.no_jti {
        claims.jti = None;
    }
    let alg = |default: &str| -> anyhow::Result<jsonwebtoken::Algorithm> {
        let name = args.alg.as_deref().unwrap_or(default);
        name.parse().map_err(|_| anyhow::anyhow!("--alg {name}: unknown algorithm"))
    };
    Ok(match (&args.secret_file, &args.private_key_file) {
        (Some(secret), _) => mint::hmac(&read_secret(secret)?, alg("HS256")?, &spec, claims)?,
        (None, Some(key)) => {
            let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            let alg = alg("").context("--alg is required with --private-key-file")?;
            mint::private_key(&pem, alg, args.kid.clone(), &spec, claims)?
        }
        (None, None) => anyhow::bail!("--secret-file or --private-key-file is required"),
    })
}

#[cfg(not(feature = "jwt"))]
fn mint_token(_: &MintToken) -> anyhow::Result<String> {
    anyhow::bail!("this build has no JWT support (feature `jwt`)")
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
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
}
