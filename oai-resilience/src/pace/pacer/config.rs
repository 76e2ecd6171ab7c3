//! The pacer's configuration and what it reports: [`PacerConfig`], [`StaticLimits`],
//! [`AimdConfig`], [`PaceMetrics`], [`KeySnapshot`].

use std::time::Duration;

use tokio::time::Instant;

use super::super::lanes::Priority;

/// Limits known in advance, per key: requests and tokens per minute.
///
/// Each becomes a minute bucket: capacity = the limit, refilled at limit/60 per second. When
/// headers arrive, the smaller of the static and the learned values wins, so static limits can
/// also keep headroom below the real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StaticLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

impl StaticLimits {
    /// `rpm` requests and `tpm` tokens per minute (`None`: not known in advance).
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Self {
        StaticLimits { rpm, tpm }
    }
}

/// The adaptive (AIMD) rate's parameters.
///
/// A 429 that the headers do not explain (they showed room, or there were none) switches the
/// rate on at `beta` times the rate the server accepted over the last second (requests sent
/// less those refused with a 429), at most once per round of
/// requests in flight; every success raises it by `increase` requests per second per second
/// of successes (`increase / rate` per success).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AimdConfig {
    /// Multiplicative decrease factor.
    ///
    /// # Default
    /// 0.7 (as AWS's adaptive retry mode).
    pub beta: f64,
    /// Additive increase, in requests per second gained per second of successes.
    ///
    /// # Default
    /// 2.0.
    pub increase: f64,
    /// The lowest rate, in requests per second.
    ///
    /// # Default
    /// 0.5 (as AWS's adaptive retry mode).
    pub min_rate: f64,
    /// The highest rate; above it the adaptive limit switches itself off again.
    ///
    /// # Default
    /// 10,000 requests per second.
    pub max_rate: f64,
    /// Burst allowed at the adaptive rate, in seconds of rate (at least one request).
    ///
    /// # Default
    /// 100 ms.
    pub burst: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            beta: 0.7,
            increase: 2.0,
            min_rate: 0.5,
            max_rate: 10_000.0,
            burst: Duration::from_millis(100),
        }
    }
}

/// The pacer's configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PacerConfig {
    /// The longest a request waits locally before it fails with a paced-locally error.
    ///
    /// # Default
    /// 60 seconds. `None`: no bound but the call's deadline.
    pub max_wait: Option<Duration>,
    /// Limits known in advance.
    ///
    /// # Default
    /// None.
    pub static_limits: StaticLimits,
    /// The most requests in flight on a key that nothing is known of yet (no answer, no static
    /// limits). The first answer (or 429) ends the cap: from then on the headers, the 429s
    /// and the adaptive rate decide.
    ///
    /// `None` sends a cold key's first wave at once, however many callers bring it: holding
    /// it behind a probe costs every cold key a whole model latency (seconds), while on a low
    /// limit the blind wave costs a few fast 429s whose hints the pacer then follows.
    /// `Some(1)` holds a cold burst behind one probe request until its headers arrive.
    ///
    /// # Default
    /// `None`.
    pub cold_window: Option<u32>,
    /// The share of a bucket's reported `remaining` kept back for other clients of the same
    /// key (other processes, other machines): the pacer admits at once
    /// `remaining − ⌊remaining × headroom⌋` requests (and tokens) minus those it has sent
    /// since the server counted. Small values (below `1 / headroom`) are used whole, so a
    /// bucket that reports 5 remaining admits 5.
    ///
    /// # Default
    /// 0.02 (2 %).
    pub headroom: f64,
    /// How long the key pauses after a 429 that gives no hint and whose headers do not say.
    ///
    /// # Default
    /// 1 second.
    pub default_pause: Duration,
    /// The adaptive rate.
    pub aimd: AimdConfig,
    /// The minimum share of a key's grants that a [priority lane](Priority) with calls
    /// waiting receives, measured over roughly the key's last 64 grants, so that a flood of
    /// higher calls never starves it: `(lane, share)`, share in (0, 1]. While a lane has had
    /// less than its share, its oldest waiting call goes before the higher lanes' calls.
    /// Shares of 0 (or not finite) are ignored; a lane listed twice keeps the last share.
    ///
    /// # Default
    /// Empty: a higher lane always goes first.
    pub lane_shares: Vec<(Priority, f64)>,
    /// The requests of a key's request bucket kept for the calls of a lane and the lanes
    /// above it: `(lane, requests)`. A call of a lower lane is admitted only when the bucket
    /// still holds the largest reserve of the lanes above its own after it
    /// ([`Cost::reserve`](crate::pace::Cost::reserve)), so that a flood of batch calls leaves, say, 2 requests for
    /// interactive calls, which then go at once instead of waiting for the next refill.
    /// The in-process pacer applies it to its request bucket (next to its queue's lane
    /// order); a shared [`PacingStore`](crate::pace::PacingStore) (Redis) applies it to the shared
    /// bucket, and since the store knows no queues, this is how lanes hold across processes.
    ///
    /// # Default
    /// Empty: no reserve.
    pub lane_reserves: Vec<(Priority, u32)>,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            max_wait: Some(Duration::from_secs(60)),
            static_limits: StaticLimits::default(),
            cold_window: None,
            headroom: 0.02,
            default_pause: Duration::from_secs(1),
            aimd: AimdConfig::default(),
            lane_shares: Vec::new(),
            lane_reserves: Vec::new(),
        }
    }
}

