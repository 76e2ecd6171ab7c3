//! Where pacing state lives: in this process ([`InProcessStore`]) or shared between processes
//! (`RedisStore`, feature `redis`); [`PaceLayer::pacing_store`](crate::pace::PaceLayer::pacing_store)
//! paces through one.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::parse::RefillSample;

use super::bucket::Bucket;
use super::{wait_limit, WaitBound};
use crate::pace::{Cost, PaceKey};

/// A boxed future returned by [`PacingStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The answer of [`PacingStore::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The request may go now; its cost was taken from the buckets.
    Admitted,
    /// Not now: ask again after this long (nothing was taken).
    Wait(Duration),
    /// Never at the current limits: a bucket without refill is too low.
    Blocked,
}

/// The capacity and refill rate of one bucket, as learned from `x-ratelimit-*` headers or
/// configured.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BucketLimits {
    /// The most the bucket holds (the header's `limit`).
    pub capacity: f64,
    /// How much it refills per second.
    pub refill_per_sec: f64,
}

impl BucketLimits {
    /// A bucket that holds `capacity` and refills `refill_per_sec` per second.
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        BucketLimits {
            capacity,
            refill_per_sec,
        }
    }
}

/// What a response taught about a key's limits; `None` fields leave the stored value alone.
///
/// Built from a response's headers with `LearnedLimits::from(&snapshot)` (see the `From`
/// implementation), or from [`Default`] and its fields.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct LearnedLimits {
    /// The request bucket's limits.
    pub requests: Option<BucketLimits>,
    /// The token bucket's limits.
    pub tokens: Option<BucketLimits>,
    /// Requests left now: lowers the request bucket's level (never raises it, since other
    /// clients' requests in flight are not in it yet).
    pub remaining_requests: Option<f64>,
    /// Tokens left now: lowers the token bucket's level (never raises it).
    pub remaining_tokens: Option<f64>,
}

/// Shared pacing state per [`PaceKey`]: token buckets for requests and tokens, learned
/// limits and a "paused until" time: in this process ([`InProcessStore`]) or shared between
/// processes (`RedisStore`, feature `redis`).
///
/// A [`PacingStore`] keeps, per [`PaceKey`], a request bucket and a token bucket (capacity,
/// refill rate per second, level) and a "paused until" time, and answers one question
/// atomically: may a request of this cost go now, and if not, how long until it may
/// ([`Admission`])? Several processes that pace the same credential against one rate limit
/// share one store, so that together they stay under the limit instead of each spending all of
/// it.
///
/// The arithmetic is the pacer's token bucket: a bucket refills at `refill` per second up to
/// its `capacity`; a cost above the capacity waits for a full bucket; a request is admitted
/// when every bucket that is known has room and the key is not paused, and then takes its cost
/// from every bucket. [`InProcessStore`] runs that arithmetic on a plain microsecond clock; the
/// Redis store runs the same steps in a server-side Lua script, and a property test checks
/// that the two admit the same sequences.
///
/// The stack paces through a store with
/// [`OpenAiLayer::pacing_store`](crate::stack::OpenAiLayer::pacing_store) (or
/// [`PaceLayer::pacing_store`](crate::pace::PaceLayer::pacing_store)); the in-process
/// [`Pacer`](crate::pace::Pacer), with its adaptive rate, stays the default and keeps its own
/// state. The store is also usable on its
/// own (acquire a slot with [`PacingStore::admit`], wait as told, report limits with
/// [`PacingStore::learn`] and 429s with [`PacingStore::pause`]).
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::pace::{Admission, BucketLimits, Cost, InProcessStore, LearnedLimits, PaceKey, PacingStore};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), oai_resilience::Error> {
/// let store = InProcessStore::new();
/// let key = PaceKey::new("api.openai.com").with_credential(b"Bearer sk-test");
/// // The headers said: 2 requests per bucket, refilled at 2 per second, both left.
/// let mut limits = LearnedLimits::default();
/// limits.requests = Some(BucketLimits::new(2.0, 2.0));
/// limits.remaining_requests = Some(2.0);
/// store.learn(&key, limits).await?;
/// assert_eq!(store.admit(&key, Cost::tokens(10)).await?, Admission::Admitted);
/// assert_eq!(store.admit(&key, Cost::tokens(10)).await?, Admission::Admitted);
/// // Empty: the third waits half a second for one request's refill.
/// assert_eq!(
///     store.admit(&key, Cost::tokens(10)).await?,
///     Admission::Wait(Duration::from_millis(500))
/// );
/// # Ok(()) }
/// ```
///
/// Implementations must make [`admit`](PacingStore::admit) atomic: two callers never both take
/// the last slot.
pub trait PacingStore: fmt::Debug + Send + Sync + 'static {
    /// Admits one request of `cost` now, or says how long to wait.
    fn admit<'a>(&'a self, key: &'a PaceKey, cost: Cost) -> StoreFuture<'a, Admission>;
    /// Records limits learned from a response.
    fn learn<'a>(&'a self, key: &'a PaceKey, limits: LearnedLimits) -> StoreFuture<'a, ()>;
    /// Pauses the key for `duration` from now (a 429's hint); an earlier pause is never
    /// shortened.
    fn pause<'a>(&'a self, key: &'a PaceKey, duration: Duration) -> StoreFuture<'a, ()>;
}

