//! The pacing state machine: per-key buckets, 429 pauses, an AIMD rate and a fair queue.
//!
//! This is the in-process store. It knows nothing of tower or HTTP bodies: [`Pacer::acquire`]
//! waits for a slot, the returned [`Permit`] reports the outcome, and the rest is bookkeeping
//! under one short-held `Mutex` per key. No task is spawned: each waiter's future sleeps on its
//! own timer and is woken when the queue or the state moves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::parse::{RateLimitSnapshot, RefillSample};

use crate::observe::PacingLimit;

use super::bucket::{Bucket, EPS};
use super::cost::Cost;
use super::key::PaceKey;
use super::lanes::{normalize_shares, Priority, Queue};
use super::{wait_limit, WaitBound};

mod config;
mod permit;

pub use config::{AimdConfig, KeySnapshot, PaceMetrics, PacerConfig, StaticLimits};
pub use permit::{Acquire, Permit};

/// The detail that marks an error raised by the pacer (nothing was sent).
pub(crate) const PACED_LOCALLY: &str = "paced locally";

/// A request or token bucket as the headers taught it: the [`Bucket`] and what the pacer
/// learned it from.
#[derive(Debug, Clone, Copy)]
struct LearnedBucket {
    bucket: Bucket<Instant>,
    /// Decayed sums of (limit − remaining) and of reset seconds over the snapshots: their
    /// ratio is the refill rate, weighted so that an integer `remaining` off by one on a
    /// nearly full bucket does not swing it.
    used_sum: f64,
    reset_sum: f64,
    /// When the server decided on the request whose snapshot last set `level`: an older
    /// snapshot can only lower it.
    learned_at: Instant,
}

impl LearnedBucket {
    fn full(capacity: f64, refill: f64, now: Instant) -> Self {
        LearnedBucket {
            bucket: Bucket::full(capacity, refill, now),
            used_sum: 0.0,
            reset_sum: 0.0,
            learned_at: now,
        }
    }
}

/// How long until `cost` is available in `b`. `None`: never, with no refill.
fn wait_for(b: &Bucket<Instant>, cost: f64) -> Option<Duration> {
    b.wait_secs(cost).map(Duration::from_secs_f64)
}

/// Requests sent, and 429s received, in the last second or so.
#[derive(Debug, Clone, Copy)]
struct RateMeter {
    start: Instant,
    count: f64,
    limited: f64,
    /// The last full window's rates: (sent, rate limited) per second.
    prev: (f64, f64),
}

impl RateMeter {
    fn new(now: Instant) -> Self {
        RateMeter {
            start: now,
            count: 0.0,
            limited: 0.0,
            prev: (0.0, 0.0),
        }
    }

    fn roll(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.start).as_secs_f64();
        if dt >= 1.0 {
            self.prev = (self.count / dt, self.limited / dt);
            self.start = now;
            self.count = 0.0;
            self.limited = 0.0;
        }
    }

    fn record(&mut self, now: Instant) {
        self.roll(now);
        self.count += 1.0;
    }

    fn record_limited(&mut self, now: Instant) {
        self.roll(now);
        self.limited += 1.0;
    }

    /// The rate the server accepted: requests sent less those it refused with a 429, over
    /// the busier of the current and the last window.
    fn accepted_rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let dt = now.saturating_duration_since(self.start).as_secs_f64();
        let current = (self.count / dt.max(1.0), self.limited / dt.max(1.0));
        let (sent, limited) = if self.prev.0 >= current.0 {
            self.prev
        } else {
            current
        };
        (sent - limited).max(0.0)
    }
}

#[derive(Debug)]
struct KeyState {
    queue: Queue,
    next_ticket: u64,
    requests: Option<LearnedBucket>,
    tokens: Option<LearnedBucket>,
    paused_until: Option<Instant>,
    aimd: Option<Bucket<Instant>>,
    /// The grant count at the last decrease: requests granted before it belong to the round
    /// that was already punished.
    last_decrease: Option<u64>,
    known: bool,
    /// Requests allowed in flight while the key is cold.
    window: Option<u32>,
    in_flight: u32,
    in_flight_tokens: u64,
    grants: u64,
    /// Tokens granted, in total (the token-side twin of `grants`).
    granted_tokens: u64,
    /// The grant numbers and tokens of the latest requests that a 429 refused (the server did
    /// not take them from its buckets), in the order the 429s came; at most
    /// [`REFUSALS_KEPT`].
    refusals: VecDeque<(u64, u64)>,
    meter: RateMeter,
    token_ratio: f64,
    /// The prompt and completion correction factors learned from reported usage.
    usage: Option<UsageRatios>,
    /// The grant number of the latest request whose snapshot set the token bucket: the
    /// server's `remaining-tokens` had counted it and every request granted before it.
    tokens_counted: u64,
}

