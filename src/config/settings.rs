//! Every setting, declared once: its key, type, flag value name, default and
//! help text (the doc comment) come from one line each, and [`Config`], its
//! `Default` and the [`SETTINGS`] table the command line is built from are
//! generated from them. The environment variable is
//! `WS_SUBPROCESS_<KEY IN UPPER CASE>` and the flag `--<key-with-dashes>`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

use super::values::{AuthBackend, ClientAuth, JwtAlgorithm, LogFormat, ReplayStoreAddr, cidrs, list, via_str};
use crate::auth::Rate;
use crate::contain::CgroupSetting;
use crate::server::{ListenAddr, ServeSettings};
use crate::session::{KillSignal, SessionSettings};
use crate::spec::Percent;

/// One setting, as the command line and the docs see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The TOML key, e.g. `kill_grace`.
    pub key: &'static str,
    /// What the flag's value is called in `--help`, e.g. `DURATION`.
    pub value_name: &'static str,
    /// The help text: the field's doc comment.
    pub help: &'static str,
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $(#[serde($($serde:tt)*)])*
        $key:ident: $ty:ty [$value_name:literal] = $default:expr;
    )+) => {
        /// Every setting of the server; see the module docs of
        /// [`config`](crate::config) for where values come from.
        ///
        /// Values are typed as the program uses them (header names,
        /// algorithms, durations, addresses); [`Config::validate`] checks what
        /// a type alone cannot.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $(
                $(#[doc = $doc])+
                $(#[serde($($serde)*)])*
                pub $key: $ty,
            )+
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $($key: $default,)+ }
            }
        }

        /// Every setting, in the order of [`Config`]'s fields.
        pub const SETTINGS: &[Setting] = &[$(
            Setting { key: stringify!($key), value_name: $value_name, help: concat!($($doc, "\n"),+) },
        )+];
    };
}

