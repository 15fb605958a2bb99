//! The `ws-subprocess` binary: flags → [`Config`] → logging →
//! [`App`] → exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ws_subprocess::cli::{Cli, Subcommand};
use ws_subprocess::config::LogFormat;
use ws_subprocess::{App, Config};

fn main() -> ExitCode {
    let cli = Cli::parse_args(std::env::args_os());
    if let Some(Subcommand::MintToken(args)) = &cli.command {
        return match args.token() {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => fail("mint-token", anyhow::Error::from_boxed(err), 2),
        };
    }
    let config = match Config::load(cli.config_file().as_deref(), cli.settings) {
        Ok(config) => config,
        Err(err) => return fail("configuration error", err.into(), 2),
    };
    init_tracing(config.log_format);
    // While the lowest descriptors are free: starting a session then costs
    // the same however many the server holds.
    if let Err(err) = ws_subprocess::contain::reserve_spawn_slots() {
        tracing::warn!(cause = %err, "cannot reserve descriptors for starting sessions");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail("cannot start the runtime", err.into(), 1),
    };
    let result = runtime.block_on(async {
        // Before anything else: children must not reach the server's
        // secrets, nor outlive their sessions as orphans.
        if let Err(err) = ws_subprocess::contain::harden_process() {
            tracing::error!(cause = %err, "cannot harden the server process");
        }
        let app = App::bind(config).await?;
        app.run(shutdown_signal()).await;
        Ok::<_, ws_subprocess::app::StartError>(())
    });
    // Sessions are already over; idle blocking threads (DNS lookups of the
    // controller) need not be waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = if err.is_configuration() { 2 } else { 1 };
            fail("cannot start", err.into(), code)
        }
    }
}

/// Prints `err` with its whole chain of causes, once, and returns `code`.
fn fail(what: &str, err: anyhow::Error, code: u8) -> ExitCode {
    eprintln!("ws-subprocess: {what}\n{err:#}");
    ExitCode::from(code)
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

/// Logs to stderr at the level of `RUST_LOG` (default `info`). The
/// WebSocket crates trace every frame with its payload, so they never log
/// below `warn`, whatever `RUST_LOG` says: session data stays out of the
/// log.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("tungstenite=warn".parse().expect("a valid directive"))
        .add_directive("tokio_tungstenite=warn".parse().expect("a valid directive"));
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
}
