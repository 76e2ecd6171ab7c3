//! The pacing state of one key on a microsecond clock: the arithmetic every store follows
//! ([`InProcessStore`](super::InProcessStore) runs it, the Redis store's script runs the same
//! steps).

use std::time::Duration;

use super::{Admission, BucketLimits, LearnedLimits};
use crate::pace::bucket::Bucket;

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
/// [`InProcessStore`](super::InProcessStore) and the Redis store's script share.
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
    #[cfg(test)]
    pub(crate) fn admit(&mut self, now: u64, requests: f64, tokens: f64) -> ModelAdmission {
        self.admit_keeping(now, requests, tokens, 0.0)
    }

    /// [`admit`](Self::admit), but only when the request bucket keeps `keep` after the
    /// request (it needs `requests + keep`, at most its capacity; only `requests` is taken).
    pub(crate) fn admit_keeping(
        &mut self,
        now: u64,
        requests: f64,
        tokens: f64,
        keep: f64,
    ) -> ModelAdmission {
        let mut wait: f64 = 0.0;
        if let Some(p) = self.paused_until {
            if p > now {
                wait = (p - now) as f64 / 1e6;
            }
        }
        let mut blocked = false;
        let need = requests + keep.max(0.0);
        for (slot, cost) in [(&mut self.requests, need), (&mut self.tokens, tokens)] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pace::store::test_limits as limits;

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
    fn a_reserve_holds_back_until_the_bucket_keeps_it() {
        let mut m = KeyModel::default();
        m.learn(0, limits(4.0, 4.0));
        // 4 in the bucket: a request that keeps 2 goes, leaving 3; then 2 left.
        assert_eq!(m.admit_keeping(0, 1.0, 0.0, 2.0), ModelAdmission::Admitted);
        assert_eq!(m.admit_keeping(0, 1.0, 0.0, 2.0), ModelAdmission::Admitted);
        // 2 left: it needs 3, a quarter second of refill; a request without reserve goes.
        assert_eq!(
            m.admit_keeping(0, 1.0, 0.0, 2.0),
            ModelAdmission::Wait(0.25)
        );
        assert_eq!(m.admit(0, 1.0, 0.0), ModelAdmission::Admitted);
        assert_eq!(m.requests.map(|b| b.level), Some(1.0));
        // A reserve above the capacity waits for a full bucket.
        assert_eq!(
            m.admit_keeping(0, 1.0, 0.0, 10.0),
            ModelAdmission::Wait(0.75)
        );
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
}
