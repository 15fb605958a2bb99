//! [`Live`]: a value that a reload may replace while it is in use.
//!
//! Whoever reads it takes the value current at that moment and keeps it for
//! as long as the work it started lasts: a connection accepted before a
//! reload finishes its TLS handshake with the old certificate, a request
//! finishes with the old stack, and the next ones see the new value. Reads
//! take no lock.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// A shared value, replaced whole by [`Live::replace`]; clones share it.
pub struct Live<T>(Arc<ArcSwap<T>>);

impl<T> Live<T> {
    /// A live value starting as `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The value now.
    pub fn get(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// Makes `value` the value for every later [`Live::get`].
    pub fn replace(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: fmt::Debug> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Live").field(&*self.0.load()).finish()
    }
}

impl<T: Default> Default for Live<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// A service that hands each request to the service a [`Live`] holds at
/// that moment, so a replaced stack serves the next request while requests
/// already in flight finish with the old one.
#[derive(Debug, Clone)]
pub struct LiveService<S>(Live<S>);

impl<S> LiveService<S> {
    /// Serves with whatever `live` holds.
    pub fn new(live: Live<S>) -> Self {
        Self(live)
    }
}

impl<S, R> tower::Service<R> for LiveService<S>
where
    S: tower::Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, R>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Readiness is the current service's, asked in the future.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        tower::util::Oneshot::new(S::clone(&self.0.get()), request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_what_it_took_and_later_readers_see_the_new_value() {
        let live = Live::new(1);
        let other = live.clone();
        let taken = live.get();
        other.replace(2);
        assert_eq!((*taken, *live.get()), (1, 2));
    }

    #[tokio::test]
    async fn a_live_service_serves_each_request_with_the_service_of_the_moment() {
        use tower::ServiceExt;
        let answer = |n: u32| tower::service_fn(move |()| async move { Ok::<_, std::convert::Infallible>(n) });
        let live = Live::new(answer(1));
        let service = LiveService::new(live.clone());
        assert_eq!(service.clone().oneshot(()).await.unwrap(), 1);
        live.replace(answer(2));
        assert_eq!(service.oneshot(()).await.unwrap(), 2);
    }
}
