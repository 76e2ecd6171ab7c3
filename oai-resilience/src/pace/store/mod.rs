//! Where pacing state lives: in this process ([`InProcessStore`]) or shared between processes
//! (`RedisStore`, feature `redis`); [`PaceLayer::pacing_store`](crate::pace::PaceLayer::pacing_store)
//! paces through one.
//!
//! The room has three parts: the [`PacingStore`] trait and the types it speaks (here), the
//! key model that every store's arithmetic follows (`model`, on the [bucket](super::bucket)
//! the pacer uses too), and the [`InProcessStore`] (`in_process`). How the pace service waits
//! on a store and reports to it is `wait`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::pace::{Cost, PaceKey};
use crate::parse::RefillSample;

mod in_process;
mod model;
mod wait;

pub use in_process::InProcessStore;
pub(crate) use model::KeyModel;
#[cfg(feature = "redis")]
pub(crate) use model::ModelAdmission;
pub(crate) use wait::{
    admit_until, deadline_limit, outcome, paced_locally, report_to_store, response_snapshot,
};

/// `d` in whole microseconds, the unit of the stores' clock (saturating).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

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

/// Learned limits of a request bucket holding `cap` that refills `refill` per second.
#[cfg(test)]
pub(crate) fn test_limits(cap: f64, refill: f64) -> LearnedLimits {
    LearnedLimits {
        requests: Some(BucketLimits {
            capacity: cap,
            refill_per_sec: refill,
        }),
        ..LearnedLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
