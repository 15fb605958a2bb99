//! The `ws-subprocess` binary: flags → [`Config`] → logging → [`server::run`].

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use serde::Serialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ws_subprocess::config::{FlagValues, LogFormat};
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
    /// Token backend: controller [default: controller]
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
    /// Bound on graceful shutdown [default: 10s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout: Option<String>,
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
    let config_file = cli.config.clone().or_else(|| std::env::var_os("WS_SUBPROCESS_CONFIG").map(PathBuf::from));
    let config = match Config::load(config_file.as_deref(), cli.settings.provider()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ws-subprocess: configuration error\n{err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ws-subprocess: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config));
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

async fn serve(config: Config) -> anyhow::Result<()> {
    match server::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit = ?limit, "open-file limit raised"),
        Err(err) => tracing::warn!(cause = %err, "cannot raise the open-file limit"),
    }
    let listener =
        server::Listener::bind(&config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, path = %config.path, backend = ?config.auth, "listening");
    server::run(listener, &config, shutdown_signal()).await?;
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
