//! The whole service stack the binary serves, built from a [`Config`].

use tower::ServiceBuilder;

use crate::auth::{ControllerAuthorizer, ControllerSettings, TokenAuth, TokenAuthLayer};
use crate::config::{AuthBackend, Config};
use crate::origin::{OriginCheck, OriginLayer};
use crate::routes::Routes;
use crate::session::{ServeSubprocess, SessionLimit, SessionLimitLayer, SessionSettings, Sessions};

/// The stack, outermost first, in the order of `SPEC §3`: path, origin,
/// session limit, token and handshake, backend, process.
pub type App = Routes<OriginCheck<SessionLimit<TokenAuth<ServeSubprocess, ControllerAuthorizer>>>>;

/// Why the stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The controller's HTTP client could not be set up.
    #[error("cannot build the controller client")]
    ControllerClient(#[source] reqwest::Error),
}

/// Builds the stack for `config`; its sessions are tracked in `sessions`.
pub fn build(config: &Config, sessions: Sessions) -> Result<App, BuildError> {
    let authorizer = match config.auth {
        AuthBackend::Controller => ControllerAuthorizer::new(ControllerSettings {
            url: config.controller_url.clone(),
            timeout: config.controller_timeout,
            forward_headers: config
                .controller_forward_headers
                .iter()
                // Validated with the rest of the config.
                .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
        })
        .map_err(BuildError::ControllerClient)?,
    };
    let stack = ServiceBuilder::new()
        .layer(OriginLayer::new(config.allowed_origins.clone()))
        .layer(SessionLimitLayer::new(config.max_sessions))
        .layer(
            TokenAuthLayer::new(authorizer)
                .token_param(&config.token_param)
                .allowed_commands(config.allowed_commands.clone()),
        )
        .service(ServeSubprocess::new(SessionSettings::from(config), sessions));
    Ok(Routes::new(&config.path, stack))
}