/// A shared store is a store: clones of the `Arc` share its state.
impl<T: PacingStore + ?Sized> PacingStore for Arc<T> {
    fn admit<'a>(&'a self, key: &'a PaceKey, cost: Cost) -> StoreFuture<'a, Admission> {
        (**self).admit(key, cost)
    }

    fn learn<'a>(&'a self, key: &'a PaceKey, limits: LearnedLimits) -> StoreFuture<'a, ()> {
        (**self).learn(key, limits)
    }

    fn pause<'a>(&'a self, key: &'a PaceKey, duration: Duration) -> StoreFuture<'a, ()> {
        (**self).pause(key, duration)
    }
}

/// One bucket of [`KeyModel`], on a microsecond clock.
pub(crate) type BucketModel = Bucket<u64>;

impl BucketModel {
    fn learn(
        slot: &mut Option<BucketModel>,
        limits: BucketLimits,
        remaining: Option<f64>,
        now: u64,
    ) {
        match slot {
            Some(b) => {
                b.advance(now);
                b.capacity = limits.capacity;
                b.refill = limits.refill_per_sec;
                // The headers' `remaining` only lowers the level: other clients' requests in
                // flight are not counted in it yet, and raising it could over-admit.
                b.level = match remaining {
                    Some(r) => b.level.min(r).min(limits.capacity),
                    None => b.level.min(limits.capacity),
                };
            }
            None => {
                *slot = Some(BucketModel {
                    capacity: limits.capacity,
                    refill: limits.refill_per_sec,
                    level: remaining.unwrap_or(limits.capacity).min(limits.capacity),
                    at: now,
                });
            }
        }
    }
}

/// The pacing state of one key on a plain microsecond clock: the arithmetic that
/// [`InProcessStore`] and the Redis store's script share.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct KeyModel {
    /// The request bucket, once known.
    pub(crate) requests: Option<BucketModel>,
    /// The token bucket, once known.
    pub(crate) tokens: Option<BucketModel>,
    /// Paused until this time (microseconds), if ever paused.
    pub(crate) paused_until: Option<u64>,
}

/// A [`KeyModel::admit`] answer with the wait in seconds, before rounding to a [`Duration`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ModelAdmission {
    /// Admitted; the costs were taken.
    Admitted,
    /// Wait this many seconds.
    Wait(f64),
    /// Never at the current limits.
    Blocked,
}

