//! Settings: one name per setting, merged from defaults, a TOML file, the
//! environment and command-line flags.
//!
//! [`Config::figment`] lists the sources in priority order; [`Config::load`]
//! extracts and validates them once, so the rest of the program never checks
//! a setting again. Every error names the key and the source it came from.
//!
//! ```
//! use figment::{Figment, providers::Serialized};
//! use ws_subprocess::Config;
//!
//! let figment = Figment::from(Serialized::defaults(Config::default()))
//!     .merge(("kill_grace", "250ms"));
//! let config = Config::from_figment(&figment).unwrap();
//! assert_eq!(config.kill_grace, std::time::Duration::from_millis(250));
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// Prefix of every environment variable the server reads.
pub const ENV_PREFIX: &str = "WS_SUBPROCESS_";
/// The configuration file read when no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "ws-subprocess.toml";

/// Every setting of the server, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to serve on: `host:port`, `:port`, or `unix:/path/to.sock`.
    pub listen: ListenAddr,
    /// The WebSocket endpoint.
    pub path: String,
    /// Which backend checks tokens.
    pub auth: AuthBackend,
    /// Query parameter carrying the token.
    pub token_param: String,
    /// The controller asked about each token.
    pub controller_url: Url,
    /// Bound on the whole controller request, connect included.
    #[serde(with = "humantime_serde")]
    pub controller_timeout: Duration,
    /// Extra client request headers copied to the controller.
    #[serde(deserialize_with = "list_or_csv")]
    pub controller_forward_headers: Vec<String>,
    /// JWT algorithms accepted (required for `auth = "jwt"`).
    #[serde(deserialize_with = "list_or_csv")]
    pub jwt_algorithms: Vec<String>,
    /// File holding the HMAC secret (at least 32 bytes).
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM file holding a public key (RSA, EC or Ed25519).
    pub jwt_public_key_file: Option<PathBuf>,
    /// JSON Web Key Set file; keys are selected by `kid`.
    pub jwt_jwks_file: Option<PathBuf>,
    /// JSON Web Key Set URL; fetched, cached, refreshed on an unknown `kid`.
    pub jwt_jwks_url: Option<Url>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// When set, tokens whose `exp - iat` exceeds this are rejected.
    #[serde(with = "humantime_serde")]
    pub jwt_max_lifetime: Option<Duration>,
    /// Reject tokens without `jti`.
    pub jwt_require_jti: bool,
    /// Where used `jti`s are remembered: `memory`, or a `redis://` URL.
    pub jwt_replay_store: ReplayStoreAddr,
    /// If non-empty, only these absolute paths may run.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_commands: Vec<PathBuf>,
    /// If non-empty, the `Origin` header must equal one of these.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
    /// Start processes with an empty environment (plus `pass_env` and the
    /// spec's `env`).
    pub clear_env: bool,
    /// Server variables passed through when `clear_env` is on.
    #[serde(deserialize_with = "list_or_csv")]
    pub pass_env: Vec<String>,
    /// First signal sent to a process group when a session ends early.
    pub kill_signal: KillSignal,
    /// Wait after `kill_signal` (and after exit, for leftover output) before
    /// `SIGKILL`.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Concurrent sessions; beyond it new requests get 503.
    pub max_sessions: usize,
    /// Largest message accepted from a client.
    pub max_message_size: ByteSize,
    /// Interval between keepalive pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A peer silent for this long is dropped.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// When set, a session with no input or output for this long is ended.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// When set, a session is ended after this long, whatever it does.
    #[serde(with = "humantime_serde")]
    pub max_session_duration: Option<Duration>,
    /// Bound on graceful shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// PEM certificate chain: with `tls_key_file`, serve `wss://` directly.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Files served beside the endpoint (for example a terminal page).
    pub static_dir: Option<PathBuf>,
    /// Where Prometheus metrics are served (`/metrics`); off when unset.
    pub metrics_listen: Option<ListenAddr>,
    /// Log line format.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ListenAddr::Tcp("127.0.0.1:8866".into()),
            path: "/ws".into(),
            auth: AuthBackend::Controller,
            token_param: "token".into(),
            controller_url: Url::parse("http://127.0.0.1/ws-controller").expect("valid default"),
            controller_timeout: Duration::from_secs(5),
            controller_forward_headers: Vec::new(),
            jwt_algorithms: Vec::new(),
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            jwt_jwks_url: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(5),
            jwt_max_lifetime: None,
            jwt_require_jti: false,
            jwt_replay_store: ReplayStoreAddr::Memory,
            allowed_commands: Vec::new(),
            allowed_origins: Vec::new(),
            clear_env: false,
            pass_env: Vec::new(),
            kill_signal: KillSignal::Int,
            kill_grace: Duration::from_secs(1),
            max_sessions: 1024,
            max_message_size: ByteSize::mib(1),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(60),
            idle_timeout: None,
            max_session_duration: None,
            shutdown_timeout: Duration::from_secs(10),
            tls_cert_file: None,
            tls_key_file: None,
            static_dir: None,
            metrics_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(Vec<String>);

