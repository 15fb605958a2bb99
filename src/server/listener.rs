//! [`Listener`]: a bound TCP or Unix socket, optionally serving TLS, and
//! [`ListenAddr`], what it binds.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use super::limits::{ConnectionLimits, Counted};
use crate::connection::{Io, OwnedSocket, PeerAddr};
use crate::live::Live;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`host:port`; a host name is resolved at bind time).
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path".into());
            }
            return Ok(Self::Unix(path.into()));
        }
        // Go's `-listen :8866` means every interface.
        let addr = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
        if addr.parse::<SocketAddr>().is_ok() {
            return Ok(Self::Tcp(addr));
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(Self::Tcp(addr)),
            _ => Err(format!("`{s}` is not `host:port`, `:port` or `unix:/path`")),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound socket: TCP or Unix, optionally with TLS; and its open
/// connections, which its caps count (also across the serving runs of an
/// in-place upgrade, and those carried into it).
pub struct Listener {
    socket: Socket,
    user_timeout: Option<Duration>,
    pub(super) tls: Option<Live<TlsAcceptor>>,
    pub(super) limits: Arc<ConnectionLimits>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("socket", &self.socket).field("tls", &self.tls.is_some()).finish()
    }
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    /// A Unix socket listener and the path it owns.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A Unix socket left behind by an earlier run is replaced;
    /// any other file at that path is an error.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Self> {
        let socket = match addr {
            ListenAddr::Tcp(addr) => Socket::Tcp(TcpListener::bind(addr.as_str()).await?),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                Socket::Unix(UnixListener::bind(path)?, path.clone())
            }
        };
        Ok(Self { socket, user_timeout: None, tls: None, limits: ConnectionLimits::new() })
    }

    /// Takes over `fd`, a socket listening on `addr` (one the program before
    /// this one bound and handed over in an upgrade). A Unix socket's file
    /// is `addr`'s path, removed when the listener is dropped.
    pub fn adopt(addr: &ListenAddr, fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        let socket = match addr {
            ListenAddr::Tcp(_) => {
                let listener = std::net::TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                Socket::Tcp(TcpListener::from_std(listener)?)
            }
            ListenAddr::Unix(path) => {
                let listener = std::os::unix::net::UnixListener::from(fd);
                listener.set_nonblocking(true)?;
                Socket::Unix(UnixListener::from_std(listener)?, path.clone())
            }
        };
        Ok(Self { socket, user_timeout: None, tls: None, limits: ConnectionLimits::new() })
    }

    /// The listening socket, to hand over in an upgrade.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match &self.socket {
            Socket::Tcp(listener) => listener.as_fd(),
            Socket::Unix(listener, _) => listener.as_fd(),
        }
    }

    /// A connection carried from the program before this one (an in-place
    /// upgrade), as one of this listener's: it counts among its open
    /// connections (beyond its caps if need be: it is open already).
    pub fn carried(&self, socket: OwnedSocket) -> io::Result<Box<dyn Io>> {
        let peer = match &socket {
            OwnedSocket::Tcp(stream) => PeerAddr(stream.peer_addr().ok()),
            OwnedSocket::Unix(_) => PeerAddr(None),
        };
        let io = match socket {
            OwnedSocket::Tcp(stream) => {
                stream.set_nonblocking(true)?;
                Either::Left(TcpStream::from_std(stream)?)
            }
            OwnedSocket::Unix(stream) => {
                stream.set_nonblocking(true)?;
                Either::Right(UnixStream::from_std(stream)?)
            }
        };
        Ok(Box::new(Counted { io, _place: self.limits.admit_carried(peer) }))
    }

    /// Serves TLS (`wss://`) on this socket.
    pub fn with_tls(self, acceptor: TlsAcceptor) -> Self {
        self.with_live_tls(Live::new(acceptor))
    }

    /// Serves TLS with whatever acceptor `acceptor` holds when a connection
    /// arrives: replacing it (a renewed certificate) changes the next
    /// handshakes, not the connections already made.
    pub fn with_live_tls(mut self, acceptor: Live<TlsAcceptor>) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Aborts a TCP connection whose sent data stays unacknowledged this
    /// long (`TCP_USER_TIMEOUT`), so a peer that vanished without a trace
    /// is noticed even while the server only sends.
    pub fn with_tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.user_timeout = Some(timeout);
        self
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match &self.socket {
            Socket::Tcp(listener) => Ok(ListenAddr::Tcp(listener.local_addr()?.to_string())),
            Socket::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }

    pub(super) async fn accept(&self) -> io::Result<(Either<TcpStream, UnixStream>, PeerAddr)> {
        match &self.socket {
            Socket::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                if let Some(timeout) = self.user_timeout {
                    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
                    let _ = rustix::net::sockopt::set_tcp_user_timeout(&stream, ms);
                }
                Ok((Either::Left(stream), PeerAddr(Some(peer))))
            }
            Socket::Unix(listener, _) => Ok((Either::Right(listener.accept().await?.0), PeerAddr(None))),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_like_the_go_program() {
        assert_eq!(":8866".parse(), Ok(ListenAddr::Tcp("0.0.0.0:8866".into())));
        assert_eq!("localhost:1".parse(), Ok(ListenAddr::Tcp("localhost:1".into())));
        assert_eq!("unix:/tmp/s".parse(), Ok(ListenAddr::Unix("/tmp/s".into())));
        assert!("8866".parse::<ListenAddr>().is_err());
    }
}
