//! Delays: exponential backoff with jitter, the server-hint jitter, and the random source.
//!
//! Everything here is a pure function of its inputs (the random draw `u ∈ [0, 1)` included),
//! so the retry loop, the property tests and the `#[openai_call]` macro share one definition.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the random part of a backoff delay is drawn (Marc Brooker's variants).
///
/// With `ceiling = min(cap, base · 2ⁿ⁻¹)` for the n-th retry and `u ~ U[0, 1)`:
///
/// | mode | delay |
/// |---|---|
/// | [`None`](Jitter::None) | `ceiling` |
/// | [`Full`](Jitter::Full) | `u · ceiling` |
/// | [`Equal`](Jitter::Equal) | `ceiling / 2 + u · ceiling / 2` |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(cap, base + u · (max(base, 3 · previous) − base))` |
///
/// # Default
///
/// [`Jitter::Full`]: it does the least total work when many clients back off together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: every client waits exactly the ceiling.
    None,
    /// Uniform between zero and the ceiling.
    #[default]
    Full,
    /// Half the ceiling, plus uniform up to the other half.
    Equal,
    /// Uniform between the base and three times the previous delay, capped.
    Decorrelated,
}

/// Exponential backoff: a base, a cap and a [`Jitter`] mode.
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::retry::{Backoff, Jitter};
///
/// let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(8)).with_jitter(Jitter::None);
/// assert_eq!(b.ceiling(1), Duration::from_millis(500));
/// assert_eq!(b.ceiling(3), Duration::from_secs(2));
/// assert_eq!(b.ceiling(10), Duration::from_secs(8));
/// // Full jitter scales the ceiling by the random draw.
/// let full = b.with_jitter(Jitter::Full);
/// assert_eq!(full.delay(3, None, 0.25), Duration::from_millis(500));
/// ```
///
/// # Default
///
/// Base 500 ms, cap 20 s, full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

/// The default base delay: 500 ms.
pub const DEFAULT_BASE: Duration = Duration::from_millis(500);
/// The default cap on a backoff delay: 20 s.
pub const DEFAULT_CAP: Duration = Duration::from_secs(20);

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl Backoff {
    /// Backoff from `base`, doubling per retry up to `cap`, with full jitter.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// The same backoff with the jitter mode `jitter`.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// `min(cap, base · 2^(retry − 1))` for the `retry`-th retry (1 for the first retry; 0 is
    /// treated as 1). Saturates instead of overflowing.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = retry.max(1) - 1;
        let factor = 1u32 << exp.min(31);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the `retry`-th retry for the random draw `u` (clamped into `[0, 1)`).
    /// `previous` is the delay before the previous retry (only [`Jitter::Decorrelated`] reads it).
    pub fn delay(&self, retry: u32, previous: Option<Duration>, u: f64) -> Duration {
        let u = clamp_unit(u);
        match self.jitter {
            Jitter::None => self.ceiling(retry),
            Jitter::Full => self.ceiling(retry).mul_f64(u),
            Jitter::Equal => {
                let c = self.ceiling(retry);
                let half = c / 2;
                half + (c - half).mul_f64(u)
            }
            Jitter::Decorrelated => {
                let prev = previous.unwrap_or(self.base);
                let hi = prev.saturating_mul(3).max(self.base);
                (self.base + (hi - self.base).mul_f64(u)).min(self.cap)
            }
        }
    }

    /// The inclusive range that [`Backoff::delay`] can return for these inputs.
    pub fn bounds(&self, retry: u32, previous: Option<Duration>) -> (Duration, Duration) {
        match self.jitter {
            Jitter::None => (self.ceiling(retry), self.ceiling(retry)),
            Jitter::Full => (Duration::ZERO, self.ceiling(retry)),
            Jitter::Equal => {
                let c = self.ceiling(retry);
                (c / 2, c)
            }
            Jitter::Decorrelated => {
                let prev = previous.unwrap_or(self.base);
                let hi = prev.saturating_mul(3).max(self.base);
                (self.base.min(self.cap), hi.min(self.cap))
            }
        }
    }
}

fn clamp_unit(u: f64) -> f64 {
    if u.is_nan() || u < 0.0 {
        0.0
    } else if u >= 1.0 {
        // The largest f64 below 1.
        1.0 - f64::EPSILON / 2.0
    } else {
        u
    }
}

/// The jitter added on top of a server hint, so that clients that got the same hint do not
/// all return in the same instant. The hint is never shortened.
///
/// The extra wait is `u · max(ratio · hint, min)`.
///
/// # Default
///
/// 10 % of the hint, at least 50 ms.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HintJitter {
    /// The fraction of the hint that may be added.
    pub ratio: f64,
    /// The smallest jitter window, for short (or zero) hints.
    pub min: Duration,
}

impl Default for HintJitter {
    fn default() -> Self {
        HintJitter {
            ratio: 0.1,
            min: Duration::from_millis(50),
        }
    }
}

