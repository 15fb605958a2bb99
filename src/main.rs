//! The `ws-subprocess` binary: flags → [`Config`](ws_subprocess::Config) →
//! logging → [`App`] → exit code; or a subcommand: `mint-token`, `config`,
//! `completions`, `man`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ws_subprocess::App;
use ws_subprocess::cli::{self, Cli, Subcommand};
use ws_subprocess::config::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse_args(std::env::args_os());
    match &cli.command {
        Some(Subcommand::MintToken(args)) => {
            return match args.token() {
                Ok(token) => write_stdout("mint-token", |out| writeln!(out, "{token}")),
                Err(err) => fail("mint-token", anyhow::Error::from_boxed(err), 2),
            };
        }
        Some(Subcommand::Completions { shell }) => {
            return write_stdout("completions", |out| cli::write_completions(*shell, out));
        }
        Some(Subcommand::Man { out_dir: None }) => return write_stdout("man", |out| cli::write_man_page(out)),
        Some(Subcommand::Man { out_dir: Some(dir) }) => {
            return match cli::write_man_pages(dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&format!("cannot write man pages into {}", dir.display()), err.into(), 1),
            };
        }
        Some(Subcommand::Config) | None => {}
    }
    let (config, figment) = match cli.load_config() {
        Ok(loaded) => loaded,
        Err(err) => return fail("configuration error", err.into(), 2),
    };
    if let Some(Subcommand::Config) = cli.command {
        return write_stdout("config", |out| out.write_all(config.show(&figment).as_bytes()));
    }
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

/// Runs `write` on stdout and flushes it. A reader that went away early
/// (`| head`) is no failure; any other write error is.
fn write_stdout(what: &str, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => fail(&format!("{what}: cannot write to stdout"), err.into(), 1),
    }
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
