//! [`FallbackPolicy`]: which errors move a call to the next route.

use crate::error::{Error, ErrorKind, StopReason};
use crate::overrides::Overrides;

/// Whether a route's error means "this route cannot serve the call soon, another may": the
/// default rule of [`FallbackPolicy`] (see the table in the [module docs](super)).
///
/// It moves on for an open circuit, an exhausted quota, a rate limit the route gave up on (a
/// server 429, or the pacer's wait beyond `max_wait`), a closed retry budget, and the
/// upstream failures the route's retries gave up on (5xx, connection failures, 408, 409); a
/// local timeout only for an idempotent request (a timed-out POST may have run, as the retry
/// policy assumes). Never for what fails the same everywhere or is this route's configuration
/// to fix: 400, local validation, 401, 403, 404, 413, 422, a missing or malformed key, a body
/// that cannot be replayed, a response that does not decode or whose body broke mid-read.
///
/// ```
/// use oai_resilience::fallback::moves_on;
/// use oai_resilience::{Error, ErrorKind};
///
/// assert!(moves_on(&Error::new(ErrorKind::CircuitOpen), false));
/// assert!(moves_on(&Error::new(ErrorKind::QuotaExceeded), false));
/// assert!(!moves_on(&Error::new(ErrorKind::InvalidRequest), false));
/// assert!(!moves_on(&Error::new(ErrorKind::Authentication), false));
/// assert!(!moves_on(&Error::new(ErrorKind::Timeout), false));
/// assert!(moves_on(&Error::new(ErrorKind::Timeout), true));
/// ```
pub fn moves_on(err: &Error, idempotent: bool) -> bool {
    if err
        .retry_context()
        .is_some_and(|r| r.stop == StopReason::Budget)
    {
        return true;
    }
    match err.kind() {
        ErrorKind::CircuitOpen
        | ErrorKind::QuotaExceeded
        | ErrorKind::RateLimited
        | ErrorKind::ServerError
        | ErrorKind::Connection
        | ErrorKind::RequestTimeout
        | ErrorKind::Conflict => true,
        ErrorKind::Timeout => idempotent,
        _ => false,
    }
}

/// Decides which route errors move a call to the next route.
///
/// In order: [`never_fall_back_if`](Self::never_fall_back_if) predicates keep the error,
/// [`fall_back_if`](Self::fall_back_if) predicates move on, then [`moves_on`] decides (with
/// [`fall_back_on_post_timeouts`](Self::fall_back_on_post_timeouts) for a timed-out POST).
///
/// # Default
///
/// [`moves_on`]; POST timeouts stay on their route; no extra predicates.
///
/// ```
/// use oai_resilience::fallback::FallbackPolicy;
/// use oai_resilience::{Error, ErrorKind};
///
/// // Also move on for a 404 (a deployment that lacks the model), never for a 409.
/// let policy = FallbackPolicy::new()
///     .fall_back_if(|e| e.kind() == ErrorKind::NotFound)
///     .never_fall_back_if(|e| e.kind() == ErrorKind::Conflict);
/// assert!(policy.should_fall_back(&Error::new(ErrorKind::NotFound), false));
/// assert!(!policy.should_fall_back(&Error::new(ErrorKind::Conflict), false));
/// assert!(policy.should_fall_back(&Error::new(ErrorKind::ServerError), false));
/// ```
#[derive(Clone, Default)]
pub struct FallbackPolicy {
    post_timeouts: bool,
    overrides: Overrides,
}

impl FallbackPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a local timeout of a non-idempotent request (POST) moves on: the request may
    /// have run on the route that timed out (billed, with side effects).
    pub fn fall_back_on_post_timeouts(mut self, yes: bool) -> Self {
        self.post_timeouts = yes;
        self
    }

    /// Also move on for errors for which `pred` holds.
    pub fn fall_back_if(mut self, pred: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.overrides.also(pred);
        self
    }

    /// Never move on for errors for which `pred` holds, whatever else says.
    pub fn never_fall_back_if(
        mut self,
        pred: impl Fn(&Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.overrides.never(pred);
        self
    }

    /// Whether `err`, a route's error for a request that is (or is not) idempotent, moves the
    /// call to the next route.
    pub fn should_fall_back(&self, err: &Error, idempotent: bool) -> bool {
        self.overrides
            .verdict(err)
            .unwrap_or_else(|| moves_on(err, idempotent || self.post_timeouts))
    }
}

crate::macros::debug_struct!(FallbackPolicy, |s| "FallbackPolicy" {
    "fall_back_on_post_timeouts": s.post_timeouts,
    "fall_back_if": s.overrides.counts().0,
    "never_fall_back_if": s.overrides.counts().1,
} finish);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Retrier, RetryConfig};

    #[test]
    fn each_kind_is_decided() {
        use ErrorKind::*;
        let moves = [
            CircuitOpen,
            QuotaExceeded,
            RateLimited,
            ServerError,
            Connection,
            RequestTimeout,
            Conflict,
        ];
        let stays = [
            InvalidRequest,
            Authentication,
            PermissionDenied,
            NotFound,
            Unprocessable,
            RequestTooLarge,
            OtherStatus,
            MissingApiKey,
            MalformedApiKey,
            InvalidParameter,
            NotReplayable,
            Internal,
            Decode,
            ResponseBody,
        ];
        for kind in moves {
            assert!(moves_on(&Error::new(kind), false), "{kind}");
        }
        for kind in stays {
            assert!(!moves_on(&Error::new(kind), true), "{kind}");
        }
        assert!(!moves_on(&Error::new(Timeout), false));
        assert!(moves_on(&Error::new(Timeout), true));
        assert!(FallbackPolicy::new()
            .fall_back_on_post_timeouts(true)
            .should_fall_back(&Error::new(Timeout), false));
    }

    #[test]
    fn a_closed_budget_moves_on_whatever_the_kind() {
        let retrier = Retrier::new(&RetryConfig::new(), false);
        let err = Error::new(ErrorKind::OtherStatus)
            .with_retry_context(retrier.context(StopReason::Budget));
        assert!(moves_on(&err, false));
        let err = Error::new(ErrorKind::OtherStatus)
            .with_retry_context(retrier.context(StopReason::MaxAttempts));
        assert!(!moves_on(&err, false));
    }
}
