//! The circuits: configuration, the state machine of one upstream and key, the shared registry.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::key::BreakerKey;
use crate::error::{fmt_secs, DelaySource, Error, ErrorKind};

/// The default failure ratio that opens a circuit: 0.5 (half the calls in the window).
pub const DEFAULT_FAILURE_RATIO: f64 = 0.5;
/// The default sliding window over which the failure ratio is measured: 10 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// The default minimum of calls in the window before the ratio can open a circuit: 10.
pub const DEFAULT_MIN_CALLS: u32 = 10;
/// The default number of consecutive failures that open a circuit: 5.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// The default time a circuit stays open before it lets probes through: 5 s.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(5);
/// The default number of probes half-open: 1.
pub const DEFAULT_PROBES: u32 = 1;

/// The window is kept as this many buckets (fixed memory per circuit).
const BUCKETS: usize = 10;

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// The settings of a [`BreakerConfig`], read back with [`BreakerConfig::settings`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// The failure ratio (0..=1) over the window that opens a circuit; `None`: ratio off.
    pub failure_ratio: Option<f64>,
    /// The sliding window of the ratio.
    pub window: Duration,
    /// The calls the window must hold before the ratio counts.
    pub min_calls: u32,
    /// The consecutive failures that open a circuit; `None`: off.
    pub consecutive_failures: Option<u32>,
    /// How long a circuit stays open before probes.
    pub open_for: Duration,
    /// Probes let through at a time half-open, and successes needed to close.
    pub probes: u32,
}

/// How the breaker decides: what opens a circuit, for how long, how many probes.
///
/// A call's outcome is a **failure** when the upstream is unwell: a 5xx (an
/// [`ErrorKind::ServerError`], or a `5xx` response that reached the breaker unclassified), a
/// connection failure, a timeout ([`is_upstream_failure`]). It is a **success** when the
/// upstream answered anything else, a 4xx, a rate limit or an exhausted quota included: those
/// say nothing about the upstream's health, and the pacer owns rate limits. It is **ignored**
/// when nothing was sent (a local error below the breaker, such as the pacer giving up) or the
/// call was dropped.
///
/// A closed circuit opens when the last `consecutive_failures` outcomes were failures, or when
/// at least `min_calls` outcomes fall in the sliding `window` and the failures among them reach
/// `failure_ratio`. It stays open for `open_for`, then lets up to `probes` calls through at a
/// time (half-open): `probes` successes close it, one failure opens it again.
///
/// # Default
///
/// Ratio 0.5 over 10 s with at least 10 calls, or 5 consecutive failures; open for 5 s;
/// 1 probe.
///
/// ```
/// use oai_resilience::breaker::BreakerConfig;
/// use std::time::Duration;
///
/// let config = BreakerConfig::new()
///     .consecutive_failures(3)
///     .failure_ratio(None) // consecutive failures only
///     .open_for(Duration::from_secs(1))
///     .probes(2);
/// assert_eq!(config.settings().consecutive_failures, Some(3));
/// assert_eq!(config.settings().failure_ratio, None);
/// ```
#[derive(Clone)]
pub struct BreakerConfig {
    settings: BreakerSettings,
    failure_if: Option<Predicate>,
}

impl BreakerConfig {
    /// The default configuration.
    pub fn new() -> Self {
        BreakerConfig {
            settings: BreakerSettings {
                failure_ratio: Some(DEFAULT_FAILURE_RATIO),
                window: DEFAULT_WINDOW,
                min_calls: DEFAULT_MIN_CALLS,
                consecutive_failures: Some(DEFAULT_CONSECUTIVE_FAILURES),
                open_for: DEFAULT_OPEN_FOR,
                probes: DEFAULT_PROBES,
            },
            failure_if: None,
        }
    }

    /// Sets the failure ratio (clamped to `0..=1`; `None` turns the ratio off).
    pub fn failure_ratio(mut self, ratio: impl Into<Option<f64>>) -> Self {
        self.settings.failure_ratio =
            ratio
                .into()
                .map(|r| if r.is_nan() { 1.0 } else { r.clamp(0.0, 1.0) });
        self
    }

