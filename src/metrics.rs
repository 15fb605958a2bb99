//! Prometheus metrics (SPEC §6): sessions, token checks, bytes and process
//! exits, served in the text format on `metrics_listen`.
//!
//! A [`Metrics`] is a handle: clones share one registry. The binary makes one
//! and hands it to every layer that counts; a library user may do the same,
//! or leave each layer its own default, unserved one. Tests and several
//! servers in one process therefore never share counters by accident.
//!
//! ```
//! use ws_subprocess::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let session = metrics.session_started();
//! drop(session);
//! assert!(metrics.render().contains("ws_subprocess_sessions_total 1"));
//! ```

use std::convert::Infallible;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
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
    /// Killed by the out-of-memory killer.
    oom,
    /// Never reaped (the server stopped first).
    unknown,
}

/// Why a connection or request was turned away before it could become a
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Refusal {
    /// `max_connections` open connections.
    connections,
    /// `max_connections_per_ip` open connections from the address.
    connections_per_ip,
    /// No complete request head within `request_header_timeout`.
    header_timeout,
    /// `max_sessions` running.
    sessions,
    /// `auth_rate_per_ip` exceeded.
    rate,
    /// `max_pending_auth` requests waiting for the backend.
    pending,
    /// `max_pending_auth_per_ip` requests from the address waiting.
    pending_per_ip,
}

/// How a reload (or, later, an upgrade) of the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Outcome {
    ok,
    error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: Refusal,
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

/// The server's metrics; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Registered>);

#[derive(Debug)]
struct Registered {
    registry: Registry,
    sessions_active: Gauge,
    sessions_total: Counter,
    auth_results: Family<AuthLabels, Counter>,
    auth_latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    bytes: Family<DirectionLabels, Counter>,
    exits: Family<ExitLabels, Counter>,
    refused: Family<RefusalLabels, Counter>,
    detached: Gauge,
    attachments: Family<RoleLabels, Counter>,
    history_dropped: Counter,
    recordings: Counter,
    reloads: Family<OutcomeLabels, Counter>,
    upgrades: Family<OutcomeLabels, Counter>,
}

