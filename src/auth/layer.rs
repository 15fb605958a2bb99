//! [`TokenAuthLayer`] and its service.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{AuthError, Authorizer, Policy, header_token, token_hash};
use crate::connection::ClientCert;
use crate::kubernetes::KubeExec;
use crate::metrics::{AuthResult, Metrics};
use crate::query::SessionQuery;
use crate::reply;
use crate::report::Report;
use crate::websocket::WebSocketUpgrade;

/// Puts an [`Authorizer`] in front of a service.
///
/// For each request, in this order: parse the query string once into a
/// [`SessionQuery`] (a malformed `since`: 400), find the token (none: 400,
/// unless the connection's verified client certificate may stand for one,
/// see [`Authorizer::identifies_by_certificate`]), check the
/// WebSocket handshake (bad: 400/426, the backend is not asked), ask the
/// backend (see [`AuthError::status`]), apply the [`Policy`] (403). An
/// allowed request reaches the inner service with the
/// [`CommandSpec`](crate::spec::CommandSpec), the [`WebSocketUpgrade`] and the
/// [`SessionQuery`] (its token taken out) in its extensions.
#[derive(Debug)]
pub struct TokenAuthLayer<A> {
    authorizer: Arc<A>,
    token_param: Arc<str>,
    policy: Policy,
    metrics: Metrics,
}

