//! [`RetryConfig`]: every knob of the retry machinery, shared by the layer, the tower adapter
//! and [`call`](super::call).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::backoff::{Backoff, HintJitter, Jitter, RandomSource, SplitMix};
#[cfg(doc)]
use super::budget::Budget;
use super::budget::{RetryBudget, TokenBudget};
use super::policy::{OpenAiPolicy, Policy};
use crate::observe::{Observer, SharedObserver};

/// The default maximum number of attempts, counting the first: 5.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The default ceiling on a server hint: 120 s.
pub const DEFAULT_HINT_CEILING: Duration = Duration::from_secs(120);
/// The default overall deadline, attempts and delays included: 10 minutes.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// The cap on attempts of [`RetryConfig::for_duration`]: 1000, a bound that a backoff of
/// any sensible length never reaches within the duration, there only so that a zero delay
/// cannot loop without end.
pub const FOR_DURATION_MAX_ATTEMPTS: u32 = 1000;
/// The header that carries the retry count on each attempt, as the official SDKs send it.
pub const RETRY_COUNT_HEADER: HeaderName = HeaderName::from_static("x-stainless-retry-count");

/// A retry budget shared by the clones of a stack, behind an `Arc`.
pub type SharedBudget = Arc<dyn RetryBudget>;

/// The settings of a [`RetryConfig`], read back with [`RetryConfig::settings`] (they are
/// set with its builder methods of the same names).
///
/// ```
/// use oai_resilience::retry::RetryConfig;
///
/// let config = RetryConfig::new().max_attempts(3).no_deadline();
/// assert_eq!(config.settings().max_attempts, 3);
/// assert_eq!(config.settings().deadline, None);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RetrySettings {
    /// The maximum number of attempts, counting the first (at least 1).
    pub max_attempts: u32,
    /// The backoff between attempts.
    pub backoff: Backoff,
    /// The jitter added on top of server hints.
    pub hint_jitter: HintJitter,
    /// The ceiling on server hints.
    pub hint_ceiling: Duration,
    /// The overall deadline, if any.
    pub deadline: Option<Duration>,
    /// The retry budget, if any.
    pub budget: Option<SharedBudget>,
    /// The policy that decides per attempt.
    pub policy: Arc<dyn Policy>,
    /// The random source for jitter.
    pub random: Arc<dyn RandomSource>,
    /// The header that carries the retry count, if any.
    pub retry_count_header: Option<HeaderName>,
    /// The observer of attempts and decisions, if any ([`crate::observe`]).
    pub observer: Option<SharedObserver>,
}

impl RetrySettings {
    /// The `Debug` output of the settings under the struct name `name` (shared with
    /// [`RetryConfig`]'s).
    fn debug_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("hint_jitter", &self.hint_jitter)
            .field("hint_ceiling", &self.hint_ceiling)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget.is_some())
            .field("retry_count_header", &self.retry_count_header)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RetrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.debug_as("RetrySettings", f)
    }
}

/// Every knob of the retry machinery. Cheap to clone; clones share the budget, the random
/// source and the policy.
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::retry::{Jitter, RetryConfig};
///
/// let config = RetryConfig::new()
///     .max_attempts(6)
///     .base_delay(Duration::from_secs(1))
///     .max_delay(Duration::from_secs(60))
///     .jitter(Jitter::Equal)
///     .deadline(Duration::from_secs(90))
///     .seed(42);
/// assert_eq!(config.settings().max_attempts, 6);
/// ```
///
/// Each builder method sets the setting of its name; [`settings`](RetryConfig::settings)
/// reads them back.
///
/// # Default
///
/// | knob | default |
/// |---|---|
/// | policy | [`OpenAiPolicy::new()`] |
/// | maximum attempts | 5 ([`DEFAULT_MAX_ATTEMPTS`]) |
/// | backoff | base 500 ms, cap 20 s, full jitter ([`Backoff::default`]) |
/// | hint jitter | + up to max(10 %, 50 ms) ([`HintJitter::default`]) |
/// | hint ceiling | 120 s ([`DEFAULT_HINT_CEILING`]) |
/// | deadline | 10 min ([`DEFAULT_DEADLINE`]) |
/// | budget | a new [`TokenBudget::default`] (0.5 per success, 20 tokens, retries above 10) |
/// | random source | [`SplitMix::from_entropy`] |
/// | retry-count header | `x-stainless-retry-count` |
///
/// Each `RetryConfig::new()` makes its own budget; clone a config (or a layer) to share one.
#[derive(Clone)]
pub struct RetryConfig {
    inner: Arc<RetrySettings>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            inner: Arc::new(RetrySettings {
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                backoff: Backoff::default(),
                hint_jitter: HintJitter::default(),
                hint_ceiling: DEFAULT_HINT_CEILING,
                deadline: Some(DEFAULT_DEADLINE),
                budget: Some(Arc::new(TokenBudget::default())),
                policy: Arc::new(OpenAiPolicy::new()),
                random: Arc::new(SplitMix::from_entropy()),
                retry_count_header: Some(RETRY_COUNT_HEADER),
                observer: None,
            }),
        }
    }
}

