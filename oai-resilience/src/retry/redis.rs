//! A retry budget shared by a fleet of processes through Redis (feature `redis`).
//!
//! A [`TokenBudget`] bounds the retries of one process: during an outage it lets about ten
//! retries through and then stops. Ten processes, each with its own budget, send ten times
//! that. [`RedisRetryBudget`] keeps one balance in Redis for every process that opens it with
//! the same name, so an outage is bounded fleet-wide.
//!
//! # How it works
//!
//! The retry loop must not wait for Redis before each retry, so the budget answers from a
//! local view and reconciles in the background:
//!
//! - every outcome updates the local view at once (the same arithmetic as [`TokenBudget`]:
//!   +`ratio` per success, −1 per retryable failure, rate-limit 429s not counted) and adds to
//!   a pending delta;
//! - every `sync_every` (100 ms by default) a background task sends the pending delta to Redis
//!   in one atomic script (`balance = clamp(balance + delta, 0, max)`, with an expiry) and
//!   adopts the fleet's balance as its local view;
//! - [`try_retry`](RetryBudget::try_retry) reads the local view: retries are allowed while
//!   it is above half the maximum.
//!
//! So the fleet's balance is exact up to one sync interval of every process's outcomes. When
//! Redis is unreachable or slower than `op_timeout`, the budget keeps working on its local
//! view alone (with a `tracing` warning, [`is_degraded`](RedisRetryBudget::is_degraded)
//! turns true) and goes back to the shared balance, with the delta it kept, when Redis answers.
//!
//! The Redis key is a hash of the name you give (`oai-resilience:budget:{…}`), so a name
//! that happens to hold a secret never reaches Redis.
//!
//! ```no_run
//! use oai_resilience::retry::redis::{RedisRetryBudget, RedisRetryBudgetConfig};
//! use oai_resilience::retry::RetryConfig;
//! use oai_resilience::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), oai_resilience::Error> {
//! let budget = RedisRetryBudget::connect(
//!     "redis://127.0.0.1:6379",
//!     "api.openai.com/team-a",
//!     RedisRetryBudgetConfig::default(),
//! )
//! .await?;
//! let retry = RetryLayer::with_config(RetryConfig::new().budget(budget));
//! # let _ = retry; Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::budget::{counts_as_failure, RetryBudget, TokenBudget};
use crate::error::{Error, ErrorKind};
use crate::redis_conn::{error_kind, expiry_millis, hashed_key, lazy_connection};

/// The atomic update: KEYS[1] the balance; ARGV delta and max in millionths of a token, the
/// expiry in milliseconds. A missing key is a full budget.
const SCRIPT: &str = r"
local max = tonumber(ARGV[2])
local b = tonumber(redis.call('GET', KEYS[1]))
if b == nil then b = max end
b = b + tonumber(ARGV[1])
if b > max then b = max end
if b < 0 then b = 0 end
redis.call('SET', KEYS[1], string.format('%d', b), 'PX', ARGV[3])
return b
";

/// One token in the unit the script counts in.
const UNIT: f64 = 1_000_000.0;

/// Settings of a [`RedisRetryBudget`]: start from [`Default`] and set the fields that differ
/// (as [`RedisStoreConfig`](crate::pace::RedisStoreConfig)).
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::retry::redis::RedisRetryBudgetConfig;
///
/// let mut config = RedisRetryBudgetConfig::default();
/// config.prefix = "my-service:budget".into();
/// config.sync_every = Duration::from_millis(50);
/// config.op_timeout = Duration::from_millis(50);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisRetryBudgetConfig {
    /// Tokens earned per successful attempt (see [`TokenBudget::new`]).
    ///
    /// # Default
    /// 0.5 (as [`TokenBudget::default`]).
    pub ratio: f64,
    /// The most the balance holds, in tokens; retries are allowed while it is above half.
    ///
    /// # Default
    /// 20 (as [`TokenBudget::default`]).
    pub max_tokens: f64,
    /// How often the background task reconciles with Redis (less than 1 ms counts as 1 ms).
    ///
    /// # Default
    /// 100 ms.
    pub sync_every: Duration,
    /// The longest a Redis operation may take before the budget works locally.
    ///
    /// # Default
    /// 100 ms.
    pub op_timeout: Duration,
    /// How long the shared balance outlives the last process that synced it.
    ///
    /// # Default
    /// 10 minutes.
    pub ttl: Duration,
    /// The prefix of the Redis key.
    ///
    /// # Default
    /// `"oai-resilience:budget"`.
    pub prefix: String,
}

