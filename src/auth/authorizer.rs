//! The [`Authorizer`] trait a backend implements, and [`AuthError`], its
//! ways of saying no.

use std::error::Error;
use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::metrics::AuthResult;
use crate::reply;
use crate::spec::{CommandSpec, SpecError};

/// Any error, boxed: the cause a backend gives for its answer.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Decides whether a token may run something, and what.
///
/// Implementations must be cheap to share: the layer holds one in an `Arc`.
pub trait Authorizer: Send + Sync + 'static {
    /// The backend's name in metrics, e.g. `controller`.
    fn backend_name(&self) -> &'static str {
        "custom"
    }

    /// Whether a verified client certificate may stand for a token: then a
    /// request that has a [`ClientCert`](crate::connection::ClientCert) but
    /// no token is asked about with an empty `token`.
    fn identifies_by_certificate(&self) -> bool {
        false
    }

    /// Checks `token`; `request` is the upgrade request it came with (its
    /// headers, and in its extensions the
    /// [`PeerAddr`](crate::connection::PeerAddr) when the server knows it
    /// and the [`ClientCert`](crate::connection::ClientCert) the
    /// connection presented). `token` is empty only when
    /// [`Authorizer::identifies_by_certificate`] allowed the certificate to
    /// stand for one.
    fn authorize(
        &self,
        token: &str,
        request: &http::request::Parts,
    ) -> impl Future<Output = Result<CommandSpec, AuthError>> + Send;
}

/// Why a token did not yield a command. Each variant is one answer to the
/// client; the cause inside is for the log only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The backend said no.
    #[error("denied")]
    Denied(#[source] BoxError),
    /// The command is not one this server allows (`allowed_commands`).
    #[error("command not allowed: {}", .0.display())]
    CommandNotAllowed(PathBuf),
    /// The spec names a user this server does not allow (`allowed_users`).
    #[error("user not allowed: {0}")]
    UserNotAllowed(String),
    /// The spec sets an environment variable this server does not allow
    /// (`allowed_env`).
    #[error("environment variable not allowed: {0}")]
    EnvNotAllowed(String),
    /// The backend could not be asked, or answered something unusable.
    #[error("backend failed")]
    BackendFailed(#[source] BoxError),
    /// The backend sent a command spec that cannot be run.
    #[error("backend sent an invalid command spec")]
    InvalidSpec(#[from] SpecError),
    /// The backend did not answer in time.
    #[error("backend timed out")]
    BackendTimeout,
    /// The request's `?session=` names another session than its spec.
    #[error("the session parameter does not match the spec")]
    SessionMismatch,
    /// A service the backend depends on (such as the replay store) is down;
    /// the token is refused, never allowed unchecked.
    #[error("backend unavailable")]
    Unavailable(#[source] BoxError),
}

impl AuthError {
    /// How this refusal is counted in metrics.
    pub fn metric(&self) -> AuthResult {
        match self {
            Self::Denied(_) | Self::CommandNotAllowed(_) | Self::UserNotAllowed(_) | Self::EnvNotAllowed(_) => {
                AuthResult::denied
            }
            Self::BackendFailed(_) | Self::InvalidSpec(_) => AuthResult::failed,
            Self::BackendTimeout => AuthResult::timeout,
            Self::SessionMismatch => AuthResult::denied,
            Self::Unavailable(_) => AuthResult::unavailable,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Denied(_) | Self::CommandNotAllowed(_) | Self::UserNotAllowed(_) | Self::EnvNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            Self::BackendFailed(_) | Self::InvalidSpec(_) => StatusCode::BAD_GATEWAY,
            Self::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::SessionMismatch => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer the client gets: the status and a short line that never
    /// carries the log detail.
    pub fn into_response<B: From<Bytes>>(&self) -> Response<B> {
        let message = match self {
            Self::Denied(_) => "forbidden",
            Self::CommandNotAllowed(_) => "command not allowed",
            Self::UserNotAllowed(_) => "user not allowed",
            Self::EnvNotAllowed(_) => "environment variable not allowed",
            Self::BackendFailed(_) | Self::InvalidSpec(_) => "authorization backend failed",
            Self::BackendTimeout => "authorization backend timed out",
            Self::SessionMismatch => "session does not match",
            Self::Unavailable(_) => "authorization backend unavailable",
        };
        reply::plain(self.status(), message)
    }
}
