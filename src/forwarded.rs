//! Who the client is: the connection's peer, or, behind a trusted reverse
//! proxy, the client that proxy forwarded.
//!
//! `X-Forwarded-For`, `-Proto` and `-Host` are believed only from
//! `trusted_proxies` (and from a Unix socket, which only local processes,
//! such as a reverse proxy, can reach); from anyone else, the controller is
//! told what the connection itself shows. [`ForwardedLayer`] puts the result,
//! a [`Forwarded`], in the request extensions, for the per-address limits and
//! the controller.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::connection::{PeerAddr, Secure};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// Trusts proxies in `networks`; none trusts no one.
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self(networks.into_iter().collect())
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether the forwarding headers of a request from `peer` are believed:
    /// the peer is a trusted proxy, or the connection is a Unix socket.
    pub fn trusts_peer(&self, peer: PeerAddr) -> bool {
        peer.0.is_none_or(|addr| self.trusts(addr.ip()))
    }
}

/// What is known of a request's client, once forwarding headers are believed
/// or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address, which per-address limits count; `None` on a
    /// Unix socket without a forwarded address.
    pub client: Option<IpAddr>,
    /// The `X-Forwarded-For` chain to pass on, ending with the peer.
    pub chain: Option<HeaderValue>,
    /// `http` or `https`, as the client reached the first proxy (or this
    /// server).
    pub proto: HeaderValue,
    /// The host the client asked for.
    pub host: Option<HeaderValue>,
}

impl Forwarded {
    /// The facts of a request with `headers`, from `peer` over a connection
    /// that is `secure` or not.
    pub fn of(headers: &HeaderMap, peer: PeerAddr, secure: Secure, trusted: &TrustedProxies) -> Self {
        let peer_ip = peer.0.map(|addr| addr.ip().to_canonical());
        let derived_proto = HeaderValue::from_static(if secure.0 { "https" } else { "http" });
        let host = headers.get(HOST).cloned();
        if !trusted.trusts_peer(peer) {
            return Self {
                client: peer_ip,
                chain: peer_ip.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()),
                proto: derived_proto,
                host,
            };
        }
        let prior: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect();
        // The client is the nearest hop that is not a trusted proxy: hops
        // further left were written by whoever that client is.
        let mut client = peer_ip;
        for hop in prior.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if trusted.trusts(ip) => client = Some(ip.to_canonical()),
                Ok(ip) => {
                    client = Some(ip.to_canonical());
                    break;
                }
                Err(_) => break,
            }
        }
        let chain = prior.into_iter().map(str::to_string).chain(peer_ip.map(|ip| ip.to_string())).collect::<Vec<_>>();
        Self {
            client,
            chain: (!chain.is_empty()).then(|| HeaderValue::from_str(&chain.join(", ")).ok()).flatten(),
            proto: headers.get(X_FORWARDED_PROTO).cloned().unwrap_or(derived_proto),
            host: headers.get(X_FORWARDED_HOST).cloned().or(host),
        }
    }

    /// The facts of a request that went through [`ForwardedLayer`]; for one
    /// that did not, what its connection shows, trusting no proxy.
    pub fn of_request(parts: &http::request::Parts) -> Self {
        if let Some(facts) = parts.extensions.get::<Self>() {
            return facts.clone();
        }
        let peer = parts.extensions.get::<PeerAddr>().copied().unwrap_or_default();
        let secure = parts.extensions.get::<Secure>().copied().unwrap_or_default();
        Self::of(&parts.headers, peer, secure, &TrustedProxies::default())
    }
}

/// Puts the [`Forwarded`] facts of each request in its extensions.
#[derive(Debug, Clone, Default)]
pub struct ForwardedLayer {
    trusted: TrustedProxies,
}

impl ForwardedLayer {
    /// Believes forwarding headers from `trusted` proxies only.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self { trusted }
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = ForwardedFacts<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardedFacts { inner, trusted: self.trusted.clone() }
    }
}

/// The service made by [`ForwardedLayer`].
#[derive(Debug, Clone)]
pub struct ForwardedFacts<S> {
    inner: S,
    trusted: TrustedProxies,
}

impl<S, B> Service<Request<B>> for ForwardedFacts<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let peer = request.extensions().get::<PeerAddr>().copied().unwrap_or_default();
        let secure = request.extensions().get::<Secure>().copied().unwrap_or_default();
        let facts = Forwarded::of(request.headers(), peer, secure, &self.trusted);
        let mut request = request;
        request.extensions_mut().insert(facts);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse::<HeaderName>().unwrap(), v.parse().unwrap())).collect()
    }

    fn peer(ip: &str) -> PeerAddr {
        PeerAddr(Some(std::net::SocketAddr::new(ip.parse().unwrap(), 4000)))
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_anything() {
        let spoofed = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.internal"),
            ("host", "public.example"),
        ]);
        let facts = Forwarded::of(&spoofed, peer("198.51.100.7"), Secure(false), &TrustedProxies::default());
        assert_eq!(facts.client, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(facts.chain.unwrap(), "198.51.100.7");
        assert_eq!(facts.proto, "http");
        assert_eq!(facts.host.unwrap(), "public.example");
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let forwarded = headers(&[
            ("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
        ]);
        let facts = Forwarded::of(&forwarded, peer("10.0.0.2"), Secure(false), &trusted);
        // 1.2.3.4 may have been written by 203.0.113.9 itself.
        assert_eq!(facts.client, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(facts.chain.unwrap(), "1.2.3.4, 203.0.113.9, 10.1.1.1, 10.0.0.2");
        assert_eq!(facts.proto, "https");
        assert_eq!(facts.host.unwrap(), "app.example");
        // A trusted proxy that forwards nothing is the client itself.
        let facts = Forwarded::of(&HeaderMap::new(), peer("10.0.0.2"), Secure(true), &trusted);
        assert_eq!(facts.client, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(facts.proto, "https");
    }

    #[test]
    fn mapped_addresses_match_ipv4_networks() {
        let trusted = TrustedProxies::new(["127.0.0.0/8".parse().unwrap()]);
        assert!(trusted.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted.trusts("::1".parse().unwrap()));
        assert!(trusted.trusts_peer(PeerAddr(None)));
    }
}
