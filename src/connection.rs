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
use std::os::fd::OwnedFd;

use tokio::io::{AsyncRead, AsyncWrite};

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

/// A connection's byte stream, whatever carries it (TCP, a Unix socket,
/// TLS over either, or another server's upgraded connection): what a
/// WebSocket session runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Whether [`Io::into_socket`] would give the socket: a plain TCP or
    /// Unix socket can be handed to another program; a TLS stream cannot
    /// (its keys and sequence numbers live in this one).
    fn carryable(&self) -> bool {
        false
    }

    /// The socket itself, to hand to another program (an in-place
    /// upgrade); an error when it cannot be (then the stream is gone).
    fn into_socket(self: Box<Self>) -> std::io::Result<OwnedSocket> {
        Err(std::io::Error::other("this connection cannot be handed over"))
    }
}

/// A connected socket taken out of this program's hands.
#[derive(Debug)]
pub enum OwnedSocket {
    /// A TCP connection.
    Tcp(std::net::TcpStream),
    /// A Unix socket connection.
    Unix(std::os::unix::net::UnixStream),
}

impl OwnedSocket {
    /// What kind of socket it is, and its descriptor.
    pub fn into_parts(self) -> (Transport, OwnedFd) {
        match self {
            Self::Tcp(stream) => (Transport::Tcp, stream.into()),
            Self::Unix(stream) => (Transport::Unix, stream.into()),
        }
    }

    /// The socket of `fd`, a connected socket of `transport`.
    pub fn from_parts(transport: Transport, fd: OwnedFd) -> Self {
        match transport {
            Transport::Tcp => Self::Tcp(fd.into()),
            Transport::Unix => Self::Unix(fd.into()),
        }
    }
}

/// What carries a connection that can be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    Tcp,
    /// A Unix socket.
    Unix,
}

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
