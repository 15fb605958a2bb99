//! The whole service stack the binary serves, built from a [`Config`].

use http::request::Parts;
use tower::ServiceBuilder;

use crate::auth::{AuthError, Authorizer, ControllerAuthorizer, ControllerSettings, TokenAuth, TokenAuthLayer};
use crate::config::{AuthBackend, Config};
use crate::origin::{OriginCheck, OriginLayer};
use crate::routes::Routes;
use crate::session::{ServeSubprocess, SessionLimit, SessionLimitLayer, SessionSettings, Sessions};
use crate::spec::CommandSpec;

/// The stack, outermost first, in the order of `SPEC §3`: path, origin,
/// session limit, token and handshake, backend, process.
pub type App = Routes<OriginCheck<SessionLimit<TokenAuth<ServeSubprocess, Backend>>>>;

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

/// Why the stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The backends' HTTP client could not be set up.
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The JWT keys could not be loaded.
    #[cfg(feature = "jwt")]
    #[error(transparent)]
    JwtKeys(#[from] crate::auth::jwt::KeyError),
    /// The replay store URL is unusable.
    #[cfg(feature = "jwt")]
    #[error("jwt_replay_store: {0}")]
    ReplayStore(#[from] crate::auth::jwt::ReplayError),
    /// `auth = "jwt"` in a build without the `jwt` feature.
    #[error("auth: this build has no JWT support (feature `jwt`)")]
    JwtNotBuilt,
}

/// Bound on each call to Redis, connect included.
#[cfg(feature = "jwt")]
const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn backend(config: &Config) -> Result<Backend, BuildError> {
    let client = crate::auth::backend_client(config.controller_timeout).map_err(BuildError::HttpClient)?;
    match config.auth {
        AuthBackend::Controller => Ok(Backend::Controller(ControllerAuthorizer::with_client(
            client,
            ControllerSettings {
                url: config.controller_url.clone(),
                timeout: config.controller_timeout,
                forward_headers: config
                    .controller_forward_headers
                    .iter()
                    // Validated with the rest of the config.
                    .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                    .collect(),
            },
        ))),
        #[cfg(feature = "jwt")]
        AuthBackend::Jwt => {
            use crate::auth::jwt::{
                ConfiguredReplayStore, JwtAuthorizer, JwtSettings, KeySources, MemoryReplayStore, RedisReplayStore,
            };
            use crate::config::ReplayStoreAddr;
            let settings = JwtSettings {
                // Validated with the rest of the config.
                algorithms: config.jwt_algorithms.iter().filter_map(|a| a.parse().ok()).collect(),
                keys: KeySources {
                    secret_file: config.jwt_secret_file.clone(),
                    public_key_file: config.jwt_public_key_file.clone(),
                    jwks_file: config.jwt_jwks_file.clone(),
                    jwks_url: config.jwt_jwks_url.clone(),
                    ..KeySources::default()
                },
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
                leeway: config.jwt_leeway,
                max_lifetime: config.jwt_max_lifetime,
                require_jti: config.jwt_require_jti,
            };
            let replay = match &config.jwt_replay_store {
                ReplayStoreAddr::Memory => ConfiguredReplayStore::Memory(MemoryReplayStore::default()),
                ReplayStoreAddr::Redis(url) => {
                    ConfiguredReplayStore::Redis(RedisReplayStore::new(url.as_str(), REDIS_TIMEOUT)?)
                }
            };
            Ok(Backend::Jwt(Box::new(JwtAuthorizer::new(settings, replay, client)?)))
        }
        #[cfg(not(feature = "jwt"))]
        AuthBackend::Jwt => Err(BuildError::JwtNotBuilt),
    }
}

/// Builds the stack for `config`; its sessions are tracked in `sessions`.
/// Key files are read here, so a bad key is a startup error.
pub fn build(config: &Config, sessions: Sessions) -> Result<App, BuildError> {
    let stack = ServiceBuilder::new()
        .layer(OriginLayer::new(config.allowed_origins.clone()))
        .layer(SessionLimitLayer::new(config.max_sessions))
        .layer(
            TokenAuthLayer::new(backend(config)?)
                .token_param(&config.token_param)
                .allowed_commands(config.allowed_commands.clone()),
        )
        .service(ServeSubprocess::new(SessionSettings::from(config), sessions));
    let routes = Routes::new(&config.path, stack);
    Ok(match &config.static_dir {
        Some(dir) => routes.static_dir(dir),
        None => routes,
    })
}
