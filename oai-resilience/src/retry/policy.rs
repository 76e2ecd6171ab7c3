//! Retry policies: the [`Policy`] trait, the default [`OpenAiPolicy`], the hint precedence.

use std::time::Duration;

use http::Method;

use crate::error::{DelaySource, Error, ErrorKind, StopReason};
use crate::overrides::Overrides;

/// What a [`Policy`] sees about one failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub(crate) number: u32,
    pub(crate) elapsed: Duration,
    pub(crate) error: &'a Error,
    pub(crate) idempotent: bool,
    pub(crate) backoff: Duration,
    pub(crate) hint: Option<ServerHint>,
}

impl<'a> Attempt<'a> {
    /// The attempt that just failed: 1 for the first.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Time since the first attempt started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The attempt's error.
    pub fn error(&self) -> &'a Error {
        self.error
    }

    /// Whether the request's method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    /// Closures run by [`call`](super::call) count as not idempotent; [`call_with`](super::call_with) says.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The configured backoff for this attempt, jitter already drawn.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The server's hint after precedence, with its jitter drawn, if the error carries one.
    pub fn hint(&self) -> Option<ServerHint> {
        self.hint
    }
}

/// A delay the server asked for: the raw value, the jittered delay to sleep, and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerHint {
    /// What the server said.
    pub raw: Duration,
    /// What to sleep: the raw value plus a small jitter (never less than `raw`).
    pub delay: Duration,
    /// Which header (or the message) it came from.
    pub source: DelaySource,
}

/// A policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Retry after `delay`; `source` says where the delay came from.
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// Where the delay came from.
        source: DelaySource,
    },
    /// Stop and return the error.
    Stop(StopReason),
}

impl Decision {
    /// Retry after the configured backoff.
    pub fn backoff(attempt: &Attempt<'_>) -> Self {
        Decision::Retry {
            delay: attempt.backoff,
            source: DelaySource::Backoff,
        }
    }

    /// Retry after the server's hint if there is one, else after the backoff.
    pub fn hint_or_backoff(attempt: &Attempt<'_>) -> Self {
        match attempt.hint {
            Some(h) => Decision::Retry {
                delay: h.delay,
                source: h.source,
            },
            None => Decision::backoff(attempt),
        }
    }

    /// Retry after exactly `delay` (recorded as backoff).
    pub fn after(delay: Duration) -> Self {
        Decision::Retry {
            delay,
            source: DelaySource::Backoff,
        }
    }

    /// Stop ([`StopReason::Policy`]).
    pub fn stop() -> Self {
        Decision::Stop(StopReason::Policy)
    }
}

/// Decides, per failed attempt, whether to retry and after how long.
///
/// A policy answers one question per failed attempt: retry after a delay, or stop. It sees an
/// [`Attempt`]: the attempt number, the elapsed time, the typed [`Error`], whether the request
/// is idempotent, and two ready-made delays, the jittered [`backoff`](Attempt::backoff) and
/// the jittered [`server hint`](Attempt::hint). The limits around it (maximum attempts, the
/// hint ceiling, the deadline, the budget, replayability) are enforced by the retry machinery
/// after the policy has spoken, so a custom policy cannot break them.
///
/// A custom policy is a few lines (closures `Fn(&Attempt) -> Decision` implement the trait too):
///
/// ```
/// use oai_resilience::retry::{Attempt, Decision, Policy, RetryConfig};
/// use oai_resilience::ErrorKind;
///
/// /// Retries only server errors, always after the backoff.
/// struct ServerErrorsOnly;
///
/// impl Policy for ServerErrorsOnly {
///     fn decide(&self, attempt: &Attempt<'_>) -> Decision {
///         if attempt.error().kind() == ErrorKind::ServerError {
///             Decision::backoff(attempt)
///         } else {
///             Decision::stop()
///         }
///     }
/// }
///
/// let config = RetryConfig::new().policy(ServerErrorsOnly);
/// # let _ = config;
/// ```
///
/// Adjusting the default is a builder call on [`OpenAiPolicy`]:
///
/// ```
/// use http::StatusCode;
/// use oai_resilience::retry::{OpenAiPolicy, RetryConfig};
///
/// // The default, but also retry 404 (say, a file that is still being indexed).
/// let policy = OpenAiPolicy::new().retry_if(|e| e.status() == Some(StatusCode::NOT_FOUND));
/// let config = RetryConfig::new().policy(policy);
/// # let _ = config;
/// ```
pub trait Policy: Send + Sync + 'static {
    /// Retry after a delay, or stop.
    fn decide(&self, attempt: &Attempt<'_>) -> Decision;
}