impl<A> Clone for TokenAuthLayer<A> {
    fn clone(&self) -> Self {
        Self {
            authorizer: self.authorizer.clone(),
            token_param: self.token_param.clone(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<A: Authorizer> TokenAuthLayer<A> {
    /// A layer asking `authorizer`, reading the token from the `token` query
    /// parameter (or the headers), allowing any command the backend names.
    pub fn new(authorizer: A) -> Self {
        Self {
            authorizer: Arc::new(authorizer),
            token_param: "token".into(),
            policy: Policy::default(),
            metrics: Metrics::default(),
        }
    }

    /// Reads the token from the query parameter `name`.
    pub fn token_param(mut self, name: &str) -> Self {
        self.token_param = name.into();
        self
    }

    /// Only these absolute paths may run, whatever the backend says; an
    /// empty list allows any. (A shorthand for a [`Policy`] with commands
    /// only.)
    pub fn allowed_commands(mut self, commands: impl IntoIterator<Item = PathBuf>) -> Self {
        self.policy = self.policy.commands(commands);
        self
    }

    /// What a spec may ask for, whatever the backend says.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Counts token checks and their latency in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
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
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, A, B, ResBody> Service<Request<B>> for TokenAuth<S, A>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    A: Authorizer,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResBody>, S::Error>;

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
            let mut query = match SessionQuery::parse(&parts.uri, &layer.token_param) {
                Ok(query) => query,
                Err(err) => {
                    tracing::info!(status = 400, cause = %err, "bad query string");
                    return Ok(reply::plain(StatusCode::BAD_REQUEST, &err.to_string()));
                }
            };
            let certified =
                layer.authorizer.identifies_by_certificate() && parts.extensions.get::<ClientCert>().is_some();
            let Some(token) =
                query.token.take().or_else(|| header_token(&parts)).or_else(|| certified.then(String::new))
            else {
                // kubectl reads an API server's 401 as "You must be logged in".
                if parts.extensions.get::<KubeExec>().is_some() {
                    tracing::info!(status = 401, "no token (kubectl)");
                    return Ok(reply::plain(StatusCode::UNAUTHORIZED, "Unauthorized"));
                }
                tracing::info!(status = 400, "no token");
                return Ok(reply::plain(StatusCode::BAD_REQUEST, "missing token"));
            };
            let spdy = parts.extensions.get::<KubeExec>().is_some_and(|exec| exec.spdy);
            let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts) {
                Ok(upgrade) => Some(upgrade),
                // Asked, so its refusal is the same as over WebSocket.
                Err(_) if spdy => None,
                Err(rejection) => {
                    tracing::info!(status = rejection.status().as_u16(), cause = %rejection, "not a WebSocket upgrade");
                    return Ok(rejection.into_response());
                }
            };
            let token_hash = if token.is_empty() { "none (client certificate)".into() } else { token_hash(&token) };
            let started = Instant::now();
            let result = layer.authorizer.authorize(&token, &parts).await.and_then(|spec| {
                layer.policy.check(&spec)?;
                session_matches(&query, parts.extensions.get::<KubeExec>(), &spec)?;
                Ok(spec)
            });
            drop(token);
            let latency = started.elapsed();
            let latency_ms = latency.as_millis() as u64;
            let outcome = result.as_ref().map_or_else(AuthError::metric, |_| AuthResult::allowed);
            layer.metrics.auth(layer.authorizer.backend_name(), outcome, latency);
            match result {
                Ok(spec) => {
                    tracing::debug!(token = %token_hash, latency_ms, command = %spec.command.display(), "token allowed");
                    parts.extensions.insert(spec);
                    // None for kubectl's SPDY, which the session service
                    // refuses where it would have upgraded.
                    if let Some(upgrade) = upgrade {
                        parts.extensions.insert(upgrade);
                    }
                    parts.extensions.insert(query);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(err) => {
                    tracing::warn!(token = %token_hash, latency_ms, status = err.status().as_u16(), cause = %Report(&err), "token refused");
                    Ok(err.into_response())
                }
            }
        })
    }
}

/// A client repeats the id of the session it starts or attaches to as
/// `?session=<id>` (so a balancer can route on it); when it does, the spec
/// must name the same session.
fn session_matches(
    query: &SessionQuery,
    kube: Option<&KubeExec>,
    spec: &crate::spec::CommandSpec,
) -> Result<(), AuthError> {
    // `kubectl attach` joins the session its pod names.
    let attach = kube.filter(|exec| exec.attach).map(|exec| &exec.pod);
    let Some(asked) = query.session.as_ref().or(attach) else { return Ok(()) };
    let named = spec.attach.as_deref().or_else(|| spec.session.as_ref().and_then(|s| s.id.as_deref()));
    if named == Some(asked.as_str()) { Ok(()) } else { Err(AuthError::SessionMismatch) }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;
    use crate::reply::Body;
    use crate::spec::CommandSpec;

    /// Allows the token `good` to run `/bin/true` and `other` to run
    /// `/bin/false`; counts how often it is asked.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Authorizer for Arc<Counting> {
        async fn authorize(&self, token: &str, _: &http::request::Parts) -> Result<CommandSpec, AuthError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            match token {
                "good" => Ok(CommandSpec::new("/bin/true", Vec::<String>::new())),
                "other" => Ok(CommandSpec::new("/bin/false", Vec::<String>::new())),
                _ => Err(AuthError::Denied("unknown token".into())),
            }
        }
    }

    /// An inner service that says what reached it.
    fn inner() -> impl Service<
        Request<()>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|request: Request<()>| async move {
            let spec = request.extensions().get::<CommandSpec>().map(|s| s.command.display().to_string());
            let upgrade = request.extensions().get::<WebSocketUpgrade>().is_some();
            Ok(reply::plain(StatusCode::OK, &format!("{spec:?} {upgrade}")))
        })
    }

    fn layer(backend: &Arc<Counting>) -> TokenAuthLayer<Arc<Counting>> {
        TokenAuthLayer::new(backend.clone()).allowed_commands(["/bin/true".into()])
    }

    fn upgrade_request(uri: &str) -> Request<()> {
        Request::get(uri)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn no_token_is_400_and_the_backend_is_not_asked() {
        let backend = Arc::default();
        let response = layer(&backend).layer(inner()).oneshot(upgrade_request("/ws")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(backend.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_bad_handshake_is_refused_before_the_backend_is_asked() {
        let backend = Arc::default();
        let plain_get = Request::get("/ws?token=good").body(()).unwrap();
        let response = layer(&backend).layer(inner()).oneshot(plain_get).await.unwrap();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(backend.0.load(Ordering::Relaxed), 0);
    }

    /// Sends an upgrade request with `token` through hyper (which provides
    /// the upgrade handle) to the layer; returns the status and body.
    async fn through_hyper(backend: &Arc<Counting>, metrics: &Metrics, token: &str) -> (u16, String) {
        let service = layer(backend).metrics(metrics.clone()).layer(tower::service_fn(
            |request: Request<hyper::body::Incoming>| {
                let (parts, _) = request.into_parts();
                inner().oneshot(Request::from_parts(parts, ()))
            },
        ));
        let (mut client, server) = tokio::io::duplex(4096);
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), hyper_util::service::TowerToHyperService::new(service))
                .with_upgrades(),
        );
        let head = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n"
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
        (status, answer.split_once("\r\n\r\n").unwrap().1.to_string())
    }

    #[tokio::test]
    async fn allowed_requests_carry_spec_and_upgrade_and_denials_are_answered_here() {
        let backend = Arc::default();
        let metrics = Metrics::new();
        assert_eq!(through_hyper(&backend, &metrics, "good").await, (200, "Some(\"/bin/true\") true\n".into()));
        assert_eq!(through_hyper(&backend, &metrics, "bad").await, (403, "forbidden\n".into()));
        assert_eq!(through_hyper(&backend, &metrics, "other").await, (403, "command not allowed\n".into()));
        assert_eq!(backend.0.load(Ordering::Relaxed), 3);
        let text = metrics.render();
        assert!(text.contains(r#"ws_subprocess_auth_results_total{backend="custom",result="allowed"} 1"#), "{text}");
        assert!(text.contains(r#"ws_subprocess_auth_results_total{backend="custom",result="denied"} 2"#), "{text}");
    }
}