/// The true tokens over the estimated, per part of the estimate, from reported usage: the
/// average of the first samples, then a moving average that follows a drift.
#[derive(Debug, Clone, Copy)]
struct UsageRatios {
    prompt: f64,
    completion: f64,
    prompt_samples: u32,
    completion_samples: u32,
}

impl UsageRatios {
    /// The weight of a new sample: 1/n for the first five, then 0.2.
    fn update(ratio: &mut f64, samples: &mut u32, sample: f64) {
        *samples = samples.saturating_add(1);
        let w = (1.0 / f64::from(*samples)).max(0.2);
        *ratio = (*ratio * (1.0 - w) + sample * w).clamp(USAGE_RATIO_MIN, USAGE_RATIO_MAX);
    }
}

/// The bounds of a usage ratio: an estimate is never scaled below 5 % or above 4×.
const USAGE_RATIO_MIN: f64 = 0.05;
const USAGE_RATIO_MAX: f64 = 4.0;

enum Step {
    Granted(GrantInfo),
    /// Wait: until the instant if known (head of the queue), else until woken; held by the
    /// limit: the queue ahead, the cold window, or the bucket, pause or adaptive rate that
    /// frees last.
    Wait(Option<Instant>, PacingLimit),
}

struct GrantInfo {
    tokens: u64,
    level_before: Option<f64>,
    since: Since,
}

/// When a request was sent, and the grant counters right after its own grant: what the key
/// sent after it, which the server had not counted when it decided on this request.
#[derive(Debug, Clone, Copy)]
struct Since {
    sent_at: Instant,
    grants: u64,
    granted_tokens: u64,
}

/// Refusals remembered per key: more than the requests a key has in flight in practice.
const REFUSALS_KEPT: usize = 4096;

impl Since {
    /// The requests and tokens taken from the server's buckets since: those granted after
    /// this request, less those of them that a 429 refused.
    fn taken(&self, st: &KeyState) -> (f64, f64) {
        let (mut requests, mut tokens) = (
            st.grants.saturating_sub(self.grants),
            st.granted_tokens.saturating_sub(self.granted_tokens),
        );
        for &(grant, t) in &st.refusals {
            if grant > self.grants {
                requests = requests.saturating_sub(1);
                tokens = tokens.saturating_sub(t);
            }
        }
        (requests as f64, tokens as f64)
    }
}

impl KeyState {
    fn new(config: &PacerConfig, shares: Arc<[(Priority, f64)]>, now: Instant) -> Self {
        let requests = config
            .static_limits
            .rpm
            .map(|rpm| LearnedBucket::full(rpm as f64, rpm as f64 / 60.0, now));
        let tokens = config
            .static_limits
            .tpm
            .map(|tpm| LearnedBucket::full(tpm as f64, tpm as f64 / 60.0, now));
        let known = requests.is_some() || tokens.is_some();
        KeyState {
            queue: Queue::new(shares),
            next_ticket: 0,
            known,
            window: if known { None } else { config.cold_window },
            requests,
            tokens,
            paused_until: None,
            aimd: None,
            last_decrease: None,
            in_flight: 0,
            in_flight_tokens: 0,
            grants: 0,
            granted_tokens: 0,
            refusals: VecDeque::new(),
            meter: RateMeter::new(now),
            token_ratio: 1.0,
            usage: None,
            tokens_counted: 0,
        }
    }

