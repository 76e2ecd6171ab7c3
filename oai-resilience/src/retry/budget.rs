//! The retry budget: retry throttling shared by every clone of a retry stack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

pub use tower::retry::budget::Budget;

/// One token, in the fixed-point unit the bucket counts in.
const UNIT: u64 = 1_000_000;

/// What the retry loop tells a retry budget, and asks it.
///
/// The [`Retrier`](super::Retrier) (and so the [`Retry`](super::Retry) service,
/// [`TowerPolicy`](super::TowerPolicy) and [`call`](super::call)) reports every call and every
/// attempt's outcome, and asks before each retry:
///
/// - [`on_request`](RetryBudget::on_request) once per call, before its first attempt;
/// - [`on_success`](RetryBudget::on_success) for an attempt that got a successful response;
/// - [`on_failure`](RetryBudget::on_failure) for an attempt that failed with an error the
///   policy would retry (a server error, a transient 429, a connection failure, …), whether or
///   not the retry then happens; errors that are never retried (a bad request, a bad key, an
///   exhausted quota) are neither a success nor a failure;
/// - [`try_retry`](RetryBudget::try_retry) when a retry is about to be decided (after the
///   other limits allowed it): `false` ends the call with
///   [`StopReason::Budget`](crate::StopReason::Budget);
/// - [`refund`](RetryBudget::refund) when a retry that `try_retry` allowed is never sent,
///   because the call was dropped during the backoff.
///
/// [`TokenBudget`] (the default) implements it, and so does every tower
/// [`Budget`] (tower's `TpsBudget` included): a tower budget receives a deposit per call and
/// a withdrawal per retry, and ignores the outcomes.
pub trait RetryBudget: Send + Sync + 'static {
    /// A call starts (once per call, not per attempt).
    fn on_request(&self) {}

    /// An attempt succeeded.
    fn on_success(&self) {}

    /// An attempt failed with `err`, an error the policy would retry.
    fn on_failure(&self, err: &Error) {
        let _ = err;
    }

    /// Whether a retry may be sent now; called after [`on_failure`](RetryBudget::on_failure)
    /// for the same attempt.
    fn try_retry(&self) -> bool;

    /// A retry that [`try_retry`](RetryBudget::try_retry) allowed was never sent.
    fn refund(&self) {}

    /// The balance now, for observers ([`RetryScheduled`](crate::observe::RetryScheduled)),
    /// if the budget has one to report: `None` by default.
    fn current_balance(&self) -> Option<f64> {
        None
    }
}

impl<B: Budget + Send + Sync + 'static> RetryBudget for B {
    fn on_request(&self) {
        self.deposit();
    }

    fn try_retry(&self) -> bool {
        self.withdraw()
    }
}

