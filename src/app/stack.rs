//! The binary's stack, built from a [`Config`]; and what a rebuilt stack
//! shares with the one it replaces ([`Lasting`]).

#[cfg(feature = "jwt")]
use std::sync::Arc;
#[cfg(feature = "jwt")]
use std::time::Duration;

use http::request::Parts;
use tower::ServiceBuilder;

use super::StartError;
use crate::auth::{
    AuthError, AuthLimit, AuthLimitLayer, Authorizer, ControllerAuthorizer, TokenAuth, TokenAuthLayer, backend_client,
};
use crate::config::{AuthBackend, Config, ConfigError};
use crate::contain::{CgroupRoot, Containment, Identity};
use crate::forwarded::{ForwardedFacts, ForwardedLayer};
use crate::metrics::Metrics;
use crate::origin::{OriginCheck, OriginLayer};
use crate::routes::Routes;
use crate::session::{ServeSubprocess, SessionLimit, SessionLimitLayer, Sessions, SharedSessions};
use crate::spec::CommandSpec;

/// The stack, outermost first, in the order of `SPEC §3`: path, who the
/// client is, origin, session limit, attempts and waiting requests per
/// address, token and handshake, backend, process.
pub type Stack = Routes<ForwardedFacts<OriginCheck<SessionLimit<AuthLimit<TokenAuth<ServeSubprocess, Backend>>>>>>;

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

    fn identifies_by_certificate(&self) -> bool {
        match self {
            Self::Controller(controller) => controller.identifies_by_certificate(),
            #[cfg(feature = "jwt")]
            Self::Jwt(jwt) => jwt.identifies_by_certificate(),
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

/// The single-use token memory of a JWT backend, and what it was made for.
#[cfg(feature = "jwt")]
type Replay = (crate::config::ReplayStoreAddr, Arc<crate::auth::jwt::ConfiguredReplayStore>);
#[cfg(not(feature = "jwt"))]
type Replay = ();

/// What outlives a rebuilt stack: the running sessions and everything that
/// counts them, the single-use token memory, and how sessions are contained
/// where only an upgrade may change it (the cgroup root, `run_as_user`).
#[derive(Debug, Clone)]
pub(super) struct Lasting {
    pub(super) sessions: Sessions,
    pub(super) metrics: Metrics,
    named: SharedSessions,
    session_limit: SessionLimitLayer,
    auth_limit: Option<AuthLimitLayer>,
    replay: Option<Replay>,
    cgroups: Option<CgroupRoot>,
    run_as: Option<Identity>,
}

impl Lasting {
    /// A start: nothing running yet; sessions contained as `containment`
    /// says.
    pub(super) fn new(sessions: Sessions, metrics: Metrics, containment: &Containment) -> Self {
        Self {
            session_limit: SessionLimitLayer::new(0).metrics(metrics.clone()),
            sessions,
            metrics,
            named: SharedSessions::new(),
            auth_limit: None,
            replay: None,
            cgroups: containment.cgroup_root().cloned(),
            run_as: containment.run_as_identity().cloned(),
        }
    }

    /// Starts the in-memory token memory with `used` (an upgrade's hand-off),
    /// for a configuration whose JWT replay store is `memory`.
    pub(super) fn remember_used_tokens(&mut self, config: &Config, used: Vec<(String, u64)>) {
        #[cfg(feature = "jwt")]
        if config.auth == AuthBackend::Jwt && config.jwt_replay_store == crate::config::ReplayStoreAddr::Memory {
            use crate::auth::jwt::{ConfiguredReplayStore, MemoryReplayStore};
            let store = ConfiguredReplayStore::Memory(MemoryReplayStore::with_entries(used));
            self.replay = Some((crate::config::ReplayStoreAddr::Memory, Arc::new(store)));
        }
        #[cfg(not(feature = "jwt"))]
        let _ = (config, used);
    }

    /// The limit that counts the sessions.
    pub(super) fn session_limit(&self) -> &SessionLimitLayer {
        &self.session_limit
    }

    /// The token ids the in-memory token memory holds, for an upgrade's
    /// hand-off (none with Redis, which holds them itself).
    pub(super) fn used_tokens(&self) -> Vec<(String, u64)> {
        #[cfg(feature = "jwt")]
        if let Some((_, store)) = &self.replay
            && let crate::auth::jwt::ConfiguredReplayStore::Memory(memory) = &**store
        {
            return memory.entries();
        }
        Vec::new()
    }
}

/// A stack, and the [`Lasting`] its successor shares.
pub(super) struct Built {
    pub(super) stack: Stack,
    pub(super) lasting: Lasting,
    /// Its innermost service, which also runs sessions carried on.
    pub(super) service: ServeSubprocess,
}

/// Bound on each call to Redis, connect included.
#[cfg(feature = "jwt")]
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The backend `config` names; a JWT backend keeps the token memory of
/// `replay` when the store is the same.
fn backend(config: &Config, replay: Option<&Replay>) -> Result<(Backend, Option<Replay>), StartError> {
    let client = backend_client(config.controller_timeout).map_err(StartError::HttpClient)?;
    match config.auth {
        AuthBackend::Controller => {
            let _ = replay;
            let controller = ControllerAuthorizer::with_client(client, config.controller_settings());
            Ok((Backend::Controller(controller), None))
        }
        #[cfg(feature = "jwt")]
        AuthBackend::Jwt => {
            use crate::auth::jwt::{ConfiguredReplayStore, JwtAuthorizer, MemoryReplayStore, RedisReplayStore};
            use crate::config::ReplayStoreAddr;
            let store = match replay {
                Some((addr, store)) if *addr == config.jwt_replay_store => store.clone(),
                _ => Arc::new(match &config.jwt_replay_store {
                    ReplayStoreAddr::Memory => ConfiguredReplayStore::Memory(MemoryReplayStore::default()),
                    ReplayStoreAddr::Redis(url) => {
                        ConfiguredReplayStore::Redis(RedisReplayStore::new(url.as_str(), REDIS_TIMEOUT)?)
                    }
                }),
            };
            let jwt = JwtAuthorizer::sharing(config.jwt_settings(), store.clone(), client)?;
            Ok((Backend::Jwt(Box::new(jwt)), Some((config.jwt_replay_store.clone(), store))))
        }
        #[cfg(not(feature = "jwt"))]
        AuthBackend::Jwt => Err(StartError::JwtNotBuilt),
    }
}

/// The binary's stack for `config`, holding at most `max_sessions`,
/// contained by `containment`; its sessions are tracked in `sessions` and
/// counted in `metrics`. Key files are read here, so a bad key is a startup
/// error.
pub fn stack(
    config: &Config,
    max_sessions: usize,
    containment: Containment,
    sessions: Sessions,
    metrics: Metrics,
) -> Result<Stack, StartError> {
    let lasting = Lasting::new(sessions, metrics, &containment);
    Ok(build(config, max_sessions, &lasting, Some(containment))?.stack)
}

/// A stack for `config` sharing `lasting`: sessions, their counts and the
/// token memory go on; settings, keys, limits and policies are `config`'s.
/// `containment` is given at the start; a rebuild makes it from `lasting`
/// and `config` (its users and cgroup limits). Nothing of `lasting` changes
/// unless the whole stack could be built.
pub(super) fn build(
    config: &Config,
    max_sessions: usize,
    lasting: &Lasting,
    containment: Option<Containment>,
) -> Result<Built, StartError> {
    config.validate()?;
    let settings = config.session_settings().map_err(|e| ConfigError(vec![e.to_string()]))?;
    let containment = match containment {
        Some(containment) => containment,
        None => {
            let (_, users) = config.identities()?;
            let mut containment = Containment::new().users(users);
            if let Some(identity) = &lasting.run_as {
                containment = containment.run_as(identity.clone());
            }
            if let Some(root) = &lasting.cgroups {
                containment = containment.cgroups(root.clone(), config.cgroup_limits());
            }
            containment
        }
    };
    let (backend, replay) = backend(config, lasting.replay.as_ref())?;
    let metrics = &lasting.metrics;
    let session_limit = lasting.session_limit.resized(max_sessions);
    let auth_limit = match &lasting.auth_limit {
        Some(layer) => layer.reconfigured(config.auth_limits()),
        None => AuthLimitLayer::new(config.auth_limits(), metrics.clone()),
    };
    let service = ServeSubprocess::new(settings, lasting.sessions.clone())
        .named_sessions(lasting.named.clone())
        .metrics(metrics.clone())
        .containment(containment);
    let stack = ServiceBuilder::new()
        .layer(ForwardedLayer::new(config.trusted()))
        .layer(OriginLayer::new(config.allowed_origins.clone()))
        .layer(session_limit.clone())
        .layer(auth_limit.clone())
        .layer(
            TokenAuthLayer::new(backend)
                .token_param(&config.token_param)
                .policy(config.policy())
                .metrics(metrics.clone()),
        )
        .service(service.clone());
    let routes = Routes::new(&config.path, stack);
    let routes =
        if config.kubernetes_api { routes.kubernetes_api(config.kubernetes_containers.clone()) } else { routes };
    let stack = match &config.static_dir {
        Some(dir) => routes.static_dir(dir),
        None => routes,
    };
    let lasting = Lasting { session_limit, auth_limit: Some(auth_limit), replay, ..lasting.clone() };
    Ok(Built { stack, lasting, service })
}
