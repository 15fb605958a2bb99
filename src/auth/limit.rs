//! [`AuthLimitLayer`]: how often one address may try, and how many requests
//! may wait for the backend at once, so that no client can keep the backend
//! (and the session places those requests hold) from others.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::connection::IpKey;
use crate::forwarded::Forwarded;
use crate::metrics::{Metrics, Refusal};
use crate::reply;

/// A rate: `N/s` or `N/min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many.
    pub count: NonZeroU32,
    /// Per what.
    pub per: Per,
}

/// The period of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// `/s`
    Second,
    /// `/min`
    Minute,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a rate such as `20/s` or `300/min`");
        let (count, per) = s.split_once('/').ok_or_else(bad)?;
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Per::Second,
            "m" | "min" | "minute" => Per::Minute,
            _ => return Err(bad()),
        };
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.per {
            Per::Second => "s",
            Per::Minute => "min",
        };
        write!(f, "{}/{per}", self.count)
    }
}

impl Rate {
    /// The governor quota: this rate, with `burst` attempts at once (twice
    /// the rate when not given).
    fn quota(self, burst: Option<NonZeroU32>) -> Quota {
        let quota = match self.per {
            Per::Second => Quota::per_second(self.count),
            Per::Minute => Quota::per_minute(self.count),
        };
        quota.allow_burst(burst.unwrap_or(self.count.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"))))
    }
}

/// The limits of [`AuthLimitLayer`]; see the config keys of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    /// Requests waiting for the backend at once, from everyone.
    pub max_pending: usize,
    /// Requests waiting for the backend at once, from one address.
    pub max_pending_per_ip: usize,
    /// Upgrade attempts per address, when limited.
    pub rate_per_ip: Option<Rate>,
    /// The burst allowed beyond the rate (twice the rate when `None`).
    pub burst_per_ip: Option<NonZeroU32>,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self { max_pending: 512, max_pending_per_ip: 32, rate_per_ip: None, burst_per_ip: None }
    }
}

/// Refuses a request before its token is looked at when its address tries
/// too often (429), when too many requests from its address (429) or from
/// everyone (503) already wait for the backend; each answer carries
/// `Retry-After`. Addresses are [`Forwarded::client`]s counted by
/// [`IpKey`]; a request with no address (a Unix socket with no forwarded
/// client) is only counted globally.
///
/// It sheds load rather than queueing it, so `poll_ready` only asks the
/// inner service.
#[derive(Debug, Clone)]
pub struct AuthLimitLayer {
    state: Arc<State>,
}

struct State {
    limits: AuthLimits,
    counts: Arc<Counts>,
    rate: Option<Arc<DefaultKeyedRateLimiter<IpKey>>>,
    calls: AtomicU64,
    metrics: Metrics,
}

/// Requests waiting for the backend now, in all and per address; shared by
/// a layer and those [`AuthLimitLayer::reconfigured`] from it.
#[derive(Debug, Default)]
struct Counts {
    pending: AtomicUsize,
    per_ip: Mutex<HashMap<IpKey, usize>>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// How often (in requests) the rate limiter forgets addresses that are back
/// within their quota, so its memory follows the addresses seen recently.
const FORGET_EVERY: u64 = 1024;

impl AuthLimitLayer {
    /// A layer enforcing `limits`, counting refusals in `metrics`.
    pub fn new(limits: AuthLimits, metrics: Metrics) -> Self {
        let rate = limits.rate_per_ip.map(|rate| Arc::new(RateLimiter::keyed(rate.quota(limits.burst_per_ip))));
        Self { state: Arc::new(State { limits, counts: Arc::default(), rate, calls: AtomicU64::new(0), metrics }) }
    }

    /// A layer enforcing `limits` over the same waiting requests as this
    /// one (a reload ends none of them), and the same attempts per address
    /// while the rate and burst stay the same.
    pub fn reconfigured(&self, limits: AuthLimits) -> Self {
        let old = &self.state;
        let same_rate = (limits.rate_per_ip, limits.burst_per_ip) == (old.limits.rate_per_ip, old.limits.burst_per_ip);
        let rate = if same_rate {
            old.rate.clone()
        } else {
            limits.rate_per_ip.map(|rate| Arc::new(RateLimiter::keyed(rate.quota(limits.burst_per_ip))))
        };
        let counts = old.counts.clone();
        Self { state: Arc::new(State { limits, counts, rate, calls: AtomicU64::new(0), metrics: old.metrics.clone() }) }
    }
}

impl<S> Layer<S> for AuthLimitLayer {
    type Service = AuthLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthLimit { inner, state: self.state.clone() }
    }
}

/// The service made by [`AuthLimitLayer`].
#[derive(Debug, Clone)]
pub struct AuthLimit<S> {
    inner: S,
    state: Arc<State>,
}

/// A place among the requests waiting for the backend; freed when dropped.
struct Pending {
    counts: Arc<Counts>,
    per_ip: Option<IpKey>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(key) = &self.per_ip {
            let mut counts = self.counts.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = counts.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(key);
                }
            }
        }
        self.counts.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse<B: From<Bytes>>(status: StatusCode, message: &str, retry_after: Duration) -> Response<B> {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    reply::with_headers(status, message, headers)
}

