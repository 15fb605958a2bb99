//! The controller backend: the original ws-subprocess contract.
//!
//! `GET <controller_url>?token=<T>`; exactly `200` with a JSON
//! [`CommandSpec`] allows, any other answer denies. A client's verified
//! certificate is named in `X-Client-Cert-Subject` and
//! `X-Client-Cert-Sha256`; with one, the request may carry no token (then
//! there is no `token` parameter) and the controller decides by the
//! certificate alone.

use std::time::Duration;

use http::header::{ORIGIN, USER_AGENT};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use url::Url;

use super::client::{BodyError, backend_client, read_capped};
use super::{AuthError, Authorizer};
use crate::connection::{ClientCert, X_CLIENT_CERT_SHA256, X_CLIENT_CERT_SUBJECT};
use crate::forwarded::{Forwarded, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::kubernetes::KubeExec;
use crate::spec::CommandSpec;

/// Largest controller answer read; a longer one is a failed backend.
pub const MAX_CONTROLLER_BODY: usize = 64 * 1024;

/// How to reach the controller.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// The controller; its own query string is kept.
    pub url: Url,
    /// Bound on the whole request: connect, headers and body.
    pub timeout: Duration,
    /// Client request headers copied to the controller, beyond the
    /// `X-Forwarded-*`, `Origin` and `User-Agent` always sent.
    pub forward_headers: Vec<HeaderName>,
}

/// Asks a controller about each token, over one shared connection pool.
///
/// Redirects are never followed, the body is capped at
/// [`MAX_CONTROLLER_BODY`], and proxies from the environment are not used
/// (see [`backend_client`](super::backend_client)).
#[derive(Debug, Clone)]
pub struct ControllerAuthorizer {
    client: reqwest::Client,
    settings: ControllerSettings,
}

impl ControllerAuthorizer {
    /// A controller backend with its own client (see [`backend_client`](super::backend_client)).
    pub fn new(settings: ControllerSettings) -> Result<Self, reqwest::Error> {
        Ok(Self::with_client(backend_client(settings.timeout)?, settings))
    }

    /// A controller backend using `client`, whose limits then apply.
    pub fn with_client(client: reqwest::Client, settings: ControllerSettings) -> Self {
        Self { client, settings }
    }

    /// The controller URL with `token=T` added (none for an empty token);
    /// a `token` the configured URL already has is replaced, so the
    /// controller sees exactly the client's.
    fn request_url(&self, token: &str, kube: Option<&KubeExec>) -> Url {
        let mut url = self.settings.url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| name != "token")
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        let mut query = url.query_pairs_mut();
        query.clear().extend_pairs(kept);
        if !token.is_empty() {
            query.append_pair("token", token);
        }
        // What kubectl asked for: a request, for the controller to judge.
        if let Some(exec) = kube {
            query.append_pair("namespace", &exec.namespace).append_pair("pod", &exec.pod);
            if let Some(container) = &exec.container {
                query.append_pair("container", container);
            }
            for arg in &exec.command {
                query.append_pair("command", arg);
            }
            query
                .append_pair("tty", if exec.tty { "true" } else { "false" })
                .append_pair("stdin", if exec.stdin { "true" } else { "false" })
                .append_pair("subresource", exec.subresource());
        }
        drop(query);
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// The forwarding headers (believed only from trusted proxies, see
    /// [`Forwarded`]), plus `Origin`, `User-Agent` and the configured extra
    /// headers of the client, and the identity of its verified certificate
    /// (never a client's own `X-Client-Cert-*` headers).
    fn forwarded_headers(&self, parts: &Parts) -> http::HeaderMap {
        let facts = Forwarded::of_request(parts);
        let mut headers = http::HeaderMap::new();
        if let Some(chain) = facts.chain {
            headers.insert(X_FORWARDED_FOR, chain);
        }
        headers.insert(X_FORWARDED_PROTO, facts.proto);
        if let Some(host) = facts.host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        for name in [ORIGIN, USER_AGENT].iter().chain(&self.settings.forward_headers) {
            if *name == X_CLIENT_CERT_SUBJECT || *name == X_CLIENT_CERT_SHA256 {
                continue;
            }
            for value in parts.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(cert) = parts.extensions.get::<ClientCert>() {
            if let Ok(subject) = HeaderValue::from_str(cert.subject()) {
                headers.insert(X_CLIENT_CERT_SUBJECT, subject);
            }
            headers.insert(
                X_CLIENT_CERT_SHA256,
                HeaderValue::from_str(&cert.sha256_hex()).expect("hex is a header value"),
            );
        }
        headers
    }
}

impl Authorizer for ControllerAuthorizer {
    fn backend_name(&self) -> &'static str {
        "controller"
    }

    fn identifies_by_certificate(&self) -> bool {
        true
    }

    async fn authorize(&self, token: &str, parts: &Parts) -> Result<CommandSpec, AuthError> {
        let response = self
            .client
            .get(self.request_url(token, parts.extensions.get::<KubeExec>()))
            .headers(self.forwarded_headers(parts))
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        if status != StatusCode::OK {
            let why = format!("controller answered {status}").into();
            return Err(if status.is_redirection() || status.is_server_error() {
                AuthError::BackendFailed(why)
            } else {
                AuthError::Denied(why)
            });
        }
        let body = read_capped(response, MAX_CONTROLLER_BODY).await.map_err(|e| match e {
            BodyError::Read(err) => request_failed(err),
            too_long => AuthError::BackendFailed(too_long.into()),
        })?;
        let (spec, ignored) = CommandSpec::from_json(&body)?;
        if !ignored.is_empty() {
            tracing::debug!(fields = ?ignored, "controller sent fields this server ignores");
        }
        Ok(spec)
    }
}

/// The error of a failed request, without its URL, which holds the token.
fn request_failed(err: reqwest::Error) -> AuthError {
    if err.is_timeout() {
        return AuthError::BackendTimeout;
    }
    AuthError::BackendFailed(Box::new(err.without_url()))
}
