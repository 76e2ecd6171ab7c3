//! [`RedisStore`]: pacing state shared between processes through Redis (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::pace::store::{
    micros, Admission, InProcessStore, LearnedLimits, ModelAdmission, PacingStore, StoreFuture,
};
use crate::pace::{Cost, PaceKey};
use crate::redis_conn::{error_kind, expiry_millis, hashed_key, lazy_connection};

/// The Lua script behind every [`RedisStore`] operation (`admit`, `learn`, `pause`).
pub(crate) const SCRIPT: &str = include_str!("pacing.lua");

/// What a [`RedisStore`] does when Redis is unreachable or too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Keep serving with in-process pacing (and a warning).
    #[default]
    Open,
    /// Fail the operation with [`ErrorKind::Connection`].
    Closed,
}

/// Settings of a [`RedisStore`]: start from [`Default`] and set the fields that differ.
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::pace::{FailMode, RedisStoreConfig};
///
/// let mut config = RedisStoreConfig::default();
/// config.prefix = "my-service:pace".into();
/// config.fail_mode = FailMode::Closed;
/// config.op_timeout = Duration::from_millis(50);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// The prefix of every Redis key.
    ///
    /// # Default
    /// `"oai-resilience:pace"`.
    pub prefix: String,
    /// The longest one Redis operation may take before the store falls back.
    ///
    /// # Default
    /// 100 ms.
    pub op_timeout: Duration,
    /// How long a key lives without writes.
    ///
    /// # Default
    /// 15 minutes.
    pub ttl: Duration,
    /// What to do when Redis fails.
    ///
    /// # Default
    /// [`FailMode::Open`].
    pub fail_mode: FailMode,
    /// After a failure, how long to pace in-process before trying Redis again.
    ///
    /// # Default
    /// 1 s.
    pub retry_interval: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            prefix: "oai-resilience:pace".into(),
            op_timeout: Duration::from_millis(100),
            ttl: Duration::from_secs(15 * 60),
            fail_mode: FailMode::Open,
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// A [`PacingStore`] in Redis, shared by every process that uses the same server and prefix.
///
/// Every operation is one call of a server-side Lua script, so admitting a
/// request (bring the buckets up to now, check the pause and every bucket, take the cost) is
/// atomic across all the processes that share a key. The clock is the Redis server's (`TIME`),
/// so the clients' clocks need not agree. Each key is one hash, named from a hash of the
/// [`PaceKey`] (which itself holds only a hash of the credential: no secret reaches Redis),
/// and expires by itself after [`RedisStoreConfig::ttl`] without writes.
///
/// When Redis is unreachable or slower than [`RedisStoreConfig::op_timeout`], the store logs a
/// `tracing` warning and, with [`FailMode::Open`] (the default), keeps pacing in this process
/// ([`InProcessStore`], which always learns the limits and pauses too); with
/// [`FailMode::Closed`] the operation fails with [`ErrorKind::Connection`]. It tries Redis
/// again after [`RedisStoreConfig::retry_interval`] and logs when shared pacing is back.
///
/// ```no_run
/// use oai_resilience::pace::{Admission, Cost, PaceKey, PacingStore, RedisStore, RedisStoreConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), oai_resilience::Error> {
/// let store = RedisStore::open("redis://127.0.0.1:6379/", RedisStoreConfig::default())?;
/// let key = PaceKey::new("api.openai.com").with_credential(b"Bearer sk-...");
/// loop {
///     match store.admit(&key, Cost::tokens(300)).await? {
///         Admission::Admitted => break,
///         Admission::Wait(d) => tokio::time::sleep(d).await,
///         // `Admission::Blocked`: never at the current limits.
///         _ => return Ok(()),
///     }
/// }
/// // ... send the request; report headers with `learn`, a 429's hint with `pause`.
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    script: redis::Script,
    config: RedisStoreConfig,
    fallback: InProcessStore,
    degraded: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    fallbacks: AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.config.prefix)
            .field("fail_mode", &self.inner.config.fail_mode)
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

fn store_error(what: &str) -> Error {
    Error::new(ErrorKind::Connection).with_detail(format!("pacing store (redis): {what}"))
}

fn fmt_num(x: f64) -> String {
    format!("{x}")
}

fn opt_num(x: Option<f64>) -> String {
    x.map(fmt_num).unwrap_or_default()
}

