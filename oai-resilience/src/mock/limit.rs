//! Token buckets for the mock's request and token limits, and Go-style duration text.

use std::time::Duration;

use tokio::time::Instant;

/// Slack for float rounding: a bucket that is within this many tokens of `n` counts as holding `n`.
const EPS: f64 = 1e-6;
/// The slowest refill a limit accepts, in units per second (a guard against zero and NaN).
const MIN_REFILL: f64 = 1e-6;
/// The longest wait or reset the mock reports.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A rate limit the mock enforces: a token bucket, and what its `x-ratelimit-*` headers report.
///
/// - [`RateLimit::per_minute`]: OpenAI's documented model, a bucket that holds a minute's worth
///   and refills continuously (capacity = limit, refill = limit / 60 per second).
/// - [`RateLimit::bucket`]: a small, fast bucket (e.g. capacity 20 refilled 20/s). The headers
///   report it truthfully: `limit` = capacity, `remaining` = what is left, `reset` = the time
///   until it is full again.
/// - [`RateLimit::quantized`]: the headers report a per-minute limit (and a per-minute bucket's
///   `remaining`/`reset`), while a bucket holding only `window`'s share is enforced, as OpenAI
///   warns ("60,000 requests/minute may be enforced as 1,000 requests/second"): a burst gets
///   429s while `remaining` still shows room.
///
/// Capacities below 1 are raised to 1; refill rates are at least one per million seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    capacity: f64,
    refill_per_sec: f64,
    reported_per_minute: Option<u64>,
}

impl RateLimit {
    /// A per-minute limit: capacity `limit`, refilled at `limit / 60` per second.
    pub fn per_minute(limit: u64) -> Self {
        RateLimit::bucket(limit, limit as f64 / 60.0)
    }

    /// A bucket of `capacity`, refilled at `refill_per_sec`; headers report the bucket itself.
    pub fn bucket(capacity: u64, refill_per_sec: f64) -> Self {
        let refill = if refill_per_sec.is_finite() {
            refill_per_sec.max(MIN_REFILL)
        } else if refill_per_sec == f64::INFINITY {
            1e12
        } else {
            MIN_REFILL
        };
        RateLimit {
            capacity: capacity.max(1) as f64,
            refill_per_sec: refill,
            reported_per_minute: None,
        }
    }

    /// Headers report `per_minute`; enforced is a bucket holding `window`'s share of it
    /// (`per_minute × window / 60 s`, at least 1), refilled at `per_minute / 60` per second.
    ///
    /// `RateLimit::quantized(60_000, Duration::from_secs(1))` enforces 1,000 per second.
    pub fn quantized(per_minute: u64, window: Duration) -> Self {
        let share = (per_minute as f64 * window.as_secs_f64() / 60.0).floor() as u64;
        RateLimit {
            reported_per_minute: Some(per_minute.max(1)),
            ..RateLimit::bucket(share, per_minute as f64 / 60.0)
        }
    }

    /// The capacity of the enforced bucket.
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// The refill rate, per second.
    pub fn refill_per_sec(&self) -> f64 {
        self.refill_per_sec
    }

    /// The limit the `x-ratelimit-limit-*` header reports.
    pub fn reported_limit(&self) -> u64 {
        self.reported_per_minute.unwrap_or(self.capacity as u64)
    }
}

/// A continuously refilled bucket on the tokio clock (virtual under paused time).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    capacity: f64,
    refill_per_sec: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn full(capacity: f64, refill_per_sec: f64, now: Instant) -> Self {
        Bucket {
            capacity,
            refill_per_sec,
            level: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.refill_per_sec).min(self.capacity);
        self.last = now;
    }

    /// Zero if `n` is available now, else the time until it is.
    fn wait_for(&self, n: f64) -> Duration {
        let missing = n - self.level;
        if missing <= EPS {
            Duration::ZERO
        } else {
            secs(missing / self.refill_per_sec)
        }
    }

    fn take(&mut self, n: f64) {
        self.level = (self.level - n).max(0.0);
    }

    fn remaining(&self) -> u64 {
        (self.level + EPS).floor().max(0.0) as u64
    }

    fn reset(&self) -> Duration {
        let missing = self.capacity - self.level;
        if missing <= EPS {
            Duration::ZERO
        } else {
            secs(missing / self.refill_per_sec)
        }
    }
}

fn secs(s: f64) -> Duration {
    if !s.is_finite() || s >= MAX_WAIT.as_secs_f64() {
        MAX_WAIT
    } else {
        Duration::from_secs_f64(s.max(0.0))
    }
}

/// The enforced bucket plus, for a quantized limit, the per-minute bucket the headers report.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    enforced: Bucket,
    reported: Option<Bucket>,
    limit: u64,
}

/// What the `x-ratelimit-*` headers of one kind (requests or tokens) say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitView {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset: Duration,
}

impl Limiter {
    pub(crate) fn new(cfg: &RateLimit, now: Instant) -> Self {
        Limiter {
            enforced: Bucket::full(cfg.capacity, cfg.refill_per_sec, now),
            reported: cfg
                .reported_per_minute
                .map(|pm| Bucket::full(pm as f64, cfg.refill_per_sec, now)),
            limit: cfg.reported_limit(),
        }
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        self.enforced.refill(now);
        if let Some(r) = &mut self.reported {
            r.refill(now);
        }
    }

    /// The enforced capacity: a single request asking for more can never pass.
    pub(crate) fn capacity(&self) -> f64 {
        self.enforced.capacity
    }