impl<F> Policy for F
where
    F: Fn(&Attempt<'_>) -> Decision + Send + Sync + 'static,
{
    fn decide(&self, attempt: &Attempt<'_>) -> Decision {
        self(attempt)
    }
}

/// The default policy, built on OpenAI's documented behaviour.
///
/// In order:
/// 1. a local error (missing key, failed validation, an open circuit, …) is never retried:
///    nothing was sent, and the same call fails the same way at once (an open circuit's
///    [`ErrorKind::CircuitOpen`] is therefore never a retry-budget withdrawal either);
/// 2. the server's `x-should-retry: true|false` wins over the status;
/// 3. [`never_retry_if`](Self::never_retry_if) predicates stop, [`retry_if`](Self::retry_if)
///    predicates retry;
/// 4. rate limits (transient 429), 408, 409, ≥ 500 and connection failures are retried;
///    local timeouts are retried for idempotent methods, and for POST only if
///    [`retry_post_timeouts`](Self::retry_post_timeouts) is set (a timed-out POST may have run);
///    400, 401, 403, 404, 422, quota exceeded and request too large are not.
///
/// A retry waits for the server's hint when there is one, else for the backoff.
///
/// # Default
///
/// POST timeouts are not retried; no extra predicates.
#[derive(Clone, Default)]
pub struct OpenAiPolicy {
    retry_post_timeouts: bool,
    overrides: Overrides,
}

impl OpenAiPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a local timeout of a non-idempotent request (POST) is retried.
    pub fn retry_post_timeouts(mut self, yes: bool) -> Self {
        self.retry_post_timeouts = yes;
        self
    }

    /// Also retry errors for which `pred` holds (unless the server said `x-should-retry: false`
    /// or the error is local).
    pub fn retry_if(mut self, pred: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.overrides.also(pred);
        self
    }

    /// Never retry errors for which `pred` holds, whatever else says.
    pub fn never_retry_if(mut self, pred: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.overrides.never(pred);
        self
    }

    /// Whether this policy would retry `err` for a request that is (or is not) idempotent.
    pub fn is_retryable(&self, err: &Error, idempotent: bool) -> bool {
        if err.kind().is_local() {
            return false;
        }
        if let Some(verdict) = err.should_retry() {
            return verdict && !self.overrides.refuses(err);
        }
        self.overrides
            .verdict(err)
            .unwrap_or_else(|| match err.kind() {
                ErrorKind::Timeout => idempotent || self.retry_post_timeouts,
                kind => kind.is_retryable(),
            })
    }
}

impl Policy for OpenAiPolicy {
    fn decide(&self, attempt: &Attempt<'_>) -> Decision {
        if self.is_retryable(attempt.error, attempt.idempotent) {
            Decision::hint_or_backoff(attempt)
        } else {
            Decision::Stop(StopReason::NotRetryable)
        }
    }
}

crate::macros::debug_struct!(OpenAiPolicy, |s| "OpenAiPolicy" {
    "retry_post_timeouts": s.retry_post_timeouts,
    "retry_if": s.overrides.counts().0,
    "never_retry_if": s.overrides.counts().1,
} finish);

/// Whether `method` is idempotent per RFC 9110 (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The server's raw retry hint for `err`, by precedence: `retry-after-ms`, then `retry-after`,
/// then (for a 429) `x-ratelimit-reset-*`, then the "try again in" message.
///
/// For the reset headers: the bucket the error's `type` names (`requests` / `tokens`), else
/// the longest reset among exhausted buckets (`remaining` 0), else the shortest reset present.
pub fn server_hint(err: &Error) -> Option<(Duration, DelaySource)> {
    let header = match (err.retry_after(), err.retry_after_source()) {
        (Some(d), Some(src @ (DelaySource::RetryAfterMs | DelaySource::RetryAfter))) => {
            return Some((d, src))
        }
        (Some(d), Some(src)) => Some((d, src)),
        _ => None,
    };
    let is_429 =
        err.status().map(|s| s.as_u16()) == Some(429) || err.kind() == ErrorKind::RateLimited;
    if is_429 {
        if let Some(d) = reset_hint(err) {
            return Some((d, DelaySource::RateLimitReset));
        }
    }
    header.filter(|(_, src)| *src != DelaySource::Backoff)
}

