//! Helpers shared by the integration tests that need them.

pub(crate) use test_support::redis_server;

#[cfg(feature = "mock")]
use oai_resilience::pace::{BucketLimits, LearnedLimits, PaceKey, PacingStore, RedisStore};

/// Records the mock's bucket of 20 refilled at 20/s for `key`, as limits configured up front
/// (a store has no cold-key probe of its own).
#[cfg(feature = "mock")] // only the stacks against the mock seed a store
pub(crate) async fn seed_bucket_20(store: &RedisStore, key: &PaceKey) {
    store
        .learn(key, {
            let mut limits = LearnedLimits::default();
            limits.requests = Some(BucketLimits::new(20.0, 20.0));
            limits
        })
        .await
        .unwrap();
}

/// Asserts that `calls` calls paced through one shared store held the mock's bucket: every
/// call sent once, plus at most two 429s, each retried.
///
/// The store admits at most capacity + rate·t (the crate's unit tests check its arithmetic
/// exactly), but the mock counts arrivals: on a loaded machine a request admitted first can
/// reach the mock after one admitted 50 ms later, and a bucket that was full loses the refill
/// of that gap. So a 429 or two from delivery jitter is possible under load (CI saw 61
/// requests = 60 + one retried 429); an idle machine sees none, and two stacks without the
/// store see 18-33 (the control in `redis_openai_layer.rs`).
#[cfg(feature = "mock")]
pub(crate) fn assert_bucket_held(counts: &oai_resilience::mock::MockCounts, calls: u64) {
    assert!(counts.rate_limited <= 2, "{counts:?}");
    assert_eq!(counts.total, calls + counts.rate_limited, "{counts:?}");
}
