//! Short plain-text answers, the only kind of error body this server sends.
//!
//! They are generic over the response body, so every layer of this crate
//! can answer in the body type of the service it wraps (anything that can
//! be made from [`Bytes`], such as `http_body_util::Full<Bytes>` or axum's
//! `Body`).
//!
//! ```
//! use http::StatusCode;
//! use ws_subprocess::reply;
//!
//! let response: http::Response<reply::Body> = reply::plain(StatusCode::NOT_FOUND, "not found");
//! assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
//! ```

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

/// The response body of the innermost service,
/// [`ServeSubprocess`](crate::session::ServeSubprocess).
pub type Body = http_body_util::Full<Bytes>;

/// The message of a refusal made here, kept as a response extension so an
/// outer layer can say it in another form (the Kubernetes API's `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said(pub std::sync::Arc<str>);

/// A `text/plain` response whose body is `message` and a newline.
pub fn plain<B: From<Bytes>>(status: StatusCode, message: &str) -> Response<B> {
    with_headers(status, message, HeaderMap::new())
}

/// Like [`plain`], with extra headers.
pub fn with_headers<B: From<Bytes>>(status: StatusCode, message: &str, headers: HeaderMap) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.extensions_mut().insert(Said(message.into()));
    response
}

/// 503 with `Retry-After: 1`: the server is at a limit now, not for good.
pub fn retry_later<B: From<Bytes>>(message: &str) -> Response<B> {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    with_headers(StatusCode::SERVICE_UNAVAILABLE, message, headers)
}