    /// Sets the sliding window of the ratio (at least 10 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window.max(Duration::from_millis(10));
        self
    }

    /// Sets the calls the window must hold before the ratio can open the circuit (at least 1).
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.settings.min_calls = calls.max(1);
        self
    }

    /// Sets the consecutive failures that open the circuit (at least 1; `None` turns it off).
    pub fn consecutive_failures(mut self, n: impl Into<Option<u32>>) -> Self {
        self.settings.consecutive_failures = n.into().map(|n| n.max(1));
        self
    }

    /// Sets how long an open circuit refuses calls before it lets probes through.
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.settings.open_for = duration;
        self
    }

    /// Sets the probes let through at a time half-open, which is also the number of probe
    /// successes that close the circuit (at least 1).
    pub fn probes(mut self, probes: u32) -> Self {
        self.settings.probes = probes.max(1);
        self
    }

    /// Replaces [`is_upstream_failure`] as the test of a failed call (errors raised locally,
    /// before anything was sent, are ignored whatever it says).
    pub fn failure_if(mut self, pred: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.failure_if = Some(Arc::new(pred));
        self
    }

    /// The settings.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    pub(crate) fn outcome_of_error(&self, err: &Error) -> Outcome {
        if err.kind().is_local() || crate::pace::is_paced_locally(err) {
            return Outcome::Ignored;
        }
        let failed = match &self.failure_if {
            Some(p) => p(err),
            None => is_upstream_failure(err),
        };
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

crate::macros::default_via_new!(BreakerConfig);

crate::macros::debug_struct!(BreakerConfig, |s| "BreakerConfig" {
    "settings": s.settings,
    "failure_if": s.failure_if.is_some(),
} finish);

/// Whether `err` says the upstream is unwell: a server error (5xx), a connection failure or a
/// timeout. Not a 4xx, not a rate limit or an exhausted quota (the pacer's business), not a
/// local error.
///
/// ```
/// use oai_resilience::breaker::is_upstream_failure;
/// use oai_resilience::{Error, ErrorKind};
///
/// assert!(is_upstream_failure(&Error::new(ErrorKind::ServerError)));
/// assert!(is_upstream_failure(&Error::new(ErrorKind::Connection)));
/// assert!(!is_upstream_failure(&Error::new(ErrorKind::RateLimited)));
/// assert!(!is_upstream_failure(&Error::new(ErrorKind::InvalidRequest)));
/// ```
pub fn is_upstream_failure(err: &Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::ServerError | ErrorKind::Connection | ErrorKind::Timeout
    )
}

/// What one call told the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    Ignored,
}

/// The state of one circuit, as [`CircuitBreakerLayer::state`](super::CircuitBreakerLayer::state)
/// reports it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls fail at once with [`ErrorKind::CircuitOpen`] until `until` (tokio's clock).
    Open {
        /// When the circuit lets probes through.
        until: Instant,
    },
    /// A bounded number of probes pass; the others fail at once.
    HalfOpen,
}

/// What one circuit has seen since it was created (counters never reset).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerCounters {
    /// Calls let through (probes included).
    pub admitted: u64,
    /// Calls that ended in a success (the upstream answered, 4xx and 429 included).
    pub succeeded: u64,
    /// Calls that ended in a failure (5xx, connection, timeout).
    pub failed: u64,
    /// Calls that told nothing: a local error below the breaker, or dropped before the end.
    pub ignored: u64,
    /// Calls refused at once because the circuit was open (or half-open with its probes busy).
    pub rejected: u64,
    /// Times the circuit opened.
    pub opened: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
struct Circuit {
    phase: CircuitState,
    generation: u64,
    buckets: [Bucket; BUCKETS],
    consecutive: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    counters: BreakerCounters,
    last_used: Instant,
    reason: String,
}

/// A call let through: which phase it belongs to, and whether it is a probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permit {
    generation: u64,
    probe: bool,
}

struct Registry {
    circuits: HashMap<BreakerKey, Circuit>,
    next_generation: u64,
    prune_at: usize,
}

/// The circuits of every key, shared by the clones of a layer and its services.
pub(crate) struct Circuits {
    config: BreakerConfig,
    epoch: Instant,
    registry: Mutex<Registry>,
}

const PRUNE_FLOOR: usize = 1024;

