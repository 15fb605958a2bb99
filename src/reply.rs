//! Short plain-text answers, the only kind of error body this server sends.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

/// The response body of every service in this crate.
pub type Body = http_body_util::Full<Bytes>;

/// A `text/plain` response whose body is `message` and a newline.
pub fn plain(status: StatusCode, message: &str) -> Response<Body> {
    with_headers(status, message, HeaderMap::new())
}

/// Like [`plain`], with extra headers.
pub fn with_headers(status: StatusCode, message: &str, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
