//! [`Routes`]: the endpoint, the health check, static files, and 404 for
//! the rest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Service, ServiceExt};
use tower_http::services::ServeDir;
use tower_http::services::fs::ServeFileSystemResponseBody;

use crate::reply;

/// The response body of [`Routes`]: the inner service's, or a static file.
pub type RoutesBody<B> = http_body_util::Either<B, ServeFileSystemResponseBody>;

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
pub type RoutesFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for Routes<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<RoutesBody<ResBody>>;
    type Error = S::Error;
    type Future = RoutesFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path == &*self.path {
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move { Ok(inner.oneshot(request).await?.map(RoutesBody::Left)) });
        }
        let answer = |status, text| {
            let response: Response<ResBody> = reply::plain(status, text);
            Box::pin(std::future::ready(Ok(response.map(RoutesBody::Left)))) as Self::Future
        };
        if path == "/healthz" {
            return answer(StatusCode::OK, "ok");
        }
        match self.files.clone() {
            Some(files) => Box::pin(async move {
                let response = match files.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok(response.map(RoutesBody::Right))
            }),
            None => answer(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;
    use crate::reply::Body;

    fn routes() -> Routes<impl Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone>
    {
        Routes::new("/ws", tower::service_fn(|_: Request<()>| async { Ok(reply::plain(StatusCode::OK, "endpoint")) }))
    }

    async fn get(
        routes: impl Service<Request<()>, Response = Response<RoutesBody<Body>>, Error = Infallible>,
        uri: &str,
    ) -> (StatusCode, String) {
        let response = routes.oneshot(Request::get(uri).body(()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_endpoint_path_reaches_the_inner_service_whatever_the_query() {
        assert_eq!(get(routes(), "/ws?token=x").await, (StatusCode::OK, "endpoint\n".into()));
        assert_eq!(get(routes(), "/ws/").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn healthz_is_ok_and_the_rest_is_404() {
        assert_eq!(get(routes(), "/healthz").await, (StatusCode::OK, "ok\n".into()));
        assert_eq!(get(routes(), "/").await, (StatusCode::NOT_FOUND, "not found\n".into()));
    }

    #[tokio::test]
    async fn static_files_are_served_beside_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<p>hi</p>").unwrap();
        let routes = routes().static_dir(dir.path());
        assert_eq!(get(routes.clone(), "/").await, (StatusCode::OK, "<p>hi</p>".into()));
        assert_eq!(get(routes.clone(), "/missing.html").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(routes, "/ws").await.1, "endpoint\n");
    }
}
