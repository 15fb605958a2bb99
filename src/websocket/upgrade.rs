//! The WebSocket opening handshake (RFC 6455 §4.2) as one validated value.
//!
//! [`WebSocketUpgrade::from_request_parts`] checks a request once, in a fixed
//! order (method, version, `Connection`, `Upgrade`, `Sec-WebSocket-Version`,
//! `Sec-WebSocket-Key`, an upgradable connection), so each failure has its
//! own [`HandshakeRejection`], which answers for itself. What it returns
//! carries everything the `101` answer and the session need: the accept key,
//! the negotiated [`Protocol`] and hyper's upgrade handle.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::Protocol;
use super::conn::Conn;
use super::protocol::BEARER_PROTOCOL_PREFIX;
use crate::connection::Io;
use crate::reply;

/// A request that is a valid WebSocket upgrade; see the module docs.
///
/// It travels from the layer that validated it to the service that answers
/// `101` in the request extensions.
#[derive(Debug, Clone)]
pub struct WebSocketUpgrade {
    accept: HeaderValue,
    protocol: Protocol,
    on_upgrade: OnUpgrade,
}

/// The upgraded connection, as a WebSocket.
pub type Socket = WebSocketStream<Conn>;

impl WebSocketUpgrade {
    /// Checks the request and takes its upgrade handle out of `parts`.
    pub fn from_request_parts(parts: &mut Parts) -> Result<Self, HandshakeRejection> {
        if parts.method != Method::GET {
            return Err(HandshakeRejection::MethodNotGet);
        }
        if parts.version != Version::HTTP_11 {
            return Err(HandshakeRejection::NotHttp11);
        }
        let headers = &parts.headers;
        if !header_has_token(headers, CONNECTION, "upgrade") {
            return Err(HandshakeRejection::ConnectionNotUpgrade);
        }
        if !header_has_token(headers, UPGRADE, "websocket") {
            return Err(HandshakeRejection::UpgradeNotWebSocket);
        }
        if headers.get(SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(HandshakeRejection::UnsupportedVersion);
        }
        let key = headers.get(SEC_WEBSOCKET_KEY).ok_or(HandshakeRejection::InvalidKey)?;
        // The key must be 16 random bytes, base64-encoded (RFC 6455 §4.1).
        match STANDARD.decode(key.as_bytes()) {
            Ok(raw) if raw.len() == 16 => {}
            _ => return Err(HandshakeRejection::InvalidKey),
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).expect("base64 is a valid header value");
        let protocol = Protocol::negotiate(offered_protocols(headers));
        // A browser fails a handshake whose answer names none of the
        // subprotocols it offered; offering only the token's is a mistake
        // to answer now, before a backend is asked (and a single-use token
        // spent) for a session no browser would open.
        if protocol == Protocol::Raw && offered_protocols(headers).any(|p| p.starts_with(BEARER_PROTOCOL_PREFIX)) {
            return Err(HandshakeRejection::OnlyTokenProtocol);
        }
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(HandshakeRejection::ConnectionNotUpgradable)?;
        Ok(Self { accept, protocol, on_upgrade })
    }

    /// The protocol the session will speak.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The `101 Switching Protocols` answer, and the socket it leads to once
    /// hyper has sent it. The answer names only a protocol this server
    /// speaks, never the bearer-token protocol a client may also offer.
    pub fn accept<B: Default>(self, config: WebSocketConfig) -> (Response<B>, PendingSocket) {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(name) = self.protocol.name() {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
        }
        (response, PendingSocket { on_upgrade: self.on_upgrade, config })
    }
}

/// A WebSocket whose `101` answer is on its way; see
/// [`WebSocketUpgrade::accept`].
#[derive(Debug)]
pub struct PendingSocket {
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
}

impl PendingSocket {
    /// Waits for the upgrade; fails when the client left first.
    ///
    /// On a connection of this crate's server, the socket is taken back
    /// from hyper, so that the session can hand it over whole (see
    /// [`Conn`]); on another server's, it stays in hyper's hands.
    pub async fn ready(self) -> hyper::Result<Socket> {
        let upgraded = self.on_upgrade.await?;
        let conn = match upgraded.downcast::<TokioIo<Box<dyn Io>>>() {
            Ok(parts) => Conn::new(parts.io.into_inner(), parts.read_buf),
            Err(upgraded) => Conn::new(Box::new(TokioIo::new(upgraded)), Bytes::new()),
        };
        Ok(WebSocketStream::from_raw_socket(conn, Role::Server, Some(self.config)).await)
    }
}

/// Another server's upgraded connection: it stays where it is.
impl Io for TokioIo<Upgraded> {}

