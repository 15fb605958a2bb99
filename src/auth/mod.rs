//! Token checking: a tower layer generic over the backend that decides.
//!
//! [`TokenAuthLayer`] finds the token of a request, makes sure the request is
//! a WebSocket upgrade worth asking about, and asks an [`Authorizer`]. An
//! allowed request reaches the inner service with its [`CommandSpec`] in the
//! request extensions; a denied one is answered right there, so the inner
//! service never sees it.
//!
//! A backend is anything that implements [`Authorizer`]:
//!
//! ```
//! use ws_subprocess::CommandSpec;
//! use ws_subprocess::auth::{AuthError, Authorizer};
//!
//! /// Lets exactly one token run `/bin/date`.
//! struct OneToken(String);
//!
//! impl Authorizer for OneToken {
//!     async fn authorize(&self, token: &str, _: &http::request::Parts) -> Result<CommandSpec, AuthError> {
//!         if token == self.0 {
//!             Ok(CommandSpec::new("/bin/date", Vec::<String>::new()))
//!         } else {
//!             Err(AuthError::Denied("unknown token".into()))
//!         }
//!     }
//! }
//! ```

mod controller;
#[cfg(feature = "jwt")]
pub mod jwt;
mod layer;
mod token;

use std::future::Future;

use http::StatusCode;

pub use controller::{ControllerAuthorizer, ControllerSettings, MAX_CONTROLLER_BODY, backend_client};
pub use layer::{TokenAuth, TokenAuthLayer};
pub use token::{offered_protocols, token_hash, token_of};

use crate::spec::{CommandSpec, SpecError};

/// Decides whether a token may run something, and what.
///
/// Implementations must be cheap to share: the layer holds one in an `Arc`.
pub trait Authorizer: Send + Sync + 'static {
    /// The backend's name in metrics, e.g. `controller`.
    fn backend_name(&self) -> &'static str {
        "custom"
    }

    /// Checks `token`; `request` is the upgrade request it came with (its
    /// headers, and [`PeerAddr`](crate::PeerAddr) in its extensions when the
    /// server knows it).
    fn authorize(
        &self,
        token: &str,
        request: &http::request::Parts,
    ) -> impl Future<Output = Result<CommandSpec, AuthError>> + Send;
}

/// Why a token did not yield a command. Each variant is one answer to the
/// client; the text inside is for the log only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The backend said no.
    #[error("denied: {0}")]
    Denied(String),
    /// The command is not one this server allows (`allowed_commands`).
    #[error("command not allowed: {0}")]
    CommandNotAllowed(String),
    /// The backend could not be asked, or answered something unusable.
    #[error("backend failed: {0}")]
    BackendFailed(String),
    /// The backend sent a command spec that cannot be run.
    #[error("backend sent an invalid command spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The backend did not answer in time.
    #[error("backend timed out")]
    BackendTimeout,
    /// A service the backend depends on (such as the replay store) is down;
    /// the token is refused, never allowed unchecked.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// How this refusal is counted in metrics.
    pub fn metric(&self) -> crate::metrics::AuthResult {
        use crate::metrics::AuthResult;
        match self {
            Self::Denied(_) | Self::CommandNotAllowed(_) => AuthResult::denied,
            Self::BackendFailed(_) | Self::InvalidSpec(_) => AuthResult::failed,
            Self::BackendTimeout => AuthResult::timeout,
            Self::Unavailable(_) => AuthResult::unavailable,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Denied(_) | Self::CommandNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::BackendFailed(_) | Self::InvalidSpec(_) => StatusCode::BAD_GATEWAY,
            Self::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The short body the client gets; it never carries the log detail.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Denied(_) => "forbidden",
            Self::CommandNotAllowed(_) => "command not allowed",
            Self::BackendFailed(_) | Self::InvalidSpec(_) => "authorization backend failed",
            Self::BackendTimeout => "authorization backend timed out",
            Self::Unavailable(_) => "authorization backend unavailable",
        }
    }
}
