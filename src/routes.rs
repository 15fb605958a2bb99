//! [`Routes`]: the endpoint, the health check, static files, and 404 for
//! the rest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tower::{BoxError, Service, ServiceExt};
use tower_http::services::ServeDir;

use crate::reply::{self, Body};

/// The response body of [`Routes`]: any of its branches' bodies.
pub type RoutesBody = UnsyncBoxBody<Bytes, BoxError>;

/// Sends requests for `path` to the inner service, answers `/healthz` with
/// `200 ok`, serves files from a static directory when one is set, and
/// answers everything else with `404`. Only the path is compared; the query
/// string (which may hold a token) is never looked at here.
#[derive(Debug, Clone)]
pub struct Routes<S> {
    path: Arc<str>,
    inner: S,
    files: Option<ServeDir>,
}

impl<S> Routes<S> {
    /// Serves `inner` at `path`.
    pub fn new(path: &str, inner: S) -> Self {
        Self { path: path.into(), inner, files: None }
    }

    /// Also serves the files under `dir` (for example a terminal page) at
    /// every other path; `/` serves `index.html`. Paths that would leave
    /// `dir` are refused.
    pub fn static_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.files = Some(ServeDir::new(dir));
        self
    }
}

/// The future of [`Routes`].
pub type RoutesFuture<E> = Pin<Box<dyn Future<Output = Result<Response<RoutesBody>, E>> + Send>>;

fn boxed(response: Response<Body>) -> Response<RoutesBody> {
    response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

impl<S, B> Service<Request<B>> for Routes<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RoutesBody>;
    type Error = S::Error;
    type Future = RoutesFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path == &*self.path {
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { inner.oneshot(request).await.map(boxed) });
        }
        if path == "/healthz" {
            return Box::pin(std::future::ready(Ok(boxed(reply::plain(StatusCode::OK, "ok")))));
        }
        match self.files.clone() {
            Some(files) => Box::pin(async move {
                let response = match files.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
            }),
            None => Box::pin(std::future::ready(Ok(boxed(reply::plain(StatusCode::NOT_FOUND, "not found"))))),
        }
    }
}