impl Default for RedisRetryBudgetConfig {
    fn default() -> Self {
        RedisRetryBudgetConfig {
            ratio: 0.5,
            max_tokens: 20.0,
            sync_every: Duration::from_millis(100),
            op_timeout: Duration::from_millis(100),
            ttl: Duration::from_secs(600),
            prefix: "oai-resilience:budget".to_owned(),
        }
    }
}

/// A retry budget whose balance is shared by every process that opens it with the same name;
/// see the [module docs](self).
///
/// Cheap to clone (clones share everything). The background sync task stops by itself when
/// the last clone is dropped.
#[derive(Clone)]
pub struct RedisRetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    local: TokenBudget,
    /// Outcomes not yet sent to Redis, in millionths of a token.
    pending: AtomicI64,
    conn: ConnectionManager,
    script: redis::Script,
    key: String,
    config: RedisRetryBudgetConfig,
    degraded: AtomicBool,
    syncs: AtomicU64,
    failed_syncs: AtomicU64,
}

fn budget_error(what: &str) -> Error {
    Error::new(ErrorKind::Connection).with_detail(format!("retry budget (redis): {what}"))
}

/// The Redis key for `name`: the prefix and a 64-bit FNV-1a hash of the name, in a hash tag.
fn key_for(prefix: &str, name: &str) -> String {
    hashed_key(prefix, crate::hash::fnv1a(name.as_bytes()))
}

impl RedisRetryBudget {
    /// A budget named `name` on the Redis at `url`, with a background sync task on the current
    /// tokio runtime. Connects lazily: a Redis that is down now is tried at each sync. Fails
    /// only on a malformed URL.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the sync task needs one).
    pub fn open(url: &str, name: &str, config: RedisRetryBudgetConfig) -> Result<Self, Error> {
        let conn = lazy_connection(url, config.op_timeout).map_err(|e| budget_error(&e))?;
        let budget = RedisRetryBudget {
            inner: Arc::new(Inner {
                local: TokenBudget::new(config.ratio, config.max_tokens),
                pending: AtomicI64::new(0),
                conn,
                script: redis::Script::new(SCRIPT),
                key: key_for(&config.prefix, name),
                config,
                degraded: AtomicBool::new(false),
                syncs: AtomicU64::new(0),
                failed_syncs: AtomicU64::new(0),
            }),
        };
        tokio::spawn(sync_loop(Arc::downgrade(&budget.inner)));
        Ok(budget)
    }

    /// Like [`open`](Self::open), then one sync, which must succeed: the budget starts from
    /// the fleet's balance.
    pub async fn connect(
        url: &str,
        name: &str,
        config: RedisRetryBudgetConfig,
    ) -> Result<Self, Error> {
        let budget = Self::open(url, name, config)?;
        budget.sync().await?;
        Ok(budget)
    }

    /// Sends the pending outcomes to Redis and adopts the fleet's balance now (the background
    /// task does this every `sync_every`). On failure the budget keeps its local view and
    /// the pending outcomes, and reports itself degraded.
    pub async fn sync(&self) -> Result<f64, Error> {
        self.inner.sync().await
    }

    /// The balance this process sees, in tokens.
    pub fn balance(&self) -> f64 {
        self.inner.local.balance()
    }

    /// Whether the last sync failed (the budget works on its local view).
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }

    /// Successful syncs so far.
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// Failed syncs so far.
    pub fn failed_syncs(&self) -> u64 {
        self.inner.failed_syncs.load(Ordering::Relaxed)
    }

    /// The Redis key that holds the shared balance (a hash of the name).
    pub fn key_name(&self) -> &str {
        &self.inner.key
    }
}

impl Inner {
    /// The most a pending delta may hold either way: more than a full swing says nothing new.
    fn pending_bound(&self) -> i64 {
        (self.config.max_tokens.clamp(0.0, 1e9) * UNIT) as i64
    }

