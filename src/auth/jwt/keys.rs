//! Verification keys: an HMAC secret, a PEM public key, a key set from a
//! file, and a key set fetched from a URL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use url::Url;

use crate::auth::{BodyError, read_capped};
use crate::report::Report;

/// Shortest HMAC secret accepted: RFC 7518 asks for at least the hash size.
pub const MIN_SECRET_LEN: usize = 32;
/// A key set URL is fetched again at most this often, however many unknown
/// `kid`s arrive.
pub const JWKS_REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// A key that left the remote key set is still accepted this long, so tokens
/// signed just before a rotation stay valid.
pub const JWKS_RETAIN: Duration = Duration::from_secs(600);
/// The remote key set is fetched again when older than this, so keys the
/// issuer removed stop working even if no unknown `kid` ever arrives.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Largest key set document read from a URL.
const MAX_JWKS_BODY: usize = 1024 * 1024;

/// A key and the algorithms it may verify: the configured ones of its
/// family, narrowed by the key set's own `alg` when it has one.
#[derive(Debug)]
pub struct VerifyingKey {
    /// Its `kid`, for lookup only; it says nothing about trust.
    pub kid: Option<String>,
    /// The key.
    pub key: DecodingKey,
    /// Algorithms it may verify.
    pub algorithms: Vec<Algorithm>,
}

/// Why keys could not be loaded; names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("{key}: cannot read `{path}`: {cause}")]
    Read {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The HMAC secret is too short.
    #[error("jwt_secret_file: the secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    ShortSecret(usize),
    /// A file holds no usable key.
    #[error("{key}: {why}")]
    Unusable {
        /// The config key.
        key: &'static str,
        /// Why.
        why: String,
    },
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|cause| KeyError::Read { key, path: path.to_path_buf(), cause })
}

/// The secret in `path`, without one trailing newline (files written with
/// `echo` have one).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut secret = read("jwt_secret_file", path)?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::ShortSecret(secret.len()));
    }
    Ok(secret)
}

fn narrow(allowed: &[Algorithm], key: &DecodingKey, declared: Option<KeyAlgorithm>) -> Vec<Algorithm> {
    allowed
        .iter()
        .copied()
        .filter(|alg| alg.family() == key.family())
        .filter(|alg| declared.is_none_or(|d| d == KeyAlgorithm::from(*alg)))
        .collect()
}

fn from_jwk(allowed: &[Algorithm], jwk: &Jwk) -> Option<VerifyingKey> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let algorithms = narrow(allowed, &key, jwk.common.key_algorithm);
    (!algorithms.is_empty()).then(|| VerifyingKey { kid: jwk.common.key_id.clone(), key, algorithms })
}

/// Where keys come from; see the `jwt_*` config keys of the same names.
#[derive(Debug, Clone)]
pub struct KeySources {
    /// HMAC secret file.
    pub secret_file: Option<PathBuf>,
    /// PEM public key file.
    pub public_key_file: Option<PathBuf>,
    /// Key set file.
    pub jwks_file: Option<PathBuf>,
    /// Key set URL.
    pub jwks_url: Option<Url>,
    /// Least time between two fetches of `jwks_url`
    /// ([`JWKS_REFRESH_COOLDOWN`] unless set otherwise).
    pub jwks_cooldown: Duration,
}

impl Default for KeySources {
    fn default() -> Self {
        Self {
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_cooldown: JWKS_REFRESH_COOLDOWN,
        }
    }
}

/// Every key a JWT may be verified with.
#[derive(Debug)]
pub struct KeyRing {
    fixed: Vec<Arc<VerifyingKey>>,
    remote: Option<Arc<RemoteKeySet>>,
}