/// Retry throttling in the manner of gRPC (design A6): a balance of tokens that successes
/// raise, failures lower, and that allows retries only while it stays above half its maximum.
/// Lock-free, shared by every clone of a retry stack.
///
/// Why a budget and not only a maximum number of attempts? A maximum bounds one call, not the
/// fleet: during an outage every call retries the maximum, and the struggling server receives
/// several times the traffic it was asked to carry. A budget stops retries when they cannot
/// help, and lets them through when they can.
///
/// - each successful attempt adds `ratio` tokens (0.5 by default), up to `max_tokens` (20);
/// - each attempt that fails with a retryable error removes one token, down to zero, except a
///   rate-limit 429 ([`ErrorKind::RateLimited`], which counts as neither success nor failure);
/// - a retry is allowed only while the balance is above `max_tokens / 2` (10); a refused retry
///   ends the call with [`StopReason::Budget`](crate::StopReason::Budget).
///
/// The balance drifts up while the failure rate `f` of attempts satisfies
/// `(1 − f) · ratio > f`, that is `f < ratio / (1 + ratio)`: a third with the default ratio.
/// Below that rate retries flow freely: 20 % random failures cost about 1 / (1 − 0.2) = 1.25
/// requests per call and no call is refused a retry (the balance drifts up by
/// 0.8 · 0.5 − 0.2 = +0.2 per attempt and stays near its maximum). Above it the balance sinks
/// to the threshold and retries stop, which makes retrying a no-op for an outage: a server
/// that fails everything receives at most `max_tokens / 2` = 10 retries in all (the balance
/// goes from 20 to 10 after ten failures), whatever the number of calls; 200 calls during an
/// outage send about 1.05 requests per call. After the outage, 23 successes (11.5 tokens) lift
/// the balance from 0 far enough that the next failure (down to 10.5) is retried again.
///
/// Why 20 tokens and not gRPC's example of 10: with a threshold of 5 a run of five more
/// failures than the successes make up for closes retries, and at 20 % failures that happens
/// by chance (a simulation of 300 calls at concurrency 20 saw refused retries in about 40 %
/// of the runs with 10 tokens, under 1 % with 20).
///
/// Why a rate-limit 429 does not count: it says that the client is too fast, not that the
/// server is failing, and the pacing layer (inside the retry layer in the default stack)
/// already holds every request of the key until the server's hint and lowers the rate. A
/// cold burst against a limit enforced per second meets dozens of 429s at once (30 for 50
/// calls against 20 per second); counted as failures they would close the budget and fail
/// calls that the pacer would have completed. Each such call is still bounded by the maximum
/// attempts, the hint ceiling and the deadline.
///
/// A retry itself costs nothing: only what the server answered moves the balance. A call
/// dropped during its backoff therefore has nothing to give back
/// ([`RetryBudget::refund`] is a no-op), while its failure stays counted, since it happened.
///
/// ```
/// use oai_resilience::retry::{RetryBudget, TokenBudget};
///
/// use oai_resilience::{Error, ErrorKind};
///
/// let budget = TokenBudget::new(0.5, 4.0); // threshold 2
/// let e503 = Error::new(ErrorKind::ServerError);
/// budget.on_failure(&e503); // 3 left
/// assert!(budget.try_retry());
/// budget.on_failure(&e503); // 2 left: not above the threshold
/// assert!(!budget.try_retry());
/// budget.on_success();
/// budget.on_success(); // 3 again
/// assert!(budget.try_retry());
/// ```
///
/// # Default
///
/// Ratio 0.5, at most 20 tokens (threshold 10), starting full.
///
/// Cheap to clone: clones share the balance. Give a clone to
/// [`RetryConfig::budget`](super::RetryConfig::budget) (of one stack or several) and keep one
/// to read the [`balance`](TokenBudget::balance).
#[derive(Clone)]
pub struct TokenBudget {
    /// Balance in millionths of a token, shared by the clones.
    balance: Arc<AtomicU64>,
    ratio: u64,
    max: u64,
}

impl TokenBudget {
    /// A budget that earns `ratio` tokens per successful attempt, holds at most `max_tokens`
    /// and allows retries while it holds more than `max_tokens / 2`; it starts full. Negative,
    /// NaN or infinite inputs are treated as zero (or, for an infinite `max_tokens`, as a very
    /// large bucket).
    pub fn new(ratio: f64, max_tokens: f64) -> Self {
        let max = to_fixed(max_tokens);
        TokenBudget {
            balance: Arc::new(AtomicU64::new(max)),
            ratio: to_fixed(ratio),
            max,
        }
    }

    /// A budget that starts with `tokens` instead of full (clamped to the maximum).
    pub fn with_initial(self, tokens: f64) -> Self {
        self.balance
            .store(to_fixed(tokens).min(self.max), Ordering::Relaxed);
        self
    }

    /// Replaces the balance (clamped to `0..=max_tokens`): how a shared budget adopts the
    /// fleet's balance after a sync.
    #[cfg(feature = "redis")]
    pub(crate) fn set_balance(&self, tokens: f64) {
        self.balance
            .store(to_fixed(tokens).min(self.max), Ordering::Release);
    }

    /// The current balance, in tokens.
    pub fn balance(&self) -> f64 {
        from_fixed(self.balance.load(Ordering::Relaxed))
    }

    /// The maximum balance, in tokens.
    pub fn max_tokens(&self) -> f64 {
        from_fixed(self.max)
    }

