//! Facts about the connection a request came on, which the server puts in
//! the request extensions for every layer below it: the peer's address and
//! whether the connection is TLS.
//!
//! ```
//! use ws_subprocess::connection::PeerAddr;
//!
//! let mut request = http::Request::new(());
//! request.extensions_mut().insert(PeerAddr(Some("127.0.0.1:4000".parse().unwrap())));
//! let peer = request.extensions().get::<PeerAddr>().copied().unwrap_or_default();
//! assert_eq!(peer.to_string(), "127.0.0.1:4000");
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The client's address (`None` on a Unix socket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerAddr(pub Option<SocketAddr>);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("local"),
        }
    }
}

/// Whether the client's connection is TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Secure(pub bool);

/// The bucket per-address limits count a client in: an IPv4 address, or the
/// /64 prefix of an IPv6 address (one subscriber's usual allocation, so a
/// client cannot escape a limit by picking another address of its own
/// network). An IPv4-mapped IPv6 address counts as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey(IpAddr);

impl IpKey {
    /// The bucket of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a = IpKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:ffff::7".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(IpKey::of("::ffff:10.0.0.1".parse().unwrap()), IpKey::of("10.0.0.1".parse().unwrap()));
    }
}
