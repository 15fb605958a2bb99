//! [`JwtAuthorizer`]: verifies a token locally and makes its claims a
//! command spec.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::request::Parts;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::keys::{KeyError, KeyRing, KeySources};
use super::replay::ReplayStore;
use crate::auth::{AuthError, Authorizer, hex};
use crate::connection::ClientCert;
use crate::kubernetes::KubeExec;
use crate::spec::CommandSpec;

/// Claims that are about the token, not the command (`cnf` binds it to a
/// client certificate, RFC 8705).
const REGISTERED_CLAIMS: [&str; 9] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf", "k8s"];

/// How tokens are checked; see the `jwt_*` config keys.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The allowlist; nothing else is ever accepted.
    pub algorithms: Vec<Algorithm>,
    /// Where the keys are.
    pub keys: KeySources,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway: Duration,
    /// Longest `exp - iat` accepted, when set (then `iat` is required).
    pub max_lifetime: Option<Duration>,
    /// Refuse tokens without `jti`.
    pub require_jti: bool,
}

/// Verifies JWTs locally; `R` remembers used token ids.
#[derive(Debug)]
pub struct JwtAuthorizer<R> {
    keys: KeyRing,
    settings: JwtSettings,
    replay: Arc<R>,
}

impl<R: ReplayStore> JwtAuthorizer<R> {
    /// Loads the keys (files now, a key set URL on first use through
    /// `client`) and checks them against the allowlist.
    pub fn new(settings: JwtSettings, replay: R, client: reqwest::Client) -> Result<Self, KeyError> {
        Self::sharing(settings, Arc::new(replay), client)
    }

    /// [`JwtAuthorizer::new`] with a replay store it shares, such as the
    /// one of the authorizer it replaces on a reload: a token id used
    /// before stays used.
    pub fn sharing(settings: JwtSettings, replay: Arc<R>, client: reqwest::Client) -> Result<Self, KeyError> {
        let keys = KeyRing::load(&settings.algorithms, &settings.keys, client)?;
        Ok(Self { keys, settings, replay })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required: HashSet<String> = HashSet::from(["exp".to_string()]);
        match &self.settings.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &self.settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.insert("aud".into());
            }
            // Without a configured audience, `aud` is not checked at all
            // (the crate would otherwise refuse every token that has one).
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required;
        validation
    }

    async fn verify(&self, token: &str) -> Result<(CommandSpec, Map<String, Value>), AuthError> {
        reject_critical_header(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Denied(Box::new(e)))?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(deny(format!("algorithm {:?} not allowed", header.alg)));
        }
        let candidates = self.keys.candidates(header.alg, header.kid.as_deref()).await;
        if candidates.is_empty() {
            return Err(deny(format!("no key for kid {:?} and algorithm {:?}", header.kid, header.alg)));
        }
        let validation = self.validation(header.alg);
        let mut last = None;
        let mut claims = None;
        for key in &candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(err) => last = Some(err),
            }
        }
        let claims = claims.ok_or_else(|| AuthError::Denied(Box::new(last.expect("a key was tried"))))?;
        if let Some(max) = self.settings.max_lifetime {
            let (Some(iat), Some(exp)) = (numeric_date(&claims, "iat"), numeric_date(&claims, "exp")) else {
                return Err(deny("no iat, so the lifetime is unknown"));
            };
            // An `iat` in the future would let a long-lived token pass as a
            // short one.
            if iat > unix_now_f64() + self.settings.leeway.as_secs_f64() {
                return Err(deny("iat is in the future"));
            }
            if exp - iat > max.as_secs_f64() {
                return Err(deny("lifetime over jwt_max_lifetime"));
            }
        }
        let mut command: Map<String, Value> = claims.clone();
        command.retain(|name, _| !REGISTERED_CLAIMS.contains(&name.as_str()));
        let body = serde_json::to_vec(&command).map_err(|e| AuthError::Denied(Box::new(e)))?;
        let (spec, ignored) = CommandSpec::from_json(&body).map_err(|e| AuthError::Denied(Box::new(e)))?;
        if !ignored.is_empty() {
            tracing::debug!(fields = ?ignored, "token has claims this server ignores");
        }
        Ok((spec, claims))
    }
}

/// A NumericDate claim in seconds; JSON numbers with a fraction (as
/// `Date.now() / 1000` gives) count too.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Option<f64> {
    claims.get(name)?.as_f64().filter(|f| f.is_finite() && *f >= 0.0)
}