impl Config {
    /// The sources of the configuration, lowest priority first:
    ///
    /// 1. built-in defaults ([`Config::default`]);
    /// 2. the TOML file: `config_file` if given (it must exist), else
    ///    `./ws-subprocess.toml` if present;
    /// 3. `WS_SUBPROCESS_*` environment variables (`WS_SUBPROCESS_CONFIG`
    ///    names the file and is not a setting);
    /// 4. `flags`, typically the command line.
    pub fn figment(config_file: Option<&Path>, flags: impl Provider) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match config_file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(vec![format!(
                    "config file `{}` does not exist or is not a file",
                    path.display()
                )]));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        Ok(figment.merge(EnvVars(Env::prefixed(ENV_PREFIX).ignore(&["config"]))).merge(flags))
    }

    /// Extracts and validates a configuration from `figment`.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        reject_unknown_keys(figment)?;
        let config: Config = figment.extract().map_err(|e| {
            ConfigError(
                e.into_iter().map(|e| describe(figment, &e.path, &e.kind.to_string(), e.metadata.as_ref())).collect(),
            )
        })?;
        let problems: Vec<String> = config
            .problems()
            .into_iter()
            .map(|(key, why)| describe(figment, &[key.to_string()], why, figment.find_metadata(key)))
            .collect();
        if problems.is_empty() { Ok(config) } else { Err(ConfigError(problems)) }
    }

    /// Reads the configuration from its usual sources (see
    /// [`Config::figment`]).
    pub fn load(config_file: Option<&Path>, flags: impl Provider) -> Result<Self, ConfigError> {
        Self::from_figment(&Self::figment(config_file, flags)?)
    }

    /// Checks that need more than a value's type.
    fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if !self.path.starts_with('/') || self.path.contains(['?', '#']) {
            problems.push(("path", "must start with `/` and hold no query"));
        }
        if self.path == "/healthz" {
            problems.push(("path", "`/healthz` is the health check"));
        }
        if self.token_param.is_empty() {
            problems.push(("token_param", "must not be empty"));
        }
        if !matches!(self.controller_url.scheme(), "http" | "https") {
            problems.push(("controller_url", "must be an http or https URL"));
        }
        if self.controller_timeout.is_zero() {
            problems.push(("controller_timeout", "must be more than zero"));
        }
        if self.controller_forward_headers.iter().any(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err()) {
            problems.push(("controller_forward_headers", "holds an invalid header name"));
        }
        if let Some(url) = &self.jwt_jwks_url
            && !matches!(url.scheme(), "http" | "https")
        {
            problems.push(("jwt_jwks_url", "must be an http or https URL"));
        }
        if self.auth == AuthBackend::Jwt {
            problems.extend(self.jwt_problems());
        }
        // Port 0 picks a free port each time, so only fixed addresses clash.
        let fixed = !matches!(&self.listen, ListenAddr::Tcp(addr) if addr.ends_with(":0"));
        if fixed && self.metrics_listen.as_ref().is_some_and(|m| *m == self.listen) {
            problems.push(("metrics_listen", "must differ from listen"));
        }
        if self.static_dir.as_ref().is_some_and(|dir| !dir.is_dir()) {
            problems.push(("static_dir", "is not a directory"));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.push(("tls_cert_file", "tls_cert_file and tls_key_file go together"));
        }
        if self.allowed_commands.iter().any(|c| !c.is_absolute()) {
            problems.push(("allowed_commands", "must hold absolute paths"));
        }
        if self.max_sessions == 0 {
            problems.push(("max_sessions", "must be at least 1"));
        }
        if self.max_message_size.as_u64() == 0 || self.max_message_size.as_u64() > usize::MAX as u64 {
            problems.push(("max_message_size", "must be more than zero"));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            problems.push(("idle_timeout", "must be more than zero (leave it unset for no limit)"));
        }
        if self.max_session_duration.is_some_and(|d| d.is_zero()) {
            problems.push(("max_session_duration", "must be more than zero (leave it unset for no limit)"));
        }
        if self.ping_interval.is_zero() {
            problems.push(("ping_interval", "must be more than zero"));
        }
        if self.pong_timeout <= self.ping_interval {
            problems.push(("pong_timeout", "must be longer than ping_interval"));
        }
        // Longer timers are surely mistakes, and would overflow clock
        // arithmetic further down.
        let day = Duration::from_secs(24 * 3600);
        for (key, value) in [
            ("controller_timeout", self.controller_timeout),
            ("kill_grace", self.kill_grace),
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("jwt_leeway", self.jwt_leeway),
        ]
        .into_iter()
        .chain(
            [("idle_timeout", self.idle_timeout), ("max_session_duration", self.max_session_duration)]
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?))),
        ) {
            if value > day {
                problems.push((key, "must be at most 24h"));
            }
        }
        problems
    }
}

