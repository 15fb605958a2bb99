//! [`Report`]: an error and its causes on one line, for log fields.
//!
//! Library errors keep their causes as [`source`](std::error::Error::source)s
//! rather than flattening them into strings; a log line shows them all.
//!
//! ```
//! use ws_subprocess::report::Report;
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("backend failed")]
//! struct Outer(#[source] std::io::Error);
//!
//! let err = Outer(std::io::Error::other("connection refused"));
//! assert_eq!(Report(&err).to_string(), "backend failed: connection refused");
//! ```

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `: `.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
