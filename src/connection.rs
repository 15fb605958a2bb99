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
use std::net::SocketAddr;

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
