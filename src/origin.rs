//! [`OriginLayer`]: only pages from allowed origins may open a session.
//!
//! Browsers send `Origin` with every WebSocket handshake, and a WebSocket is
//! not protected by the same-origin policy, so without this check any page
//! a user visits could open a session with that user's cookies.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::header::ORIGIN;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::reply;

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

impl<S, B, ResBody> Service<Request<B>> for OriginCheck<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<ResBody>, S::Error>>>;

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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;
    use crate::reply::Body;

    async fn status(layer: &OriginLayer, origin: Option<&str>) -> StatusCode {
        let inner = tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::default())) });
        let mut request = Request::builder();
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        layer.layer(inner).oneshot(request.body(()).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn only_listed_origins_pass_when_a_list_is_set() {
        let layer = OriginLayer::new(["https://app.example".to_string()]);
        assert_eq!(status(&layer, Some("https://app.example")).await, StatusCode::OK);
        assert_eq!(status(&layer, Some("https://evil.example")).await, StatusCode::FORBIDDEN);
        assert_eq!(status(&layer, Some("https://app.example.evil")).await, StatusCode::FORBIDDEN);
        assert_eq!(status(&layer, None).await, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn an_empty_list_lets_everything_pass() {
        let layer = OriginLayer::new([]);
        assert_eq!(status(&layer, Some("https://evil.example")).await, StatusCode::OK);
        assert_eq!(status(&layer, None).await, StatusCode::OK);
    }
}