impl HintJitter {
    /// Up to `ratio` of the hint, at least `min`, added on top of it.
    pub fn new(ratio: f64, min: Duration) -> Self {
        HintJitter { ratio, min }
    }

    /// No jitter on hints: wait exactly what the server said.
    pub const NONE: HintJitter = HintJitter {
        ratio: 0.0,
        min: Duration::ZERO,
    };

    /// The width of the jitter window for `hint`.
    pub fn window(&self, hint: Duration) -> Duration {
        let ratio = if self.ratio.is_finite() && self.ratio > 0.0 {
            self.ratio.min(10.0)
        } else {
            0.0
        };
        hint.mul_f64(ratio).max(self.min)
    }

    /// `hint + u · window(hint)`.
    pub fn apply(&self, hint: Duration, u: f64) -> Duration {
        hint.saturating_add(self.window(hint).mul_f64(clamp_unit(u)))
    }
}

/// A source of uniform random numbers in `[0, 1)`, shared by the clones of a retry stack.
///
/// Implement it to inject randomness (a test double, a different generator). The crate's
/// [`SplitMix`] is seedable and lock-free.
pub trait RandomSource: Send + Sync + 'static {
    /// The next draw, in `[0, 1)`.
    fn next_unit(&self) -> f64;
}

/// A thread-safe SplitMix64 generator: deterministic for a seed, lock-free.
///
/// ```
/// use oai_resilience::retry::{RandomSource, SplitMix};
/// let a = SplitMix::new(7);
/// let b = SplitMix::new(7);
/// assert_eq!(a.next_unit(), b.next_unit());
/// ```
pub struct SplitMix {
    state: AtomicU64,
}

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix {
            state: AtomicU64::new(seed),
        }
    }

    /// A generator seeded from the process's random hasher keys.
    pub fn from_entropy() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        SplitMix::new(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl RandomSource for SplitMix {
    fn next_unit(&self) -> f64 {
        // 53 random bits: exactly representable, strictly below 1.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl fmt::Debug for SplitMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitMix").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(ms(100), ms(1000));
        let got: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.ceiling(0), ms(100));
        assert_eq!(b.ceiling(u32::MAX), ms(1000));
    }

    #[test]
    fn modes_at_fixed_draws() {
        let b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.with_jitter(Jitter::None).delay(3, None, 0.9), ms(400));
        assert_eq!(b.with_jitter(Jitter::Full).delay(3, None, 0.5), ms(200));
        assert_eq!(b.with_jitter(Jitter::Equal).delay(3, None, 0.5), ms(300));
        assert_eq!(
            b.with_jitter(Jitter::Decorrelated)
                .delay(2, Some(ms(200)), 0.5),
            ms(350)
        );
        assert_eq!(
            b.with_jitter(Jitter::Decorrelated)
                .delay(9, Some(ms(900)), 0.99),
            ms(1000)
        );
    }

    #[test]
    fn hint_jitter_never_shortens() {
        let j = HintJitter::default();
        assert_eq!(j.apply(ms(1000), 0.0), ms(1000));
        assert_eq!(j.apply(ms(1000), 0.5), ms(1050));
        assert_eq!(j.apply(Duration::ZERO, 0.5), ms(25));
        assert_eq!(HintJitter::NONE.apply(ms(1000), 0.9), ms(1000));
    }

    #[test]
    fn splitmix_is_seeded_and_in_range() {
        let a = SplitMix::new(42);
        let b = SplitMix::new(42);
        let c = SplitMix::new(43);
        let xs: Vec<f64> = (0..100).map(|_| a.next_unit()).collect();
        let ys: Vec<f64> = (0..100).map(|_| b.next_unit()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_unit());
        assert!(xs.iter().all(|u| (0.0..1.0).contains(u)));
    }

    fn jitter_strategy() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        #[test]
        fn delay_lies_within_its_mode_bounds(
            base_ms in 0u64..10_000,
            cap_ms in 0u64..200_000,
            retry in 0u32..100,
            prev_ms in proptest::option::of(0u64..1_000_000),
            u in proptest::num::f64::ANY,
            jitter in jitter_strategy(),
        ) {
            let b = Backoff::new(ms(base_ms), ms(cap_ms)).with_jitter(jitter);
            let prev = prev_ms.map(ms);
            let d = b.delay(retry, prev, u);
            let (lo, hi) = b.bounds(retry, prev);
            prop_assert!(lo <= d && d <= hi, "{jitter:?}: {d:?} not in [{lo:?}, {hi:?}]");
            prop_assert!(d <= b.cap().max(Duration::ZERO));
            if jitter == Jitter::Full {
                prop_assert!(d <= b.ceiling(retry));
            }
        }

        #[test]
        fn hint_jitter_stays_in_window(hint_ms in 0u64..10_000_000, u in 0f64..1.0) {
            let j = HintJitter::default();
            let h = ms(hint_ms);
            let d = j.apply(h, u);
            prop_assert!(d >= h);
            prop_assert!(d <= h + j.window(h));
        }
    }
}