    /// Whether a new entry would pace this key the same: nobody waiting, nothing in flight,
    /// no pause, no adaptive rate, and every bucket full again. (The learned capacities,
    /// refill rates and token ratio are forgotten with it: the key's next answer teaches them
    /// again, and a full bucket admits its first wave at once either way.)
    fn forgettable(&mut self, now: Instant) -> bool {
        self.advance(now);
        self.queue.is_empty()
            && self.in_flight == 0
            && self.paused_until.is_none()
            && self.aimd.is_none()
            && [&self.requests, &self.tokens]
                .into_iter()
                .flatten()
                .all(|b| {
                    let (capacity, level, _) = b.bucket.view();
                    level + EPS >= capacity
                })
    }

    fn advance(&mut self, now: Instant) {
        for b in [
            self.requests.as_mut().map(|b| &mut b.bucket),
            self.tokens.as_mut().map(|b| &mut b.bucket),
            self.aimd.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            b.advance(now);
        }
        if self.paused_until.is_some_and(|p| p <= now) {
            self.paused_until = None;
        }
    }

    fn wake_head(&mut self) {
        self.queue.wake_head();
    }

    /// The estimate corrected by the learned ratios, with a 2 % margin: an estimate a little
    /// high costs a little throughput, one a little low costs a 429. Ratios learned from
    /// reported usage (per part: prompt, completion) win over the one learned from headers.
    fn scaled(&self, cost: Cost) -> u64 {
        if let Some(u) = &self.usage {
            let t = cost.prompt() as f64 * u.prompt + cost.completion as f64 * u.completion;
            return (t * 1.02).ceil() as u64;
        }
        if self.token_ratio == 1.0 {
            return cost.tokens;
        }
        (cost.tokens as f64 * self.token_ratio * 1.02).ceil() as u64
    }

    /// A response reported its true `input` and `output` tokens for a request estimated at
    /// `cost`, charged `charged` and granted as grant number `grant`.
    ///
    /// The token bucket gets the difference back (or pays it) while its level still holds
    /// the charge: not once the snapshot of this request or of a later one has set the level
    /// (the server's `remaining` counted the true tokens already). The
    /// prompt and completion ratios learn from the sample, so the next estimates of the key
    /// (of the model, with the default per-model keys) come closer.
    fn settle_usage(&mut self, cost: Cost, charged: u64, grant: u64, used: (u64, u64)) {
        let (input, output) = used;
        let actual = input.saturating_add(output);
        if let Some(b) = &mut self.tokens {
            if grant > self.tokens_counted {
                let delta = charged as f64 - actual as f64;
                b.bucket.level = (b.bucket.level + delta).min(b.bucket.capacity);
            }
        }
        let u = self.usage.get_or_insert(UsageRatios {
            prompt: 1.0,
            completion: 1.0,
            prompt_samples: 0,
            completion_samples: 0,
        });
        if cost.prompt() > 0 {
            let sample = input as f64 / cost.prompt() as f64;
            UsageRatios::update(&mut u.prompt, &mut u.prompt_samples, sample);
        }
        if cost.completion > 0 {
            let sample = output as f64 / cost.completion as f64;
            UsageRatios::update(&mut u.completion, &mut u.completion_samples, sample);
        }
        self.wake_head();
    }

