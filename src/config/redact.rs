//! Redaction: what `ws-subprocess config` and configuration errors show
//! in place of secrets. A URL's userinfo and the values of query
//! parameters named like credentials are redacted wherever a URL appears;
//! a setting named like a secret (`*secret*`, `*password*`, `*token*`, …)
//! is redacted whole, unless it names a file or directory or is
//! `token_param`, so that a secret-bearing setting added later is hidden
//! without anyone remembering to list it.

use serde_json::Value;
use url::{Position, Url};

/// Shown in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// Parts of a setting's name that mark it as a secret.
const SECRET_WORDS: &[&str] = &["secret", "password", "passwd", "token", "credential", "private", "api_key"];

/// Parts of a URL query parameter's name that mark its value as a secret.
const SECRET_PARAM_WORDS: &[&str] =
    &["secret", "password", "passwd", "pwd", "pass", "token", "key", "sig", "auth", "credential", "session"];

/// Settings named like secrets that hold none: the name of the query
/// parameter carrying tokens (not a token).
const NOT_SECRET: &[&str] = &["token_param"];

/// `true` for a setting whose whole value is a secret: named like one, and
/// not the path of a file or directory holding it.
pub(super) fn is_secret_key(key: &str) -> bool {
    let named = SECRET_WORDS.iter().any(|word| key.contains(word));
    let path = key.ends_with("_file") || key.ends_with("_dir");
    named && !path && !NOT_SECRET.contains(&key)
}

/// `value` of the setting `key`, with every secret replaced by [`REDACTED`].
pub(super) fn redact(key: &str, value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        _ if is_secret_key(key) => Value::String(REDACTED.into()),
        value => redact_urls(value),
    }
}

/// `value` with the secrets of every URL in it redacted.
fn redact_urls(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(redact_url(text).unwrap_or_else(|| text.clone())),
        Value::Array(items) => Value::Array(items.iter().map(redact_urls).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), redact(k, v))).collect()),
        other => other.clone(),
    }
}

/// `text` with its password (or a userinfo that is only a user name, often
/// a token) and the values of query parameters named like credentials
/// replaced by [`REDACTED`]; `None` if `text` is no URL or has nothing to
/// hide.
pub(super) fn redact_url(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    let mut redacted = false;
    let mut shown = match (url.username(), url.password()) {
        (_, Some(_)) => {
            redacted = true;
            format!(
                "{}:{REDACTED}{}",
                &url[..Position::AfterUsername],
                &url[Position::AfterPassword..Position::AfterPath]
            )
        }
        (user, None) if !user.is_empty() => {
            redacted = true;
            format!(
                "{}{REDACTED}{}",
                &url[..Position::BeforeUsername],
                &url[Position::AfterUsername..Position::AfterPath]
            )
        }
        _ => url[..Position::AfterPath].to_string(),
    };
    if let Some(query) = url.query() {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => {
                    redacted = true;
                    format!("{name}={REDACTED}")
                }
                _ => pair.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown.push_str(&url[Position::AfterQuery..]);
    redacted.then_some(shown)
}

/// `text` (an error message) with the secrets of every URL in it redacted,
/// even of a URL too broken to parse: then everything between `://` and
/// the last `@` of the word is taken for its userinfo.
pub(super) fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(&redact_url(word).or_else(|| redact_userinfo(word)).unwrap_or_else(|| word.clone()));
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '`' | '"' | '\'') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `word` with what looks like the userinfo of a URL (`scheme://…@`)
/// redacted, keeping a user name before a `:`; `None` without one.
fn redact_userinfo(word: &str) -> Option<String> {
    let start = word.find("://")? + "://".len();
    let at = start + word[start..].rfind('@')?;
    let shown = match word[start..at].split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.into(),
    };
    Some(format!("{}{shown}{}", &word[..start], &word[at..]))
}

/// `true` for a query parameter whose value is likely a credential.
fn is_secret_param(name: &str) -> bool {
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy().to_ascii_lowercase();
    SECRET_PARAM_WORDS.iter().any(|word| name.contains(word))
}
