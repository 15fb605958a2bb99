//! Connection caps: at most so many open connections in all, and from one
//! address. A connection holds its place as long as its socket is open,
//! through an upgrade to a WebSocket and the whole session after it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use crate::connection::{Io, IpKey, OwnedSocket, PeerAddr};
use crate::forwarded::TrustedProxies;
use crate::metrics::Refusal;

/// The caps a connection is admitted under (those of the settings current
/// when it arrives).
#[derive(Debug, Clone, Copy)]
pub(super) struct Caps<'a> {
    pub(super) max: usize,
    pub(super) max_per_ip: usize,
    pub(super) trusted: &'a TrustedProxies,
}

/// The open connections of one listener, in all and per address.
#[derive(Debug, Default)]
pub(super) struct ConnectionLimits {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpKey, usize>>,
}

impl ConnectionLimits {
    pub(super) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A place for a connection from `peer` under `caps`, or why there is
    /// none. Lowered caps close nothing: they refuse new connections until
    /// fewer are open.
    pub(super) fn admit(self: &Arc<Self>, peer: PeerAddr, caps: Caps<'_>) -> Result<Place, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= caps.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::connections);
        }
        let key = peer.0.map(|addr| addr.ip()).filter(|ip| !caps.trusted.trusts(*ip)).map(IpKey::of);
        if let Some(key) = key {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(key).or_insert(0);
            if *count >= caps.max_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::connections_per_ip);
            }
            *count += 1;
        }
        Ok(Place { limits: self.clone(), key })
    }

    /// A place for a connection that is open already (carried from the
    /// program before this one): counted, whatever the caps.
    pub(super) fn admit_carried(self: &Arc<Self>, peer: PeerAddr) -> Place {
        self.open.fetch_add(1, Ordering::AcqRel);
        let key = peer.0.map(|addr| IpKey::of(addr.ip()));
        if let Some(key) = key {
            *self.per_ip.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(0) += 1;
        }
        Place { limits: self.clone(), key }
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A connection's place; freed when dropped.
#[derive(Debug)]
pub(super) struct Place {
    limits: Arc<ConnectionLimits>,
    key: Option<IpKey>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&key);
                }
            }
        }
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's byte stream holding its [`Place`], so the place is freed
/// exactly when the socket is closed, wherever it went (hyper, TLS, an
/// upgraded WebSocket).
pub(super) struct Counted<T> {
    pub(super) io: T,
    pub(super) _place: Place,
}

/// A plain connection can be handed to another program; its place here is
/// freed (the program that takes it counts it anew).
impl Io for Counted<Either<TcpStream, UnixStream>> {
    fn carryable(&self) -> bool {
        true
    }

    fn into_socket(self: Box<Self>) -> io::Result<OwnedSocket> {
        match self.io {
            Either::Left(tcp) => tcp.into_std().map(OwnedSocket::Tcp),
            Either::Right(unix) => unix.into_std().map(OwnedSocket::Unix),
        }
    }
}

/// Terminated TLS cannot be handed over: its state lives in this program.
impl Io for tokio_rustls::server::TlsStream<Counted<Either<TcpStream, UnixStream>>> {}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> PeerAddr {
        PeerAddr(Some(std::net::SocketAddr::new(ip.parse().unwrap(), 1)))
    }

    #[test]
    fn places_are_capped_in_all_and_per_address_and_freed_on_drop() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let caps = Caps { max: 3, max_per_ip: 2, trusted: &trusted };
        let limits = ConnectionLimits::new();
        let a1 = limits.admit(peer("192.0.2.1"), caps).unwrap();
        let _a2 = limits.admit(peer("192.0.2.1"), caps).unwrap();
        assert_eq!(limits.admit(peer("192.0.2.1"), caps).unwrap_err(), Refusal::connections_per_ip);
        let _b = limits.admit(peer("192.0.2.2"), caps).unwrap();
        assert_eq!(limits.admit(peer("192.0.2.3"), caps).unwrap_err(), Refusal::connections);
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.admit(peer("192.0.2.1"), caps).unwrap();
        // Raised caps count the same connections.
        let raised = Caps { max: 4, max_per_ip: 3, ..caps };
        let _a4 = limits.admit(peer("192.0.2.1"), raised).unwrap();
        assert_eq!(limits.admit(peer("192.0.2.2"), raised).unwrap_err(), Refusal::connections);
        // A trusted proxy is only counted in all.
        let limits = ConnectionLimits::new();
        let caps = Caps { max: 10, max_per_ip: 1, trusted: &trusted };
        let _p: Vec<Place> = (0..5).map(|_| limits.admit(peer("10.0.0.5"), caps).unwrap()).collect();
        assert_eq!(limits.open(), 5);
    }
}
