//! [`OriginLayer`]: only pages from allowed origins may open a session.
//!
//! Browsers send `Origin` with every WebSocket handshake, and a WebSocket is
//! not protected by the same-origin policy, so without this check any page
//! a user visits could open a session with that user's cookies.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::header::ORIGIN;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::reply::{self, Body};

/// Answers `403` unless the request's `Origin` equals one of the allowed
/// origins; with none configured, every request passes.
#[derive(Debug, Clone)]
pub struct OriginLayer {
    allowed: Arc<[String]>,
}

impl OriginLayer {
    /// Allows exactly `origins` (for example `https://app.example.com`); an
    /// empty list allows any request.
    pub fn new(origins: impl IntoIterator<Item = String>) -> Self {
        Self { allowed: origins.into_iter().collect() }
    }
}

impl<S> Layer<S> for OriginLayer {
    type Service = OriginCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginCheck { inner, allowed: self.allowed.clone() }
    }
}

/// The service made by [`OriginLayer`].
#[derive(Debug, Clone)]
pub struct OriginCheck<S> {
    inner: S,
    allowed: Arc<[String]>,
}

impl<S, B> Service<Request<B>> for OriginCheck<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
        if self.allowed.is_empty() || origin.is_some_and(|o| self.allowed.iter().any(|a| a == o)) {
            return Either::Left(self.inner.call(request));
        }
        tracing::warn!(status = 403, origin = origin.unwrap_or("(none)"), "origin not allowed");
        Either::Right(ready(Ok(reply::plain(StatusCode::FORBIDDEN, "origin not allowed"))))
    }
}
