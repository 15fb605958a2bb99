//! The composition root: everything the binary serves, built from a
//! [`Config`]. The binary and the tests both start the server through
//! [`App`], so the wiring they run is the same.
//!
//! ```no_run
//! # async fn example() -> Result<(), ws_subprocess::app::StartError> {
//! use ws_subprocess::{App, Config};
//!
//! let app = App::bind(Config::default()).await?;
//! println!("serving on {}", app.local_addr());
//! app.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::time::Duration;

use http::request::Parts;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::auth::{AuthError, Authorizer, ControllerAuthorizer, TokenAuth, TokenAuthLayer, backend_client};
use crate::config::{AuthBackend, Config, ConfigError};
use crate::metrics::Metrics;
use crate::origin::{OriginCheck, OriginLayer};
use crate::routes::Routes;
use crate::server::{self, ListenAddr, Listener, TlsError};
use crate::session::{ServeSubprocess, SessionLimit, SessionLimitLayer, Sessions};
use crate::spec::CommandSpec;

/// The stack, outermost first, in the order of `SPEC §3`: path, origin,
/// session limit, token and handshake, backend, process.
pub type Stack = Routes<OriginCheck<SessionLimit<TokenAuth<ServeSubprocess, Backend>>>>;

/// The backend a configuration names.
#[derive(Debug)]
pub enum Backend {
    /// `auth = "controller"`.
    Controller(ControllerAuthorizer),
    /// `auth = "jwt"`.
    #[cfg(feature = "jwt")]
    Jwt(Box<crate::auth::jwt::JwtAuthorizer<crate::auth::jwt::ConfiguredReplayStore>>),
}