impl From<ModelAdmission> for Admission {
    /// The wait rounded to the nanosecond.
    fn from(m: ModelAdmission) -> Self {
        match m {
            ModelAdmission::Admitted => Admission::Admitted,
            ModelAdmission::Wait(s) => Admission::Wait(Duration::from_secs_f64(s.max(0.0))),
            ModelAdmission::Blocked => Admission::Blocked,
        }
    }
}

impl KeyModel {
    /// Admits a request costing `requests` and `tokens` at `now` (microseconds), or says how
    /// long to wait. Every known bucket is brought up to `now` either way.
    pub(crate) fn admit(&mut self, now: u64, requests: f64, tokens: f64) -> ModelAdmission {
        let mut wait: f64 = 0.0;
        if let Some(p) = self.paused_until {
            if p > now {
                wait = (p - now) as f64 / 1e6;
            }
        }
        let mut blocked = false;
        for (slot, cost) in [(&mut self.requests, requests), (&mut self.tokens, tokens)] {
            if let Some(b) = slot {
                b.advance(now);
                match b.wait_secs(cost) {
                    Some(w) => wait = wait.max(w),
                    None => blocked = true,
                }
            }
        }
        if blocked {
            return ModelAdmission::Blocked;
        }
        if wait > 0.0 {
            return ModelAdmission::Wait(wait);
        }
        if let Some(b) = &mut self.requests {
            b.level -= requests;
        }
        if let Some(b) = &mut self.tokens {
            b.level -= tokens;
        }
        ModelAdmission::Admitted
    }

    /// Records learned limits at `now`.
    pub(crate) fn learn(&mut self, now: u64, limits: LearnedLimits) {
        if let Some(l) = limits.requests {
            BucketModel::learn(&mut self.requests, l, limits.remaining_requests, now);
        }
        if let Some(l) = limits.tokens {
            BucketModel::learn(&mut self.tokens, l, limits.remaining_tokens, now);
        }
    }

    /// Pauses until `now + duration_us`, never shortening an earlier pause.
    pub(crate) fn pause(&mut self, now: u64, duration_us: u64) {
        let until = now.saturating_add(duration_us);
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }
}

/// The default [`PacingStore`]: state in this process, behind one mutex, on the
/// [`tokio::time::Instant`] clock (virtual time works).
#[derive(Clone)]
pub struct InProcessStore {
    inner: Arc<InProcessInner>,
}

struct InProcessInner {
    origin: Instant,
    keys: Mutex<HashMap<PaceKey, KeyModel>>,
}

impl fmt::Debug for InProcessStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("InProcessStore").field("keys", &n).finish()
    }
}