impl Config {
    /// The JWT settings a JWT backend cannot start without.
    fn jwt_problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.jwt_algorithms.is_empty() {
            problems.push(("jwt_algorithms", "is required when auth is `jwt`"));
        }
        if self.jwt_algorithms.iter().any(|a| jwt_algorithm_family(a).is_none()) {
            problems.push((
                "jwt_algorithms",
                "holds an unknown algorithm; known: HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
            ));
        }
        let keys = [&self.jwt_secret_file, &self.jwt_public_key_file, &self.jwt_jwks_file];
        if keys.iter().all(|k| k.is_none()) && self.jwt_jwks_url.is_none() {
            problems.push((
                "jwt_secret_file",
                "auth `jwt` needs a key: jwt_secret_file, jwt_public_key_file, jwt_jwks_file or jwt_jwks_url",
            ));
        }
        let hmac = self.jwt_algorithms.iter().any(|a| jwt_algorithm_family(a) == Some("hmac"));
        if self.jwt_secret_file.is_some() && !hmac {
            problems.push(("jwt_secret_file", "is set but jwt_algorithms allows no HS* algorithm"));
        }
        problems
    }
}

/// The key family of a JWT algorithm name, `None` for unknown names
/// (`none` among them).
pub fn jwt_algorithm_family(name: &str) -> Option<&'static str> {
    match name {
        "HS256" | "HS384" | "HS512" => Some("hmac"),
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => Some("rsa"),
        "ES256" | "ES384" => Some("ec"),
        "EdDSA" => Some("ed"),
        _ => None,
    }
}

/// Every key [`Config`] knows, from its serialized default.
fn known_keys() -> BTreeSet<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
        _ => unreachable!("Config serializes to a map"),
    }
}

/// Names the source of each unknown key, which serde's own error cannot do
/// once the sources are merged.
fn reject_unknown_keys(figment: &Figment) -> Result<(), ConfigError> {
    let known = known_keys();
    let data = figment.data().map_err(|e| ConfigError(vec![e.to_string()]))?;
    let problems: Vec<String> = data
        .values()
        .flat_map(|dict| dict.keys())
        .filter(|key| !known.contains(key.as_str()))
        .map(|key| describe(figment, std::slice::from_ref(key), "unknown key", figment.find_metadata(key)))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems)) }
}

fn describe(figment: &Figment, path: &[String], what: &str, metadata: Option<&Metadata>) -> String {
    // Profile names are an implementation detail of figment; users know keys.
    let path: Vec<&String> = path.iter().filter(|p| p.as_str() != "default").collect();
    let key = path.first().map(|s| s.as_str()).unwrap_or("configuration");
    match metadata {
        Some(md) => match &md.source {
            Some(figment::Source::File(file)) => format!("`{key}`: {what} [from {} `{}`]", md.name, file.display()),
            _ => format!("`{key}`: {what} [from {} `{}`]", md.name, md.interpolate(figment.profile(), &path)),
        },
        None => format!("`{key}`: {what}"),
    }
}

