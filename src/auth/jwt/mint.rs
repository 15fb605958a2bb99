//! Minting tokens, for tests and for operators trying a deployment
//! (`ws-subprocess mint-token`). Production tokens come from your issuer.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value};

use super::replay::unix_now;
use crate::spec::CommandSpec;

/// Registered claims of a minted token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Claims {
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Token id; a token with one is single-use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Confirmation: `{"x5t#S256": thumbprint}` binds the token to one
    /// client certificate (RFC 8705); see [`Claims::bound_to`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Value>,
}

impl Claims {
    /// Issued now, expiring after `ttl`, with a random `jti`.
    pub fn expiring_in(ttl: Duration) -> Self {
        let now = unix_now();
        Self { iat: now, exp: now + ttl.as_secs(), jti: Some(random_id()), ..Self::default() }
    }

    /// Binds the token to the certificate `cert`: only a connection that
    /// presented it may use the token.
    pub fn bound_to(mut self, cert: &crate::connection::ClientCert) -> Self {
        self.cnf = Some(serde_json::json!({ "x5t#S256": cert.x5t_s256() }));
        self
    }
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled += rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
            .expect("the kernel's random source");
    }
    crate::auth::hex(&bytes)
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The key does not fit the algorithm, or signing failed.
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The algorithm needs another kind of key.
    #[error("{0:?} needs a private key PEM file, not an HMAC secret (or the other way round)")]
    WrongKeyKind(Algorithm),
}

/// Signs `spec` and `claims` with `key`.
pub fn sign(key: &EncodingKey, header: Header, spec: &CommandSpec, claims: &Claims) -> Result<String, MintError> {
    let mut body: Map<String, Value> = match serde_json::to_value(spec) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    if let Ok(Value::Object(registered)) = serde_json::to_value(claims) {
        body.extend(registered);
    }
    Ok(jsonwebtoken::encode(&header, &body, key)?)
}

/// A token signed with an HMAC `secret`.
pub fn hmac(secret: &[u8], alg: Algorithm, spec: &CommandSpec, claims: Claims) -> Result<String, MintError> {
    if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac {
        return Err(MintError::WrongKeyKind(alg));
    }
    sign(&EncodingKey::from_secret(secret), Header::new(alg), spec, &claims)
}

/// A token signed with a PEM private key (RSA, EC in PKCS#8, or Ed25519).
pub fn private_key(
    pem: &[u8],
    alg: Algorithm,
    kid: Option<String>,
    spec: &CommandSpec,
    claims: Claims,
) -> Result<String, MintError> {
    use jsonwebtoken::AlgorithmFamily::*;
    let key = match alg.family() {
        Rsa => EncodingKey::from_rsa_pem(pem)?,
        Ec => EncodingKey::from_ec_pem(pem)?,
        Ed => EncodingKey::from_ed_pem(pem)?,
        Hmac => return Err(MintError::WrongKeyKind(alg)),
    };
    let mut header = Header::new(alg);
    header.kid = kid;
    sign(&key, header, spec, &claims)
}