impl Default for InProcessStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessStore {
    /// An empty store.
    pub fn new() -> Self {
        InProcessStore {
            inner: Arc::new(InProcessInner {
                origin: Instant::now(),
                keys: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn with<T>(&self, key: &PaceKey, f: impl FnOnce(&mut KeyModel, u64) -> T) -> T {
        let now = self.now_us();
        let mut keys = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let model = keys.entry(key.clone()).or_default();
        f(model, now)
    }

    /// The state of `key`, if it has any.
    #[cfg(test)]
    pub(crate) fn key_model(&self, key: &PaceKey) -> Option<KeyModel> {
        let keys = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        keys.get(key).copied()
    }

    pub(crate) fn admit_now(&self, key: &PaceKey, cost: Cost) -> Admission {
        self.with(key, |m, now| m.admit(now, 1.0, cost.tokens as f64).into())
    }

    pub(crate) fn learn_now(&self, key: &PaceKey, limits: LearnedLimits) {
        self.with(key, |m, now| m.learn(now, limits));
    }

    pub(crate) fn pause_now(&self, key: &PaceKey, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.with(key, |m, now| m.pause(now, us));
    }
}

impl PacingStore for InProcessStore {
    fn admit<'a>(&'a self, key: &'a PaceKey, cost: Cost) -> StoreFuture<'a, Admission> {
        let a = self.admit_now(key, cost);
        Box::pin(async move { Ok(a) })
    }

    fn learn<'a>(&'a self, key: &'a PaceKey, limits: LearnedLimits) -> StoreFuture<'a, ()> {
        self.learn_now(key, limits);
        Box::pin(async { Ok(()) })
    }

    fn pause<'a>(&'a self, key: &'a PaceKey, duration: Duration) -> StoreFuture<'a, ()> {
        self.pause_now(key, duration);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cap: f64, refill: f64) -> LearnedLimits {
        LearnedLimits {
            requests: Some(BucketLimits {
                capacity: cap,
                refill_per_sec: refill,
            }),
            ..LearnedLimits::default()
        }
    }

    #[test]
    fn unknown_key_is_admitted() {
        let mut m = KeyModel::default();
        assert_eq!(m.admit(0, 1.0, 1_000.0), ModelAdmission::Admitted);
    }

    #[test]
    fn bucket_empties_then_refills() {
        let mut m = KeyModel::default();
        m.learn(0, limits(2.0, 4.0));
        assert_eq!(m.admit(0, 1.0, 0.0), ModelAdmission::Admitted);
        assert_eq!(m.admit(0, 1.0, 0.0), ModelAdmission::Admitted);
        assert_eq!(m.admit(0, 1.0, 0.0), ModelAdmission::Wait(0.25));
        assert_eq!(m.admit(250_000, 1.0, 0.0), ModelAdmission::Admitted);
    }

    #[test]
    fn no_refill_blocks() {
        let mut m = KeyModel::default();
        m.learn(0, limits(1.0, 0.0));
        assert_eq!(m.admit(0, 1.0, 0.0), ModelAdmission::Admitted);
        assert_eq!(m.admit(10_000_000, 1.0, 0.0), ModelAdmission::Blocked);
    }

    #[test]
    fn token_cost_above_capacity_waits_for_a_full_bucket() {
        let mut m = KeyModel::default();
        m.learn(
            0,
            LearnedLimits {
                tokens: Some(BucketLimits {
                    capacity: 100.0,
                    refill_per_sec: 100.0,
                }),
                remaining_tokens: Some(50.0),
                ..LearnedLimits::default()
            },
        );
        assert_eq!(m.admit(0, 1.0, 500.0), ModelAdmission::Wait(0.5));
        assert_eq!(m.admit(500_000, 1.0, 500.0), ModelAdmission::Admitted);
        assert!(m.tokens.is_some_and(|b| b.level < -399.0));
    }

    #[test]
    fn pause_is_never_shortened() {
        let mut m = KeyModel::default();
        m.pause(0, 2_000_000);
        m.pause(0, 1_000_000);
        assert_eq!(m.admit(500_000, 1.0, 0.0), ModelAdmission::Wait(1.5));
        assert_eq!(m.admit(2_000_000, 1.0, 0.0), ModelAdmission::Admitted);
    }

    #[test]
    fn learn_lowers_level_to_a_smaller_capacity() {
        let mut m = KeyModel::default();
        m.learn(0, limits(10.0, 1.0));
        m.learn(0, limits(3.0, 1.0));
        assert_eq!(m.requests.map(|b| b.level), Some(3.0));
    }

    #[tokio::test(start_paused = true)]
    async fn in_process_store_follows_virtual_time() {
        let store = InProcessStore::new();
        let key = PaceKey::new("x").with_credential(b"Bearer sk-secret");
        store.learn(&key, limits(1.0, 10.0)).await.unwrap();
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Wait(Duration::from_millis(100))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Admitted
        );
        store.pause(&key, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Wait(Duration::from_secs(1))
        );
        assert!(!format!("{store:?}").contains("sk-secret"));
    }
}

/// What a response's `x-ratelimit-*` headers teach a store: capacity = `limit`, refill =
/// (`limit` − `remaining`) / `reset` (when the bucket was used and `reset` is at least 10 ms,
/// the rule of [`RateLimitSnapshot::request_refill_per_sec`](crate::parse::RateLimitSnapshot::request_refill_per_sec);
/// otherwise `limit` per minute), level at most `remaining`.
impl From<&crate::parse::RateLimitSnapshot> for LearnedLimits {
    fn from(snap: &crate::parse::RateLimitSnapshot) -> Self {
        learned_from(snap)
    }
}

fn learned_from(snap: &crate::parse::RateLimitSnapshot) -> LearnedLimits {
    fn one(
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<Duration>,
    ) -> (Option<BucketLimits>, Option<f64>) {
        let (Some(limit), Some(remaining)) = (limit, remaining) else {
            return (None, None);
        };
        if limit == 0 {
            return (None, None);
        }
        let capacity = limit as f64;
        let refill = match reset.and_then(|r| RefillSample::new(limit, remaining, r)) {
            Some(sample) => sample.per_sec(),
            None => capacity / 60.0,
        };
        (
            Some(BucketLimits {
                capacity,
                refill_per_sec: refill,
            }),
            Some(remaining as f64),
        )
    }
    let (requests, remaining_requests) = one(
        snap.limit_requests,
        snap.remaining_requests,
        snap.reset_requests,
    );
    let (tokens, remaining_tokens) =
        one(snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens);
    LearnedLimits {
        requests,
        tokens,
        remaining_requests,
        remaining_tokens,
    }
}

pub(crate) fn paced_locally(key: &PaceKey, why: &str, waited: Duration) -> Error {
    Error::new(crate::ErrorKind::RateLimited).with_detail(format!(
        "{}: no slot on {key} in the shared store before {why} (waited {} ms)",
        crate::pace::pacer::PACED_LOCALLY,
        waited.as_millis()
    ))
}

/// When a wait that started at `start` must end ([`wait_limit`]), and why, in words.
pub(crate) fn deadline_limit(
    start: Instant,
    max_wait: Option<Duration>,
    deadline: Option<Instant>,
) -> (Option<Instant>, &'static str) {
    match wait_limit(start, max_wait, deadline) {
        Some((limit, WaitBound::Deadline)) => (Some(limit), "the call's deadline"),
        Some((limit, WaitBound::MaxWait)) => (Some(limit), "max_wait"),
        None => (None, "max_wait"),
    }
}

/// Waits until `store` admits a request of `cost` on `key`, at most `max_wait` and never past
/// `deadline`; returns how long it waited.
pub(crate) async fn admit_until(
    store: &dyn PacingStore,
    key: &PaceKey,
    cost: Cost,
    max_wait: Option<Duration>,
    deadline: Option<Instant>,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let (limit, why) = deadline_limit(start, max_wait, deadline);
    // Bounded: every round either admits, fails, or sleeps a positive wait (a zero wait is
    // rounded up to 1 ms), and the total sleep is bounded by `limit` (or, without any limit,
    // by the store's longest wait per round, as the caller asked for no bound).
    loop {
        match store.admit(key, cost).await? {
            Admission::Admitted => return Ok(start.elapsed()),
            Admission::Blocked => {
                return Err(paced_locally(
                    key,
                    "a refill (none at this limit)",
                    start.elapsed(),
                ))
            }
            Admission::Wait(d) => {
                let d = d.max(Duration::from_millis(1));
                if limit.is_some_and(|l| Instant::now() + d > l) {
                    return Err(paced_locally(key, why, start.elapsed()));
                }
                tracing::trace!(key = %key, wait_ms = d.as_millis() as u64, "shared pace: waiting for the store");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// What a call's result tells the store: the rate-limit snapshot, and `Some(hint)` for a
/// server 429.
pub(crate) fn outcome<ResB>(
    res: &Result<http::Response<ResB>, Error>,
) -> (
    Option<crate::parse::RateLimitSnapshot>,
    Option<Option<Duration>>,
) {
    match res {
        Ok(r) => (
            Some(
                r.extensions()
                    .get::<crate::parse::RateLimitSnapshot>()
                    .copied()
                    .unwrap_or_else(|| crate::parse::RateLimitSnapshot::from_headers(r.headers())),
            ),
            None,
        ),
        Err(e) => (
            e.rate_limit().copied(),
            (e.kind() == crate::ErrorKind::RateLimited && e.status().is_some())
                .then(|| e.retry_after()),
        ),
    }
}

/// Reports a call's outcome to the store: limits learned from the snapshot, and a pause for a
/// server 429 (its hint, else `default_pause`). A store that fails closed fails this report,
/// not the call that was made: its errors are logged and dropped.
pub(crate) async fn report_to_store(
    store: &dyn PacingStore,
    key: &PaceKey,
    snap: Option<crate::parse::RateLimitSnapshot>,
    rate_limited: Option<Option<Duration>>,
    default_pause: Duration,
) {
    if let Some(snap) = snap.filter(|s| !s.is_empty()) {
        if let Err(e) = store.learn(key, LearnedLimits::from(&snap)).await {
            tracing::debug!(error = %e, "shared pace: could not record limits");
        }
    }
    if let Some(hint) = rate_limited {
        let pause = hint.unwrap_or(default_pause);
        if let Err(e) = store.pause(key, pause).await {
            tracing::debug!(error = %e, "shared pace: could not record a pause");
        }
    }
}

#[cfg(test)]
mod pacing_store_tests {
    use super::*;

    fn limits(cap: f64, refill: f64) -> LearnedLimits {
        LearnedLimits {
            requests: Some(BucketLimits {
                capacity: cap,
                refill_per_sec: refill,
            }),
            ..LearnedLimits::default()
        }
    }

    use crate::pace::test_upstream::upstream;
    use crate::pace::{PaceLayer, PacerConfig};

    /// A pace layer that paces through `store`, with `edit` applied to its pacer's config.
    fn store_layer(store: impl PacingStore, edit: impl FnOnce(&mut PacerConfig)) -> PaceLayer {
        let mut config = PacerConfig::default();
        edit(&mut config);
        PaceLayer::with_config(config).pacing_store(store)
    }

    fn request() -> http::Request<http_body_util::Full<bytes::Bytes>> {
        http::Request::post("https://api.example.test/v1/chat/completions")
            .header("authorization", "Bearer sk-test-layer")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            )))
            .unwrap()
    }

    fn request_key() -> PaceKey {
        PaceKey::new("api.example.test")
            .with_credential(b"Bearer sk-test-layer")
            .with_model("gpt-4o-mini")
    }

    #[test]
    fn learned_from_headers() {
        let snap = crate::parse::RateLimitSnapshot {
            limit_requests: Some(20),
            remaining_requests: Some(15),
            reset_requests: Some(Duration::from_millis(250)),
            limit_tokens: Some(1_000),
            remaining_tokens: Some(1_000),
            reset_tokens: Some(Duration::ZERO),
        };
        let l = LearnedLimits::from(&snap);
        assert_eq!(
            l.requests,
            Some(BucketLimits {
                capacity: 20.0,
                refill_per_sec: 20.0
            })
        );
        assert_eq!(l.remaining_requests, Some(15.0));
        // Unused bucket: no rate to derive, so the limit per minute.
        assert_eq!(l.tokens.map(|b| b.refill_per_sec), Some(1_000.0 / 60.0));
        let empty = LearnedLimits::from(&crate::parse::RateLimitSnapshot::default());
        assert_eq!(empty, LearnedLimits::default());
        let zero = crate::parse::RateLimitSnapshot {
            limit_requests: Some(0),
            remaining_requests: Some(0),
            ..Default::default()
        };
        assert_eq!(LearnedLimits::from(&zero).requests, None);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_waits_for_the_store_and_learns_from_headers() {
        use tower::{Layer, ServiceExt};
        let store = InProcessStore::new();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let svc = store_layer(store.clone(), |_| {}).layer(upstream(
            200,
            &[
                ("x-ratelimit-limit-requests", "2"),
                ("x-ratelimit-remaining-requests", "1"),
                ("x-ratelimit-reset-requests", "500ms"),
            ],
            sent.clone(),
        ));
        let start = Instant::now();
        for _ in 0..3 {
            svc.clone().oneshot(request()).await.unwrap();
        }
        // Learned: capacity 2, refill 2/s; the first response set the level to 1, the second
        // emptied it, the third waited 500 ms.
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let m = store.key_model(&request_key()).unwrap();
        assert_eq!(m.requests.map(|b| (b.capacity, b.refill)), Some((2.0, 2.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn layer_fails_as_paced_locally_past_max_wait_or_deadline_or_when_blocked() {
        use tower::{Layer, ServiceExt};
        let store = InProcessStore::new();
        let key = request_key();
        store.learn(&key, limits(1.0, 1.0)).await.unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let layer = store_layer(store.clone(), |c| {
            c.max_wait = Some(Duration::from_millis(100))
        });
        let svc = layer.layer(upstream(200, &[], sent.clone()));
        svc.clone().oneshot(request()).await.unwrap();
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert!(crate::pace::is_paced_locally(&err), "{err}");
        assert!(
            err.detail().is_some_and(|d| d.contains("max_wait")),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-test"), "{err}");
        // A deadline sooner than max_wait.
        let svc = store_layer(store.clone(), |_| {}).layer(upstream(200, &[], sent.clone()));
        let mut req = request();
        req.extensions_mut().insert(crate::pace::CallDeadline(
            Instant::now() + Duration::from_millis(10),
        ));
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert!(
            err.detail().is_some_and(|d| d.contains("deadline")),
            "{err}"
        );
        // No refill: blocked at once.
        store.learn(&key, limits(1.0, 0.0)).await.unwrap();
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert!(crate::pace::is_paced_locally(&err), "{err}");
        assert!(err.detail().is_some_and(|d| d.contains("refill")), "{err}");
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_pauses_the_key_on_a_server_429() {
        use tower::{Layer, ServiceExt};
        let store = InProcessStore::new();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let svc = store_layer(store.clone(), |c| c.default_pause = Duration::from_secs(3))
            .layer(upstream(429, &[], sent.clone()));
        let err = svc.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::RateLimited);
        assert!(!crate::pace::is_paced_locally(&err));
        let pause = store.key_model(&request_key()).and_then(|m| m.paused_until);
        let hint_us = u64::try_from(
            err.retry_after()
                .unwrap_or(Duration::from_secs(3))
                .as_micros(),
        )
        .unwrap();
        assert_eq!(pause, Some(hint_us));
        assert!(matches!(
            store.admit(&request_key(), Cost::tokens(1)).await.unwrap(),
            Admission::Wait(_)
        ));
    }

    #[derive(Debug)]
    struct Broken;

    impl PacingStore for Broken {
        fn admit<'a>(&'a self, _: &'a PaceKey, _: Cost) -> StoreFuture<'a, Admission> {
            Box::pin(async { Err(Error::new(crate::ErrorKind::Connection).with_detail("down")) })
        }
        fn learn<'a>(&'a self, _: &'a PaceKey, _: LearnedLimits) -> StoreFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
        fn pause<'a>(&'a self, _: &'a PaceKey, _: Duration) -> StoreFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn layer_passes_a_failing_store_error_through_and_sends_nothing() {
        use tower::{Layer, ServiceExt};
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let svc = store_layer(Broken, |_| {}).layer(upstream(200, &[], sent.clone()));
        let err = svc.oneshot(request()).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Connection);
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
