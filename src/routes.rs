//! [`Routes`]: the endpoint, the health check, static files, the Kubernetes
//! API of `kubectl exec` when asked for, and 404 for the rest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use tower::{Service, ServiceExt};
use tower_http::services::ServeDir;
use tower_http::services::fs::ServeFileSystemResponseBody;

use crate::connection::ClientCert;
use crate::kubernetes::{self, KubeRoute};
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
    files: Option<StaticFiles>,
    /// The container names of the pods the Kubernetes API shows, when it
    /// is served.
    kubernetes: Option<Arc<[String]>>,
}

impl<S> Routes<S> {
    /// Serves `inner` at `path`.
    pub fn new(path: &str, inner: S) -> Self {
        Self { path: path.into(), inner, files: None, kubernetes: None }
    }

    /// Also answers the Kubernetes API requests of `kubectl exec`, `attach`
    /// and `cp` ([`crate::kubernetes`]): pods show one container per name
    /// in `containers`, and an exec or attach reaches the endpoint with a
    /// [`KubeExec`](crate::kubernetes::KubeExec) for the backend.
    pub fn kubernetes_api(mut self, containers: impl IntoIterator<Item = String>) -> Self {
        self.kubernetes = Some(containers.into_iter().collect());
        self
    }

    /// Also serves the files under `dir` (for example a terminal page) at
    /// every other path; `/` serves `index.html`. A file outside `dir`
    /// (symlinks are resolved), a dotfile or anything in a dot-directory,
    /// and a path with an empty segment are `404`.
    pub fn static_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.files = Some(StaticFiles::new(dir.as_ref()));
        self
    }
}

/// The files of a directory, as tower-http's `ServeDir` serves them, but
/// never a dotfile, a file that is not in the directory once symlinks are
/// resolved, or a path with an empty segment (whose directory redirect,
/// `//host/` → `Location: //host/`, would send a browser to another host).
#[derive(Debug, Clone)]
struct StaticFiles {
    root: Arc<Path>,
    serve: ServeDir,
}

impl StaticFiles {
    fn new(dir: &Path) -> Self {
        let root: Arc<Path> = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).into();
        Self { serve: ServeDir::new(&*root), root }
    }

    /// Whether `path` (of a request URI) may be served.
    async fn allows(&self, path: &str) -> bool {
        let Some(relative) = path.strip_prefix('/') else { return false };
        let Ok(relative) = percent_decode_str(relative).decode_utf8() else { return false };
        if relative.contains(['\\', '\0']) {
            return false;
        }
        let segments: Vec<&str> = relative.split('/').collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            // An empty segment is only the trailing slash of a directory.
            if segment.is_empty() && i != last || segment.starts_with('.') {
                return false;
            }
        }
        let root = self.root.clone();
        let candidate = root.join(relative.trim_end_matches('/'));
        tokio::task::spawn_blocking(move || resolves_inside(&root, &candidate)).await.unwrap_or(false)
    }
}

/// Whether `candidate`, with its symlinks resolved, is inside `root`, and
/// for a directory, so is the `index.html` it would be served as. A path
/// that does not exist is left to `ServeDir`, which answers 404.
fn resolves_inside(root: &Path, candidate: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(candidate) else { return true };
    if !real.starts_with(root) {
        return false;
    }
    if real.is_dir() {
        return std::fs::canonicalize(real.join("index.html")).map_or(true, |index| index.starts_with(root));
    }
    true
}

/// Whether `request` carries credentials: a bearer token or a verified
/// client certificate (what the API server asks before it shows a pod).
fn has_credentials<B>(request: &Request<B>) -> bool {
    crate::auth::bearer_token(request.headers()).is_some() || request.extensions().get::<ClientCert>().is_some()
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let ready = |response: Response<ResBody>| {
            Box::pin(std::future::ready(Ok(response.map(RoutesBody::Left)))) as Self::Future
        };
        // kubectl's exec and attach reach the endpoint below; the rest of
        // the API is answered here.
        let mut kubectl = false;
        if let Some(containers) = &self.kubernetes
            && let Some(route) = kubernetes::route(&request)
        {
            match route {
                KubeRoute::Discovery(document) => return ready(kubernetes::json_response(StatusCode::OK, &document)),
                KubeRoute::Pod { namespace, pod } => {
                    return ready(if has_credentials(&request) {
                        kubernetes::json_response(StatusCode::OK, &kubernetes::pod(&namespace, &pod, containers))
                    } else {
                        kubernetes::status(StatusCode::UNAUTHORIZED, "Unauthorized")
                    });
                }
                KubeRoute::NotFound => {
                    let message = "the server could not find the requested resource";
                    return ready(kubernetes::status(StatusCode::NOT_FOUND, message));
                }
                KubeRoute::Exec(mut exec) => {
                    // The pod's containers are the configured ones, the
                    // first being the default, as for an API server.
                    match &exec.container {
                        Some(name) if !containers.contains(name) => {
                            let message = format!("container {name} is not valid for pod {}", exec.pod);
                            return ready(kubernetes::status(StatusCode::BAD_REQUEST, &message));
                        }
                        Some(_) => {}
                        None => exec.container = containers.first().cloned(),
                    }
                    // To the endpoint, with kubectl's query (no token is in
                    // it: kubectl sends a header) and what it asked for.
                    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
                    match format!("{}{query}", self.path).parse() {
                        Ok(uri) => *request.uri_mut() = uri,
                        Err(_) => return ready(kubernetes::status(StatusCode::BAD_REQUEST, "malformed query")),
                    }
                    request.extensions_mut().insert(exec);
                    kubectl = true;
                }
            }
        }
        let path = request.uri().path();
        if path == &*self.path {
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(async move {
                let response = inner.oneshot(request).await?;
                // kubectl reads refusals as Kubernetes `Status` objects.
                let response = if kubectl { kubernetes::as_status(response) } else { response };
                Ok(response.map(RoutesBody::Left))
            });
        }
        let answer = |status, text| ready(reply::plain(status, text));
        if path == "/healthz" {
            return answer(StatusCode::OK, "ok");
        }
        match self.files.clone() {
            Some(files) => Box::pin(async move {
                if !files.allows(request.uri().path()).await {
                    let response: Response<ResBody> = reply::plain(StatusCode::NOT_FOUND, "not found");
                    return Ok(response.map(RoutesBody::Left));
                }
                let response = match files.serve.oneshot(request).await {
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

    #[tokio::test]
    async fn static_files_never_leave_the_directory_or_show_dotfiles() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "TOKEN=x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/page.html"), "page").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub/page.html"), dir.path().join("alias.html")).unwrap();
        let routes = routes().static_dir(dir.path());
        for path in ["/.env", "/%2eenv", "/out/secret", "/leak.txt", "//sub", "/%2F%2Fsub", "/sub//page.html", "/\\sub"]
        {
            assert_eq!(get(routes.clone(), path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(get(routes.clone(), "/sub/page.html").await, (StatusCode::OK, "page".into()));
        // A symlink that stays inside is fine.
        assert_eq!(get(routes.clone(), "/alias.html").await, (StatusCode::OK, "page".into()));
        // A directory still redirects to its slash, on this host.
        let response = routes.oneshot(Request::get("/sub").body(()).unwrap()).await.unwrap();
        assert_eq!(response.headers()["location"], "/sub/");
    }
}
