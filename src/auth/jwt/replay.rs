//! Single-use tokens: where used token ids are remembered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

/// Remembers token ids until they expire, so each is accepted once.
///
/// `key` is already a digest of the issuer and `jti`; `until` is a Unix time
/// in seconds after which the token is expired anyway and may be forgotten.
pub trait ReplayStore: Send + Sync + 'static {
    /// `Ok(true)` the first time `key` is seen, `Ok(false)` for a replay.
    /// An error means the answer is unknown, and the token must be refused.
    fn first_use(&self, key: &str, until: u64) -> impl Future<Output = Result<bool, ReplayError>> + Send;
}

/// The store could not tell whether a token was used.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The in-memory store holds `capacity` live entries.
    #[error("replay store is full ({0} live token ids)")]
    Full(usize),
    /// Redis could not be reached or answered an error.
    #[error("redis failed")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis timed out")]
    Timeout,
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Token ids in this process's memory: right for a single instance.
///
/// Bounded: expired entries are dropped as new ones arrive, and when
/// `capacity` live entries are held, new tokens are refused (an entry is
/// never forgotten early, which would let its token be replayed).
#[derive(Debug)]
pub struct MemoryReplayStore {
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<String, u64>,
    by_expiry: BinaryHeap<Reverse<(u64, String)>>,
}

impl MemoryReplayStore {
    /// Default number of live token ids held.
    pub const DEFAULT_CAPACITY: usize = 1 << 18;

    /// A store holding at most `capacity` live token ids.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::default() }
    }

    /// The token ids held, and the UNIX time each is held until: what an
    /// in-place upgrade hands over.
    pub fn entries(&self) -> Vec<(String, u64)> {
        let seen = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.until.iter().map(|(key, until)| (key.clone(), *until)).collect()
    }

    /// A default store holding `entries` (see [`MemoryReplayStore::entries`]);
    /// those already expired are left out.
    pub fn with_entries(entries: impl IntoIterator<Item = (String, u64)>) -> Self {
        let store = Self::default();
        let now = unix_now();
        {
            let mut seen = store.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (key, until) in entries.into_iter().filter(|(_, until)| *until >= now) {
                seen.by_expiry.push(Reverse((until, key.clone())));
                seen.until.insert(key, until);
            }
        }
        store
    }

    fn check(&self, key: &str, until: u64, now: u64) -> Result<bool, ReplayError> {
        let mut seen = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(Reverse((expiry, _))) = seen.by_expiry.peek()
            && *expiry < now
        {
            let Reverse((expiry, old)) = seen.by_expiry.pop().expect("peeked");
            if seen.until.get(&old) == Some(&expiry) {
                seen.until.remove(&old);
            }
        }
        if seen.until.contains_key(key) {
            return Ok(false);
        }
        if seen.until.len() >= self.capacity {
            return Err(ReplayError::Full(self.capacity));
        }
        seen.until.insert(key.to_string(), until);
        seen.by_expiry.push(Reverse((until, key.to_string())));
        Ok(true)
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl ReplayStore for MemoryReplayStore {
    async fn first_use(&self, key: &str, until: u64) -> Result<bool, ReplayError> {
        self.check(key, until, unix_now())
    }
}

/// Token ids in Redis, shared by every instance behind a load balancer.
///
/// Each id is claimed with one atomic `SET key 1 NX EXAT until`, so of two
/// instances seeing the same token at once exactly one wins. The connection
/// is made on first use and re-made after failures; while Redis is down,
/// every token with an id is refused.
pub struct RedisReplayStore {
    client: redis::Client,
    timeout: Duration,
    connection: OnceCell<redis::aio::ConnectionManager>,
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayStore").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// Prefix of the keys this server writes in Redis.
pub const REDIS_KEY_PREFIX: &str = "ws-subprocess:jti:";

impl RedisReplayStore {
    /// A store at `url` (`redis://host:port/db`); each Redis call, connect
    /// included, is bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ReplayError> {
        let client = redis::Client::open(url).map_err(ReplayError::Redis)?;
        Ok(Self { client, timeout, connection: OnceCell::new() })
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, ReplayError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let manager = self
            .connection
            .get_or_try_init(|| redis::aio::ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .map_err(ReplayError::Redis)?;
        Ok(manager.clone())
    }
}

impl ReplayStore for RedisReplayStore {
    async fn first_use(&self, key: &str, until: u64) -> Result<bool, ReplayError> {
        // An absolute expiry: the key lives exactly as long as the token,
        // whenever this call reaches Redis (`EXAT` needs Redis 6.2).
        let expires_at = until.max(unix_now() + 1);
        let claim = async {
            let mut connection = self.connection().await?;
            let answer: Option<String> = redis::cmd("SET")
                .arg(format!("{REDIS_KEY_PREFIX}{key}"))
                .arg(1)
                .arg("NX")
                .arg("EXAT")
                .arg(expires_at)
                .query_async(&mut connection)
                .await
                .map_err(ReplayError::Redis)?;
            Ok(answer.is_some())
        };
        tokio::time::timeout(self.timeout * 2, claim).await.map_err(|_| ReplayError::Timeout)?
    }
}

/// The store a configuration names: one type for either kind, so the
/// server's stack has one type.
#[derive(Debug)]
pub enum ConfiguredReplayStore {
    /// See [`MemoryReplayStore`].
    Memory(MemoryReplayStore),
    /// See [`RedisReplayStore`].
    Redis(RedisReplayStore),
}

impl ReplayStore for ConfiguredReplayStore {
    async fn first_use(&self, key: &str, until: u64) -> Result<bool, ReplayError> {
        match self {
            Self::Memory(store) => store.first_use(key, until).await,
            Self::Redis(store) => store.first_use(key, until).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_accepts_once_until_expiry() {
        let store = MemoryReplayStore::new(2);
        assert!(store.check("a", 100, 50).unwrap());
        assert!(!store.check("a", 100, 60).unwrap());
        // Still live at exactly its expiry second.
        assert!(!store.check("a", 100, 100).unwrap());
        // Forgotten once expired.
        assert!(store.check("a", 300, 101).unwrap());
    }

    #[test]
    fn memory_store_entries_carry_into_a_new_store() {
        let store = MemoryReplayStore::default();
        let later = unix_now() + 60;
        assert!(store.check("a", later, unix_now()).unwrap());
        let carried = MemoryReplayStore::with_entries(store.entries().into_iter().chain([("old".into(), 1)]));
        assert!(!carried.check("a", later, unix_now()).unwrap());
        assert!(carried.check("old", later, unix_now()).unwrap(), "an expired entry was carried");
    }

    #[test]
    fn memory_store_refuses_rather_than_forgets_when_full() {
        let store = MemoryReplayStore::new(2);
        assert!(store.check("a", 100, 0).unwrap());
        assert!(store.check("b", 200, 0).unwrap());
        assert!(matches!(store.check("c", 100, 0), Err(ReplayError::Full(2))));
        assert!(!store.check("a", 100, 0).unwrap());
        // Expiry makes room.
        assert!(store.check("c", 300, 150).unwrap());
    }
}