fn reset_hint(err: &Error) -> Option<Duration> {
    let rl = err.rate_limit()?;
    match err.error_type() {
        Some("requests") if rl.reset_requests.is_some() => return rl.reset_requests,
        Some("tokens") if rl.reset_tokens.is_some() => return rl.reset_tokens,
        _ => {}
    }
    let exhausted = [
        (rl.remaining_requests, rl.reset_requests),
        (rl.remaining_tokens, rl.reset_tokens),
    ]
    .into_iter()
    .filter_map(|(rem, reset)| (rem == Some(0)).then_some(reset).flatten())
    .max();
    exhausted.or(match (rl.reset_requests, rl.reset_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Error {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Error::from_response_parts(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes())
    }

    const RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

    #[test]
    fn default_policy_table() {
        let p = OpenAiPolicy::new();
        for (status, body, want) in [
            (400, "", false),
            (401, "", false),
            (403, "", false),
            (404, "", false),
            (408, "", true),
            (409, "", true),
            (413, "", false),
            (422, "", false),
            (429, RATE, true),
            (429, QUOTA, false),
            (500, "", true),
            (502, "", true),
            (503, "", true),
            (504, "", true),
        ] {
            let e = resp(status, &[], body);
            assert_eq!(p.is_retryable(&e, false), want, "{status} {body}");
        }
        assert!(p.is_retryable(&Error::new(ErrorKind::Connection), false));
        for local in [
            ErrorKind::MissingApiKey,
            ErrorKind::MalformedApiKey,
            ErrorKind::InvalidParameter,
            ErrorKind::NotReplayable,
            ErrorKind::Internal,
        ] {
            assert!(!p.is_retryable(&Error::new(local).with_should_retry(true), true));
        }
    }

    #[test]
    fn an_open_circuit_is_never_retried() {
        let open = Error::new(ErrorKind::CircuitOpen)
            .with_retry_after(Duration::from_secs(3), DelaySource::Backoff);
        let p = OpenAiPolicy::new().retry_if(|_| true);
        assert!(!p.is_retryable(&open, true));
        assert!(!p.is_retryable(&open.clone().with_should_retry(true), true));
        assert!(!open.is_retryable());
    }

    #[test]
    fn timeouts_depend_on_idempotency() {
        let t = Error::new(ErrorKind::Timeout);
        assert!(OpenAiPolicy::new().is_retryable(&t, true));
        assert!(!OpenAiPolicy::new().is_retryable(&t, false));
        assert!(OpenAiPolicy::new()
            .retry_post_timeouts(true)
            .is_retryable(&t, false));
    }

    #[test]
    fn should_retry_header_wins_both_ways() {
        let p = OpenAiPolicy::new();
        assert!(!p.is_retryable(&resp(503, &[("x-should-retry", "false")], ""), true));
        assert!(p.is_retryable(&resp(400, &[("x-should-retry", "true")], ""), true));
        assert!(p.is_retryable(&resp(429, &[("x-should-retry", "true")], QUOTA), true));
    }

    #[test]
    fn predicates_adjust_the_default() {
        let p = OpenAiPolicy::new()
            .retry_if(|e| e.status() == Some(StatusCode::NOT_FOUND))
            .never_retry_if(|e| e.status() == Some(StatusCode::BAD_GATEWAY));
        assert!(p.is_retryable(&resp(404, &[], ""), false));
        assert!(!p.is_retryable(&resp(502, &[], ""), false));
        assert!(!p.is_retryable(&resp(502, &[("x-should-retry", "true")], ""), false));
        assert!(!p.is_retryable(&resp(404, &[("x-should-retry", "false")], ""), false));
        assert!(p.is_retryable(&resp(503, &[], ""), false));
        assert!(format!("{p:?}").contains("retry_if: 1"));
    }

    #[test]
    fn hint_precedence() {
        let all = [
            ("retry-after-ms", "1500"),
            ("retry-after", "3"),
            ("x-ratelimit-reset-requests", "7s"),
            ("x-ratelimit-remaining-requests", "0"),
        ];
        let ms = Duration::from_millis;
        let e = resp(429, &all, RATE);
        assert_eq!(server_hint(&e), Some((ms(1500), DelaySource::RetryAfterMs)));
        let e = resp(429, &all[1..], RATE);
        assert_eq!(server_hint(&e), Some((ms(3000), DelaySource::RetryAfter)));
        let e = resp(429, &all[2..], RATE);
        assert_eq!(
            server_hint(&e),
            Some((ms(7000), DelaySource::RateLimitReset))
        );
        let e = resp(429, &[], RATE);
        assert_eq!(server_hint(&e), Some((ms(120), DelaySource::Message)));
        // Reset headers are a 429 thing only.
        let e = resp(503, &all[2..], "");
        assert_eq!(server_hint(&e), None);
        let e = resp(503, &all[1..], "");
        assert_eq!(server_hint(&e), Some((ms(3000), DelaySource::RetryAfter)));
    }

    #[test]
    fn reset_hint_picks_the_right_bucket() {
        let ms = Duration::from_millis;
        let tokens = r#"{"error":{"message":"Rate limit reached on tokens per min","type":"tokens","code":"rate_limit_exceeded"}}"#;
        let h = [
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-reset-tokens", "6s"),
        ];
        assert_eq!(server_hint(&resp(429, &h, tokens)).unwrap().0, ms(6000));
        assert_eq!(server_hint(&resp(429, &h, RATE)).unwrap().0, ms(2000));
        // No type: the exhausted bucket, else the shortest.
        let h2 = [
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-reset-tokens", "6s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-remaining-requests", "3"),
        ];
        assert_eq!(server_hint(&resp(429, &h2, "")).unwrap().0, ms(6000));
        assert_eq!(server_hint(&resp(429, &h, "")).unwrap().0, ms(2000));
    }

    #[test]
    fn closures_are_policies() {
        let p = |a: &Attempt<'_>| {
            if a.number() < 2 {
                Decision::after(Duration::from_secs(1))
            } else {
                Decision::stop()
            }
        };
        let e = Error::new(ErrorKind::ServerError);
        let mut a = Attempt {
            number: 1,
            elapsed: Duration::ZERO,
            error: &e,
            idempotent: false,
            backoff: Duration::ZERO,
            hint: None,
        };
        assert_eq!(p.decide(&a), Decision::after(Duration::from_secs(1)));
        a.number = 2;
        assert_eq!(p.decide(&a), Decision::Stop(StopReason::Policy));
    }
}