impl KeyRing {
    /// Loads the files now (a bad file is a startup error); a key set URL is
    /// fetched when first needed, through `client`.
    pub fn load(allowed: &[Algorithm], sources: &KeySources, client: reqwest::Client) -> Result<Self, KeyError> {
        let mut fixed = Vec::new();
        if let Some(path) = &sources.secret_file {
            let key = DecodingKey::from_secret(&read_secret(path)?);
            let algorithms = narrow(allowed, &key, None);
            fixed.push(Arc::new(VerifyingKey { kid: None, key, algorithms }));
        }
        if let Some(path) = &sources.public_key_file {
            let pem = read("jwt_public_key_file", path)?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| KeyError::Unusable {
                    key: "jwt_public_key_file",
                    why: "not a PEM RSA, EC or Ed25519 public key".into(),
                })?;
            let algorithms = narrow(allowed, &key, None);
            if algorithms.is_empty() {
                return Err(KeyError::Unusable {
                    key: "jwt_public_key_file",
                    why: format!("a {:?} key, but jwt_algorithms allows no algorithm for it", key.family()),
                });
            }
            fixed.push(Arc::new(VerifyingKey { kid: None, key, algorithms }));
        }
        if let Some(path) = &sources.jwks_file {
            let set: JwkSet = serde_json::from_slice(&read("jwt_jwks_file", path)?)
                .map_err(|e| KeyError::Unusable { key: "jwt_jwks_file", why: format!("not a JWK set: {e}") })?;
            let before = fixed.len();
            fixed.extend(set.keys.iter().filter_map(|jwk| from_jwk(allowed, jwk)).map(Arc::new));
            if fixed.len() == before {
                return Err(KeyError::Unusable {
                    key: "jwt_jwks_file",
                    why: "no key in the set is usable with jwt_algorithms".into(),
                });
            }
        }
        let remote = sources.jwks_url.clone().map(|url| {
            Arc::new(RemoteKeySet {
                url,
                client,
                cooldown: sources.jwks_cooldown,
                allowed: allowed.to_vec(),
                keys: RwLock::default(),
                last_fetch: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
            })
        });
        Ok(Self { fixed, remote })
    }

    /// The keys that may verify a token signed with `alg` and carrying
    /// `kid`. A `kid` selects keys that have it; when none has it, keys
    /// without a `kid` are tried. An unknown `kid` waits for the remote key
    /// set to be fetched again (at most once per cooldown). A set older than
    /// [`JWKS_MAX_AGE`](crate::auth::jwt::JWKS_MAX_AGE) is fetched again
    /// beside the check: a token whose key is known never waits for the
    /// issuer.
    pub async fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<Arc<VerifyingKey>> {
        let found = self.lookup(alg, kid);
        let Some(remote) = &self.remote else { return found };
        if found.is_empty() || kid.is_none() && remote.is_empty() {
            remote.refresh().await;
            return self.lookup(alg, kid);
        }
        if remote.is_stale() && !remote.refreshing.swap(true, Ordering::AcqRel) {
            let remote = remote.clone();
            tokio::spawn(async move { remote.refresh().await });
        }
        found
    }

    fn lookup(&self, alg: Algorithm, kid: Option<&str>) -> Vec<Arc<VerifyingKey>> {
        let remote = self.remote.as_ref().map(|remote| remote.keys()).unwrap_or_default();
        let usable: Vec<Arc<VerifyingKey>> =
            self.fixed.iter().cloned().chain(remote).filter(|k| k.algorithms.contains(&alg)).collect();
        let Some(kid) = kid else { return usable };
        let named: Vec<Arc<VerifyingKey>> = usable.iter().filter(|k| k.kid.as_deref() == Some(kid)).cloned().collect();
        if !named.is_empty() {
            return named;
        }
        usable.into_iter().filter(|k| k.kid.is_none()).collect()
    }
}

/// A key set behind a URL, cached.
#[derive(Debug)]
struct RemoteKeySet {
    url: Url,
    client: reqwest::Client,
    cooldown: Duration,
    allowed: Vec<Algorithm>,
    /// Keys by `kid` (keys without one under ""), with when they were last
    /// in the fetched set.
    keys: RwLock<HashMap<String, (Arc<VerifyingKey>, Instant)>>,
    /// When a fetch last began; read without waiting for a fetch.
    last_fetch: Mutex<Option<Instant>>,
    /// Held while fetching, so concurrent callers share one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// Set while a refresh is under way.
    refreshing: AtomicBool,
}

impl RemoteKeySet {
    fn keys(&self) -> Vec<Arc<VerifyingKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).values().map(|(k, _)| k.clone()).collect()
    }

    fn is_empty(&self) -> bool {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    fn last_fetch(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.last_fetch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stale(&self) -> bool {
        self.last_fetch().is_some_and(|at| at.elapsed() > JWKS_MAX_AGE)
    }

    /// Fetches the set again unless that was tried within the cooldown;
    /// concurrent callers share one fetch.
    async fn refresh(&self) {
        let _fetching = self.fetching.lock().await;
        self.refreshing.store(true, Ordering::Release);
        let recent = self.last_fetch().is_some_and(|at| at.elapsed() < self.cooldown);
        if !recent {
            *self.last_fetch() = Some(Instant::now());
            self.fetch_and_store().await;
        }
        self.refreshing.store(false, Ordering::Release);
    }

    async fn fetch_and_store(&self) {
        match self.fetch().await {
            Ok(set) => {
                let now = Instant::now();
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                let fresh: Vec<VerifyingKey> = set.keys.iter().filter_map(|jwk| from_jwk(&self.allowed, jwk)).collect();
                tracing::info!(keys = fresh.len(), "fetched the JWT key set");
                for key in fresh {
                    keys.insert(key.kid.clone().unwrap_or_default(), (Arc::new(key), now));
                }
                keys.retain(|_, (_, seen)| now.duration_since(*seen) < JWKS_RETAIN);
            }
            Err(err) => tracing::warn!(cause = %Report(&err), "cannot fetch the JWT key set"),
        }
    }

    async fn fetch(&self) -> Result<JwkSet, FetchError> {
        let response =
            self.client.get(self.url.clone()).send().await.map_err(|e| FetchError::Request(e.without_url()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = read_capped(response, MAX_JWKS_BODY).await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

/// Why the remote key set could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("requesting the key set failed")]
    Request(#[source] reqwest::Error),
    #[error("key set URL answered {0}")]
    Status(reqwest::StatusCode),
    #[error("reading the key set failed")]
    Body(#[from] BodyError),
    #[error("not a JWK set")]
    Json(#[from] serde_json::Error),
}