settings! {
    /// Address to serve on: host:port, :port (all interfaces) or unix:/path/to.sock.
    #[serde(with = "via_str")]
    listen: ListenAddr ["ADDR"] = ListenAddr::Tcp("127.0.0.1:8866".into());
    /// The WebSocket endpoint.
    path: String ["PATH"] = "/ws".into();
    /// Token backend: controller or jwt.
    auth: AuthBackend ["BACKEND"] = AuthBackend::Controller;
    /// Query parameter carrying the token.
    token_param: String ["NAME"] = "token".into();
    /// URL of the controller asked about each token.
    controller_url: Url ["URL"] = Url::parse("http://127.0.0.1/ws-controller").expect("a valid URL");
    /// Bound on the whole controller request, connect included.
    #[serde(with = "humantime_serde")]
    controller_timeout: Duration ["DURATION"] = Duration::from_secs(5);
    /// Extra client request headers copied to the controller, e.g. cookie.
    #[serde(with = "list")]
    controller_forward_headers: Vec<HeaderName> ["NAMES"] = Vec::new();
    /// JWT algorithms accepted, e.g. HS256 or RS256,ES256,EdDSA (required for auth jwt).
    #[serde(with = "list")]
    jwt_algorithms: Vec<JwtAlgorithm> ["ALGS"] = Vec::new();
    /// File holding the HMAC secret (at least 32 bytes).
    jwt_secret_file: Option<PathBuf> ["PATH"] = None;
    /// PEM public key file (RSA, EC or Ed25519).
    jwt_public_key_file: Option<PathBuf> ["PATH"] = None;
    /// JSON Web Key Set file; keys selected by kid.
    jwt_jwks_file: Option<PathBuf> ["PATH"] = None;
    /// JSON Web Key Set URL; cached, refreshed on an unknown kid.
    jwt_jwks_url: Option<Url> ["URL"] = None;
    /// Required iss claim.
    jwt_issuer: Option<String> ["ISSUER"] = None;
    /// Required aud claim.
    jwt_audience: Option<String> ["AUDIENCE"] = None;
    /// Clock skew allowed for exp and nbf.
    #[serde(with = "humantime_serde")]
    jwt_leeway: Duration ["DURATION"] = Duration::from_secs(5);
    /// Reject tokens whose exp - iat exceeds this.
    #[serde(with = "humantime_serde")]
    jwt_max_lifetime: Option<Duration> ["DURATION"] = None;
    /// Reject tokens without jti.
    jwt_require_jti: bool ["BOOL"] = false;
    /// Where used jtis are remembered: memory, or redis://HOST:PORT to share them.
    #[serde(with = "via_str")]
    jwt_replay_store: ReplayStoreAddr ["STORE"] = ReplayStoreAddr::Memory;
    /// If set, only these absolute command paths may run.
    #[serde(deserialize_with = "list::deserialize")]
    allowed_commands: Vec<PathBuf> ["PATHS"] = Vec::new();
    /// If set, the Origin header must equal one of these.
    #[serde(deserialize_with = "list::deserialize")]
    allowed_origins: Vec<String> ["ORIGINS"] = Vec::new();
    /// Start processes with an empty environment (plus pass_env and the spec's env).
    clear_env: bool ["BOOL"] = false;
    /// Server variables passed through when clear_env is on.
    #[serde(deserialize_with = "list::deserialize")]
    pass_env: Vec<String> ["NAMES"] = Vec::new();
    /// First signal to the process group when a session ends early.
    #[serde(with = "via_str")]
    kill_signal: KillSignal ["SIGNAL"] = SessionSettings::DEFAULT_KILL_SIGNAL;
    /// Wait after the kill signal (and after exit, for leftover output) before SIGKILL.
    #[serde(with = "humantime_serde")]
    kill_grace: Duration ["DURATION"] = SessionSettings::DEFAULT_KILL_GRACE;
    /// Concurrent sessions; beyond it requests get 503.
    max_sessions: usize ["N"] = 1024;
    /// Largest message accepted from a client; larger closes with 1009.
    max_message_size: ByteSize ["SIZE"] = ByteSize::b(SessionSettings::DEFAULT_MAX_MESSAGE_SIZE as u64);
    /// Interval between keepalive pings.
    #[serde(with = "humantime_serde")]
    ping_interval: Duration ["DURATION"] = SessionSettings::DEFAULT_PING_INTERVAL;
    /// A client silent this long is dropped.
    #[serde(with = "humantime_serde")]
    pong_timeout: Duration ["DURATION"] = SessionSettings::DEFAULT_PONG_TIMEOUT;
    /// End a session with no input or output for this long.
    #[serde(with = "humantime_serde")]
    idle_timeout: Option<Duration> ["DURATION"] = None;
    /// End a session this long after it started.
    #[serde(with = "humantime_serde")]
    max_session_duration: Option<Duration> ["DURATION"] = None;
    /// Bound on graceful shutdown.
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration ["DURATION"] = Duration::from_secs(10);
    /// PEM certificate chain; with tls_key_file, serve wss:// directly.
    tls_cert_file: Option<PathBuf> ["PATH"] = None;
    /// PEM private key of tls_cert_file.
    tls_key_file: Option<PathBuf> ["PATH"] = None;
    /// PEM CA certificates: ask TLS clients for a certificate that chains to one of them, and
    /// tell the backend who it names.
    tls_client_ca_file: Option<PathBuf> ["PATH"] = None;
    /// With tls_client_ca_file: `required` (a client without a certificate is refused in the
    /// handshake) or `optional` (it may send a token instead). [default: required]
    tls_client_auth: Option<ClientAuth> ["MODE"] = None;
    /// Serve the files of this directory beside the endpoint (e.g. a terminal page).
    static_dir: Option<PathBuf> ["DIR"] = None;
    /// Answer the Kubernetes API requests of `kubectl exec`, `attach` and `cp` (discovery, the pod
    /// GET, the exec/attach WebSocket), so a kubeconfig pointing here works with stock kubectl.
    kubernetes_api: bool ["BOOL"] = false;
    /// The container names every pod shows kubectl (`-c NAME`); the backend decides what each runs.
    kubernetes_containers: Vec<String> ["NAMES"] = vec!["main".to_string()];
    /// Serve Prometheus metrics at /metrics on this address.
    #[serde(with = "via_str::option")]
    metrics_listen: Option<ListenAddr> ["ADDR"] = None;
    /// Log format: text or json.
    log_format: LogFormat ["FORMAT"] = LogFormat::Text;
    /// Log filter in RUST_LOG syntax, e.g. info or info,ws_subprocess=debug (RUST_LOG, else info, when unset); a reload applies it.
    log_level: Option<String> ["FILTER"] = None;
    /// From accept to a complete request head (TLS handshake and protocol detection included), and between requests; a connection that sends nothing is closed then.
    #[serde(with = "humantime_serde")]
    request_header_timeout: Duration ["DURATION"] = ServeSettings::DEFAULT_REQUEST_HEADER_TIMEOUT;
    /// Largest request head; larger ones get 431.
    max_header_size: ByteSize ["SIZE"] = ByteSize::b(ServeSettings::DEFAULT_MAX_HEADER_SIZE as u64);
    /// Serve HTTP/2 as well as HTTP/1.1 (with the same timeouts).
    http2: bool ["BOOL"] = false;
    /// Open connections of every kind; derived from the open-file limit when unset, so sessions always have descriptors left.
    max_connections: Option<usize> ["N"] = None;
    /// Open connections per client address (IPv6: per /64); beyond it new ones are closed at once.
    max_connections_per_ip: usize ["N"] = ServeSettings::DEFAULT_MAX_CONNECTIONS_PER_IP;
    /// Requests waiting for the backend; beyond it 503 with Retry-After.
    max_pending_auth: usize ["N"] = 512;
    /// Requests from one address waiting for the backend; beyond it 429 with Retry-After.
    max_pending_auth_per_ip: usize ["N"] = 32;
    /// Upgrade attempts per address, e.g. 20/s or 300/min; beyond it 429 with Retry-After (off when unset).
    #[serde(with = "via_str::option")]
    auth_rate_per_ip: Option<Rate> ["RATE"] = None;
    /// Attempts one address may make at once beyond auth_rate_per_ip (twice the rate when unset).
    auth_burst_per_ip: Option<NonZeroU32> ["N"] = None;
    /// Bytes queued to one client (output, pongs, control frames); a client that takes nothing for pong_timeout while this is full is gone.
    max_write_buffer: ByteSize ["SIZE"] = ByteSize::b(SessionSettings::DEFAULT_MAX_WRITE_BUFFER as u64);
    /// Reverse proxies (CIDRs or addresses) whose X-Forwarded-For/-Proto/-Host are believed.
    #[serde(with = "cidrs")]
    trusted_proxies: Vec<IpNet> ["CIDRS"] = Vec::new();
    /// One cgroup per session: auto (a child of the server's own cgroup when the unified hierarchy is writable), off, or a cgroup v2 directory the server may create children in.
    #[serde(with = "via_str")]
    cgroup: CgroupSetting ["MODE"] = CgroupSetting::Auto;
    /// Memory limit of each session (memory.max), where the memory controller is delegated.
    session_memory_max: Option<ByteSize> ["SIZE"] = None;
    /// Process limit of each session (pids.max), where the pids controller is delegated.
    session_pids_max: Option<u64> ["N"] = None;
    /// CPU limit of each session in percent of one CPU (cpu.max), e.g. 50% or 200%.
    #[serde(with = "via_str::option")]
    session_cpu_max: Option<Percent> ["PERCENT"] = None;
    /// User children run as (name or uid); HOME, USER, LOGNAME and SHELL come from its passwd entry.
    run_as_user: Option<String> ["USER"] = None;
    /// Group children run as (name or gid); the user's own group when unset.
    run_as_group: Option<String> ["GROUP"] = None;
    /// Users a spec may name with "user"; any other is refused with 403.
    #[serde(deserialize_with = "list::deserialize")]
    allowed_users: Vec<String> ["USERS"] = Vec::new();
    /// Globs of variable names a spec's env may set; unset: any, but with allowed_commands only TERM, LANG, LC_*, TZ, COLUMNS, LINES.
    #[serde(deserialize_with = "list::option")]
    allowed_env: Option<Vec<String>> ["GLOBS"] = None;
    /// Longest a named session's process may outlive its last writer's connection (a spec's keep is capped by it).
    #[serde(with = "humantime_serde")]
    max_keep: Duration ["DURATION"] = SessionSettings::DEFAULT_MAX_KEEP;
    /// Most output a named session keeps for replay (a spec's history is capped by it).
    max_history: ByteSize ["SIZE"] = ByteSize::b(SessionSettings::DEFAULT_MAX_HISTORY as u64);
    /// Directory session recordings (asciicast v2, mode 0600) are written to; off when unset.
    record_dir: Option<PathBuf> ["DIR"] = None;
    /// Record every session, not only those whose spec asks (with record_dir).
    record_all: bool ["BOOL"] = false;
    /// Record input too ("i" events), which may include passwords typed.
    record_input: bool ["BOOL"] = false;
    /// The binary an in-place upgrade (SIGUSR2) executes; the one the server was started from (resolved at start) when unset.
    upgrade_binary: Option<PathBuf> ["PATH"] = None;
}