    fn step(
        &mut self,
        (lane, ticket): (Priority, u64),
        cost: Cost,
        now: Instant,
        waker: &Waker,
    ) -> Step {
        self.advance(now);
        let is_head = self.queue.head() == Some((lane, ticket));
        if !is_head {
            self.queue.park(lane, ticket, waker);
            return Step::Wait(None, PacingLimit::Queue);
        }
        // The head: wait for a pause, the cold window, or room in every bucket.
        if self.window.is_some_and(|w| self.in_flight >= w) {
            self.queue.park(lane, ticket, waker);
            return Step::Wait(None, PacingLimit::ColdWindow);
        }
        let tokens = self.scaled(cost);
        // Each limit's wait (`Duration::MAX`: a bucket without refill, until woken); the one
        // that frees last (the later one of a tie) holds the call.
        let never = Duration::MAX;
        let held = [
            (
                PacingLimit::Pause,
                self.paused_until.map(|p| p.saturating_duration_since(now)),
            ),
            (
                // A lower lane leaves the requests reserved for the lanes above it.
                PacingLimit::Requests,
                self.requests
                    .map(|b| wait_for(&b.bucket, 1.0 + f64::from(cost.reserve)).unwrap_or(never)),
            ),
            (
                PacingLimit::Tokens,
                self.tokens
                    .map(|b| wait_for(&b.bucket, tokens as f64).unwrap_or(never)),
            ),
            (
                PacingLimit::Adaptive,
                self.aimd.map(|b| wait_for(&b, 1.0).unwrap_or(never)),
            ),
        ]
        .into_iter()
        .filter_map(|(limit, wait)| wait.map(|w| (limit, w)))
        .max_by_key(|&(_, w)| w);
        if let Some((limit, wait)) = held.filter(|&(_, w)| !w.is_zero()) {
            self.queue.park(lane, ticket, waker);
            let ready = (wait != never).then(|| now + wait);
            return Step::Wait(ready, limit);
        }
        // Granted: take from every bucket, leave the queue, let the next head look.
        let level_before = self.tokens.map(|b| b.bucket.level);
        if let Some(b) = &mut self.requests {
            b.bucket.level -= 1.0;
        }
        if let Some(b) = &mut self.tokens {
            b.bucket.level -= tokens as f64;
        }
        if let Some(b) = &mut self.aimd {
            b.level -= 1.0;
        }
        self.queue.remove(lane, ticket);
        self.queue.granted(lane);
        self.in_flight += 1;
        self.in_flight_tokens = self.in_flight_tokens.saturating_add(tokens);
        self.grants += 1;
        self.granted_tokens = self.granted_tokens.saturating_add(tokens);
        self.meter.record(now);
        self.wake_head();
        Step::Granted(GrantInfo {
            tokens,
            level_before,
            since: Since {
                sent_at: now,
                grants: self.grants,
                granted_tokens: self.granted_tokens,
            },
        })
    }

    /// The earliest time `ticket` of `lane` could be granted, if the waiting calls surely
    /// ahead of it all go first and nothing else changes: a bound its wait cannot beat.
    /// `None` when the buckets cannot say (a cold window, a bucket without refill).
    fn earliest(
        &self,
        (lane, ticket): (Priority, u64),
        cost: Cost,
        now: Instant,
    ) -> Option<Instant> {
        if self.window.is_some() {
            return None;
        }
        let ahead = self.queue.ahead(lane, ticket) as f64;
        let mut ready = self.paused_until.unwrap_or(now).max(now);
        let tokens = self.scaled(cost) as f64;
        let needs = [
            self.requests
                .map(|b| (b.bucket, ahead + 1.0 + f64::from(cost.reserve))),
            self.tokens
                .map(|b| (b.bucket, tokens.min(b.bucket.capacity))),
            self.aimd.map(|b| (b, ahead + 1.0)),
        ];
        for (b, need) in needs.into_iter().flatten() {
            if b.level + EPS >= need {
                continue;
            }
            if b.refill <= 0.0 {
                return None;
            }
            let secs = ((need - b.level) / b.refill).min(super::bucket::MAX_WAIT_SECS);
            ready = ready.max(now + Duration::from_secs_f64(secs));
        }
        Some(ready)
    }

    fn leave(&mut self, (lane, ticket): (Priority, u64)) {
        if self.queue.remove(lane, ticket) {
            self.wake_head();
        }
    }

    fn finish(&mut self, tokens: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight_tokens = self.in_flight_tokens.saturating_sub(tokens);
    }

