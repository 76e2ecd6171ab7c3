//! Helpers shared by the integration tests that need them.

pub mod redis_server;

use oai_resilience::pace::{BucketLimits, LearnedLimits, PaceKey, PacingStore, RedisStore};

/// Records the mock's bucket of 20 refilled at 20/s for `key`, as limits configured up front
/// (a store has no cold-key probe of its own).
#[allow(dead_code)] // not every binary that includes `support` seeds a store
pub(crate) async fn seed_bucket_20(store: &RedisStore, key: &PaceKey) {
    store
        .learn(
            key,
            LearnedLimits {
                requests: Some(BucketLimits {
                    capacity: 20.0,
                    refill_per_sec: 20.0,
                }),
                ..LearnedLimits::default()
            },
        )
        .await
        .unwrap();
}
