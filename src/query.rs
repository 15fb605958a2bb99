//! [`SessionQuery`]: what a request's query string tells the server,
//! parsed once, at the token layer, into a typed value that travels to the
//! session in the request extensions.

use std::fmt;

/// The query parameters the server reads:
///
/// - the token (`token_param`, default `token`): the first non-empty one;
/// - `session=<id>`: the session a client starts or attaches to, repeated
///   so that a balancer can route on it (checked against the spec);
/// - `since=N`: output bytes of a named session the client already has.
///
/// Other parameters are left alone. A `since` that is not a number, or a
/// `since` or `session` given twice, is a [`QueryError`] (400): a client
/// that asked to resume must not silently get the whole history instead.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// The token, when the query carries one. The token layer takes it out
    /// before the request goes on, so no inner service holds it.
    pub token: Option<String>,
    /// `session=<id>`.
    pub session: Option<String>,
    /// `since=N`.
    pub since: Option<u64>,
}

// The token never reaches a log, not even through `{:?}`.
impl fmt::Debug for SessionQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionQuery")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("session", &self.session)
            .field("since", &self.since)
            .finish()
    }
}

/// Why a query string was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `since` is not a whole number of bytes.
    #[error("since must be a number of bytes")]
    BadSince,
    /// A parameter that must be given once came twice.
    #[error("{0} given more than once")]
    Repeated(&'static str),
}

impl SessionQuery {
    /// Parses the query string of `uri`, the token under `token_param`.
    pub fn parse(uri: &http::Uri, token_param: &str) -> Result<Self, QueryError> {
        let mut query = Self::default();
        for (name, value) in url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
            if name == token_param {
                if query.token.is_none() && !value.is_empty() {
                    query.token = Some(value.into_owned());
                }
            } else if name == "session" {
                if query.session.replace(value.into_owned()).is_some() {
                    return Err(QueryError::Repeated("session"));
                }
            } else if name == "since" {
                let since = value.parse().map_err(|_| QueryError::BadSince)?;
                if query.since.replace(since).is_some() {
                    return Err(QueryError::Repeated("since"));
                }
            }
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<SessionQuery, QueryError> {
        SessionQuery::parse(&format!("/ws?{query}").parse().unwrap(), "token")
    }

    #[test]
    fn reads_token_session_and_since() {
        let query = parse("token=a%20b&session=u42-main&since=17&other=x").unwrap();
        assert_eq!(query.token.as_deref(), Some("a b"));
        assert_eq!(query.session.as_deref(), Some("u42-main"));
        assert_eq!(query.since, Some(17));
        assert_eq!(parse("").unwrap(), SessionQuery::default());
    }

    #[test]
    fn the_first_non_empty_token_counts() {
        assert_eq!(parse("token=&token=t&token=u").unwrap().token.as_deref(), Some("t"));
        let custom = SessionQuery::parse(&"/ws?t=x&token=y".parse().unwrap(), "t").unwrap();
        assert_eq!(custom.token.as_deref(), Some("x"));
    }

    #[test]
    fn a_malformed_or_repeated_since_is_refused() {
        for bad in ["since=", "since=-1", "since=1e3", "since=abc", "since=18446744073709551616"] {
            assert_eq!(parse(bad), Err(QueryError::BadSince), "{bad}");
        }
        assert_eq!(parse("since=1&since=2"), Err(QueryError::Repeated("since")));
        assert_eq!(parse("session=a&session=b"), Err(QueryError::Repeated("session")));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", parse("token=secret-token").unwrap());
        assert!(!shown.contains("secret-token"), "{shown}");
    }
}