impl Circuits {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Circuits {
            config,
            epoch: Instant::now(),
            registry: Mutex::new(Registry {
                circuits: HashMap::new(),
                next_generation: 1,
                prune_at: PRUNE_FLOOR,
            }),
        }
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let len = (self.config.settings.window / BUCKETS as u32)
            .as_nanos()
            .max(1);
        (now.saturating_duration_since(self.epoch).as_nanos() / len) as u64
    }

    /// Lets a call through, or refuses it with the circuit-open error.
    pub(crate) fn admit(&self, key: &BreakerKey) -> Result<Permit, Error> {
        let now = Instant::now();
        let s = &self.config.settings;
        let mut reg = self.lock();
        if !reg.circuits.contains_key(key) {
            reg.prune(now, s.window);
        }
        let Registry {
            circuits,
            next_generation,
            ..
        } = &mut *reg;
        let c = circuits.entry(key.clone()).or_insert_with(|| Circuit {
            phase: CircuitState::Closed,
            generation: 0,
            buckets: [Bucket::default(); BUCKETS],
            consecutive: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            counters: BreakerCounters::default(),
            last_used: now,
            reason: String::new(),
        });
        c.last_used = now;
        if let CircuitState::Open { until } = c.phase {
            if now >= until {
                c.phase = CircuitState::HalfOpen;
                c.generation = take_generation(next_generation);
                c.probes_in_flight = 0;
                c.probe_successes = 0;
                tracing::info!(target: "oai_resilience::breaker", key = %key, "circuit half-open: letting probes through");
            }
        }
        match c.phase {
            CircuitState::Closed => {
                c.counters.admitted += 1;
                Ok(Permit {
                    generation: c.generation,
                    probe: false,
                })
            }
            CircuitState::HalfOpen if c.probes_in_flight < s.probes => {
                c.probes_in_flight += 1;
                c.counters.admitted += 1;
                Ok(Permit {
                    generation: c.generation,
                    probe: true,
                })
            }
            CircuitState::HalfOpen => {
                c.counters.rejected += 1;
                Err(Error::new(ErrorKind::CircuitOpen).with_detail(format!(
                    "circuit half-open for {key} ({}): {} probe{} in flight, nothing sent",
                    c.reason,
                    c.probes_in_flight,
                    if c.probes_in_flight == 1 { "" } else { "s" }
                )))
            }
            CircuitState::Open { until } => {
                c.counters.rejected += 1;
                let left = until.saturating_duration_since(now);
                Err(Error::new(ErrorKind::CircuitOpen)
                    .with_detail(format!(
                        "circuit open for {key} ({}): nothing sent; next probe in {}",
                        c.reason,
                        fmt_secs(left)
                    ))
                    .with_retry_after(left, DelaySource::Backoff))
            }
        }
    }

    /// Records the outcome of a call let through by `permit`. `failure` describes the call's
    /// failure; it is formatted only when the circuit opens.
    pub(crate) fn record(
        &self,
        key: &BreakerKey,
        permit: Permit,
        outcome: Outcome,
        failure: Option<&dyn fmt::Display>,
    ) {
        let now = Instant::now();
        let s = &self.config.settings;
        let idx = self.bucket_index(now);
        let mut reg = self.lock();
        let Registry {
            circuits,
            next_generation,
            ..
        } = &mut *reg;
        let Some(c) = circuits.get_mut(key) else {
            return;
        };
        match outcome {
            Outcome::Success => c.counters.succeeded += 1,
            Outcome::Failure => c.counters.failed += 1,
            Outcome::Ignored => c.counters.ignored += 1,
        }
        if permit.generation != c.generation {
            // The call started in an earlier phase: its outcome no longer decides anything.
            return;
        }
        match c.phase {
            CircuitState::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let b = &mut c.buckets[(idx % BUCKETS as u64) as usize];
                if b.index != idx {
                    *b = Bucket {
                        index: idx,
                        calls: 0,
                        failures: 0,
                    };
                }
                b.calls += 1;
                if outcome == Outcome::Failure {
                    b.failures += 1;
                    c.consecutive += 1;
                } else {
                    c.consecutive = 0;
                    return;
                }
                let (calls, failures) = c
                    .buckets
                    .iter()
                    .filter(|b| b.index <= idx && b.index + (BUCKETS as u64) > idx)
                    .fold((0u32, 0u32), |(n, f), b| (n + b.calls, f + b.failures));
                let reason = if s.consecutive_failures.is_some_and(|n| c.consecutive >= n) {
                    Some(format!("{} consecutive failures", c.consecutive))
                } else if s.failure_ratio.is_some_and(|r| {
                    calls >= s.min_calls && f64::from(failures) >= r * f64::from(calls)
                }) {
                    Some(format!(
                        "{failures} of {calls} calls failed in {}",
                        fmt_secs(s.window)
                    ))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    open(c, key, now, s.open_for, reason, failure, next_generation);
                }
            }
            CircuitState::HalfOpen if permit.probe => {
                c.probes_in_flight = c.probes_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Failure => open(
                        c,
                        key,
                        now,
                        s.open_for,
                        "a probe failed".to_owned(),
                        failure,
                        next_generation,
                    ),
                    Outcome::Success => {
                        c.probe_successes += 1;
                        if c.probe_successes >= s.probes {
                            c.phase = CircuitState::Closed;
                            c.generation = take_generation(next_generation);
                            c.buckets = [Bucket::default(); BUCKETS];
                            c.consecutive = 0;
                            c.reason.clear();
                            tracing::info!(target: "oai_resilience::breaker", key = %key, "circuit closed: the probes succeeded");
                        }
                    }
                    Outcome::Ignored => {}
                }
            }
            _ => {}
        }
    }

    pub(crate) fn state(&self, key: &BreakerKey) -> CircuitState {
        let reg = self.lock();
        match reg.circuits.get(key).map(|c| c.phase) {
            None => CircuitState::Closed,
            Some(CircuitState::Open { until }) if Instant::now() >= until => CircuitState::HalfOpen,
            Some(phase) => phase,
        }
    }

    pub(crate) fn counters(&self, key: &BreakerKey) -> Option<BreakerCounters> {
        self.lock().circuits.get(key).map(|c| c.counters)
    }

    pub(crate) fn keys(&self) -> Vec<BreakerKey> {
        self.lock().circuits.keys().cloned().collect()
    }
}