    /// Learns from a snapshot.
    ///
    /// The server decides on a request, and reports its buckets, when the request arrives;
    /// the answer comes a model latency later. So the snapshot of a request sent at `since`
    /// is that old: the bucket has refilled since, and every request granted after this one
    /// has been taken from it without being in the snapshot. The level is
    /// `remaining + refill × age − sent since`, at most the capacity. (A server that reports
    /// at answer time instead has counted both the refill and the requests since, which
    /// cancel out when the key is busy.) Without `since` (a response outside any permit), the
    /// requests in flight are taken as the ones not yet counted.
    fn learn(
        &mut self,
        snap: &RateLimitSnapshot,
        now: Instant,
        config: &PacerConfig,
        since: Option<Since>,
    ) {
        let (others, others_tokens, age) = match since {
            Some(s) => {
                let (requests, tokens) = s.taken(self);
                (requests, tokens, now.saturating_duration_since(s.sent_at))
            }
            None => (
                self.in_flight as f64,
                self.in_flight_tokens as f64,
                Duration::ZERO,
            ),
        };
        let headroom = config.headroom.clamp(0.0, 1.0);
        let static_req = config.static_limits.rpm.map(|v| v as f64);
        let static_tok = config.static_limits.tpm.map(|v| v as f64);
        // (limit, remaining, reset) of the request and of the token bucket.
        let requests = (
            snap.limit_requests,
            snap.remaining_requests,
            snap.reset_requests,
        );
        let tokens = (snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens);
        learn_bucket(
            &mut self.requests,
            requests,
            static_req,
            (others, age, headroom),
            now,
        );
        learn_bucket(
            &mut self.tokens,
            tokens,
            static_tok,
            (others_tokens, age, headroom),
            now,
        );
        if snap.limit_tokens.is_some() && snap.remaining_tokens.is_some() {
            let counted = since.map_or(self.grants, |s| s.grants);
            self.tokens_counted = self.tokens_counted.max(counted);
        }
        // A bucket reported empty without a limit to model it: pause until its reset.
        for (limit, remaining, reset) in [requests, tokens] {
            if let (None, Some(0), Some(reset)) = (limit, remaining, reset) {
                self.pause(now + reset);
            }
        }
    }

    fn pause(&mut self, until: Instant) {
        if self.paused_until.is_none_or(|p| p < until) {
            self.paused_until = Some(until);
        }
    }

    /// An answer came back: the key is known and the cold window is over.
    fn answered(&mut self) {
        self.known = true;
        self.window = None;
    }

    fn success(&mut self, config: &PacerConfig) {
        self.answered();
        if let Some(b) = &mut self.aimd {
            let rate = b.refill.max(EPS);
            let new = rate + config.aimd.increase / rate;
            if new >= config.aimd.max_rate {
                self.aimd = None;
                tracing::debug!("adaptive pacing rate recovered: off");
            } else {
                set_rate(b, new, &config.aimd);
            }
        }
    }

    fn decrease(&mut self, now: Instant, config: &PacerConfig) -> f64 {
        let measured = self.meter.accepted_rate(now);
        let base = match &self.aimd {
            Some(b) => b.refill.min(measured.max(config.aimd.min_rate)),
            None => measured,
        };
        let rate = (base * config.aimd.beta).max(config.aimd.min_rate);
        let b = self.aimd.get_or_insert(Bucket {
            level: 0.0,
            ..Bucket::full(1.0, rate, now)
        });
        set_rate(b, rate, &config.aimd);
        b.level = b.level.min(0.0);
        self.last_decrease = Some(self.grants);
        rate
    }
}

fn set_rate(b: &mut Bucket<Instant>, rate: f64, aimd: &AimdConfig) {
    b.refill = rate.clamp(aimd.min_rate, aimd.max_rate);
    b.capacity = (b.refill * aimd.burst.as_secs_f64()).max(1.0);
    b.level = b.level.min(b.capacity);
}

fn learn_bucket(
    slot: &mut Option<LearnedBucket>,
    (limit, remaining, reset): (Option<u64>, Option<u64>, Option<Duration>),
    static_limit: Option<f64>,
    (others, age, headroom): (f64, Duration, f64),
    now: Instant,
) {
    let (Some(limit), Some(remaining)) = (limit, remaining) else {
        return;
    };
    if limit == 0 {
        return;
    }
    let mut capacity = limit as f64;
    if let Some(s) = static_limit {
        capacity = capacity.min(s);
    }
    let decided_at = now.checked_sub(age).unwrap_or(now);
    let learned = slot.get_or_insert(LearnedBucket {
        learned_at: decided_at,
        ..LearnedBucket::full(capacity, capacity / 60.0, now)
    });
    learned.bucket.advance(now);
    learned.bucket.capacity = capacity;
    // Not limit/60: the refill the headers imply, (limit − remaining) / reset, which a
    // small fast bucket obeys as well as a minute bucket.
    if let Some(sample) = reset.and_then(|r| RefillSample::new(limit, remaining, r)) {
        learned.used_sum = 0.8 * learned.used_sum + sample.used;
        learned.reset_sum = 0.8 * learned.reset_sum + sample.reset_secs;
        let r = learned.used_sum / learned.reset_sum;
        learned.bucket.refill = match static_limit {
            Some(s) => r.min(s / 60.0),
            None => r,
        };
    }
    let remaining = remaining as f64;
    let kept_back = (remaining * headroom).floor();
    let b = &mut learned.bucket;
    let level = (remaining - kept_back + b.refill * age.as_secs_f64() - others).min(capacity);
    // A snapshot older than the one the level came from carries the error of the refill
    // estimate times its age: it may lower the level, never raise it.
    if decided_at >= learned.learned_at {
        b.level = level;
        learned.learned_at = decided_at;
    } else {
        b.level = b.level.min(level);
    }
}