    /// The balance above which retries are allowed: half the maximum.
    pub fn threshold(&self) -> f64 {
        from_fixed(self.max / 2)
    }

    /// The tokens a successful attempt earns.
    pub fn ratio(&self) -> f64 {
        from_fixed(self.ratio)
    }
}

fn to_fixed(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= 1e12 {
        (1e12 as u64) * UNIT
    } else {
        (x * UNIT as f64).round() as u64
    }
}

fn from_fixed(x: u64) -> f64 {
    x as f64 / UNIT as f64
}

impl Default for TokenBudget {
    fn default() -> Self {
        TokenBudget::new(0.5, 20.0)
    }
}

impl RetryBudget for TokenBudget {
    fn current_balance(&self) -> Option<f64> {
        Some(self.balance())
    }

    fn on_success(&self) {
        if self.ratio == 0 {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < self.max).then(|| b.saturating_add(self.ratio).min(self.max))
            });
    }

    fn on_failure(&self, err: &Error) {
        if !counts_as_failure(err) {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b > 0).then(|| b.saturating_sub(UNIT))
            });
    }

    fn try_retry(&self) -> bool {
        self.balance.load(Ordering::Acquire) > self.max / 2
    }
}

/// Whether a retryable error lowers a [`TokenBudget`]: every one but a rate-limit 429, which
/// says the client is too fast, not that the server fails (see [`TokenBudget`]).
pub(crate) fn counts_as_failure(err: &Error) -> bool {
    err.kind() != ErrorKind::RateLimited
}

