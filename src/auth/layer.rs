//! [`TokenAuthLayer`] and its service.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{AuthError, Authorizer, token_hash, token_of};
use crate::reply::{self, Body};
use crate::session::Handshake;

/// Puts an [`Authorizer`] in front of a service.
///
/// For each request, in this order: find the token (none: 400), check the
/// WebSocket handshake (bad: 400/426, the backend is not asked), ask the
/// backend (see [`AuthError::status`]), apply `allowed_commands` (403). An
/// allowed request reaches the inner service with the
/// [`CommandSpec`](crate::CommandSpec) and the
/// [`Handshake`] in its extensions.
#[derive(Debug)]
pub struct TokenAuthLayer<A> {
    authorizer: Arc<A>,
    token_param: Arc<str>,
    allowed_commands: Arc<[PathBuf]>,
}

impl<A> Clone for TokenAuthLayer<A> {
    fn clone(&self) -> Self {
        Self {
            authorizer: self.authorizer.clone(),
            token_param: self.token_param.clone(),
            allowed_commands: self.allowed_commands.clone(),
        }
    }
}

impl<A: Authorizer> TokenAuthLayer<A> {
    /// A layer asking `authorizer`, reading the token from the `token` query
    /// parameter (or the headers), allowing any command the backend names.
    pub fn new(authorizer: A) -> Self {
        Self { authorizer: Arc::new(authorizer), token_param: "token".into(), allowed_commands: Arc::new([]) }
    }

    /// Reads the token from the query parameter `name`.
    pub fn token_param(mut self, name: &str) -> Self {
        self.token_param = name.into();
        self
    }

    /// Only these absolute paths may run, whatever the backend says; an
    /// empty list allows any.
    pub fn allowed_commands(mut self, commands: impl IntoIterator<Item = PathBuf>) -> Self {
        self.allowed_commands = commands.into_iter().collect();
        self
    }

    fn allows(&self, command: &Path) -> bool {
        self.allowed_commands.is_empty() || self.allowed_commands.iter().any(|c| c == command)
    }
}

impl<S, A> Layer<S> for TokenAuthLayer<A> {
    type Service = TokenAuth<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenAuth { inner, layer: self.clone() }
    }
}

/// The service made by [`TokenAuthLayer`].
#[derive(Debug)]
pub struct TokenAuth<S, A> {
    inner: S,
    layer: TokenAuthLayer<A>,
}

impl<S: Clone, A> Clone for TokenAuth<S, A> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

/// The future of [`TokenAuth`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, A, B> Service<Request<B>> for TokenAuth<S, A>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    A: Authorizer,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was polled ready goes into the future; the clone
        // left behind may not be ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let Some(token) = token_of(&parts, &layer.token_param) else {
                tracing::info!(status = 400, "no token");
                return Ok(reply::plain(StatusCode::BAD_REQUEST, "missing token"));
            };
            let handshake = match Handshake::validate(&parts) {
                Ok(handshake) => handshake,
                Err(rejection) => {
                    tracing::info!(status = rejection.status().as_u16(), cause = %rejection, "not a WebSocket upgrade");
                    return Ok(reply::with_headers(
                        rejection.status(),
                        &rejection.to_string(),
                        rejection.response_headers(),
                    ));
                }
            };
            let token_hash = token_hash(&token);
            let started = Instant::now();
            let result = layer.authorizer.authorize(&token, &parts).await.and_then(|spec| {
                if layer.allows(&spec.command) {
                    Ok(spec)
                } else {
                    Err(AuthError::CommandNotAllowed(spec.command.display().to_string()))
                }
            });
            drop(token);
            let latency = started.elapsed();
            let latency_ms = latency.as_millis() as u64;
            let outcome = result.as_ref().map_or_else(AuthError::metric, |_| crate::metrics::AuthResult::allowed);
            crate::metrics::global().auth(layer.authorizer.backend_name(), outcome, latency);
            match result {
                Ok(spec) => {
                    tracing::debug!(token = %token_hash, latency_ms, command = %spec.command.display(), "token allowed");
                    parts.extensions.insert(spec);
                    parts.extensions.insert(handshake);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(err) => {
                    tracing::warn!(token = %token_hash, latency_ms, status = err.status().as_u16(), cause = %err, "token refused");
                    Ok(reply::plain(err.status(), err.public_message()))
                }
            }
        })
    }
}
