//! [`Routes`]: the endpoint, the health check, and 404 for the rest.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response, StatusCode};
use tower::Service;

use crate::reply::{self, Body};

/// Sends requests for `path` to the inner service, answers `/healthz` with
/// `200 ok`, and everything else with `404`. Only the path is compared; the
/// query string (which may hold a token) is never looked at here.
#[derive(Debug, Clone)]
pub struct Routes<S> {
    path: Arc<str>,
    inner: S,
}

impl<S> Routes<S> {
    /// Serves `inner` at `path`.
    pub fn new(path: &str, inner: S) -> Self {
        Self { path: path.into(), inner }
    }
}

/// The future of [`Routes`].
pub type RoutesFuture<F, E> = Either<F, Ready<Result<Response<Body>, E>>>;

impl<S, B> Service<Request<B>> for Routes<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RoutesFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path == &*self.path {
            Either::Left(self.inner.call(request))
        } else if path == "/healthz" {
            Either::Right(ready(Ok(reply::plain(StatusCode::OK, "ok"))))
        } else {
            Either::Right(ready(Ok(reply::plain(StatusCode::NOT_FOUND, "not found"))))
        }
    }
}