impl PacerConfig {
    /// The requests a call of `lane` leaves in a shared store's bucket: the largest of the
    /// [`lane_reserves`](Self::lane_reserves) of the lanes above it.
    pub(crate) fn reserve_below(&self, lane: Priority) -> u32 {
        self.lane_reserves
            .iter()
            .filter(|(l, _)| *l > lane)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    }
}

/// The pacer's counters, across keys. See [`Pacer::metrics`](crate::pace::Pacer::metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PaceMetrics {
    /// Requests waiting for a slot now.
    pub queue_len: usize,
    /// Requests granted a slot, in total.
    pub granted: u64,
    /// Requests that had to wait (were not granted at once), in total.
    pub waits: u64,
    /// Time spent waiting, summed over requests.
    pub wait_time: Duration,
    /// Requests that failed locally (max wait or deadline), in total.
    pub paced_errors: u64,
    /// 429s reported to the pacer, in total.
    pub rate_limited: u64,
    /// Keys tracked now.
    pub keys: usize,
}

/// What the pacer knows of one key, for tests, demos and diagnostics. See [`Pacer::key_state`](crate::pace::Pacer::key_state).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KeySnapshot {
    /// Requests waiting on this key.
    pub queue_len: usize,
    /// Requests granted and not yet answered.
    pub in_flight: u32,
    /// Whether a response (or static limits) has told the pacer about this key.
    pub known: bool,
    /// The cap on requests in flight while the key is cold ([`PacerConfig::cold_window`]);
    /// `None` without one and after the first answer.
    pub window: Option<u32>,
    /// The request bucket: `(capacity, level, refill per second)`, if known.
    pub requests: Option<(f64, f64, f64)>,
    /// The token bucket: `(capacity, level, refill per second)`, if known.
    pub tokens: Option<(f64, f64, f64)>,
    /// Paused until then after a 429.
    pub paused_until: Option<Instant>,
    /// The adaptive rate in requests per second, when on.
    pub adaptive_rate: Option<f64>,
    /// The factor that corrects token estimates (1.0 until headers say otherwise).
    pub token_ratio: f64,
    /// The factors that correct the prompt and the completion parts of token estimates,
    /// learned from the `usage` responses reported ([`crate::usage`]); while set they replace
    /// [`token_ratio`](Self::token_ratio).
    pub usage_ratios: Option<(f64, f64)>,
}