/// Unix time now, in seconds with their fraction.
fn unix_now_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A token with a confirmation claim `cnf` is bound to the client
/// certificate whose SHA-256 thumbprint is its `x5t#S256` (RFC 8705 §3):
/// only a connection that presented that certificate may use it. A `cnf`
/// this server cannot check (no `x5t#S256`, another method) refuses the
/// token rather than ignoring the binding.
fn certificate_matches(claims: &Map<String, Value>, cert: Option<&ClientCert>) -> Result<(), AuthError> {
    let Some(cnf) = claims.get("cnf") else { return Ok(()) };
    let Some(thumbprint) = cnf.get("x5t#S256").and_then(Value::as_str) else {
        return Err(deny("cnf without x5t#S256"));
    };
    match cert {
        None => Err(deny("token is bound to a client certificate and the connection presented none")),
        Some(cert) if cert.x5t_s256() == thumbprint => Ok(()),
        Some(_) => Err(deny("token is bound to another client certificate")),
    }
}

/// A token with a `k8s` claim (`{"namespace", "pod", "container"}`, each
/// optional) is for that pod only: a kubectl exec or attach of another
/// namespace, pod or container, or a request that is no kubectl's, is
/// refused. Anything but an object of strings refuses the token.
fn pod_matches(claims: &Map<String, Value>, exec: Option<&KubeExec>) -> Result<(), AuthError> {
    let Some(pinned) = claims.get("k8s") else { return Ok(()) };
    let Some(pinned) = pinned.as_object() else { return Err(deny("k8s is not an object")) };
    let Some(exec) = exec else { return Err(deny("token is for a Kubernetes pod and this is no exec or attach")) };
    for (name, value) in pinned {
        let asked = match name.as_str() {
            "namespace" => Some(exec.namespace.as_str()),
            "pod" => Some(exec.pod.as_str()),
            "container" => exec.container.as_deref(),
            other => return Err(deny(format!("k8s.{other} is not a field this server knows"))),
        };
        let Some(value) = value.as_str() else { return Err(deny(format!("k8s.{name} is not a string"))) };
        if asked != Some(value) {
            return Err(deny(format!("token is for another {name}")));
        }
    }
    Ok(())
}

/// A denial for `why`.
fn deny(why: impl Into<String>) -> AuthError {
    AuthError::Denied(why.into().into())
}

/// A `crit` header names extensions the verifier must understand; this one
/// understands none (RFC 7515 §4.1.11).
fn reject_critical_header(token: &str) -> Result<(), AuthError> {
    let encoded = token.split('.').next().unwrap_or_default();
    let raw = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| deny("header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&raw).map_err(|_| deny("header is not a JSON object"))?;
    if header.contains_key("crit") {
        return Err(deny("token has a crit header"));
    }
    Ok(())
}

/// The key under which a token id is remembered: a digest of issuer and
/// `jti`, so ids from different issuers do not collide and stored keys have
/// a fixed size.
fn replay_key(claims: &Map<String, Value>, jti: &str) -> String {
    let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    hex(&Sha256::new().chain_update(issuer.as_bytes()).chain_update([0]).chain_update(jti.as_bytes()).finalize())
}

impl<R: ReplayStore> Authorizer for JwtAuthorizer<R> {
    fn backend_name(&self) -> &'static str {
        "jwt"
    }

    async fn authorize(&self, token: &str, request: &Parts) -> Result<CommandSpec, AuthError> {
        let (spec, claims) = self.verify(token).await?;
        // Before its id is used up: a bound token shown without its
        // certificate stays good for the one who holds both.
        certificate_matches(&claims, request.extensions.get::<ClientCert>())?;
        pod_matches(&claims, request.extensions.get::<KubeExec>())?;
        let jti = match claims.get("jti") {
            Some(Value::String(jti)) => Some(jti.as_str()),
            Some(_) => return Err(deny("jti is not a string")),
            None if self.settings.require_jti => return Err(deny("no jti")),
            None => None,
        };
        if let Some(jti) = jti {
            // `exp` passed validation, so it is there. The verifying crate
            // rounds a fractional `exp` and compares it with the current
            // whole second, so a token passes until the second after
            // `exp + leeway` (`exp` rounded up, to be sure) has begun; its
            // id is remembered until then.
            let exp = numeric_date(&claims, "exp").ok_or_else(|| deny("unreadable exp"))?;
            let until = (exp.ceil() as u64).saturating_add(self.settings.leeway.as_secs()).saturating_add(1);
            match self.replay.first_use(&replay_key(&claims, jti), until).await {
                Ok(true) => {}
                Ok(false) => return Err(deny("replayed jti")),
                Err(err) => return Err(AuthError::Unavailable(Box::new(err))),
            }
        }
        Ok(spec)
    }
}
