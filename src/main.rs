//! The `ws-subprocess` binary: flags → [`Config`](ws_subprocess::Config) →
//! logging → [`App`] → exit code; or a subcommand: `connect`, `mint-token`, `config`,
//! `completions`, `man`. `SIGHUP` reloads the configuration from the same
//! file and flags; `SIGTERM` and `SIGINT` shut down.

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
        #[cfg(feature = "client")]
        Some(Subcommand::Connect(args)) => {
            // The client is no server: a server setting would be ignored, so it is refused.
            if let Some(flag) = cli.settings.first_flag() {
                return fail("connect", anyhow::anyhow!("--{flag} is a server setting, not one of connect's"), 2);
            }
            return ExitCode::from(ws_subprocess::client::run((**args).clone()));
        }
        Some(Subcommand::Config) | None => {}
    }
    let (config, figment) = match cli.load_config() {
        Ok(loaded) => loaded,
        Err(err) => return fail("configuration error", err.into(), 2),
    };
    if cli.check_upgrade {
        // Asked by a running server before it executes this binary.
        return write_stdout("check-upgrade", |out| writeln!(out, "{}", ws_subprocess::upgrade::check_line()));
    }
    if let Some(Subcommand::Config) = cli.command {
        return write_stdout("config", |out| out.write_all(config.show(&figment).as_bytes()));
    }
    let log_filter = init_tracing(config.log_format, config.log_level.as_deref());
    // While the lowest descriptors are free: starting a session then costs
    // the same however many the server holds.
    if let Err(err) = ws_subprocess::contain::reserve_spawn_slots() {
        tracing::warn!(cause = %err, "cannot reserve descriptors for starting sessions");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail("cannot start the runtime", err.into(), 1),
    };
    // The hand-off of the program this one replaced, taken before anything
    // opens descriptors of its own.
    let handoff = cli.upgrade_state.and_then(|fd| match ws_subprocess::upgrade::Handoff::adopt(fd) {
        Ok(handoff) => Some(handoff),
        Err(err) => {
            tracing::error!(cause = %err, "cannot read the hand-off of the program before; starting afresh");
            None
        }
    });
    if let Some(handoff) = &handoff {
        // Its sessions' processes are this program's before any orphan is
        // reaped.
        ws_subprocess::session::CarriedSessions::claim_leaders(handoff);
    }
    let result = runtime.block_on(async {
        // Before anything else: children must not reach the server's
        // secrets, nor outlive their sessions as orphans.
        if let Err(err) = ws_subprocess::contain::harden_process() {
            tracing::error!(cause = %err, "cannot harden the server process");
        }
        // Before anything is served: a SIGHUP from then on reloads, never
        // kills.
        use tokio::signal::unix::{SignalKind, signal};
        let hangups = signal(SignalKind::hangup());
        let upgrades = signal(SignalKind::user_defined2());
        let shutdown = shutdown_signal();
        // A program before this one blocked these for its execve; they are
        // handled now, and one that came meanwhile is delivered.
        ws_subprocess::upgrade::unblock_handled_signals();
        let cli = std::sync::Arc::new(cli);
        let app = App::bind_carried(config, handoff)
            .await?
            .reload_from(move || cli.load_config().map(|(config, _)| config))
            .log_filter(move |level| {
                if let Err(err) = log_filter.reload(log_filter_for(level)) {
                    tracing::error!(cause = %err, "cannot change the log filter");
                }
            });
        let reloader = app.reloader();
        tokio::spawn(async move {
            let Ok(mut hangups) = hangups else {
                return tracing::error!("cannot listen for SIGHUP; reloads are off");
            };
            while hangups.recv().await.is_some() {
                tracing::info!(signal = "SIGHUP", "reload requested");
                let reloader = reloader.clone();
                // Reading files and looking up users block.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        });
        let upgrader = app.upgrader();
        tokio::spawn(async move {
            let Ok(mut upgrades) = upgrades else {
                return tracing::error!("cannot listen for SIGUSR2; in-place upgrades are off");
            };
            while upgrades.recv().await.is_some() {
                tracing::info!(signal = "SIGUSR2", "upgrade requested");
                // Returns only when the upgrade did not happen.
                upgrader.upgrade().await;
            }
        });
        app.run(shutdown).await;
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

/// Completes on SIGTERM or SIGINT (listening from the call on).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::error!("cannot listen for signals; stop the server with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
    }
}

/// The handle that changes the log filter of a running server.
type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The log filter: `log_level` when set, else `RUST_LOG`, else `info`. The
/// WebSocket crates trace every frame with its payload, so they never log
/// below `warn`, whatever the filter says: session data stays out of the
/// log.
fn log_filter_for(level: Option<&str>) -> EnvFilter {
    let filter = match level {
        // Checked when the configuration was read.
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    filter
        .add_directive("tungstenite=warn".parse().expect("a valid directive"))
        .add_directive("tokio_tungstenite=warn".parse().expect("a valid directive"))
}

/// Logs to stderr through the filter of [`log_filter_for`]; returns the
/// handle a reload changes it with.
fn init_tracing(format: LogFormat, level: Option<&str>) -> FilterHandle {
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter_for(level));
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
    handle
}