/// Keys are swept for idle ones when the map grows past this many, and then past twice what
/// the last sweep kept.
const SWEEP_AT_LEAST: usize = 1024;

struct Shared {
    config: PacerConfig,
    /// [`PacerConfig::lane_shares`], cleaned, highest lane first.
    shares: Arc<[(Priority, f64)]>,
    keys: Mutex<HashMap<PaceKey, Arc<KeyEntry>>>,
    /// The map's size that triggers the next sweep of idle keys.
    sweep_at: AtomicUsize,
    queue_len: AtomicUsize,
    granted: AtomicU64,
    waits: AtomicU64,
    wait_nanos: AtomicU64,
    paced_errors: AtomicU64,
    rate_limited: AtomicU64,
}

struct KeyEntry {
    key: PaceKey,
    state: Mutex<KeyState>,
}

impl KeyEntry {
    fn lock(&self) -> MutexGuard<'_, KeyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The in-process pacing store, shared by every clone. See the [module docs](super).
///
/// ```
/// use oai_resilience::pace::{Cost, PaceKey, Pacer, PacerConfig, StaticLimits};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let mut config = PacerConfig::default();
/// config.static_limits = StaticLimits::new(Some(60), None);
/// let pacer = Pacer::new(config);
/// let key = PaceKey::new("api.openai.com");
/// let permit = pacer.acquire(&key, Cost::tokens(10), None).await.unwrap();
/// permit.on_response(None);
/// assert_eq!(pacer.metrics().granted, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct Pacer {
    shared: Arc<Shared>,
}

crate::macros::debug_struct!(Pacer, |s| "Pacer" {
    "config": s.shared.config,
    "metrics": s.metrics(),
} finish);

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(PacerConfig::default())
    }
}