impl Default for Registered {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ws_subprocess");
        let metrics = Self {
            registry: Registry::default(),
            sessions_active: Gauge::default(),
            sessions_total: Counter::default(),
            auth_results: Family::default(),
            auth_latency: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            exits: Family::default(),
            refused: Family::default(),
            detached: Gauge::default(),
            attachments: Family::default(),
            history_dropped: Counter::default(),
            recordings: Counter::default(),
            reloads: Family::default(),
            upgrades: Family::default(),
        };
        registry.register("sessions_active", "Sessions running now", metrics.sessions_active.clone());
        registry.register("sessions", "Sessions started", metrics.sessions_total.clone());
        registry.register("auth_results", "Token checks by backend and result", metrics.auth_results.clone());
        registry.register("auth_latency_seconds", "Time a backend took to check a token", metrics.auth_latency.clone());
        registry.register("bytes", "Bytes bridged, in (to the process) and out (to the client)", metrics.bytes.clone());
        registry.register("process_exits", "Processes ended, by how they ended", metrics.exits.clone());
        registry.register("refused", "Connections and requests turned away, by reason", metrics.refused.clone());
        registry.register(
            "sessions_detached",
            "Named sessions running with no writer attached",
            metrics.detached.clone(),
        );
        registry.register(
            "attachments",
            "Connections attached to named sessions, by role",
            metrics.attachments.clone(),
        );
        registry.register(
            "history_dropped_bytes",
            "Output of named sessions dropped from their history (oldest first)",
            metrics.history_dropped.clone(),
        );
        registry.register("recordings", "Session recordings started", metrics.recordings.clone());
        registry.register("reloads", "Configuration reloads (SIGHUP), by result", metrics.reloads.clone());
        registry.register(
            "upgrades",
            "In-place upgrades (SIGUSR2) by result; ok counts the upgrades that led to this program",
            metrics.upgrades.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a token check.
    pub fn auth(&self, backend: &'static str, result: AuthResult, latency: Duration) {
        self.0.auth_results.get_or_create(&AuthLabels { backend, result }).inc();
        self.0.auth_latency.get_or_create(&BackendLabels { backend }).observe(latency.as_secs_f64());
    }

    /// A session carried from the program before this one runs here now
    /// (it was counted as started there); it counts as active until the
    /// guard is dropped.
    pub fn session_carried(&self) -> ActiveSession {
        self.0.sessions_active.inc();
        ActiveSession(self.0.sessions_active.clone())
    }

    /// A session began; it counts as active until the guard is dropped,
    /// however the session ends.
    pub fn session_started(&self) -> ActiveSession {
        self.0.sessions_total.inc();
        self.0.sessions_active.inc();
        ActiveSession(self.0.sessions_active.clone())
    }

    /// The counter of bytes bridged one way; hold on to it rather than
    /// looking it up for every message.
    pub fn bytes(&self, direction: Direction) -> Counter {
        self.0.bytes.get_or_create(&DirectionLabels { direction }).clone()
    }

    /// A process ended so (`oom`: the out-of-memory killer ended it).
    pub fn process_exited(&self, status: Option<ExitStatus>, oom: bool) {
        let kind = match status.map(|s| (s.success(), s.code())) {
            Some(_) if oom => ExitKind::oom,
            Some((true, _)) => ExitKind::success,
            Some((false, Some(_))) => ExitKind::failure,
            Some((false, None)) => ExitKind::signal,
            None => ExitKind::unknown,
        };
        self.0.exits.get_or_create(&ExitLabels { kind }).inc();
    }

    /// A connection or request was turned away.
    pub fn refused(&self, reason: Refusal) {
        self.0.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// A named session now has no writer attached (`true`), or has one
    /// again (`false`).
    pub fn detached(&self, detached: bool) {
        if detached {
            self.0.detached.inc();
        } else {
            self.0.detached.dec();
        }
    }

    /// A connection attached to a named session.
    pub fn attached(&self, role: crate::spec::Role) {
        let role = match role {
            crate::spec::Role::Writer => "writer",
            crate::spec::Role::Observer => "observer",
        };
        self.0.attachments.get_or_create(&RoleLabels { role }).inc();
    }

    /// A reload ended so.
    pub fn reloaded(&self, result: Outcome) {
        self.0.reloads.get_or_create(&OutcomeLabels { result }).inc();
    }

    /// Upgrades that ended so (`n` of them).
    pub fn upgraded(&self, result: Outcome, n: u64) {
        self.0.upgrades.get_or_create(&OutcomeLabels { result }).inc_by(n);
    }

    /// Upgrades counted as `ok`: those that led to this program.
    pub fn upgrades_ok(&self) -> u64 {
        self.0.upgrades.get_or_create(&OutcomeLabels { result: Outcome::ok }).get()
    }

    /// Output dropped from a history.
    pub fn history_dropped(&self, bytes: u64) {
        self.0.history_dropped.inc_by(bytes);
    }

    /// A recording started.
    pub fn recording_started(&self) {
        self.0.recordings.inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.0.registry).expect("writing to a String");
        text
    }

    /// A service answering `GET /metrics` with [`Metrics::render`], and 404
    /// otherwise; serve it on its own listener with
    /// [`server::serve`](crate::server::serve).
    pub fn service<B>(
        &self,
    ) -> impl tower::Service<
        Request<B>,
        Response = Response<Body>,
        Error = Infallible,
        Future = Ready<Result<Response<Body>, Infallible>>,
    > + Clone
    + Send
    + 'static {
        let metrics = self.clone();
        tower::service_fn(move |request: Request<B>| {
            let response = if request.method() == Method::GET && request.uri().path() == "/metrics" {
                let mut response = Response::new(Body::from(Bytes::from(metrics.render())));
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
}

/// Keeps a session counted as active; see [`Metrics::session_started`].
#[derive(Debug)]
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn two_handles_do_not_share_counters() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.auth("controller", AuthResult::allowed, Duration::from_millis(3));
        assert!(a.render().contains(r#"ws_subprocess_auth_results_total{backend="controller",result="allowed"} 1"#));
        assert!(!b.render().contains("result=\"allowed\""));
        // Clones share.
        let a2 = a.clone();
        a2.process_exited(None, false);
        assert!(a.render().contains(r#"ws_subprocess_process_exits_total{kind="unknown"} 1"#));
    }

    #[tokio::test]
    async fn service_answers_metrics_and_404() {
        let metrics = Metrics::new();
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let response = metrics.service().oneshot(get("/metrics")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = metrics.service().oneshot(get("/other")).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