/// The subprotocols a client offers, in its order of preference.
pub fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Comma-separated header lists compare their items case-insensitively.
fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRejection {
    /// Upgrades are `GET` requests.
    #[error("a WebSocket upgrade must be a GET request")]
    MethodNotGet,
    /// Only HTTP/1.1 upgrades are served.
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    NotHttp11,
    /// `Connection` does not list `upgrade`.
    #[error("expected `Connection: upgrade`")]
    ConnectionNotUpgrade,
    /// `Upgrade` does not list `websocket`.
    #[error("expected `Upgrade: websocket`")]
    UpgradeNotWebSocket,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported WebSocket version; this server speaks 13")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing or not 16 base64-encoded bytes.
    #[error("missing or invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// The client offers the bearer-token subprotocol and no subprotocol
    /// this server speaks.
    #[error("offer a subprotocol this server speaks (v5.channel.k8s.io) beside the token's")]
    OnlyTokenProtocol,
    /// The server the request came through cannot hand over its connection
    /// (it is not hyper with upgrades enabled).
    #[error("this connection cannot be upgraded")]
    ConnectionNotUpgradable,
}

impl HandshakeRejection {
    /// The status the client gets: 426 tells a plain HTTP client what to do
    /// instead; malformed upgrades get 400.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ConnectionNotUpgrade
            | Self::UpgradeNotWebSocket
            | Self::UnsupportedVersion
            | Self::ConnectionNotUpgradable => StatusCode::UPGRADE_REQUIRED,
            Self::MethodNotGet | Self::NotHttp11 | Self::InvalidKey | Self::OnlyTokenProtocol => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The answer: the status, a line saying why, and for a 426 the headers
    /// that tell the client what would have worked.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut headers = HeaderMap::new();
        if self.status() == StatusCode::UPGRADE_REQUIRED {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        reply::with_headers(self.status(), &self.to_string(), headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade() -> http::request::Builder {
        http::Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    fn check(builder: http::request::Builder) -> Result<WebSocketUpgrade, HandshakeRejection> {
        WebSocketUpgrade::from_request_parts(&mut builder.body(()).unwrap().into_parts().0)
    }

    #[test]
    fn each_missing_piece_has_its_own_rejection() {
        let mut b = upgrade();
        b = b.method("POST");
        assert_eq!(check(b).unwrap_err(), HandshakeRejection::MethodNotGet);
        let b = http::Request::get("/ws").header("upgrade", "websocket");
        assert_eq!(check(b).unwrap_err(), HandshakeRejection::ConnectionNotUpgrade);
        let b = http::Request::get("/ws").header("connection", "upgrade").header("upgrade", "h2c");
        assert_eq!(check(b).unwrap_err(), HandshakeRejection::UpgradeNotWebSocket);
        let mut b = upgrade();
        b.headers_mut().unwrap().insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(check(b).unwrap_err(), HandshakeRejection::UnsupportedVersion);
        let mut b = upgrade();
        b.headers_mut().unwrap().insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(check(b).unwrap_err(), HandshakeRejection::InvalidKey);
        let mut b = upgrade();
        b = b.header("sec-websocket-protocol", "base64url.bearer.authorization.k8s.io.eA, chat");
        assert_eq!(check(b).unwrap_err(), HandshakeRejection::OnlyTokenProtocol);
        // A valid handshake on a connection hyper cannot hand over.
        assert_eq!(check(upgrade()).unwrap_err(), HandshakeRejection::ConnectionNotUpgradable);
    }

    #[test]
    fn rejections_answer_for_themselves() {
        let response: Response<reply::Body> = HandshakeRejection::UnsupportedVersion.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[SEC_WEBSOCKET_VERSION], "13");
        let response: Response<reply::Body> = HandshakeRejection::InvalidKey.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(UPGRADE).is_none());
    }

    /// Sends `request` through hyper (HTTP/1.1 with upgrades, over an
    /// in-memory pipe) to a service that validates and accepts it; returns
    /// the response head as text.
    async fn answer(request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async {
            let (mut parts, _) = request.into_parts();
            let response: Response<reply::Body> = match WebSocketUpgrade::from_request_parts(&mut parts) {
                Ok(upgrade) => upgrade.accept(WebSocketConfig::default()).0,
                Err(rejection) => rejection.into_response(),
            };
            Ok::<_, std::convert::Infallible>(response)
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service).with_upgrades(),
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            client.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn a_valid_upgrade_is_answered_with_the_rfc_accept_key_and_a_known_protocol() {
        let head = answer(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.eA, v4.channel.k8s.io\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455 §1.3.
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
        assert!(head.contains("sec-websocket-protocol: v4.channel.k8s.io\r\n"), "{head}");
        assert!(!head.contains("bearer"), "{head}");
    }

    #[test]
    fn offered_protocols_split_and_trim() {
        let mut headers = HeaderMap::new();
        headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("a, b"));
        headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(" ,c"));
        assert_eq!(offered_protocols(&headers).collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
