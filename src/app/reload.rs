//! [`Reloader`]: a new configuration for the next handshake or request,
//! with nothing established touched (`SPEC §10`, reload).

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio_rustls::TlsAcceptor;

use super::stack::{self, Lasting, Stack};
use super::{Capacity, StartError};
use crate::config::{Config, ConfigError};
use crate::live::Live;
use crate::metrics::{Metrics, Outcome};
use crate::report::Report;
use crate::server::ServeSettings;

/// Where a reload reads its configuration: the binary reads its file, its
/// environment and its flags again.
pub type Source = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Applies a log filter (`log_level`; `None`: the one the process started
/// with).
pub type LogFilter = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be read, or is invalid.
    #[error("configuration error")]
    Config(#[from] ConfigError),
    /// The new configuration could not be put to work (a key, a
    /// certificate, a user that does not exist).
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Reloads an [`App`](super::App)'s configuration from its source; clones
/// share it. See [`Reloader::reload`].
#[derive(Clone)]
pub struct Reloader(Arc<Inner>);

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

struct Inner {
    /// The configuration in force and what its stack shares with the next;
    /// held for a whole reload, so two reloads never interleave.
    state: Mutex<State>,
    stack: Live<Stack>,
    serve: Live<ServeSettings>,
    tls: Option<Live<TlsAcceptor>>,
    open_files: u64,
    threads: usize,
    metrics: Metrics,
}

struct State {
    config: Config,
    lasting: Lasting,
    /// The innermost service of the stack in force.
    service: crate::session::ServeSubprocess,
    source: Option<Source>,
    log_filter: Option<LogFilter>,
}

/// What [`Reloader::new`] puts together: the live parts of a bound app.
pub(super) struct Parts {
    pub(super) config: Config,
    pub(super) lasting: Lasting,
    pub(super) service: crate::session::ServeSubprocess,
    pub(super) stack: Live<Stack>,
    pub(super) serve: Live<ServeSettings>,
    pub(super) tls: Option<Live<TlsAcceptor>>,
    pub(super) open_files: u64,
    pub(super) threads: usize,
}

impl Reloader {
    pub(super) fn new(parts: Parts) -> Self {
        let metrics = parts.lasting.metrics.clone();
        Self(Arc::new(Inner {
            state: Mutex::new(State {
                config: parts.config,
                lasting: parts.lasting,
                service: parts.service,
                source: None,
                log_filter: None,
            }),
            stack: parts.stack,
            serve: parts.serve,
            tls: parts.tls,
            open_files: parts.open_files,
            threads: parts.threads,
            metrics,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set_source(&self, source: Source) {
        self.state().source = Some(source);
    }

    pub(super) fn set_log_filter(&self, filter: LogFilter) {
        self.state().log_filter = Some(filter);
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.state().config.clone()
    }

    /// The innermost service of the stack in force, and what carried
    /// sessions take their places from.
    pub(super) fn service(&self) -> (crate::session::ServeSubprocess, Lasting) {
        let state = self.state();
        (state.service.clone(), state.lasting.clone())
    }

    /// The used token ids held in memory, for an upgrade's hand-off.
    pub(super) fn used_tokens(&self) -> Vec<(String, u64)> {
        self.state().lasting.used_tokens()
    }

    /// Reads the configuration from the source again (without one, takes
    /// the configuration in force, so key and certificate files are read
    /// again) and builds everything it names: the stack (keys, backend,
    /// policies, limits, session settings), the connection settings and the
    /// TLS certificate. Only when all of that worked does it take over, for
    /// the next handshake and request; connections and sessions that run
    /// keep what they started with. Settings that only an upgrade changes
    /// ([`UPGRADE_ONLY`](crate::config::UPGRADE_ONLY)) keep their values,
    /// with a warning.
    ///
    /// Logs the outcome (the keys that changed, secrets redacted; or why
    /// nothing did), counts it in `ws_subprocess_reloads_total{result}` and
    /// tells systemd (`RELOADING=1`, then `READY=1`). Returns the changed
    /// settings as `key = value` lines.
    pub fn reload(&self) -> Result<Vec<String>, ReloadError> {
        crate::notify::reloading();
        let result = self.try_reload();
        match &result {
            Ok(changes) => {
                self.0.metrics.reloaded(Outcome::ok);
                if changes.is_empty() {
                    tracing::info!("reloaded; no setting changed");
                } else {
                    tracing::info!(changed = %changes.join("; "), "reloaded");
                }
            }
            Err(err) => {
                self.0.metrics.reloaded(Outcome::error);
                tracing::error!(cause = %Report(err), "reload failed; serving on with the configuration in force");
            }
        }
        crate::notify::ready();
        result
    }

    fn try_reload(&self) -> Result<Vec<String>, ReloadError> {
        let mut state = self.state();
        let asked = match &state.source {
            Some(source) => source()?,
            None => state.config.clone(),
        };
        let (config, kept) = asked.for_reload(&state.config);
        if !kept.is_empty() {
            tracing::warn!(
                settings = %kept.join(", "),
                "these settings change only with an upgrade (SIGUSR2); a reload keeps them as they are"
            );
        }
        config.validate()?;
        let capacity = Capacity::of(&config, self.0.open_files, self.0.threads)?;
        let built = stack::build(&config, capacity.sessions, &state.lasting, None)?;
        let serve = config
            .serve_settings(capacity.connections, self.0.metrics.clone())
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let tls = match &self.0.tls {
            Some(_) => config.tls_acceptor().map_err(StartError::from)?,
            None => None,
        };
        // Everything is built: nothing can fail from here on.
        capacity.log(&config, self.0.open_files, self.0.threads);
        self.0.stack.replace(built.stack);
        self.0.serve.replace(serve);
        if let (Some(live), Some(acceptor)) = (&self.0.tls, tls) {
            live.replace(acceptor);
        }
        if config.log_level != state.config.log_level
            && let Some(filter) = &state.log_filter
        {
            filter(config.log_level.as_deref());
        }
        let changes = state.config.changes(&config);
        state.lasting = built.lasting;
        state.service = built.service;
        state.config = config;
        Ok(changes)
    }
}