/// Accepts a TOML/JSON list, or a comma-separated string as an environment
/// variable or flag most naturally gives it.
fn list_or_csv<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(de)? {
        ListOrCsv::List(items) => items.into_iter().map(T::from).collect(),
        ListOrCsv::Csv(s) => {
            s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| T::from(s.to_string())).collect()
        }
    })
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`host:port`; a host name is resolved at bind time).
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path".into());
            }
            return Ok(Self::Unix(path.into()));
        }
        // Go's `-listen :8866` means every interface.
        let addr = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
        if addr.parse::<SocketAddr>().is_ok() {
            return Ok(Self::Tcp(addr));
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(Self::Tcp(addr)),
            _ => Err(format!("`{s}` is not `host:port`, `:port` or `unix:/path`")),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Serializes a type through its `Display` and deserializes it through its
/// `FromStr`, so config values read as they are written.
macro_rules! serde_via_str {
    ($ty:ty, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(Visitor)
            }
        }
    };
}

serde_via_str!(ListenAddr, "an address: `host:port`, `:port` or `unix:/path`");
serde_via_str!(KillSignal, "a signal name such as `SIGINT`");
serde_via_str!(ReplayStoreAddr, "`memory` or a `redis://` URL");

/// Where a JWT backend remembers used token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStoreAddr {
    /// In this process: enough for a single instance.
    Memory,
    /// A Redis server shared by every instance.
    Redis(Url),
}

impl FromStr for ReplayStoreAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            return Ok(Self::Memory);
        }
        match Url::parse(s) {
            Ok(url) if matches!(url.scheme(), "redis" | "redis+unix" | "unix") => Ok(Self::Redis(url)),
            _ => Err(format!("`{s}` is neither `memory` nor a `redis://` URL")),
        }
    }
}

impl fmt::Display for ReplayStoreAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(url) => url.fmt(f),
        }
    }
}