impl State {
    /// A place for a request from `key`, or the answer refusing it.
    fn admit<B: From<Bytes>>(self: &Arc<Self>, key: Option<IpKey>) -> Result<Pending, Response<B>> {
        if let (Some(rate), Some(key)) = (&self.rate, key) {
            if self.calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(FORGET_EVERY) {
                rate.retain_recent();
                rate.shrink_to_fit();
            }
            if let Err(not_until) = rate.check_key(&key) {
                self.metrics.refused(Refusal::rate);
                tracing::info!(status = 429, client = %key, "too many attempts from this address");
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(refuse(StatusCode::TOO_MANY_REQUESTS, "too many attempts", wait));
            }
        }
        let max = self.limits.max_pending;
        let taken =
            self.counts.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        if taken.is_err() {
            self.metrics.refused(Refusal::pending);
            tracing::warn!(status = 503, "too many requests waiting for the backend");
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "too many pending requests", Duration::from_secs(1)));
        }
        // From here on, dropping `pending` gives the places back.
        let mut pending = Pending { counts: self.counts.clone(), per_ip: None };
        if let Some(key) = key {
            let mut counts = self.counts.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(key).or_insert(0);
            if *count >= self.limits.max_pending_per_ip {
                if *count == 0 {
                    counts.remove(&key);
                }
                drop(counts);
                self.metrics.refused(Refusal::pending_per_ip);
                tracing::info!(status = 429, client = %key, "too many requests from this address waiting");
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many pending requests from this address",
                    Duration::from_secs(1),
                ));
            }
            *count += 1;
            pending.per_ip = Some(key);
        }
        Ok(pending)
    }
}

/// The future of [`AuthLimit`].
pub type AuthLimitFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for AuthLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuthLimitFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let key = Forwarded::of_request(&parts).client.map(IpKey::of);
        let pending = match self.state.admit(key) {
            Ok(pending) => pending,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refusal))),
        };
        let future = self.inner.call(Request::from_parts(parts, body));
        Box::pin(async move {
            let response = future.await;
            drop(pending);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use super::*;
    use crate::connection::PeerAddr;
    use crate::reply::Body;

    #[test]
    fn rates_read_per_second_or_minute() {
        assert_eq!("20/s".parse::<Rate>().unwrap().to_string(), "20/s");
        assert_eq!("300/min".parse::<Rate>().unwrap().per, Per::Minute);
        for bad in ["20", "0/s", "x/s", "5/h"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    fn from(ip: &str) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(PeerAddr(Some(SocketAddr::new(ip.parse().unwrap(), 1))));
        request
    }

    #[tokio::test]
    async fn attempts_beyond_the_rate_get_429_with_retry_after_per_address() {
        let limits = AuthLimits {
            rate_per_ip: Some("1/min".parse().unwrap()),
            burst_per_ip: NonZeroU32::new(2),
            ..AuthLimits::default()
        };
        let metrics = Metrics::new();
        let service = AuthLimitLayer::new(limits, metrics.clone())
            .layer(tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::default())) }));
        for _ in 0..2 {
            assert_eq!(service.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::OK);
        }
        let refused = service.clone().oneshot(from("192.0.2.1")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = refused.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        // Another address has its own allowance.
        assert_eq!(service.clone().oneshot(from("192.0.2.2")).await.unwrap().status(), StatusCode::OK);
        assert!(metrics.render().contains(r#"ws_subprocess_refused_total{reason="rate"} 1"#));
    }

    #[tokio::test]
    async fn waiting_requests_are_capped_per_address_then_globally() {
        let limits = AuthLimits { max_pending: 3, max_pending_per_ip: 2, ..AuthLimits::default() };
        let (release, released) = tokio::sync::watch::channel(false);
        let service = AuthLimitLayer::new(limits, Metrics::new()).layer(tower::service_fn(move |_: Request<()>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Infallible>(Response::new(Body::default()))
            }
        }));
        let mut waiting = Vec::new();
        for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.2"] {
            let (tx, rx) = oneshot::channel();
            let call = service.clone().oneshot(from(ip));
            tokio::spawn(async move { tx.send(call.await.unwrap().status()) });
            waiting.push(rx);
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let status = |ip| {
            let service = service.clone();
            async move { service.oneshot(from(ip)).await.unwrap().status() }
        };
        assert_eq!(status("192.0.2.3").await, StatusCode::SERVICE_UNAVAILABLE);
        release.send(true).unwrap();
        for rx in waiting {
            assert_eq!(rx.await.unwrap(), StatusCode::OK);
        }
        // Places are free again.
        assert_eq!(status("192.0.2.1").await, StatusCode::OK);
        let limits = AuthLimits { max_pending: 10, max_pending_per_ip: 1, ..AuthLimits::default() };
        let (_hold, held) = tokio::sync::watch::channel(false);
        let service = AuthLimitLayer::new(limits, Metrics::new()).layer(tower::service_fn(move |_: Request<()>| {
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|r| *r).await;
                Ok::<_, Infallible>(Response::new(Body::default()))
            }
        }));
        let first = tokio::spawn(service.clone().oneshot(from("192.0.2.1")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = service.clone().oneshot(from("192.0.2.1")).await.unwrap();
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(second.headers()[RETRY_AFTER], "1");
        first.abort();
    }
}