    /// Zero if `n` can be taken now (after [`Limiter::refill`]), else the wait.
    pub(crate) fn wait_for(&self, n: f64) -> Duration {
        self.enforced.wait_for(n)
    }

    pub(crate) fn take(&mut self, n: f64) {
        self.enforced.take(n);
        if let Some(r) = &mut self.reported {
            r.take(n);
        }
    }

    pub(crate) fn view(&self) -> LimitView {
        let b = self.reported.as_ref().unwrap_or(&self.enforced);
        LimitView {
            limit: self.limit,
            remaining: b.remaining(),
            reset: b.reset(),
        }
    }
}

/// Rounds up to whole milliseconds (a client that waits that long finds the tokens there),
/// ignoring float noise below a microsecond.
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_secs_f64() * 1000.0;
    (ms - 1e-3).ceil().max(0.0) as u64
}

/// Formats a duration as Go's `time.Duration` does, at millisecond precision (rounded up), as
/// OpenAI's headers and messages show it: `0s`, `20ms`, `1s`, `8.64s`, `6m0s`, `1h2m3.5s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = ceil_ms(d);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms / 1000) % 60;
    let frac = ms % 1000;
    let mut secs = s.to_string();
    if frac != 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_go_duration;

    #[test]
    fn go_duration_matches_openai_examples() {
        let cases = [
            (0, "0s"),
            (20, "20ms"),
            (999, "999ms"),
            (1000, "1s"),
            (8640, "8.64s"),
            (360_000, "6m0s"),
            (72_000, "1m12s"),
            (3_723_500, "1h2m3.5s"),
            (3_600_000, "1h0m0s"),
        ];
        for (ms, text) in cases {
            let d = Duration::from_millis(ms);
            assert_eq!(go_duration(d), text);
            assert_eq!(parse_go_duration(text), Some(d), "{text}");
        }
        // Sub-millisecond waits round up, float noise does not.
        assert_eq!(go_duration(Duration::from_micros(300)), "1ms");
        assert_eq!(go_duration(Duration::from_secs_f64(0.05 + 1e-12)), "50ms");
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_in_virtual_time() {
        let start = Instant::now();
        let mut l = Limiter::new(&RateLimit::bucket(20, 20.0), start);
        for _ in 0..20 {
            assert_eq!(l.wait_for(1.0), Duration::ZERO);
            l.take(1.0);
        }
        assert_eq!(ceil_ms(l.wait_for(1.0)), 50);
        assert_eq!(
            l.view(),
            LimitView {
                limit: 20,
                remaining: 0,
                reset: Duration::from_secs(1)
            }
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        l.refill(Instant::now());
        assert_eq!(l.wait_for(1.0), Duration::ZERO);
        assert_eq!(l.view().remaining, 1);
        assert_eq!(ceil_ms(l.view().reset), 950);
        // Never above capacity.
        tokio::time::advance(Duration::from_secs(60)).await;
        l.refill(Instant::now());
        assert_eq!(l.view().remaining, 20);
        assert_eq!(l.view().reset, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn quantized_reports_the_minute_and_enforces_the_second() {
        let mut l = Limiter::new(
            &RateLimit::quantized(600, Duration::from_secs(1)),
            Instant::now(),
        );
        assert_eq!(l.capacity(), 10.0);
        for _ in 0..10 {
            assert_eq!(l.wait_for(1.0), Duration::ZERO);
            l.take(1.0);
        }
        assert_eq!(ceil_ms(l.wait_for(1.0)), 100);
        let v = l.view();
        assert_eq!((v.limit, v.remaining), (600, 590));
        assert_eq!(ceil_ms(v.reset), 1000);
    }

    #[test]
    fn degenerate_configs_are_clamped() {
        let r = RateLimit::bucket(0, 0.0);
        assert_eq!(r.capacity(), 1);
        assert!(r.refill_per_sec() > 0.0);
        assert!(RateLimit::bucket(5, f64::NAN).refill_per_sec() > 0.0);
        assert_eq!(RateLimit::quantized(10, Duration::ZERO).capacity(), 1);
        assert_eq!(RateLimit::per_minute(600).reported_limit(), 600);
        assert_eq!(
            RateLimit::quantized(600, Duration::from_secs(1)).reported_limit(),
            600
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever happens, the headers stay within the limit, the reset within one full
            /// refill, and waiting the advertised `retry-after-ms` is always enough.
            #[test]
            fn bucket_invariants(
                capacity in 1u64..2000,
                refill in 0.01f64..5000.0,
                ops in proptest::collection::vec((0u64..5000, 1u64..50), 1..60),
            ) {
                let start = Instant::now();
                let mut now = start;
                let mut l = Limiter::new(&RateLimit::bucket(capacity, refill), now);
                for (advance_ms, n) in ops {
                    now += Duration::from_millis(advance_ms);
                    l.refill(now);
                    let n = (n.min(capacity)) as f64;
                    let wait = l.wait_for(n);
                    let v = l.view();
                    prop_assert!(v.remaining <= capacity);
                    prop_assert!(v.reset.as_secs_f64() <= capacity as f64 / refill + 1e-3);
                    prop_assert_eq!(l.wait_for(1.0).is_zero(), v.remaining >= 1);
                    if wait.is_zero() {
                        l.take(n);
                    } else {
                        let mut probe = l.clone();
                        probe.refill(now + Duration::from_millis(ceil_ms(wait)));
                        prop_assert!(probe.wait_for(n).is_zero(), "waited {:?}", wait);
                    }
                }
            }
        }
    }
}