/// Token-checking backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackend {
    /// Ask the controller at `controller_url`.
    Controller,
    /// Verify JSON Web Tokens locally (`jwt_*` keys).
    Jwt,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Signals a session may be ended with before `SIGKILL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSignal {
    /// `SIGHUP`
    Hup,
    /// `SIGINT`
    Int,
    /// `SIGQUIT`
    Quit,
    /// `SIGTERM`
    Term,
    /// `SIGKILL`: no grace at all.
    Kill,
    /// `SIGUSR1`
    Usr1,
    /// `SIGUSR2`
    Usr2,
}

const SIGNAL_NAMES: [(KillSignal, &str); 7] = [
    (KillSignal::Hup, "SIGHUP"),
    (KillSignal::Int, "SIGINT"),
    (KillSignal::Quit, "SIGQUIT"),
    (KillSignal::Term, "SIGTERM"),
    (KillSignal::Kill, "SIGKILL"),
    (KillSignal::Usr1, "SIGUSR1"),
    (KillSignal::Usr2, "SIGUSR2"),
];

impl KillSignal {
    /// The operating-system signal.
    pub fn signal(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            Self::Hup => Signal::HUP,
            Self::Int => Signal::INT,
            Self::Quit => Signal::QUIT,
            Self::Term => Signal::TERM,
            Self::Kill => Signal::KILL,
            Self::Usr1 => Signal::USR1,
            Self::Usr2 => Signal::USR2,
        }
    }
}

impl FromStr for KillSignal {
    type Err = String;

    /// Accepts `SIGINT`, `INT` or `sigint`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        SIGNAL_NAMES.iter().find(|(_, n)| *n == name).map(|(sig, _)| *sig).ok_or_else(|| {
            format!("unknown signal `{s}`; one of SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGKILL, SIGUSR1, SIGUSR2")
        })
    }
}

impl fmt::Display for KillSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = SIGNAL_NAMES.iter().find(|(sig, _)| sig == self).map(|(_, n)| *n);
        f.write_str(name.unwrap_or("SIGKILL"))
    }
}

/// `WS_SUBPROCESS_*` variables, reported by their full names in errors.
struct EnvVars(Env);

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable")
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("_").to_ascii_uppercase()))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.0.data()
    }
}

/// A figment provider for settings given as command-line flags: each
/// `(key, value)` pair is reported as the flag `--key-name`.
#[derive(Debug, Default, Clone)]
pub struct FlagValues(Dict);

impl FlagValues {
    /// No flags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (a config key such as `kill_grace`) to `value`.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        let value = figment::value::Value::serialize(value).expect("flag values serialize");
        self.0.insert(key.to_string(), value);
        self
    }
}

impl Provider for FlagValues {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag").interpolater(|_, keys| format!("--{}", keys.join(".").replace('_', "-")))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
// `Jail` closures return figment's large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in_jail(flags: FlagValues) -> Result<Config, ConfigError> {
        Config::load(None, flags)
    }

    #[test]
    fn defaults_match_the_spec() {
        Jail::expect_with(|_| {
            let config = load_in_jail(FlagValues::new()).unwrap();
            assert_eq!(config, Config::default());
            assert_eq!(config.listen, ListenAddr::Tcp("127.0.0.1:8866".into()));
            assert_eq!(config.max_message_size.as_u64(), 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags_win() {
        Jail::expect_with(|jail| {
            jail.create_file(
                DEFAULT_CONFIG_FILE,
                "path = \"/file\"\nkill_grace = \"3s\"\nmax_sessions = 7\ntoken_param = \"t\"\n",
            )?;
            jail.set_env("WS_SUBPROCESS_KILL_GRACE", "250ms");
            jail.set_env("WS_SUBPROCESS_MAX_SESSIONS", "8");
            let mut flags = FlagValues::new();
            flags.set("max_sessions", 9);
            let config = load_in_jail(flags).unwrap();
            assert_eq!(config.path, "/file");
            assert_eq!(config.kill_grace, Duration::from_millis(250));
            assert_eq!(config.max_sessions, 9);
            assert_eq!(config.token_param, "t");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_its_source() {
        Jail::expect_with(|jail| {
            jail.create_file(DEFAULT_CONFIG_FILE, "kill_grce = \"3s\"\n")?;
            let err = load_in_jail(FlagValues::new()).unwrap_err().to_string();
            assert!(err.contains("`kill_grce`: unknown key"), "{err}");
            assert!(err.contains("ws-subprocess.toml"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_NOPE", "1");
            let err = load_in_jail(FlagValues::new()).unwrap_err().to_string();
            assert!(err.contains("WS_SUBPROCESS_NOPE"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_key_and_source() {
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_KILL_GRACE", "soon");
            let err = load_in_jail(FlagValues::new()).unwrap_err().to_string();
            assert!(err.contains("kill_grace") && err.contains("WS_SUBPROCESS_KILL_GRACE"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set("kill_grace", "2days");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(err.contains("`kill_grace`: must be at most 24h"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set("listen", "unix:/tmp/ws.sock").set("metrics_listen", "unix:/tmp/ws.sock");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(err.contains("`metrics_listen`: must differ from listen"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let mut flags = FlagValues::new();
            flags.set("path", "ws");
            let err = load_in_jail(flags).unwrap_err().to_string();
            assert!(err.contains("`path`") && err.contains("--path"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn lists_accept_comma_separated_strings() {
        Jail::expect_with(|jail| {
            jail.set_env("WS_SUBPROCESS_ALLOWED_COMMANDS", "/bin/cat, /bin/echo");
            jail.set_env("WS_SUBPROCESS_ALLOWED_ORIGINS", r#"["https://a.example"]"#);
            let config = load_in_jail(FlagValues::new()).unwrap();
            assert_eq!(config.allowed_commands, [PathBuf::from("/bin/cat"), "/bin/echo".into()]);
            assert_eq!(config.allowed_origins, ["https://a.example"]);
            Ok(())
        });
    }

    #[test]
    fn listen_addresses_parse_like_the_go_program() {
        assert_eq!(":8866".parse(), Ok(ListenAddr::Tcp("0.0.0.0:8866".into())));
        assert_eq!("localhost:1".parse(), Ok(ListenAddr::Tcp("localhost:1".into())));
        assert_eq!("unix:/tmp/s".parse(), Ok(ListenAddr::Unix("/tmp/s".into())));
        assert!("8866".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!("SIGTERM".parse(), Ok(KillSignal::Term));
        assert_eq!("hup".parse(), Ok(KillSignal::Hup));
        assert!("SIGFOO".parse::<KillSignal>().is_err());
        assert_eq!(KillSignal::Int.to_string(), "SIGINT");
    }
}
