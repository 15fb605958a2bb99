//! [`SessionLimitLayer`]: at most `max_sessions` sessions at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
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
pub struct SessionPermit(#[allow(dead_code)] Arc<Place>);

/// One taken place; gives it back when dropped.
#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers `503` with `Retry-After` when `max` sessions already run.
///
/// It stands before token checking, so a single-use token is not spent on a
/// request that cannot run. It sheds load rather than queueing it: a client
/// is told at once, so [`SessionLimit::poll_ready`] only asks the inner
/// service, and the place is taken in `call`.
///
/// [`SessionLimitLayer::resized`] makes a layer with another `max` that
/// counts the same sessions: a reload lowering the limit ends nobody, and
/// new sessions wait until the running ones are fewer than the new `max`.
#[derive(Debug, Clone)]
pub struct SessionLimitLayer {
    taken: Arc<AtomicUsize>,
    max: usize,
    metrics: Metrics,
}

impl SessionLimitLayer {
    /// A limit of `max` concurrent sessions.
    pub fn new(max: usize) -> Self {
        Self { taken: Arc::default(), max, metrics: Metrics::default() }
    }

    /// A limit of `max` over the same sessions as this one.
    pub fn resized(&self, max: usize) -> Self {
        Self { taken: self.taken.clone(), max, metrics: self.metrics.clone() }
    }

    /// Counts refusals in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A place for a session that runs already (carried from the program
    /// before this one): taken whatever the limit, which it counts against
    /// from now on.
    pub fn take_carried(&self) -> SessionPermit {
        self.taken.fetch_add(1, Ordering::AcqRel);
        SessionPermit(Arc::new(Place(self.taken.clone())))
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

impl<S> Layer<S> for SessionLimitLayer {
    type Service = SessionLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionLimit { inner, limit: self.clone() }
    }
}

/// The service made by [`SessionLimitLayer`].
#[derive(Debug, Clone)]
pub struct SessionLimit<S> {
    inner: S,
    limit: SessionLimitLayer,
}

impl SessionLimitLayer {
    fn take(&self) -> Option<SessionPermit> {
        let max = self.max;
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| (taken < max).then_some(taken + 1))
            .ok()
            .map(|_| SessionPermit(Arc::new(Place(self.taken.clone()))))
    }
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
        match self.limit.take() {
            Some(permit) => {
                request.extensions_mut().insert(permit);
                Either::Left(self.inner.call(request))
            }
            None => {
                self.limit.metrics.refused(Refusal::sessions);
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

    #[tokio::test]
    async fn a_resized_limit_counts_the_same_sessions_and_ends_none() {
        let old = SessionLimitLayer::new(3);
        let held: Vec<_> = (0..3).map(|_| old.take().unwrap()).collect();
        let lower = old.resized(1);
        assert!(lower.take().is_none(), "three run: none may start under a limit of one");
        drop(held);
        let one = lower.take().unwrap();
        assert!(lower.take().is_none());
        assert_eq!((old.taken(), lower.taken()), (1, 1));
        let higher = lower.resized(2);
        assert!(higher.take().is_some());
        drop(one);
    }
}
