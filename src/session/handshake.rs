//! The WebSocket opening handshake (RFC 6455 §4.2), checked in a fixed order
//! so each failure has its own answer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

/// A request that is a valid WebSocket upgrade.
#[derive(Debug, Clone)]
pub struct Handshake {
    accept: HeaderValue,
}

impl Handshake {
    /// The `Sec-WebSocket-Accept` value answering the client's key.
    pub fn accept_value(&self) -> &HeaderValue {
        &self.accept
    }

    /// Checks `parts`: method, HTTP version, `Connection`, `Upgrade`,
    /// `Sec-WebSocket-Version` and `Sec-WebSocket-Key`, in that order.
    pub fn validate(parts: &Parts) -> Result<Self, HandshakeRejection> {
        Self::check(&parts.method, parts.version, &parts.headers)
    }

    /// [`Handshake::validate`] for a whole request.
    pub fn validate_request<B>(request: &http::Request<B>) -> Result<Self, HandshakeRejection> {
        Self::check(request.method(), request.version(), request.headers())
    }

    fn check(method: &Method, version: Version, headers: &HeaderMap) -> Result<Self, HandshakeRejection> {
        if method != Method::GET {
            return Err(HandshakeRejection::MethodNotGet);
        }
        if version != Version::HTTP_11 {
            return Err(HandshakeRejection::NotHttp11);
        }
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
        Ok(Self { accept: HeaderValue::from_str(&accept).expect("base64 is a valid header value") })
    }

    /// Headers of the `101 Switching Protocols` answer.
    pub fn response_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept.clone());
        headers
    }
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
}

impl HandshakeRejection {
    /// The status the client gets: 426 tells a plain HTTP client what to do
    /// instead; malformed upgrades get 400.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ConnectionNotUpgrade | Self::UpgradeNotWebSocket | Self::UnsupportedVersion => {
                StatusCode::UPGRADE_REQUIRED
            }
            Self::MethodNotGet | Self::NotHttp11 | Self::InvalidKey => StatusCode::BAD_REQUEST,
        }
    }

    /// Headers that tell the client what would have worked.
    pub fn response_headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self.status() == StatusCode::UPGRADE_REQUIRED {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        headers
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

    fn check(builder: http::request::Builder) -> Result<Handshake, HandshakeRejection> {
        Handshake::validate(&builder.body(()).unwrap().into_parts().0)
    }

    #[test]
    fn accepts_the_rfc_example() {
        let handshake = check(upgrade()).unwrap();
        assert_eq!(handshake.accept_value(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
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
    }
}