    fn add_pending(&self, delta: i64) {
        let bound = self.pending_bound();
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_add(delta).clamp(-bound, bound))
            });
    }

    /// One run of the script: the balance, or what failed and whether the connection dropped
    /// (then one more try may succeed).
    async fn invoke(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        conn: &mut ConnectionManager,
    ) -> Result<i64, (String, bool)> {
        match tokio::time::timeout(self.config.op_timeout, inv.invoke_async::<i64>(conn)).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err((error_kind(&e), e.is_io_error() || e.is_connection_dropped())),
            Err(_) => Err(("timed out".to_owned(), false)),
        }
    }

    async fn sync(&self) -> Result<f64, Error> {
        let delta = self.pending.swap(0, Ordering::AcqRel);
        let max = (self.config.max_tokens.clamp(0.0, 1e9) * UNIT) as i64;
        let ttl = expiry_millis(self.config.ttl);
        let mut conn = self.conn.clone();
        let mut inv = self.script.key(&self.key);
        inv.arg(delta).arg(max).arg(ttl);
        let mut outcome = self.invoke(&inv, &mut conn).await;
        // A connection that Redis dropped (a restart) fails the first command and is
        // re-established by the connection manager: one more try, within the same sync.
        if matches!(outcome, Err((_, true))) {
            outcome = self.invoke(&inv, &mut conn).await;
        }
        match outcome {
            Ok(b) => {
                // Outcomes that arrived while the script ran are applied on top.
                let since = self.pending.load(Ordering::Acquire);
                let tokens = (b as f64 + since as f64) / UNIT;
                self.local.set_balance(tokens.max(0.0));
                self.syncs.fetch_add(1, Ordering::Relaxed);
                if self.degraded.swap(false, Ordering::AcqRel) {
                    tracing::info!("retry budget: redis is back, sharing the balance again");
                }
                Ok(b as f64 / UNIT)
            }
            Err((what, _)) => {
                self.add_pending(delta);
                self.failed_syncs.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %what, "retry budget: redis unreachable, budgeting in this process only");
                }
                Err(budget_error(&what))
            }
        }
    }
}

/// Syncs every `sync_every` until the budget is dropped.
async fn sync_loop(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => i.config.sync_every.max(Duration::from_millis(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _ = inner.sync().await;
    }
}

impl RetryBudget for RedisRetryBudget {
    fn current_balance(&self) -> Option<f64> {
        Some(self.balance())
    }

    fn on_success(&self) {
        let i = &self.inner;
        i.local.on_success();
        i.add_pending((i.config.ratio.clamp(0.0, 1e9) * UNIT) as i64);
    }

    fn on_failure(&self, err: &Error) {
        if !counts_as_failure(err) {
            return;
        }
        let i = &self.inner;
        i.local.on_failure(err);
        i.add_pending(-(UNIT as i64));
    }

    fn try_retry(&self) -> bool {
        self.inner.local.try_retry()
    }
}

crate::macros::debug_struct!(RedisRetryBudget, |s| "RedisRetryBudget" {
    "key": s.inner.key,
    "balance": s.balance(),
    "degraded": s.is_degraded(),
    "config": s.inner.config,
} finish_non_exhaustive);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hashes_the_name() {
        let k = key_for("p", "sk-proj-SECRETsecret");
        assert!(!k.contains("SECRET"), "{k}");
        assert!(k.starts_with("p:{") && k.ends_with('}'), "{k}");
        assert_ne!(k, key_for("p", "another"));
        assert_eq!(k, key_for("p", "sk-proj-SECRETsecret"));
    }

    #[tokio::test]
    async fn a_malformed_url_is_a_typed_error() {
        let err = RedisRetryBudget::open("not a url", "x", RedisRetryBudgetConfig::default())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.to_string().contains("retry budget"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_degrades_to_the_local_view() {
        // Port 1 on loopback refuses at once.
        let config = RedisRetryBudgetConfig {
            sync_every: Duration::from_secs(3600),
            ..RedisRetryBudgetConfig::default()
        };
        let b = RedisRetryBudget::open("redis://127.0.0.1:1", "x", config).unwrap();
        let fail = Error::new(ErrorKind::ServerError);
        for _ in 0..9 {
            b.on_failure(&fail);
        }
        assert!(b.try_retry(), "20 - 9 = 11 > 10");
        b.on_failure(&fail);
        assert!(!b.try_retry(), "20 - 10 = 10, not above half");
        assert!(b.sync().await.is_err());
        assert!(b.is_degraded());
        assert_eq!(b.failed_syncs(), 1);
        assert_eq!(b.balance(), 10.0, "the local view is kept");
        // A 429 moves nothing; a success earns 0.5.
        b.on_failure(&Error::new(ErrorKind::RateLimited));
        b.on_success();
        assert_eq!(b.balance(), 10.5);
        assert!(b.try_retry());
    }
}
