//! [`ServeSettings`]: how connections are accepted and served.

use std::time::Duration;

use crate::forwarded::TrustedProxies;
use crate::metrics::Metrics;
use crate::session::InvalidSettings;

/// How [`serve`](super::serve) treats connections; see the config keys of
/// the same names. Built with [`ServeSettings::builder`], which refuses
/// values that cannot work.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub(super) request_header_timeout: Duration,
    pub(super) max_header_size: usize,
    pub(super) http2: bool,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_ip: usize,
    pub(super) trusted_proxies: TrustedProxies,
    pub(super) keepalive: (Duration, Duration),
    pub(super) shutdown_timeout: Duration,
    pub(super) metrics: Metrics,
}

impl ServeSettings {
    /// Default `request_header_timeout`.
    pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `max_header_size`: 32 KiB.
    pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;
    /// Smallest `max_header_size` (hyper's smallest read buffer).
    pub const MIN_MAX_HEADER_SIZE: usize = 8 * 1024;
    /// Default `max_connections_per_ip`.
    pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
    /// Default `shutdown_timeout`.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

    /// Settings with the defaults (and no limit on connections but the
    /// per-address one), to change and then build.
    pub fn builder() -> ServeSettingsBuilder {
        ServeSettingsBuilder(Self {
            request_header_timeout: Self::DEFAULT_REQUEST_HEADER_TIMEOUT,
            max_header_size: Self::DEFAULT_MAX_HEADER_SIZE,
            http2: false,
            max_connections: usize::MAX,
            max_connections_per_ip: Self::DEFAULT_MAX_CONNECTIONS_PER_IP,
            trusted_proxies: TrustedProxies::default(),
            keepalive: (Duration::from_secs(30), Duration::from_secs(60)),
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
            metrics: Metrics::default(),
        })
    }
}

impl ServeSettings {
    /// See [`ServeSettingsBuilder::request_header_timeout`].
    pub fn request_header_timeout(&self) -> Duration {
        self.request_header_timeout
    }

    /// See [`ServeSettingsBuilder::max_connections`].
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self::builder().0
    }
}

/// Changes [`ServeSettings`]; see [`ServeSettings::builder`].
#[derive(Debug, Clone)]
pub struct ServeSettingsBuilder(ServeSettings);

impl ServeSettingsBuilder {
    /// From accept to a complete request head (TLS handshake and protocol
    /// detection included), and between requests on a kept-alive
    /// connection; a connection that takes longer is closed.
    pub fn request_header_timeout(mut self, timeout: Duration) -> Self {
        self.0.request_header_timeout = timeout;
        self
    }

    /// Largest request head; a larger one gets 431.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.0.max_header_size = bytes;
        self
    }

    /// Also serve HTTP/2 (detected by its preface), with the same timeouts.
    pub fn http2(mut self, on: bool) -> Self {
        self.0.http2 = on;
        self
    }

    /// Open connections of every kind; beyond it new ones are closed at once.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.0.max_connections = max;
        self
    }

    /// Open connections per client address ([`IpKey`](crate::connection::IpKey));
    /// beyond it new ones from that address are closed at once. Trusted
    /// proxies, which carry many clients, are exempt.
    pub fn max_connections_per_ip(mut self, max: usize, trusted_proxies: TrustedProxies) -> Self {
        self.0.max_connections_per_ip = max;
        self.0.trusted_proxies = trusted_proxies;
        self
    }

    /// HTTP/2 pings: every `interval`, and a peer that does not answer in
    /// `timeout` is gone.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.0.keepalive = (interval, timeout);
        self
    }

    /// Bound on graceful shutdown.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.0.shutdown_timeout = timeout;
        self
    }

    /// Counts refused connections in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.0.metrics = metrics;
        self
    }

    /// The settings, or every problem with them.
    pub fn build(self) -> Result<ServeSettings, InvalidSettings> {
        let s = &self.0;
        let mut problems = Vec::new();
        if s.request_header_timeout.is_zero() {
            problems.push(("request_header_timeout", "must be more than zero"));
        }
        if s.max_header_size < ServeSettings::MIN_MAX_HEADER_SIZE {
            problems.push(("max_header_size", "must be at least 8KiB"));
        }
        if s.max_connections == 0 {
            problems.push(("max_connections", "must be at least 1"));
        }
        if s.max_connections_per_ip == 0 {
            problems.push(("max_connections_per_ip", "must be at least 1"));
        }
        if problems.is_empty() { Ok(self.0) } else { Err(InvalidSettings(problems)) }
    }
}
