//! Prometheus metrics (SPEC §6): sessions, token checks, bytes and process
//! exits, served in the text format on `metrics_listen`.
//!
//! The metrics are process-wide, like the process table they describe;
//! [`global`] returns them and [`service`] serves them.
//!
//! ```
//! use ws_subprocess::metrics;
//!
//! let session = metrics::global().session_started();
//! drop(session);
//! assert!(metrics::render().contains("ws_subprocess_sessions_total"));
//! ```

use std::convert::Infallible;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::future::{Ready, ready};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reply::{self, Body};

/// How a token check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum AuthResult {
    allowed,
    denied,
    failed,
    timeout,
    unavailable,
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Direction {
    /// Client to process.
    r#in,
    /// Process to client.
    out,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum ExitKind {
    /// Exit status 0.
    success,
    /// A non-zero exit status.
    failure,
    /// Killed by a signal (including the server's own, after a client left).
    signal,
    /// Never reaped (the server stopped first).
    unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthLabels {
    backend: &'static str,
    result: AuthResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ExitLabels {
    kind: ExitKind,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_active: Gauge,
    sessions_total: Counter,
    auth_results: Family<AuthLabels, Counter>,
    auth_latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    bytes: Family<DirectionLabels, Counter>,
    exits: Family<ExitLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ws_subprocess");
        let metrics = Self {
            registry: Registry::default(),
            sessions_active: Gauge::default(),
            sessions_total: Counter::default(),
            auth_results: Family::default(),
            auth_latency: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            exits: Family::default(),
        };
        registry.register("sessions_active", "Sessions running now", metrics.sessions_active.clone());
        registry.register("sessions", "Sessions started", metrics.sessions_total.clone());
        registry.register("auth_results", "Token checks by backend and result", metrics.auth_results.clone());
        registry.register("auth_latency_seconds", "Time a backend took to check a token", metrics.auth_latency.clone());
        registry.register("bytes", "Bytes bridged, in (to the process) and out (to the client)", metrics.bytes.clone());
        registry.register("process_exits", "Processes ended, by how they ended", metrics.exits.clone());
        Self { registry, ..metrics }
    }

    /// Records a token check.
    pub fn auth(&self, backend: &'static str, result: AuthResult, latency: Duration) {
        self.auth_results.get_or_create(&AuthLabels { backend, result }).inc();
        self.auth_latency.get_or_create(&BackendLabels { backend }).observe(latency.as_secs_f64());
    }

    /// A session began; it counts as active until the guard is dropped,
    /// however the session ends.
    pub fn session_started(&'static self) -> ActiveSession {
        self.sessions_total.inc();
        self.sessions_active.inc();
        ActiveSession(self)
    }

    /// The counter of bytes bridged one way; hold on to it rather than
    /// looking it up for every message.
    pub fn bytes(&self, direction: Direction) -> Counter {
        self.bytes.get_or_create(&DirectionLabels { direction }).clone()
    }

    /// A process ended so.
    pub fn process_exited(&self, status: Option<ExitStatus>) {
        let kind = match status.map(|s| (s.success(), s.code())) {
            Some((true, _)) => ExitKind::success,
            Some((false, Some(_))) => ExitKind::failure,
            Some((false, None)) => ExitKind::signal,
            None => ExitKind::unknown,
        };
        self.exits.get_or_create(&ExitLabels { kind }).inc();
    }
}

/// Keeps a session counted as active; see [`Metrics::session_started`].
#[derive(Debug)]
pub struct ActiveSession(&'static Metrics);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.sessions_active.dec();
    }
}

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &global().registry).expect("writing to a String");
    text
}

/// A service answering `GET /metrics` with [`render`], and 404 otherwise;
/// serve it on its own listener with [`server::serve`](crate::server::serve).
pub fn service() -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|request: Request<hyper::body::Incoming>| {
        let response = if request.method() == Method::GET && request.uri().path() == "/metrics" {
            let mut response = Response::new(Body::from(render()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        } else {
            reply::plain(StatusCode::NOT_FOUND, "not found")
        };
        ready(Ok(response))
    })
}