fn take_generation(next: &mut u64) -> u64 {
    let g = *next;
    *next += 1;
    g
}

fn open(
    c: &mut Circuit,
    key: &BreakerKey,
    now: Instant,
    open_for: Duration,
    reason: String,
    failure: Option<&dyn fmt::Display>,
    next_generation: &mut u64,
) {
    c.phase = CircuitState::Open {
        until: now + open_for,
    };
    c.generation = take_generation(next_generation);
    c.buckets = [Bucket::default(); BUCKETS];
    c.consecutive = 0;
    c.probes_in_flight = 0;
    c.probe_successes = 0;
    c.counters.opened += 1;
    c.reason = match failure {
        Some(last) => format!("{reason}, the last: {last}"),
        None => reason,
    };
    tracing::warn!(
        target: "oai_resilience::breaker",
        key = %key,
        reason = %c.reason,
        open_ms = open_for.as_millis() as u64,
        "circuit opened"
    );
}

impl Registry {
    /// Forgets closed circuits idle for two windows once the map has grown, so that memory
    /// stays bounded with many distinct keys (amortized: the threshold doubles).
    fn prune(&mut self, now: Instant, window: Duration) {
        if self.circuits.len() < self.prune_at {
            return;
        }
        let idle = window.saturating_mul(2);
        self.circuits.retain(|_, c| {
            c.phase != CircuitState::Closed || now.saturating_duration_since(c.last_used) < idle
        });
        self.prune_at = (self.circuits.len() * 2).max(PRUNE_FLOOR);
    }
}

crate::macros::debug_struct!(Circuits, |s| "Circuits" {
    "config": s.config,
    "circuits": s.lock().circuits.len(),
} finish);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_ratio_needs_the_minimum_of_calls_and_the_window_slides() {
        let c = Circuits::new(
            BreakerConfig::new()
                .consecutive_failures(None)
                .min_calls(4)
                .window(Duration::from_secs(10)),
        );
        let k = BreakerKey::new("up");
        let call = |o| {
            let p = c.admit(&k).unwrap();
            c.record(&k, p, o, Some(&"503 server_error"));
        };
        call(Outcome::Failure);
        call(Outcome::Failure);
        call(Outcome::Success);
        assert_eq!(c.state(&k), CircuitState::Closed);
        // The first two failures leave the window.
        tokio::time::advance(Duration::from_secs(11)).await;
        call(Outcome::Failure);
        call(Outcome::Success);
        call(Outcome::Success);
        call(Outcome::Success);
        assert_eq!(c.state(&k), CircuitState::Closed);
        call(Outcome::Failure); // 2 of 5 < 0.5
        assert_eq!(c.state(&k), CircuitState::Closed);
        call(Outcome::Failure); // 3 of 6 = 0.5
        assert!(matches!(c.state(&k), CircuitState::Open { .. }));
        let err = c.admit(&k).unwrap_err();
        assert!(
            err.detail()
                .unwrap()
                .contains("3 of 6 calls failed in 10 s"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_closed_circuits_are_forgotten() {
        let c = Circuits::new(BreakerConfig::new());
        for i in 0..PRUNE_FLOOR {
            let k = BreakerKey::new(format!("up{i}"));
            let p = c.admit(&k).unwrap();
            c.record(&k, p, Outcome::Success, None);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let k = BreakerKey::new("fresh");
        c.admit(&k).unwrap();
        assert_eq!(c.keys(), vec![k]);
    }
}