impl RetryConfig {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries for at most `duration` and no other bound: the defaults (policy, backoff,
    /// hints, hint ceiling) with `duration` as the overall deadline, no retry budget, and
    /// [`FOR_DURATION_MAX_ATTEMPTS`] (1000) as the only cap on attempts.
    ///
    /// The call ends by `duration`: an attempt still in flight then is cut
    /// ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout)), and a delay that would end after
    /// it is not slept (the call stops with the last error at once,
    /// [`StopReason::Deadline`](crate::StopReason::Deadline)). What still stops it earlier is
    /// what can never succeed: an error the policy does not retry (a quota 429, a bad
    /// request, `x-should-retry: false`), a server hint above the ceiling, a body that cannot
    /// be replayed. Without a budget, every client of a failing server keeps retrying until
    /// its deadline; add one back with [`budget`](Self::budget) where many clients share a
    /// server.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oai_resilience::retry::{RetryConfig, FOR_DURATION_MAX_ATTEMPTS};
    ///
    /// let config = RetryConfig::for_duration(Duration::from_secs(10));
    /// assert_eq!(config.settings().deadline, Some(Duration::from_secs(10)));
    /// assert_eq!(config.settings().max_attempts, FOR_DURATION_MAX_ATTEMPTS);
    /// assert!(config.settings().budget.is_none());
    /// ```
    pub fn for_duration(duration: Duration) -> Self {
        RetryConfig::new()
            .deadline(duration)
            .max_attempts(FOR_DURATION_MAX_ATTEMPTS)
            .no_budget()
    }

    fn edit(mut self, f: impl FnOnce(&mut RetrySettings)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Sets the policy that decides per attempt.
    pub fn policy(self, policy: impl Policy) -> Self {
        self.edit(|i| i.policy = Arc::new(policy))
    }

    /// Sets the maximum number of attempts, counting the first (0 is treated as 1).
    pub fn max_attempts(self, n: u32) -> Self {
        self.edit(|i| i.max_attempts = n.max(1))
    }

    /// Sets the whole backoff.
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.edit(|i| i.backoff = backoff)
    }

    /// Sets the backoff's base delay.
    pub fn base_delay(self, base: Duration) -> Self {
        self.edit(|i| {
            i.backoff = Backoff::new(base, i.backoff.cap()).with_jitter(i.backoff.jitter())
        })
    }

    /// Sets the backoff's cap.
    pub fn max_delay(self, cap: Duration) -> Self {
        self.edit(|i| {
            i.backoff = Backoff::new(i.backoff.base(), cap).with_jitter(i.backoff.jitter())
        })
    }

    /// Sets the jitter mode of the backoff.
    pub fn jitter(self, jitter: Jitter) -> Self {
        self.edit(|i| i.backoff = i.backoff.with_jitter(jitter))
    }

    /// Sets the jitter added on top of server hints.
    pub fn hint_jitter(self, jitter: HintJitter) -> Self {
        self.edit(|i| i.hint_jitter = jitter)
    }

    /// Sets the ceiling on server hints: a longer hint ends the call at once
    /// ([`StopReason::HintTooLong`](crate::StopReason::HintTooLong)), with the hint in the error.
    pub fn hint_ceiling(self, ceiling: Duration) -> Self {
        self.edit(|i| i.hint_ceiling = ceiling)
    }

    /// Sets the overall deadline: attempts, readiness waits and delays included.
    pub fn deadline(self, deadline: Duration) -> Self {
        self.edit(|i| i.deadline = Some(deadline))
    }

    /// Removes the overall deadline.
    pub fn no_deadline(self) -> Self {
        self.edit(|i| i.deadline = None)
    }

    /// Sets the retry budget: a [`TokenBudget`], any tower [`Budget`] (such as tower's
    /// `TpsBudget`), or any other [`RetryBudget`].
    ///
    /// Clones of this config share the budget. To share one budget between configs (several
    /// stacks) and read its balance, pass a clone of a [`TokenBudget`] (clones share the
    /// balance) or of a `RedisRetryBudget`:
    ///
    /// ```
    /// use oai_resilience::retry::{RetryConfig, TokenBudget};
    ///
    /// let budget = TokenBudget::default();
    /// let a = RetryConfig::new().budget(budget.clone());
    /// let b = RetryConfig::new().max_attempts(3).budget(budget.clone());
    /// assert_eq!(budget.balance(), 20.0);
    /// # let _ = (a, b);
    /// ```
    pub fn budget(self, budget: impl RetryBudget) -> Self {
        let budget: SharedBudget = Arc::new(budget);
        self.edit(|i| i.budget = Some(budget))
    }

    /// Removes the retry budget: only the maximum attempts and the deadline limit retries.
    pub fn no_budget(self) -> Self {
        self.edit(|i| i.budget = None)
    }

    /// Sets the random source for jitter.
    pub fn random(self, random: impl RandomSource) -> Self {
        self.edit(|i| i.random = Arc::new(random))
    }

    /// Seeds a [`SplitMix`] random source: the schedule becomes deterministic.
    pub fn seed(self, seed: u64) -> Self {
        self.random(SplitMix::new(seed))
    }

    /// Sets the header that carries the retry count (`0` on the first attempt), or `None` to
    /// send none.
    pub fn retry_count_header(self, header: Option<HeaderName>) -> Self {
        self.edit(|i| i.retry_count_header = header)
    }

    /// Registers `observer`: it sees every attempt, retry and stop of the loops that use this
    /// config (the retry layer, [`call`](super::call), `#[openai_call]`). See
    /// [`crate::observe`].
    pub fn observer(self, observer: Arc<dyn Observer>) -> Self {
        self.edit(|i| i.observer = Some(observer))
    }

    /// Removes the observer.
    pub fn no_observer(self) -> Self {
        self.edit(|i| i.observer = None)
    }

    /// The settings, as the builder methods left them.
    pub fn settings(&self) -> &RetrySettings {
        &self.inner
    }
}

impl fmt::Debug for RetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.debug_as("RetryConfig", f)
    }
}