/// The Redis key of `key`: the prefix and a 64-bit FNV-1a hash of base, credential hash and
/// model, in a hash tag so that a cluster keeps it in one slot.
pub(crate) fn redis_key(prefix: &str, key: &PaceKey) -> String {
    let mut h = crate::hash::Fnv1a::new();
    h.write(key.base().as_bytes());
    h.write(&[0]);
    match key.credential_hash() {
        Some(c) => h.write(&c.to_le_bytes()),
        None => h.write(b"-"),
    }
    h.write(&[0]);
    h.write(key.model().unwrap_or("").as_bytes());
    hashed_key(prefix, h.finish())
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[:password@]host:port[/db]`). Connects lazily:
    /// a server that is down now is tried on first use. Fails only on a malformed URL.
    pub fn open(url: &str, config: RedisStoreConfig) -> Result<Self, Error> {
        let conn = lazy_connection(url, config.op_timeout).map_err(|e| store_error(&e))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                script: redis::Script::new(SCRIPT),
                config,
                fallback: InProcessStore::new(),
                degraded: AtomicBool::new(false),
                retry_at: Mutex::new(None),
                fallbacks: AtomicU64::new(0),
            }),
        })
    }

    /// Like [`RedisStore::open`], then checks that Redis answers (one `PING` within
    /// [`RedisStoreConfig::op_timeout`]).
    pub async fn connect(url: &str, config: RedisStoreConfig) -> Result<Self, Error> {
        let store = Self::open(url, config)?;
        let mut conn = store.inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(store.inner.config.op_timeout, ping).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(store_error(&error_kind(&e))),
            Err(_) => Err(store_error("PING timed out")),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.inner.config
    }

    /// Whether the last Redis operation failed (pacing is in-process until Redis is back).
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// How many operations were served in-process because Redis failed.
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// The Redis key that holds `key`'s state.
    pub fn key_name(&self, key: &PaceKey) -> String {
        redis_key(&self.inner.config.prefix, key)
    }

    async fn invoke(&self, key: &PaceKey, args: Vec<String>) -> Result<(i64, String), String> {
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.script.key(self.key_name(key));
        for a in &args {
            inv.arg(a);
        }
        let call = inv.invoke_async::<(i64, String)>(&mut conn);
        match tokio::time::timeout(self.inner.config.op_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(error_kind(&e)),
            Err(_) => Err(format!(
                "no answer within {:?}",
                self.inner.config.op_timeout
            )),
        }
    }

    /// Whether to skip Redis for now (degraded, and not yet time to try again).
    fn skip(&self) -> bool {
        if !self.is_degraded() {
            return false;
        }
        let retry_at = self
            .inner
            .retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        retry_at.is_some_and(|t| Instant::now() < t)
    }

    fn failed(&self, why: &str) {
        *self
            .inner
            .retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + self.inner.config.retry_interval);
        if !self.inner.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                fail_mode = ?self.inner.config.fail_mode,
                "pacing store: Redis unreachable; pacing in this process until it is back"
            );
        }
    }

    fn succeeded(&self) {
        if self.inner.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("pacing store: Redis is back; pacing is shared again");
        }
    }

    /// Runs one script operation with the failure policy: `Ok(Some(v))` from Redis, `Ok(None)`
    /// to serve in-process, `Err` when failing closed.
    async fn run(&self, key: &PaceKey, args: Vec<String>) -> Result<Option<(i64, String)>, Error> {
        let why = if self.skip() {
            "degraded".to_owned()
        } else {
            match self.invoke(key, args).await {
                Ok(v) => {
                    self.succeeded();
                    return Ok(Some(v));
                }
                Err(why) => {
                    self.failed(&why);
                    why
                }
            }
        };
        match self.inner.config.fail_mode {
            FailMode::Open => {
                self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            FailMode::Closed => Err(store_error(&why)),
        }
    }

    fn admit_args(
        now: Option<u64>,
        (requests, tokens, keep): (f64, f64, f64),
        ttl: Duration,
    ) -> Vec<String> {
        vec![
            now.map(|n| n.to_string()).unwrap_or_default(),
            "admit".into(),
            fmt_num(requests),
            fmt_num(tokens),
            expiry_millis(ttl).to_string(),
            fmt_num(keep),
        ]
    }

    fn learn_args(now: Option<u64>, l: &LearnedLimits, ttl: Duration) -> Vec<String> {
        vec![
            now.map(|n| n.to_string()).unwrap_or_default(),
            "learn".into(),
            opt_num(l.requests.map(|b| b.capacity)),
            opt_num(l.requests.map(|b| b.refill_per_sec)),
            opt_num(l.remaining_requests),
            opt_num(l.tokens.map(|b| b.capacity)),
            opt_num(l.tokens.map(|b| b.refill_per_sec)),
            opt_num(l.remaining_tokens),
            expiry_millis(ttl).to_string(),
        ]
    }

    fn pause_args(now: Option<u64>, d: Duration, ttl: Duration) -> Vec<String> {
        vec![
            now.map(|n| n.to_string()).unwrap_or_default(),
            "pause".into(),
            micros(d).to_string(),
            // The key outlives the pause.
            expiry_millis(ttl.max(d + Duration::from_secs(1))).to_string(),
        ]
    }

    fn parse_admission((status, wait): (i64, String)) -> Result<ModelAdmission, Error> {
        match status {
            1 => Ok(ModelAdmission::Admitted),
            -1 => Ok(ModelAdmission::Blocked),
            0 => wait
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w >= 0.0)
                .map(ModelAdmission::Wait)
                .ok_or_else(|| store_error("malformed wait from the script")),
            _ => Err(store_error("malformed status from the script")),
        }
    }

    /// [`PacingStore::admit`] at an explicit time (microseconds on a clock that every client of
    /// the key shares, e.g. a simulation's), straight to Redis: no fallback, the wait in
    /// seconds as the script computed it.
    #[cfg(test)]
    pub(crate) async fn admit_at(
        &self,
        key: &PaceKey,
        now_us: u64,
        (requests, tokens, keep): (f64, f64, f64),
    ) -> Result<ModelAdmission, Error> {
        let args = Self::admit_args(
            Some(now_us),
            (requests, tokens, keep),
            self.inner.config.ttl,
        );
        let v = self.invoke(key, args).await.map_err(|w| store_error(&w))?;
        Self::parse_admission(v)
    }

    /// [`PacingStore::learn`] at an explicit time (see [`RedisStore::admit_at`]).
    #[cfg(test)]
    pub(crate) async fn learn_at(
        &self,
        key: &PaceKey,
        now_us: u64,
        limits: LearnedLimits,
    ) -> Result<(), Error> {
        let args = Self::learn_args(Some(now_us), &limits, self.inner.config.ttl);
        self.invoke(key, args).await.map_err(|w| store_error(&w))?;
        Ok(())
    }

    /// [`PacingStore::pause`] at an explicit time (see [`RedisStore::admit_at`]).
    #[cfg(test)]
    pub(crate) async fn pause_at(
        &self,
        key: &PaceKey,
        now_us: u64,
        duration: Duration,
    ) -> Result<(), Error> {
        let args = Self::pause_args(Some(now_us), duration, self.inner.config.ttl);
        self.invoke(key, args).await.map_err(|w| store_error(&w))?;
        Ok(())
    }
}

impl PacingStore for RedisStore {
    fn admit<'a>(&'a self, key: &'a PaceKey, cost: Cost) -> StoreFuture<'a, Admission> {
        Box::pin(async move {
            let costs = (1.0, cost.tokens as f64, f64::from(cost.reserve));
            let args = Self::admit_args(None, costs, self.inner.config.ttl);
            match self.run(key, args).await? {
                Some(v) => Ok(Self::parse_admission(v)?.into()),
                None => Ok(self.inner.fallback.admit_now(key, cost)),
            }
        })
    }

    fn learn<'a>(&'a self, key: &'a PaceKey, limits: LearnedLimits) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // The local copy always learns, so that a fallback starts from known limits.
            self.inner.fallback.learn_now(key, limits);
            let args = Self::learn_args(None, &limits, self.inner.config.ttl);
            self.run(key, args).await.map(drop)
        })
    }

    fn pause<'a>(&'a self, key: &'a PaceKey, duration: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.inner.fallback.pause_now(key, duration);
            let args = Self::pause_args(None, duration, self.inner.config.ttl);
            self.run(key, args).await.map(drop)
        })
    }
}

#[cfg(test)]
mod script_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_key_never_holds_the_credential_or_names() {
        let key = PaceKey::new("api.openai.com")
            .with_credential(b"Bearer sk-proj-secret")
            .with_model("gpt-4o-mini");
        let name = redis_key("p", &key);
        assert!(name.starts_with("p:{") && name.ends_with('}'), "{name}");
        assert!(!name.contains("sk-proj") && !name.contains("openai") && !name.contains("gpt"));
        let other = PaceKey::new("api.openai.com")
            .with_credential(b"Bearer sk-proj-other")
            .with_model("gpt-4o-mini");
        assert_ne!(name, redis_key("p", &other));
        assert_ne!(
            name,
            redis_key(
                "p",
                &PaceKey::new("api.openai.com").with_model("gpt-4o-mini")
            )
        );
    }

    #[test]
    fn malformed_url_is_a_typed_error() {
        let err = RedisStore::open("not a url", RedisStoreConfig::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
    }

    #[test]
    fn script_answers_are_parsed_or_rejected() {
        assert_eq!(
            RedisStore::parse_admission((1, "0".into())).unwrap(),
            ModelAdmission::Admitted
        );
        assert_eq!(
            RedisStore::parse_admission((0, "0.25".into())).unwrap(),
            ModelAdmission::Wait(0.25)
        );
        assert_eq!(
            RedisStore::parse_admission((-1, "0".into())).unwrap(),
            ModelAdmission::Blocked
        );
        for bad in [(0, "x"), (0, "-1"), (0, "inf"), (7, "0")] {
            let err = RedisStore::parse_admission((bad.0, bad.1.into())).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Connection);
        }
    }

    #[test]
    fn pause_ttl_outlives_the_pause() {
        let args = RedisStore::pause_args(None, Duration::from_secs(3600), Duration::from_secs(60));
        assert_eq!(args[3], "3601000");
    }
}