impl Authorizer for Backend {
    fn backend_name(&self) -> &'static str {
        match self {
            Self::Controller(controller) => controller.backend_name(),
            #[cfg(feature = "jwt")]
            Self::Jwt(jwt) => jwt.backend_name(),
        }
    }

    async fn authorize(&self, token: &str, request: &Parts) -> Result<CommandSpec, AuthError> {
        match self {
            Self::Controller(controller) => controller.authorize(token, request).await,
            #[cfg(feature = "jwt")]
            Self::Jwt(jwt) => jwt.authorize(token, request).await,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error("configuration error")]
    Config(#[from] ConfigError),
    /// The backends' HTTP client could not be set up.
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The JWT keys could not be loaded.
    #[cfg(feature = "jwt")]
    #[error("configuration error")]
    JwtKeys(#[from] crate::auth::jwt::KeyError),
    /// The replay store URL is unusable.
    #[cfg(feature = "jwt")]
    #[error("configuration error: jwt_replay_store")]
    ReplayStore(#[from] crate::auth::jwt::ReplayError),
    /// `auth = "jwt"` in a build without the `jwt` feature.
    #[error("configuration error: auth: this build has no JWT support (feature `jwt`)")]
    JwtNotBuilt,
    /// TLS could not be set up.
    #[error("configuration error")]
    Tls(#[from] TlsError),
    /// An address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: ListenAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl StartError {
    /// Whether the configuration is at fault (the binary exits with 2), as
    /// opposed to the machine (exit 1).
    pub fn is_configuration(&self) -> bool {
        !matches!(self, Self::Listen { .. })
    }
}

/// Bound on each call to Redis, connect included.
#[cfg(feature = "jwt")]
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

fn backend(config: &Config) -> Result<Backend, StartError> {
    let client = backend_client(config.controller_timeout).map_err(StartError::HttpClient)?;
    match config.auth {
        AuthBackend::Controller => {
            Ok(Backend::Controller(ControllerAuthorizer::with_client(client, config.controller_settings())))
        }
        #[cfg(feature = "jwt")]
        AuthBackend::Jwt => {
            use crate::auth::jwt::{ConfiguredReplayStore, JwtAuthorizer, MemoryReplayStore, RedisReplayStore};
            use crate::config::ReplayStoreAddr;
            let replay = match &config.jwt_replay_store {
                ReplayStoreAddr::Memory => ConfiguredReplayStore::Memory(MemoryReplayStore::default()),
                ReplayStoreAddr::Redis(url) => {
                    ConfiguredReplayStore::Redis(RedisReplayStore::new(url.as_str(), REDIS_TIMEOUT)?)
                }
            };
            Ok(Backend::Jwt(Box::new(JwtAuthorizer::new(config.jwt_settings(), replay, client)?)))
        }
        #[cfg(not(feature = "jwt"))]
        AuthBackend::Jwt => Err(StartError::JwtNotBuilt),
    }
}

/// The binary's stack for `config`; its sessions are tracked in `sessions`
/// and counted in `metrics`. Key files are read here, so a bad key is a
/// startup error.
pub fn stack(config: &Config, sessions: Sessions, metrics: Metrics) -> Result<Stack, StartError> {
    config.validate()?;
    let settings = config.session_settings().map_err(|e| ConfigError(vec![e.to_string()]))?;
    let stack = ServiceBuilder::new()
        .layer(OriginLayer::new(config.allowed_origins.clone()))
        .layer(SessionLimitLayer::new(config.max_sessions))
        .layer(
            TokenAuthLayer::new(backend(config)?)
                .token_param(&config.token_param)
                .allowed_commands(config.allowed_commands.clone())
                .metrics(metrics.clone()),
        )
        .service(ServeSubprocess::new(settings, sessions).metrics(metrics));
    let routes = Routes::new(&config.path, stack);
    Ok(match &config.static_dir {
        Some(dir) => routes.static_dir(dir),
        None => routes,
    })
}

/// The whole server, bound and ready to run: the endpoint's listener (TLS
/// when configured) with the stack, and the metrics listener when
/// `metrics_listen` is set.
#[derive(Debug)]
pub struct App {
    listener: Listener,
    local_addr: ListenAddr,
    metrics_listener: Option<(Listener, ListenAddr)>,
    stack: Stack,
    sessions: Sessions,
    metrics: Metrics,
    shutdown_timeout: Duration,
}

impl App {
    /// Checks `config`, raises the open-file limit, builds the stack (reading
    /// key files), sets up TLS and binds the listeners.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let sessions = Sessions::new();
        let stack = stack(&config, sessions.clone(), metrics.clone())?;
        match server::raise_open_file_limit() {
            Ok(limit) => tracing::debug!(limit = ?limit, "open-file limit raised"),
            Err(err) => tracing::warn!(cause = %err, "cannot raise the open-file limit"),
        }
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
            _ => None,
        };
        let (listener, local_addr) = bind(&config.listen).await?;
        // A peer that vanished is noticed even while the server only sends.
        let mut listener = listener.with_tcp_user_timeout(config.pong_timeout);
        if let Some(acceptor) = tls {
            listener = listener.with_tls(acceptor);
        }
        tracing::info!(
            addr = %local_addr,
            path = %config.path,
            backend = ?config.auth,
            tls = config.tls_cert_file.is_some(),
            "listening"
        );
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => {
                let (listener, addr) = bind(addr).await?;
                tracing::info!(addr = %addr, "serving metrics");
                Some((listener, addr))
            }
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            metrics_listener,
            stack,
            sessions,
            metrics,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address the endpoint is served on (with the real port when 0
    /// was asked).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The address metrics are served on, when they are.
    pub fn metrics_addr(&self) -> Option<&ListenAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| addr)
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see
    /// [`server::serve`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let metrics_stop = CancellationToken::new();
        if let Some((listener, _)) = self.metrics_listener {
            let stop = metrics_stop.clone().cancelled_owned();
            let service = self.metrics.service();
            tokio::spawn(server::serve(listener, service, Sessions::new(), Duration::from_secs(1), stop));
        }
        server::serve(self.listener, self.stack, self.sessions, self.shutdown_timeout, shutdown).await;
        metrics_stop.cancel();
    }
}

async fn bind(addr: &ListenAddr) -> Result<(Listener, ListenAddr), StartError> {
    let failed = |source| StartError::Listen { addr: addr.clone(), source };
    let listener = Listener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}
