//! Facts about the connection a request came on, which the server puts in
//! the request extensions for every layer below it: the peer's address,
//! whether the connection is TLS, and the client certificate it verified.
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

/// The request header that tells a controller the subject of the client's
/// verified certificate. A client can never set it: the server drops it from
/// every request, and the controller backend sends only its own.
pub const X_CLIENT_CERT_SUBJECT: http::HeaderName = http::HeaderName::from_static("x-client-cert-subject");

/// The request header that tells a controller the SHA-256 fingerprint of the
/// client's verified certificate (64 lowercase hex digits); see
/// [`X_CLIENT_CERT_SUBJECT`].
pub const X_CLIENT_CERT_SHA256: http::HeaderName = http::HeaderName::from_static("x-client-cert-sha256");

/// The certificate a TLS client presented and the server verified against
/// `tls_client_ca_file`: in a request's extensions only then.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    subject: String,
    sha256: [u8; 32],
}

impl ClientCert {
    /// The identity of the DER certificate `der` (the end entity's, as
    /// TLS gives it first).
    pub fn from_der(der: &[u8]) -> Self {
        use sha2::Digest;
        use x509_cert::der::Decode;
        let subject = match x509_cert::Certificate::from_der(der) {
            Ok(cert) => printable(&cert.tbs_certificate.subject.to_string()),
            // Verified certificates parse; an empty subject is never a match.
            Err(_) => String::new(),
        };
        Self { subject, sha256: sha2::Sha256::digest(der).into() }
    }

    /// The subject's distinguished name as RFC 4514 writes it
    /// (`CN=alice,O=Example`), anything outside printable ASCII escaped as
    /// `\XX`, so it is always a valid header value.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The SHA-256 digest of the DER certificate.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// [`ClientCert::sha256`] as 64 lowercase hex digits (the
    /// `X-Client-Cert-Sha256` header).
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// [`ClientCert::sha256`] as base64url without padding: the
    /// `x5t#S256` confirmation of a certificate-bound token (RFC 8705 §3.1).
    pub fn x5t_s256(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.sha256)
    }
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert").field("subject", &self.subject).field("sha256", &self.sha256_hex()).finish()
    }
}

/// `text` with every byte outside printable ASCII written as `\XX`
/// (RFC 4514 §2.4 allows any character so escaped).
fn printable(text: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "\\{byte:02X}");
        }
    }
    out
}

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

/// Lowercase hexadecimal, two digits a byte (fingerprints, token hashes).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_printable_ascii() {
        assert_eq!(printable("CN=Zo\u{eb},O=a"), "CN=Zo\\C3\\AB,O=a");
        assert_eq!(printable("CN=a\nb"), "CN=a\\0Ab");
        assert!(http::HeaderValue::from_str(&printable("CN=\u{1F600}\u{7f}")).is_ok());
    }

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