crate::macros::debug_struct!(TokenBudget, |s| "TokenBudget" {
    "balance": s.balance(),
    "ratio": s.ratio(),
    "max_tokens": s.max_tokens(),
} finish);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e503() -> Error {
        Error::new(ErrorKind::ServerError)
    }

    #[test]
    fn rate_limits_are_neither_success_nor_failure() {
        let b = TokenBudget::default();
        for _ in 0..100 {
            b.on_failure(&Error::new(ErrorKind::RateLimited));
        }
        assert_eq!(b.balance(), 20.0);
        for kind in [
            ErrorKind::Connection,
            ErrorKind::Timeout,
            ErrorKind::ServerError,
        ] {
            b.on_failure(&Error::new(kind));
        }
        assert_eq!(b.balance(), 17.0);
    }

    #[test]
    fn starts_full_and_throttles_at_half() {
        let b = TokenBudget::default();
        assert_eq!(
            (b.balance(), b.max_tokens(), b.threshold()),
            (20.0, 20.0, 10.0)
        );
        assert_eq!(b.ratio(), 0.5);
        let mut allowed = 0;
        for _ in 0..100 {
            b.on_failure(&e503());
            if b.try_retry() {
                allowed += 1;
            }
        }
        // 19, 18, …, 11 are above 10: nine retries, then none; the balance floors at zero.
        assert_eq!(allowed, 9);
        assert_eq!(b.balance(), 0.0);
        // 20 successes bring it to exactly 10 (not above); the 21st opens retries again.
        for _ in 0..20 {
            b.on_success();
        }
        assert!(!b.try_retry());
        b.on_success();
        assert!(b.try_retry());
    }

    #[test]
    fn an_outage_costs_half_the_bucket_then_nothing() {
        // 1,000 calls, every attempt fails, up to 5 attempts each (the retrier asks the budget
        // only when the maximum allows another attempt).
        let b = TokenBudget::default();
        let mut requests = 0;
        for _ in 0..1000 {
            b.on_request();
            for attempt in 1..=5 {
                requests += 1;
                b.on_failure(&e503());
                if attempt == 5 || !b.try_retry() {
                    break;
                }
            }
        }
        // Call 1 retries at 19, 18, 17, 16 and its fifth failure leaves 15; call 2 retries at
        // 14, 13, 12, 11 and is refused at 10: 8 retries in all.
        assert_eq!(requests, 1008);
    }

    #[test]
    fn twenty_percent_failures_never_close_the_default() {
        // One failure in five, in a fixed pattern: the balance drifts up by 0.2 per attempt.
        let b = TokenBudget::default();
        for i in 0..10_000 {
            if i % 5 == 0 {
                b.on_failure(&e503());
                assert!(b.try_retry(), "attempt {i}: {b:?}");
            } else {
                b.on_success();
            }
        }
        // A third of attempts failing is the break-even point: 2 successes (+1) per failure
        // (−1) keep the balance where it is; one more failure per round drains it.
        let b = TokenBudget::default();
        for _ in 0..100 {
            b.on_failure(&e503());
            b.on_success();
            b.on_success();
        }
        assert_eq!(
            b.balance(),
            20.0,
            "19, 19.5, then capped at 20 in each round"
        );
        for _ in 0..100 {
            b.on_failure(&e503());
            b.on_failure(&e503());
            b.on_success();
            b.on_success();
        }
        assert!(!b.try_retry(), "{b:?}");
    }

    #[test]
    fn balance_is_capped_and_floored() {
        let b = TokenBudget::new(1.0, 3.0).with_initial(0.0);
        for _ in 0..100 {
            b.on_success();
        }
        assert_eq!(b.balance(), 3.0);
        for _ in 0..100 {
            b.on_failure(&e503());
        }
        assert_eq!(b.balance(), 0.0);
        assert_eq!(TokenBudget::new(1.0, 3.0).with_initial(7.0).balance(), 3.0);
    }

    #[test]
    fn refund_and_requests_do_not_move_the_balance() {
        let b = TokenBudget::default();
        b.on_failure(&e503());
        b.on_request();
        b.refund();
        assert_eq!(b.balance(), 19.0);
    }

    #[test]
    fn bad_inputs_are_zero() {
        let b = TokenBudget::new(f64::NAN, -1.0);
        assert!(!b.try_retry());
        b.on_success();
        assert_eq!(b.balance(), 0.0);
        let huge = TokenBudget::new(f64::INFINITY, f64::INFINITY);
        assert_eq!(huge.max_tokens(), 1e12);
        huge.on_failure(&e503());
        assert!(huge.try_retry());
    }

    #[test]
    fn tower_budgets_are_retry_budgets() {
        let tps = tower::retry::budget::TpsBudget::new(std::time::Duration::from_secs(1), 0, 0.0);
        // No reserve, no ratio: no retry, whatever the outcomes.
        tps.on_request();
        tps.on_success();
        tps.on_failure(&e503());
        assert!(!RetryBudget::try_retry(&tps));
        let tps = tower::retry::budget::TpsBudget::new(std::time::Duration::from_secs(1), 1, 0.0);
        assert!(RetryBudget::try_retry(&tps));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Success,
        Failure,
    }

    proptest! {
        #[test]
        fn balance_follows_the_arithmetic(
            ratio in 0f64..3.0,
            max in 0f64..50.0,
            ops in proptest::collection::vec(prop_oneof![Just(Op::Success), Just(Op::Failure)], 0..500),
        ) {
            let b = TokenBudget::new(ratio, max);
            let (ratio, max) = (b.ratio(), b.max_tokens());
            let mut model = max;
            for op in ops {
                match op {
                    Op::Success => { b.on_success(); model = (model + ratio).min(max); }
                    Op::Failure => { b.on_failure(&e503()); model = (model - 1.0).max(0.0); }
                }
                prop_assert!((b.balance() - model).abs() < 1e-3, "{} vs {}", b.balance(), model);
                prop_assert!(b.balance() >= 0.0);
                prop_assert!(b.balance() <= max);
                prop_assert_eq!(b.try_retry(), b.balance() > b.threshold());
            }
        }

        #[test]
        fn an_outage_gets_at_most_half_the_bucket(
            ratio in 0f64..3.0,
            max in 0f64..50.0,
            calls in 1usize..300,
        ) {
            let b = TokenBudget::new(ratio, max);
            let mut retries = 0u64;
            for _ in 0..calls {
                b.on_request();
                for _ in 0..4 {
                    b.on_failure(&e503());
                    if !b.try_retry() { break; }
                    retries += 1;
                }
            }
            prop_assert!(retries as f64 <= max / 2.0, "{} retries", retries);
        }
    }
}
