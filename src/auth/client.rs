//! The HTTP client backends share (controller calls, key set fetches), and
//! the one way they read an answer: with a cap on its size.

use std::time::Duration;

/// The HTTP client backends share: every request bounded by `timeout`,
/// connect included; redirects never followed; proxies from the environment
/// not used, because a token must go only where it is configured to go.
pub fn backend_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        // Each idle connection holds a descriptor that sessions may need.
        .pool_max_idle_per_host(16)
        .user_agent(concat!("ws-subprocess/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than the cap.
    #[error("body over {0} bytes")]
    TooLong(usize),
    /// Reading failed (its URL, which may hold a token, is removed).
    #[error("reading the body failed")]
    Read(#[source] reqwest::Error),
}

/// Reads `response`'s body, refusing one longer than `limit` bytes before
/// holding more than that in memory.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLong(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read(e.without_url()))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLong(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
