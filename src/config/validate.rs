//! What a value's type alone cannot check, and the settings of each piece of
//! the server, built from the checked values. Nothing after this parses a
//! setting again.

use bytesize::ByteSize;

use super::Config;
use super::load::ConfigError;
use super::values::{AuthBackend, KeyFamily};
use crate::auth::{AuthLimits, ControllerSettings, Policy, SAFE_ENV};
use crate::contain::{CgroupLimits, Identity, IdentityError};
use crate::forwarded::TrustedProxies;
use crate::metrics::Metrics;
use crate::server::{ListenAddr, ServeSettings};
use crate::session::{EnvPolicy, InvalidSettings, Recording, SessionSettings};

/// A size as the program uses it (a size beyond memory is as good as
/// unlimited).
fn bytes(size: ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

/// Longest timer accepted outside the session settings (which check their
/// own): longer ones are surely mistakes.
const MAX_TIMER: std::time::Duration = SessionSettings::MAX_TIMER;

impl Config {
    /// Checks what the types of the values cannot; the same checks
    /// [`Config::from_figment`] runs, for a `Config` built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError(problems.into_iter().map(|(key, why)| format!("`{key}`: {why}")).collect()))
    }

    /// Every problem, as the key at fault and what is wrong.
    pub(super) fn problems(&self) -> Vec<(&'static str, &'static str)> {
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
        let container_name = |name: &String| {
            (1..=63).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if self.kubernetes_api
            && (self.kubernetes_containers.is_empty() || !self.kubernetes_containers.iter().all(container_name))
        {
            problems.push(("kubernetes_containers", "needs at least one name of lowercase letters, digits and -"));
        }
        if self.static_dir.as_ref().is_some_and(|dir| !dir.is_dir()) {
            problems.push(("static_dir", "is not a directory"));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.push(("tls_cert_file", "tls_cert_file and tls_key_file go together"));
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            problems.push((
                "tls_client_ca_file",
                "needs tls_cert_file and tls_key_file (client certificates come with TLS)",
            ));
        }
        if self.tls_client_auth.is_some() && self.tls_client_ca_file.is_none() {
            problems.push(("tls_client_auth", "needs tls_client_ca_file"));
        }
        if self.allowed_commands.iter().any(|c| !c.is_absolute()) {
            problems.push(("allowed_commands", "must hold absolute paths"));
        }
        if self.max_sessions == 0 {
            problems.push(("max_sessions", "must be at least 1"));
        }
        if self.max_connections == Some(0) {
            problems.push(("max_connections", "must be at least 1 (leave it unset to derive it)"));
        }
        if self.max_pending_auth == 0 {
            problems.push(("max_pending_auth", "must be at least 1"));
        }
        if self.max_pending_auth_per_ip == 0 {
            problems.push(("max_pending_auth_per_ip", "must be at least 1"));
        }
        if self.auth_burst_per_ip.is_some() && self.auth_rate_per_ip.is_none() {
            problems.push(("auth_burst_per_ip", "needs auth_rate_per_ip"));
        }
        if let Some(globs) = &self.allowed_env
            && globs.iter().any(|glob| glob::Pattern::new(glob).is_err())
        {
            problems.push(("allowed_env", "holds an invalid glob"));
        }
        if self.allowed_users.iter().any(|u| u.is_empty()) {
            problems.push(("allowed_users", "holds an empty name"));
        }
        if let Err(InvalidSettings(session)) = self.session_settings() {
            problems.extend(session);
        }
        if let Err(InvalidSettings(serve)) = self.serve_settings(usize::MAX, Metrics::default()) {
            problems.extend(serve);
        }
        if self.log_level.as_deref().is_some_and(|filter| tracing_subscriber::EnvFilter::try_new(filter).is_err()) {
            problems.push(("log_level", "is not a filter such as `info` or `info,ws_subprocess=debug`"));
        }
        if (self.record_all || self.record_input) && self.record_dir.is_none() {
            problems.push(("record_dir", "record_all and record_input need record_dir"));
        }
        for (key, value) in [
            ("max_keep", self.max_keep),
            ("controller_timeout", self.controller_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("jwt_leeway", self.jwt_leeway),
            ("request_header_timeout", self.request_header_timeout),
        ] {
            if value > MAX_TIMER {
                problems.push((key, "must be at most 24h"));
            }
        }
        problems
    }

    /// The JWT settings a JWT backend cannot start without.
    fn jwt_problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.jwt_algorithms.is_empty() {
            problems.push(("jwt_algorithms", "is required when auth is `jwt`"));
        }
        let keys = [&self.jwt_secret_file, &self.jwt_public_key_file, &self.jwt_jwks_file];
        if keys.iter().all(|k| k.is_none()) && self.jwt_jwks_url.is_none() {
            problems.push((
                "jwt_secret_file",
                "auth `jwt` needs a key: jwt_secret_file, jwt_public_key_file, jwt_jwks_file or jwt_jwks_url",
            ));
        }
        let hmac = self.jwt_algorithms.iter().any(|a| a.family() == KeyFamily::Hmac);
        if self.jwt_secret_file.is_some() && !hmac {
            problems.push(("jwt_secret_file", "is set but jwt_algorithms allows no HS* algorithm"));
        }
        problems
    }

    /// How sessions run.
    pub fn session_settings(&self) -> Result<SessionSettings, InvalidSettings> {
        SessionSettings::builder()
            .kill_signal(self.kill_signal)
            .kill_grace(self.kill_grace)
            .max_message_size(bytes(self.max_message_size))
            .max_write_buffer(bytes(self.max_write_buffer))
            .keepalive(self.ping_interval, self.pong_timeout)
            .idle_timeout(self.idle_timeout)
            .max_session_duration(self.max_session_duration)
            .env(EnvPolicy { clear: self.clear_env, pass: self.pass_env.clone() })
            .detachable(self.max_keep, bytes(self.max_history))
            .recording(self.record_dir.clone().map(|dir| Recording {
                dir,
                all: self.record_all,
                input: self.record_input,
            }))
            .build()
    }

    /// The TLS acceptor of `tls_cert_file`, `tls_key_file` and the client
    /// certificate settings; `None` without TLS.
    pub fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, crate::server::TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else { return Ok(None) };
        let client_ca = self.tls_client_ca_file.as_ref().map(|file| crate::server::ClientCa {
            file: file.clone(),
            required: self.tls_client_auth != Some(super::values::ClientAuth::Optional),
        });
        crate::server::tls_acceptor(cert, key, client_ca.as_ref()).map(Some)
    }

    /// How connections are served, holding at most `max_connections`.
    pub fn serve_settings(&self, max_connections: usize, metrics: Metrics) -> Result<ServeSettings, InvalidSettings> {
        ServeSettings::builder()
            .request_header_timeout(self.request_header_timeout)
            .max_header_size(bytes(self.max_header_size))
            .http2(self.http2)
            .max_connections(max_connections)
            .max_connections_per_ip(self.max_connections_per_ip, self.trusted())
            .keepalive(self.ping_interval, self.pong_timeout)
            .shutdown_timeout(self.shutdown_timeout)
            .metrics(metrics)
            .build()
    }

    /// The proxies whose forwarding headers are believed.
    pub fn trusted(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.iter().copied())
    }

    /// Limits on attempts and on requests waiting for the backend.
    pub fn auth_limits(&self) -> AuthLimits {
        AuthLimits {
            max_pending: self.max_pending_auth,
            max_pending_per_ip: self.max_pending_auth_per_ip,
            rate_per_ip: self.auth_rate_per_ip,
            burst_per_ip: self.auth_burst_per_ip,
        }
    }

    /// What a spec may ask for: `allowed_commands`, `allowed_users` and
    /// `allowed_env` (which, unset, is [`SAFE_ENV`] when `allowed_commands`
    /// is set: an allowlist of programs means nothing if a spec may set
    /// `LD_PRELOAD`).
    pub fn policy(&self) -> Policy {
        let mut policy =
            Policy::new().commands(self.allowed_commands.iter().cloned()).users(self.allowed_users.iter().cloned());
        let globs: Option<Vec<String>> = match &self.allowed_env {
            Some(globs) => Some(globs.clone()),
            None if !self.allowed_commands.is_empty() => Some(SAFE_ENV.map(String::from).to_vec()),
            None => None,
        };
        if let Some(globs) = globs {
            policy = policy.env(globs.iter().filter_map(|glob| glob::Pattern::new(glob).ok()));
        }
        policy
    }

    /// The per-session cgroup limits.
    pub fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory: self.session_memory_max.map(|m| m.as_u64()),
            pids: self.session_pids_max,
            cpu_percent: self.session_cpu_max.map(|p| p.0),
        }
    }

    /// Who children run as (`run_as_user`, `run_as_group`), and the users a
    /// spec may name, looked up in the system's user database.
    pub fn identities(&self) -> Result<(Option<Identity>, Vec<Identity>), ConfigError> {
        let named = |key: &str, err: IdentityError| ConfigError(vec![format!("`{key}`: {err}")]);
        let run_as = match (&self.run_as_user, &self.run_as_group) {
            (Some(user), group) => {
                Some(Identity::resolve(user, group.as_deref()).map_err(|e| named("run_as_user", e))?)
            }
            (None, Some(group)) => {
                let me = rustix::process::getuid().as_raw().to_string();
                Some(Identity::resolve(&me, Some(group)).map_err(|e| named("run_as_group", e))?)
            }
            (None, None) => None,
        };
        let users = self
            .allowed_users
            .iter()
            .map(|user| Identity::resolve(user, None).map_err(|e| named("allowed_users", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((run_as, users))
    }

    /// How the controller backend reaches the controller.
    pub fn controller_settings(&self) -> ControllerSettings {
        ControllerSettings {
            url: self.controller_url.clone(),
            timeout: self.controller_timeout,
            forward_headers: self.controller_forward_headers.clone(),
        }
    }

    /// How the JWT backend checks tokens.
    #[cfg(feature = "jwt")]
    pub fn jwt_settings(&self) -> crate::auth::jwt::JwtSettings {
        use crate::auth::jwt::{JwtSettings, KeySources};
        JwtSettings {
            algorithms: self.jwt_algorithms.iter().map(|a| a.to_jsonwebtoken()).collect(),
            keys: KeySources {
                secret_file: self.jwt_secret_file.clone(),
                public_key_file: self.jwt_public_key_file.clone(),
                jwks_file: self.jwt_jwks_file.clone(),
                jwks_url: self.jwt_jwks_url.clone(),
                ..KeySources::default()
            },
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            max_lifetime: self.jwt_max_lifetime,
            require_jti: self.jwt_require_jti,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_config_built_in_code_is_checked_too() {
        let config = Config { ping_interval: Duration::ZERO, max_sessions: 0, ..Config::default() };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`max_sessions`: must be at least 1"), "{err}");
        assert!(err.contains("`ping_interval`: must be more than zero"), "{err}");
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn session_settings_carry_the_config_values() {
        let config = Config { kill_grace: Duration::from_millis(10), ..Config::default() };
        assert_eq!(config.session_settings().unwrap().kill_grace(), Duration::from_millis(10));
    }
}
