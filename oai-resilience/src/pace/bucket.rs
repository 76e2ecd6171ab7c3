//! The token bucket that both pacing paths run: the in-process [`Pacer`](super::Pacer) on
//! tokio's clock, and the stores' key model (and, step for step, the Redis script) on a
//! microsecond clock.
//!
//! A bucket refills at `refill` per second up to its `capacity`; a cost above the capacity
//! waits for a full bucket (and then takes the level below zero).

use tokio::time::Instant;

/// The slack below which a level counts as reaching a cost (float rounding).
pub(crate) const EPS: f64 = 1e-6;
/// The longest wait a bucket reports, in seconds.
pub(crate) const MAX_WAIT_SECS: f64 = 1e6;

/// A point in time a bucket is brought up to.
pub(crate) trait Clock: Copy + PartialOrd {
    /// Seconds from `earlier` to `self` (`self > earlier`).
    fn secs_since(self, earlier: Self) -> f64;
}

impl Clock for Instant {
    fn secs_since(self, earlier: Self) -> f64 {
        (self - earlier).as_secs_f64()
    }
}

/// Microseconds on a clock that every user of the bucket shares.
impl Clock for u64 {
    fn secs_since(self, earlier: Self) -> f64 {
        (self - earlier) as f64 / 1e6
    }
}

/// One token bucket, with its level as of `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket<T> {
    /// The most the bucket holds.
    pub(crate) capacity: f64,
    /// Refill per second.
    pub(crate) refill: f64,
    /// The level at `at` (negative after a cost above the capacity).
    pub(crate) level: f64,
    /// When `level` was computed.
    pub(crate) at: T,
}

impl<T: Clock> Bucket<T> {
    /// A full bucket at `now`.
    pub(crate) fn full(capacity: f64, refill: f64, now: T) -> Self {
        Bucket {
            capacity,
            refill,
            level: capacity,
            at: now,
        }
    }

    /// Brings the level up to `now` (a `now` before `at` changes nothing).
    pub(crate) fn advance(&mut self, now: T) {
        if now > self.at {
            let dt = now.secs_since(self.at);
            self.level = (self.level + self.refill * dt).min(self.capacity);
            self.at = now;
        }
    }

    /// Seconds until `cost` is available (a cost above the capacity waits for a full bucket),
    /// at most [`MAX_WAIT_SECS`]. `None`: never, with no refill.
    pub(crate) fn wait_secs(&self, cost: f64) -> Option<f64> {
        let need = cost.min(self.capacity);
        if self.level + EPS >= need {
            return Some(0.0);
        }
        if self.refill <= 0.0 {
            return None;
        }
        Some(((need - self.level) / self.refill).min(MAX_WAIT_SECS))
    }

    /// `(capacity, level, refill)`.
    pub(crate) fn view(&self) -> (f64, f64, f64) {
        (self.capacity, self.level, self.refill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_refill_alike() {
        let mut us = Bucket::full(2.0, 4.0, 0u64);
        us.level = 0.0;
        let t0 = Instant::now();
        let mut tokio = Bucket::full(2.0, 4.0, t0);
        tokio.level = 0.0;
        assert_eq!(us.wait_secs(1.0), Some(0.25));
        assert_eq!(tokio.wait_secs(1.0), Some(0.25));
        us.advance(250_000);
        tokio.advance(t0 + std::time::Duration::from_millis(250));
        assert_eq!(us.level, tokio.level);
        assert_eq!(us.wait_secs(1.0), Some(0.0));
        // Never above the capacity; a cost above it waits for a full bucket.
        us.advance(10_000_000);
        assert_eq!(us.level, 2.0);
        us.level = -1.0;
        assert_eq!(us.wait_secs(5.0), Some(0.75));
        us.refill = 0.0;
        assert_eq!(us.wait_secs(1.0), None);
    }
}
