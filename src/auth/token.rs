//! Where a request carries its token, and how a token may be named in logs.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::header::AUTHORIZATION;
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::query::SessionQuery;
use crate::websocket::{BEARER_PROTOCOL_PREFIX, offered_protocols};

const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The token of a request, from the first place that has a non-empty one:
/// the query parameter `param`, `Authorization: Bearer T`, or the
/// subprotocol `base64url.bearer.authorization.k8s.io.<base64url T>`.
/// (A query string that [`SessionQuery`] refuses counts as carrying none.)
pub fn token_of(parts: &Parts, param: &str) -> Option<String> {
    SessionQuery::parse(&parts.uri, param).ok().and_then(|query| query.token).or_else(|| header_token(parts))
}

/// The token a request carries outside its query string: in
/// `Authorization: Bearer T`, or the bearer subprotocol.
pub fn header_token(parts: &Parts) -> Option<String> {
    from_authorization(parts).or_else(|| from_subprotocol(parts))
}

fn from_authorization(parts: &Parts) -> Option<String> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer T` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<String> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
    })
}

fn from_subprotocol(parts: &Parts) -> Option<String> {
    offered_protocols(&parts.headers).find_map(|protocol| {
        let encoded = protocol.strip_prefix(BEARER_PROTOCOL_PREFIX)?;
        let token = String::from_utf8(BASE64URL.decode(encoded).ok()?).ok()?;
        (!token.is_empty()).then_some(token)
    })
}

/// A short, stable name for a token, safe to log: the first 12 hex digits of
/// its SHA-256. It lets an operator match log lines to a token they hold
/// without the log ever holding the token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes())[..6])
}

pub use crate::connection::hex;

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn query_parameter_is_decoded() {
        let p = parts("/ws?a=1&token=a%2Bb%26c%3D%20d", &[]);
        assert_eq!(token_of(&p, "token").as_deref(), Some("a+b&c= d"));
        assert_eq!(token_of(&p, "other"), None);
    }

    #[test]
    fn bearer_header_and_subprotocol_are_read() {
        let p = parts("/ws", &[("authorization", "Bearer abc")]);
        assert_eq!(token_of(&p, "token").as_deref(), Some("abc"));
        let encoded = BASE64URL.encode("t/o+k");
        let p = parts(
            "/ws",
            &[("sec-websocket-protocol", &format!("v5.channel.k8s.io, {BEARER_PROTOCOL_PREFIX}{encoded}"))],
        );
        assert_eq!(token_of(&p, "token").as_deref(), Some("t/o+k"));
    }

    #[test]
    fn empty_or_foreign_values_are_no_token() {
        for p in [
            parts("/ws?token=", &[]),
            parts("/ws", &[("authorization", "Basic abc")]),
            parts("/ws", &[("authorization", "Bearer ")]),
            parts("/ws", &[("sec-websocket-protocol", "base64url.bearer.authorization.k8s.io.!!")]),
        ] {
            assert_eq!(token_of(&p, "token"), None);
        }
    }

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn hash_is_short_and_stable() {
        assert_eq!(token_hash("secret"), token_hash("secret"));
        assert_eq!(token_hash("secret").len(), 12);
        assert_ne!(token_hash("secret"), token_hash("secreT"));
    }
}
