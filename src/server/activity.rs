//! [`Activity`]: what one connection's requests are doing, so that a
//! connection nobody uses, or whose client takes nothing of a response, is
//! closed rather than held.
//!
//! A request counts from the call of the service until its response body is
//! done (or dropped). A connection is *idle* while no request is in flight,
//! and *stalled* while its responses are being sent but the client has taken
//! no frame of them (an HTTP/2 client can hold a zero flow-control window
//! and answer pings; an HTTP/1.1 client can stop reading). Either, for the
//! connection's timeout, ends it. A request still waiting for its response
//! (on the authorization backend, say) is neither: the services bound
//! their own waits.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// One connection's requests (shared by its service and its driver).
#[derive(Debug)]
pub(super) struct Activity {
    origin: Instant,
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// Responses whose bodies are being sent.
    responding: AtomicUsize,
    /// When something last happened (a request began or ended, a response
    /// began, a frame of one was taken), in ms after `origin`.
    last: AtomicU64,
    /// Told when a request begins or ends, or a response begins: the
    /// driver's deadline may change.
    changed: Notify,
}

impl Activity {
    /// A connection accepted now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            responding: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    /// Whether any request has begun.
    pub(super) fn any_request(&self) -> bool {
        self.started.load(Ordering::Acquire) > 0
    }

    /// Whether a request has been answered and none is in flight now.
    pub(super) fn idle_after_request(&self) -> bool {
        self.any_request() && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// When the connection is idle or stalled for `timeout` if nothing
    /// happens until then (before any request: `timeout` after the accept);
    /// `None` while a request waits for its response.
    pub(super) fn deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        let waiting = self.in_flight.load(Ordering::Acquire) > self.responding.load(Ordering::Acquire);
        if waiting {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last.load(Ordering::Acquire));
        Some(self.origin + last + timeout)
    }

    /// Waits until the deadline may have changed.
    pub(super) async fn changed(&self) {
        self.changed.notified().await
    }

    fn touch(&self) {
        self.last.store(self.origin.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// `service`, with each request counted (see the module's docs).
    pub(super) fn track<S, B>(
        self: &Arc<Self>,
        service: S,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<Tracked<B>>,
        Error = Infallible,
        Future = impl Future + Send + 'static,
    > + Clone
    + Send
    + 'static
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = bytes::Bytes> + Send + 'static,
    {
        let activity = self.clone();
        tower::service_fn(move |request: Request<Incoming>| {
            let in_flight = InFlight::begin(&activity);
            let call = service.clone().oneshot(request);
            async move {
                let response = call.await?;
                Ok(response.map(|body| Tracked::new(body, in_flight)))
            }
        })
    }
}

/// A request in flight, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        activity.changed.notify_one();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request in flight until it is done
/// (hyper drops it then) or dropped with its connection, and marks each
/// frame the client takes as progress.
pub(super) struct Tracked<B> {
    body: Pin<Box<B>>,
    in_flight: InFlight,
}

impl<B> Tracked<B> {
    fn new(body: B, in_flight: InFlight) -> Self {
        let activity = &in_flight.0;
        activity.responding.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        activity.changed.notify_one();
        Self { body: Box::pin(body), in_flight }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        // Before the request's own end (a field is dropped after this).
        self.in_flight.0.responding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        if polled.is_ready() {
            self.in_flight.0.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    // Kept, so that hyper still sends `Content-Length` when it is known.
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_requests_responses_and_frames() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let origin = activity.origin;
        // Before any request: from accept.
        assert_eq!(activity.deadline(timeout), Some(origin + timeout));
        assert!(!activity.any_request());
        tokio::time::advance(Duration::from_secs(3)).await;
        let request = InFlight::begin(&activity);
        assert!(activity.any_request());
        // Waiting for its response: no deadline.
        assert_eq!(activity.deadline(timeout), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        let mut body = Tracked::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")), request);
        // Responding: from the response, then from each frame taken.
        assert_eq!(activity.deadline(timeout), Some(origin + Duration::from_secs(33) + timeout));
        tokio::time::advance(Duration::from_secs(4)).await;
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(frame.is_some());
        assert_eq!(activity.deadline(timeout), Some(origin + Duration::from_secs(37) + timeout));
        // Done: idle from its end.
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(body);
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
        assert_eq!(activity.responding.load(Ordering::Acquire), 0);
        assert_eq!(activity.deadline(timeout), Some(origin + Duration::from_secs(38) + timeout));
    }
}