impl Pacer {
    /// A pacer with `config`.
    pub fn new(config: PacerConfig) -> Self {
        Pacer {
            shared: Arc::new(Shared {
                shares: normalize_shares(&config.lane_shares),
                config,
                keys: Mutex::new(HashMap::new()),
                sweep_at: AtomicUsize::new(SWEEP_AT_LEAST),
                queue_len: AtomicUsize::new(0),
                granted: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                wait_nanos: AtomicU64::new(0),
                paced_errors: AtomicU64::new(0),
                rate_limited: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PacerConfig {
        &self.shared.config
    }

    fn entry(&self, key: &PaceKey) -> Arc<KeyEntry> {
        let mut keys = self.shared.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = keys.get(key) {
            return e.clone();
        }
        let now = Instant::now();
        if keys.len() >= self.shared.sweep_at.load(Ordering::Relaxed) {
            // Forget the keys that nothing holds (no waiter, no permit) and whose state a new
            // entry would reproduce: memory stays bounded by the keys in use, however many
            // distinct keys (a gateway's callers) come and go. Amortised O(1) per new key.
            keys.retain(|_, e| Arc::strong_count(e) > 1 || !e.lock().forgettable(now));
            self.shared
                .sweep_at
                .store((keys.len() * 2).max(SWEEP_AT_LEAST), Ordering::Relaxed);
        }
        let entry = Arc::new(KeyEntry {
            key: key.clone(),
            state: Mutex::new(KeyState::new(
                &self.shared.config,
                self.shared.shares.clone(),
                now,
            )),
        });
        keys.insert(key.clone(), entry.clone());
        entry
    }

    fn existing(&self, key: &PaceKey) -> Option<Arc<KeyEntry>> {
        let keys = self.shared.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key).cloned()
    }

    /// Waits, first come first served, for a slot on `key` for a request of `cost`, in the
    /// [`Priority::NORMAL`] lane.
    ///
    /// The wait ends at `deadline` (if given) or after the configured max wait; the future
    /// can be dropped at any time, which gives its place back.
    ///
    /// # Errors
    /// An [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited) error without a status, whose detail says it was paced
    /// locally (see [`is_paced_locally`](super::is_paced_locally)), when the slot cannot come
    /// before the deadline or the max wait. Its [`Error::retry_after`](crate::Error::retry_after) is the expected wait
    /// when known.
    pub fn acquire(&self, key: &PaceKey, cost: Cost, deadline: Option<Instant>) -> Acquire {
        self.acquire_in_lane(key, cost, deadline, Priority::NORMAL)
    }

    /// Waits for a slot on `key` for a request of `cost` in the lane `priority`: while the
    /// key's buckets are scarce, calls of higher lanes are admitted first, then (oldest first)
    /// this lane's, unless a lane is owed its [share](PacerConfig::lane_shares).
    ///
    /// A call whose wait surely ends past `deadline` or the max wait fails at once rather
    /// than waiting for it to pass: the key's pause, or the refill that the calls ahead of it
    /// in the queue need ([`Priority`] lanes above its own, older calls of its own lane) and
    /// then its own, already lies beyond the bound.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// ```
    /// use oai_resilience::pace::{Cost, PaceKey, Pacer, PacerConfig, Priority, StaticLimits};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let mut config = PacerConfig::default();
    /// config.static_limits = StaticLimits::new(Some(1), None); // one request per minute
    /// config.max_wait = None;
    /// let pacer = Pacer::new(config);
    /// let key = PaceKey::new("api.openai.com");
    /// drop(pacer.acquire(&key, Cost::tokens(1), None).await.unwrap());
    /// // The bucket is empty: a batch call waits, then an interactive call comes...
    /// let batch = tokio::spawn(pacer.acquire_in_lane(&key, Cost::tokens(1), None, Priority::LOW));
    /// tokio::task::yield_now().await;
    /// let interactive = pacer.acquire_in_lane(&key, Cost::tokens(1), None, Priority::HIGH);
    /// // ...and takes the next slot, a minute later, before the batch call.
    /// interactive.await.unwrap();
    /// assert!(!batch.is_finished());
    /// # }
    /// ```
    pub fn acquire_in_lane(
        &self,
        key: &PaceKey,
        cost: Cost,
        deadline: Option<Instant>,
        priority: Priority,
    ) -> Acquire {
        let reserve = self.shared.config.reserve_below(priority);
        let cost = cost.with_reserve(cost.reserve.max(reserve));
        let entry = self.entry(key);
        let started = Instant::now();
        let ticket = {
            let mut st = entry.lock();
            let t = st.next_ticket;
            st.next_ticket += 1;
            st.queue.push(priority, t);
            t
        };
        self.shared.queue_len.fetch_add(1, Ordering::Relaxed);
        let bound = wait_limit(started, self.shared.config.max_wait, deadline);
        let limit = bound.map(|(l, _)| l);
        let by_deadline = bound.is_some_and(|(_, b)| b == WaitBound::Deadline);
        Acquire::new(
            self.shared.clone(),
            entry,
            (priority, ticket),
            cost,
            started,
            (limit, by_deadline),
        )
    }

    /// Learns from a response's `x-ratelimit-*` snapshot, outside of any permit (a response
    /// that arrived through another path). Prefer [`Permit::on_response`].
    pub fn on_response(&self, key: &PaceKey, snapshot: &RateLimitSnapshot) {
        let entry = self.entry(key);
        let mut st = entry.lock();
        let now = Instant::now();
        st.advance(now);
        st.known = true;
        st.learn(snapshot, now, &self.shared.config, None);
        st.success(&self.shared.config);
        st.wake_head();
    }

    /// Reports a 429 on `key` outside of any permit: pauses the key until `hint` (or the
    /// headers' reset, or the default pause). Prefer [`Permit::on_rate_limited`].
    pub fn on_rate_limited(
        &self,
        key: &PaceKey,
        hint: Option<Duration>,
        snapshot: Option<&RateLimitSnapshot>,
    ) {
        let entry = self.entry(key);
        rate_limited(&self.shared, &entry, hint, snapshot, None);
    }

    /// The counters, across keys.
    pub fn metrics(&self) -> PaceMetrics {
        let s = &self.shared;
        PaceMetrics {
            queue_len: s.queue_len.load(Ordering::Relaxed),
            granted: s.granted.load(Ordering::Relaxed),
            waits: s.waits.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(s.wait_nanos.load(Ordering::Relaxed)),
            paced_errors: s.paced_errors.load(Ordering::Relaxed),
            rate_limited: s.rate_limited.load(Ordering::Relaxed),
            keys: s.keys.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    /// What the pacer knows of `key` now, or `None` if it never saw it.
    pub fn key_state(&self, key: &PaceKey) -> Option<KeySnapshot> {
        let entry = self.existing(key)?;
        let mut st = entry.lock();
        st.advance(Instant::now());
        Some(KeySnapshot {
            queue_len: st.queue.len(),
            in_flight: st.in_flight,
            known: st.known,
            window: st.window,
            requests: st.requests.map(|b| b.bucket.view()),
            tokens: st.tokens.map(|b| b.bucket.view()),
            paused_until: st.paused_until,
            adaptive_rate: st.aimd.map(|b| b.refill),
            token_ratio: st.token_ratio,
            usage_ratios: st.usage.map(|u| (u.prompt, u.completion)),
        })
    }
}

fn rate_limited(
    shared: &Shared,
    entry: &KeyEntry,
    hint: Option<Duration>,
    snapshot: Option<&RateLimitSnapshot>,
    grant: Option<(Since, u64)>,
) {
    shared.rate_limited.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    let now = Instant::now();
    let mut st = entry.lock();
    st.advance(now);
    st.meter.record_limited(now);
    st.known = true;
    // A 429 ends the cold window: the pause and the adaptive rate take over.
    st.window = None;
    // Did the headers explain the 429 (a bucket at zero)? Then the buckets already say when.
    let mut explained = None;
    if let Some(s) = snapshot {
        st.learn(s, now, config, grant.map(|(since, _)| since));
        if s.remaining_requests == Some(0) {
            explained = Some(s.reset_requests);
        }
        // A token bucket with less than this request's cost left explains it too.
        let cost = grant.map_or(1, |(_, tokens)| tokens.max(1));
        if s.remaining_tokens.is_some_and(|r| r < cost) {
            explained = Some(explained.flatten().max(s.reset_tokens));
        }
    }
    if let Some((since, tokens)) = grant {
        if st.refusals.len() >= REFUSALS_KEPT {
            st.refusals.pop_front();
        }
        st.refusals.push_back((since.grants, tokens));
    }
    // A hint pauses the key; an empty bucket with no hint is left to the bucket's refill; a
    // 429 that nothing explains pauses for the default.
    let pause = match (hint, explained) {
        (Some(h), _) => Some(h),
        (None, Some(_)) => None,
        (None, None) => Some(config.default_pause),
    };
    if let Some(p) = pause {
        st.pause(now + p);
    }
    // The 429 wins over headers that showed room: lower the rate multiplicatively once per
    // round; the round's later 429s hold it at `beta` times the rate the server accepted.
    let mut new_rate = None;
    if explained.is_none() {
        let fresh = match (grant, st.last_decrease) {
            (Some((since, _)), Some(last)) => since.grants > last,
            _ => true,
        };
        if fresh {
            new_rate = Some(st.decrease(now, config));
        } else {
            let accepted = st.meter.accepted_rate(now);
            if let Some(b) = &mut st.aimd {
                let cap = (accepted * config.aimd.beta).max(config.aimd.min_rate);
                if cap < b.refill {
                    set_rate(b, cap, &config.aimd);
                    new_rate = Some(b.refill);
                }
            }
        }
    }
    if let Some(b) = &mut st.requests {
        if explained.is_none() {
            // The server has no room now whatever our model said.
            b.bucket.level = b.bucket.level.min(0.0);
        }
    }
    st.wake_head();
    drop(st);
    tracing::info!(
        key = %entry.key,
        pause_ms = pause.map(|p| p.as_millis() as u64),
        adaptive_rate = new_rate,
        "rate limited: key paused"
    );
}
