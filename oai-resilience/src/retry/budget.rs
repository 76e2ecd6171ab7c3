//! The retry budget: a token bucket shared by every clone of a retry stack.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

pub use tower::retry::budget::Budget;

/// One token, in the fixed-point unit the bucket counts in.
const UNIT: u64 = 1_000_000;

/// A lock-free token bucket for retries, shared by every clone of a retry stack.
///
/// Why a budget and not only a maximum number of attempts? A maximum bounds one call, not the
/// fleet: during an outage every call retries the maximum, and the struggling server receives
/// several times the traffic it was asked to carry. A budget bounds the *ratio* of retries to
/// requests across all calls, in the manner of gRPC retry throttling and the AWS retry quota:
///
/// - each original request deposits `ratio` tokens (0.2 by default),
/// - each retry withdraws one token, and is refused when less than one is left,
/// - the balance never exceeds `max_tokens` (10 by default) and never goes below zero.
///
/// So over `n` requests at most `max_tokens + ratio · n` retries are sent: during an outage the
/// stack sends at most about 1.2× the requests it was asked for.
///
/// [`TokenBudget`] implements tower's [`Budget`] trait, and the retry layer accepts any
/// `tower::retry::budget::Budget` (tower's `TpsBudget` included).
///
/// ```
/// use oai_resilience::retry::TokenBudget;
/// use tower::retry::budget::Budget;
///
/// let budget = TokenBudget::new(0.5, 1.0);
/// assert!(budget.withdraw()); // the initial reserve
/// assert!(!budget.withdraw());
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw()); // two requests earned one retry
/// ```
///
/// # Default
///
/// Ratio 0.2, at most 10 tokens, starting full.
pub struct TokenBudget {
    /// Balance in millionths of a token.
    balance: AtomicU64,
    deposit: u64,
    max: u64,
}

impl TokenBudget {
    /// A bucket that earns `ratio` tokens per request and holds at most `max_tokens`; it starts
    /// full. Negative, NaN or infinite inputs are treated as zero (or, for an infinite
    /// `max_tokens`, as a very large bucket).
    pub fn new(ratio: f64, max_tokens: f64) -> Self {
        let max = to_fixed(max_tokens);
        TokenBudget {
            balance: AtomicU64::new(max),
            deposit: to_fixed(ratio),
            max,
        }
    }

    /// A bucket that starts with `tokens` instead of full (clamped to the maximum).
    pub fn with_initial(self, tokens: f64) -> Self {
        self.balance
            .store(to_fixed(tokens).min(self.max), Ordering::Relaxed);
        self
    }

    /// The current balance, in tokens.
    pub fn balance(&self) -> f64 {
        self.balance.load(Ordering::Relaxed) as f64 / UNIT as f64
    }

    /// The maximum balance, in tokens.
    pub fn max_tokens(&self) -> f64 {
        self.max as f64 / UNIT as f64
    }

    /// Gives back one token that was withdrawn for a retry that was never sent (its call was
    /// dropped during the backoff). The balance never exceeds the maximum.
    pub fn refund(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_add(UNIT).min(self.max))
            });
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

impl Default for TokenBudget {
    fn default() -> Self {
        TokenBudget::new(0.2, 10.0)
    }
}

impl Budget for TokenBudget {
    fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < self.max).then(|| b.saturating_add(self.deposit).min(self.max))
            });
    }

    fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(UNIT))
            .is_ok()
    }
}

impl fmt::Debug for TokenBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBudget")
            .field("balance", &self.balance())
            .field("ratio", &(self.deposit as f64 / UNIT as f64))
            .field("max_tokens", &self.max_tokens())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refund_returns_one_token_up_to_the_maximum() {
        let b = TokenBudget::new(0.0, 2.0);
        assert!(b.withdraw());
        assert_eq!(b.balance(), 1.0);
        b.refund();
        assert_eq!(b.balance(), 2.0);
        b.refund();
        assert_eq!(b.balance(), 2.0, "never above the maximum");
    }

    #[test]
    fn outage_allows_reserve_plus_ratio() {
        let b = TokenBudget::default();
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            // Every request fails; each would like 4 retries.
            for _ in 0..4 {
                if b.withdraw() {
                    retries += 1;
                } else {
                    break;
                }
            }
        }
        // 10 reserve + 0.2 × 999: the first deposit finds the bucket full and is dropped.
        assert_eq!(retries, 209);
    }

    #[test]
    fn balance_is_capped() {
        let b = TokenBudget::new(1.0, 3.0).with_initial(0.0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.balance(), 3.0);
    }

    #[test]
    fn bad_inputs_are_zero() {
        let b = TokenBudget::new(f64::NAN, -1.0);
        assert!(!b.withdraw());
        b.deposit();
        assert_eq!(b.balance(), 0.0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deposit,
        Withdraw,
    }

    proptest! {
        #[test]
        fn balance_never_negative_nor_above_max(
            ratio in 0f64..3.0,
            max in 0f64..50.0,
            ops in proptest::collection::vec(prop_oneof![Just(Op::Deposit), Just(Op::Withdraw)], 0..500),
        ) {
            let b = TokenBudget::new(ratio, max);
            let mut deposits = 0u64;
            let mut granted = 0u64;
            for op in ops {
                let before = b.balance();
                match op {
                    Op::Deposit => { b.deposit(); deposits += 1; }
                    Op::Withdraw => {
                        let ok = b.withdraw();
                        prop_assert_eq!(ok, before >= 1.0);
                        if ok { granted += 1; }
                    }
                }
                prop_assert!(b.balance() >= 0.0);
                prop_assert!(b.balance() <= b.max_tokens());
            }
            // Never more retries than the reserve plus what the requests earned.
            prop_assert!(granted as f64 <= max + ratio * deposits as f64 + 1e-6);
        }
    }
}
