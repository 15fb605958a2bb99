//! [`SessionLimitLayer`]: at most `max_sessions` sessions at once.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::metrics::{Metrics, Refusal};
use crate::reply;

/// A place among the live sessions, held for the whole session.
///
/// [`SessionLimit`] puts one in the request extensions;
/// [`ServeSubprocess`](super::ServeSubprocess) moves it into the session, so
/// the place is free again when the session ends, or at once when the request
/// fails before the upgrade.
#[derive(Debug, Clone)]
pub struct SessionPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Answers `503` with `Retry-After` when `max` sessions already run.
///
/// It stands before token checking, so a single-use token is not spent on a
/// request that cannot run. It sheds load rather than queueing it: a client
/// is told at once, so [`SessionLimit::poll_ready`] only asks the inner
/// service, and the place is taken in `call`.
#[derive(Debug, Clone)]
pub struct SessionLimitLayer {
    places: Arc<Semaphore>,
    metrics: Metrics,
}

impl SessionLimitLayer {
    /// A limit of `max` concurrent sessions.
    pub fn new(max: usize) -> Self {
        Self { places: Arc::new(Semaphore::new(max)), metrics: Metrics::default() }
    }

    /// Counts refusals in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl<S> Layer<S> for SessionLimitLayer {
    type Service = SessionLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionLimit { inner, places: self.places.clone(), metrics: self.metrics.clone() }
    }
}

/// The service made by [`SessionLimitLayer`].
#[derive(Debug, Clone)]
pub struct SessionLimit<S> {
    inner: S,
    places: Arc<Semaphore>,
    metrics: Metrics,
}

impl<S, B, ResBody> Service<Request<B>> for SessionLimit<S>
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.places.clone().try_acquire_owned() {
            Ok(permit) => {
                request.extensions_mut().insert(SessionPermit(Arc::new(permit)));
                Either::Left(self.inner.call(request))
            }
            Err(_) => {
                self.metrics.refused(Refusal::sessions);
                tracing::warn!(status = 503, "session limit reached");
                Either::Right(ready(Ok(reply::retry_later("too many sessions"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use http::header::RETRY_AFTER;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::reply::Body;

    #[tokio::test]
    async fn places_are_held_by_permits_and_freed_when_they_drop() {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keeper = kept.clone();
        let service = ServiceBuilder::new().layer(SessionLimitLayer::new(2)).service(tower::service_fn(
            move |mut request: Request<()>| {
                // The inner service keeps the permit, as a session does.
                keeper.lock().unwrap().push(request.extensions_mut().remove::<SessionPermit>().unwrap());
                async { Ok::<_, Infallible>(Response::new(Body::default())) }
            },
        ));
        let call = || service.clone().oneshot(Request::new(()));
        assert_eq!(call().await.unwrap().status(), StatusCode::OK);
        assert_eq!(call().await.unwrap().status(), StatusCode::OK);
        let full = call().await.unwrap();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()[RETRY_AFTER], "1");
        kept.lock().unwrap().pop();
        assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    }
}
