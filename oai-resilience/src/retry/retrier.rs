//! The one retry loop of the project: [`Retrier`] (the decision core), [`RetryableError`] and
//! the [`call`] helper for closures.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode};
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::config::RetryConfig;
use super::policy::{server_hint, Attempt, Decision, ServerHint};
use super::span;
use crate::error::{
    AttemptOutcome, BoxError, DelaySource, Error, ErrorKind, RetryContext, StopReason,
};
use crate::observe::{
    AttemptFinished, AttemptStarted, CallGivenUp, CallSucceeded, Observer, RateLimitKind,
    RateLimitLearned, RequestModel, RetryScheduled,
};

/// The retry state of one call: counts attempts, asks the policy, enforces the limits, records
/// each outcome and builds the final [`RetryContext`].
///
/// Both the `Retry` service's response future and [`call`] drive one
/// `Retrier` per call; a caller that runs its own loop (the `#[openai_call]` macro) does the
/// same:
///
/// ```
/// use oai_resilience::retry::{Decision, Retrier, RetryConfig};
/// use oai_resilience::{Error, ErrorKind, StopReason};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let config = RetryConfig::new().seed(1);
/// let mut retrier = Retrier::new(&config, false);
/// let err = loop {
///     let attempt = retrier.start_attempt();
///     let result: Result<(), Error> = Err(ErrorKind::ServerError.into()); // one attempt
///     let err = match result { Ok(()) => unreachable!(), Err(e) => e };
///     match retrier.on_error(&err, true) {
///         Decision::Retry { delay, .. } => tokio::time::sleep(delay).await,
///         Decision::Stop(reason) => break retrier.finish(err, reason),
///         // `Decision` may grow: a loop that does not know an answer stops.
///         _ => break retrier.finish(err, StopReason::Policy),
///     }
///     assert!(attempt < 5);
/// };
/// assert_eq!(err.attempts(), 5);
/// assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
/// # }
/// ```
///
/// The `Retrier` reports to the config's [`RetryBudget`](super::RetryBudget): the call on [`Retrier::new`], each
/// retryable failure in [`Retrier::on_error`] (before it asks the budget whether to retry),
/// and each success in [`Retrier::on_success`], which a loop must call when an attempt
/// succeeds. If the `Retrier` is dropped after the budget allowed a retry but before that retry
/// starts ([`Retrier::start_attempt`]), say because the call was dropped during the backoff,
/// the budget's [`RetryBudget::refund`](super::RetryBudget::refund) is called.
#[derive(Debug)]
pub struct Retrier {
    config: RetryConfig,
    start: Instant,
    attempts: u32,
    idempotent: bool,
    previous_delay: Option<Duration>,
    refused_hint: Option<Duration>,
    outcomes: Vec<AttemptOutcome>,
    /// The budget allowed a retry that has not started yet.
    token_pending: bool,
    /// When the current attempt started: read only when an observer is registered.
    attempt_start: Option<Instant>,
    /// The model the request names, for observers ([`RequestModel`]) and the call span.
    model: Option<Arc<str>>,
    /// The `call` span (disabled when no subscriber wants it).
    call_span: Span,
    /// The current attempt's span, from its start to its end (else disabled).
    attempt_span: Span,
}

impl Clone for Retrier {
    /// A clone does not own the original's pending retry (only one of them may refund it).
    fn clone(&self) -> Self {
        Retrier {
            config: self.config.clone(),
            start: self.start,
            attempts: self.attempts,
            idempotent: self.idempotent,
            previous_delay: self.previous_delay,
            refused_hint: self.refused_hint,
            outcomes: self.outcomes.clone(),
            token_pending: false,
            attempt_start: self.attempt_start,
            model: self.model.clone(),
            call_span: self.call_span.clone(),
            attempt_span: self.attempt_span.clone(),
        }
    }
}

impl Drop for Retrier {
    fn drop(&mut self) {
        if self.token_pending {
            if let Some(b) = self.config.settings().budget.as_ref() {
                b.refund();
            }
        }
    }
}

impl Retrier {
    /// Starts a call now: the clock starts and the budget learns of the call
    /// ([`RetryBudget::on_request`](super::RetryBudget::on_request)).
    /// `idempotent` says whether the operation may be repeated safely after a timeout.
    pub fn new(config: &RetryConfig, idempotent: bool) -> Self {
        if let Some(b) = config.settings().budget.as_ref() {
            b.on_request();
        }
        Retrier {
            config: config.clone(),
            start: Instant::now(),
            attempts: 0,
            idempotent,
            previous_delay: None,
            refused_hint: None,
            outcomes: Vec::new(),
            token_pending: false,
            attempt_start: None,
            model: None,
            call_span: span::call_span(),
            attempt_span: Span::none(),
        }
    }

    /// The call's `call` span (see the [module docs](super#tracing-spans)).
    pub(crate) fn call_span(&self) -> &Span {
        &self.call_span
    }

    /// The current attempt's `attempt` span, a child of the call span; disabled between
    /// attempts.
    pub(crate) fn attempt_span(&self) -> &Span {
        &self.attempt_span
    }

    /// Whether anyone reads a response's status and request id: an observer or the spans.
    /// Loops skip reading them otherwise (the request id is a header lookup).
    pub(crate) fn wants_response_meta(&self) -> bool {
        self.config.settings().observer.is_some() || !self.call_span.is_disabled()
    }

    /// Ends the current attempt's span (it closes when its last handle is dropped).
    fn end_attempt_span(&mut self) {
        if !self.attempt_span.is_disabled() {
            self.attempt_span = Span::none();
        }
    }

    /// The config's observer, if any.
    fn observer(&self) -> Option<&dyn Observer> {
        self.config.settings().observer.as_deref()
    }

    /// Marks the start of the next attempt and returns its number (1 for the first).
    ///
    /// Tells the config's observer, if any ([`Observer::attempt_started`], without a route).
    pub fn start_attempt(&mut self) -> u32 {
        self.start(None)
    }

    /// [`start_attempt`](Self::start_attempt) for an attempt that sends `req`: the observer
    /// also learns the route (the path) and the model (the [`RequestModel`] extension).
    pub fn start_attempt_for<B>(&mut self, req: &Request<B>) -> u32 {
        if self.model.is_none() && self.wants_response_meta() {
            self.model = req.extensions().get::<RequestModel>().map(|m| m.0.clone());
        }
        let n = self.start(Some(req.uri().path()));
        span::record_request(
            &self.call_span,
            &self.attempt_span,
            req,
            n == 1,
            self.model.as_deref(),
        );
        n
    }

    fn start(&mut self, route: Option<&str>) -> u32 {
        self.token_pending = false;
        self.attempts += 1;
        self.attempt_span = span::attempt_span(&self.call_span, self.attempts);
        if let Some(observer) = self.config.settings().observer.as_deref() {
            self.attempt_start = Some(Instant::now());
            observer.attempt_started(&AttemptStarted {
                attempt: self.attempts,
                route,
                model: self.model.as_deref(),
            });
        }
        self.attempts
    }

    fn attempt_latency(&self) -> Duration {
        self.attempt_start.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time since the call started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The instant at which the overall deadline passes, if there is one.
    pub fn deadline_at(&self) -> Option<Instant> {
        self.config
            .settings()
            .deadline
            .and_then(|d| self.start.checked_add(d))
    }

    /// The value of the retry-count header for the current attempt (`"0"` on the first).
    pub fn retry_count_value(&self) -> HeaderValue {
        const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        let n = self.attempts.saturating_sub(1);
        match SMALL.get(n as usize) {
            Some(s) => HeaderValue::from_static(s),
            None => HeaderValue::from(n),
        }
    }

    /// Records a successful attempt: the budget's [`RetryBudget::on_success`](super::RetryBudget::on_success). Every retry
    /// loop calls it when an attempt succeeds, so that the budget sees the server recover.
    ///
    /// Tells the observer, if any, that the attempt and the call succeeded (without a status
    /// or request id: see [`on_success_with`](Self::on_success_with)).
    pub fn on_success(&mut self) {
        self.on_success_with(None, None);
    }

    /// [`on_success`](Self::on_success) for a loop that sees the response's status and
    /// request id, which the observer receives.
    pub fn on_success_with(&mut self, status: Option<StatusCode>, request_id: Option<&str>) {
        self.token_pending = false;
        if let Some(b) = self.config.settings().budget.as_ref() {
            b.on_success();
        }
        self.observe_attempt_end(status, None, request_id);
        self.end_attempt_span();
        span::record_call_end(&self.call_span, self.attempts.max(1), request_id, None);
        if let Some(observer) = self.observer() {
            observer.call_succeeded(&CallSucceeded {
                attempts: self.attempts.max(1),
                elapsed: self.elapsed(),
                model: self.model.as_deref(),
            });
        }
    }

    /// Tells the attempt span and the observer, if any ([`Observer::attempt_finished`]), how
    /// the current attempt ended.
    fn observe_attempt_end(
        &self,
        status: Option<StatusCode>,
        error: Option<ErrorKind>,
        request_id: Option<&str>,
    ) {
        span::record_attempt_end(&self.attempt_span, status, error, request_id);
        if let Some(observer) = self.observer() {
            observer.attempt_finished(&AttemptFinished {
                attempt: self.attempts.max(1),
                status,
                error,
                request_id,
                latency: self.attempt_latency(),
                model: self.model.as_deref(),
            });
        }
    }

    /// Tells the observer, if any, and the attempt span that the current attempt failed with
    /// `err`.
    fn observe_failure(&self, err: &Error) {
        self.observe_attempt_end(err.status(), Some(err.kind()), err.request_id());
        let Some(observer) = self.observer() else {
            return;
        };
        let attempt = self.attempts.max(1);
        let model = self.model.as_deref();
        let kind = match err.kind() {
            ErrorKind::RateLimited => RateLimitKind::RateLimit,
            ErrorKind::QuotaExceeded => RateLimitKind::Quota,
            _ => return,
        };
        observer.rate_limit_learned(&RateLimitLearned {
            attempt,
            kind,
            retry_after: err.retry_after(),
            model,
        });
    }

    /// Decides after a failed attempt: asks the policy; when the policy would retry, reports
    /// the failure to the budget ([`RetryBudget::on_failure`](super::RetryBudget::on_failure)) and enforces, in order, the
    /// maximum attempts, the hint ceiling, the deadline, replayability (`can_replay` says
    /// whether the request can be sent again) and the budget ([`RetryBudget::try_retry`](super::RetryBudget::try_retry), asked
    /// only when everything else allows the retry).
    ///
    /// Records the attempt's outcome and emits a `tracing` event for each retry.
    pub fn on_error(&mut self, err: &Error, can_replay: bool) -> Decision {
        let number = self.attempts.max(1);
        let elapsed = self.elapsed();
        self.observe_failure(err);
        let cfg = &self.config;
        let backoff = cfg.settings().backoff.delay(
            number,
            self.previous_delay,
            cfg.settings().random.next_unit(),
        );
        let hint = server_hint(err).map(|(raw, source)| ServerHint {
            raw,
            delay: cfg
                .settings()
                .hint_jitter
                .apply(raw, cfg.settings().random.next_unit()),
            source,
        });
        let attempt = Attempt {
            number,
            elapsed,
            error: err,
            idempotent: self.idempotent,
            backoff,
            hint,
        };
        let decision = match cfg.settings().policy.decide(&attempt) {
            Decision::Stop(r) => Decision::Stop(r),
            Decision::Retry { delay, source } => {
                if let Some(b) = cfg.settings().budget.as_ref() {
                    b.on_failure(err);
                }
                self.limit(number, elapsed, delay, source, hint, can_replay)
            }
        };
        let (delay, delay_source) = match decision {
            Decision::Retry { delay, source } => (Some(delay), Some(source)),
            Decision::Stop(_) => (None, None),
        };
        self.outcomes.push(AttemptOutcome {
            attempt: number,
            kind: err.kind(),
            status: err.status(),
            delay,
            delay_source,
        });
        match decision {
            Decision::Retry { delay, source } => {
                self.previous_delay = Some(delay);
                if let Some(observer) = self.config.settings().observer.as_deref() {
                    observer.retry_scheduled(&RetryScheduled {
                        attempt: number,
                        cause: err.kind(),
                        delay,
                        source,
                        budget_balance: self
                            .config
                            .settings()
                            .budget
                            .as_ref()
                            .and_then(|b| b.current_balance()),
                        model: self.model.as_deref(),
                    });
                }
                // In the attempt span: the retry's delay is an event of the failed attempt.
                let _in_attempt = self.attempt_span.enter();
                tracing::info!(
                    target: "oai_resilience::retry",
                    attempt = number,
                    status = err.status().map_or(0, |s| s.as_u16()),
                    kind = %err.kind(),
                    request_id = err.request_id().unwrap_or(""),
                    delay_ms = delay.as_millis() as u64,
                    delay_source = ?source,
                    "retrying"
                );
            }
            Decision::Stop(reason) => {
                let _in_attempt = self.attempt_span.enter();
                tracing::debug!(
                    target: "oai_resilience::retry",
                    attempt = number,
                    status = err.status().map_or(0, |s| s.as_u16()),
                    kind = %err.kind(),
                    request_id = err.request_id().unwrap_or(""),
                    stop = ?reason,
                    "not retrying"
                );
            }
        }
        self.end_attempt_span();
        decision
    }

    fn limit(
        &mut self,
        number: u32,
        elapsed: Duration,
        delay: Duration,
        source: DelaySource,
        hint: Option<ServerHint>,
        can_replay: bool,
    ) -> Decision {
        let cfg = &self.config;
        if number >= cfg.settings().max_attempts {
            return Decision::Stop(StopReason::MaxAttempts);
        }
        if source.is_server_hint() {
            let raw = hint.filter(|h| h.source == source).map_or(delay, |h| h.raw);
            if raw > cfg.settings().hint_ceiling {
                self.refused_hint = Some(raw);
                return Decision::Stop(StopReason::HintTooLong);
            }
        }
        if let Some(deadline) = cfg.settings().deadline {
            if elapsed.saturating_add(delay) >= deadline {
                return Decision::Stop(StopReason::Deadline);
            }
        }
        if !can_replay {
            return Decision::Stop(StopReason::NotReplayable);
        }
        if let Some(b) = cfg.settings().budget.as_ref() {
            if !b.try_retry() {
                return Decision::Stop(StopReason::Budget);
            }
            self.token_pending = true;
        }
        Decision::Retry { delay, source }
    }

    /// Records an attempt that failed with an error the retry machinery cannot classify (a
    /// [`RetryableError`] without an [`Error`] inside): it is not retried.
    pub fn on_unclassified(&mut self) -> Decision {
        self.observe_attempt_end(None, Some(ErrorKind::Internal), None);
        self.end_attempt_span();
        self.outcomes.push(AttemptOutcome {
            attempt: self.attempts.max(1),
            kind: ErrorKind::Internal,
            status: None,
            delay: None,
            delay_source: None,
        });
        Decision::Stop(StopReason::NotRetryable)
    }

    /// Records that the overall deadline passed while an attempt (or the wait for readiness)
    /// was in flight, and returns the [`ErrorKind::Timeout`] error to report, context attached.
    pub fn on_deadline(&mut self) -> Error {
        let deadline = self.config.settings().deadline.unwrap_or_default();
        let err = Error::new(ErrorKind::Timeout).with_detail(format!(
            "the overall deadline of {} passed during attempt {}",
            crate::error::fmt_secs(deadline),
            self.attempts.max(1)
        ));
        self.observe_failure(&err);
        self.end_attempt_span();
        self.outcomes.push(AttemptOutcome {
            attempt: self.attempts.max(1),
            kind: ErrorKind::Timeout,
            status: None,
            delay: None,
            delay_source: None,
        });
        self.finish(err, StopReason::Deadline)
    }

    /// What happened so far, for an error that stops for `stop`.
    pub fn context(&self, stop: StopReason) -> RetryContext {
        RetryContext {
            attempts: self.attempts.max(1),
            elapsed: self.elapsed(),
            stop,
            outcomes: self.outcomes.clone(),
            deadline: self.config.settings().deadline,
            refused_hint: self.refused_hint,
        }
    }

    /// The final error: `err` with the [`RetryContext`] attached. For
    /// [`StopReason::NotReplayable`] the result is an [`ErrorKind::NotReplayable`] error that
    /// keeps the attempt's status and request id, with `err` as its source.
    ///
    /// Tells the observer, if any, that the call gave up ([`Observer::call_given_up`]).
    pub fn finish(&self, err: Error, stop: StopReason) -> Error {
        self.observe_given_up(stop, err.kind(), err.status(), err.request_id());
        let ctx = self.context(stop);
        if stop == StopReason::NotReplayable {
            let mut wrapped = Error::new(ErrorKind::NotReplayable).with_detail(format!(
                "attempt {} failed ({}) and a retry was needed, but the request body cannot be replayed",
                ctx.attempts,
                err.kind()
            ));
            if let Some(s) = err.status() {
                wrapped = wrapped.with_status(s);
            }
            if let Some(id) = err.request_id() {
                wrapped = wrapped.with_request_id(id);
            }
            return wrapped.with_source(err).with_retry_context(ctx);
        }
        err.with_retry_context(ctx)
    }

    /// [`Retrier::finish`] for any [`RetryableError`].
    pub fn finish_as<E: RetryableError>(&self, err: E, stop: StopReason) -> E {
        if self.wants_response_meta() {
            let (kind, status, request_id) = err
                .classification()
                .map_or((ErrorKind::Internal, None, None), |e| {
                    (e.kind(), e.status(), e.request_id())
                });
            self.observe_given_up(stop, kind, status, request_id);
        }
        err.attach_retry_context(self.context(stop))
    }

    /// Tells the observer, if any, and the call span that the call gave up.
    fn observe_given_up(
        &self,
        stop: StopReason,
        error: ErrorKind,
        status: Option<StatusCode>,
        request_id: Option<&str>,
    ) {
        let error = if stop == StopReason::NotReplayable {
            ErrorKind::NotReplayable
        } else {
            error
        };
        span::record_call_end(
            &self.call_span,
            self.attempts.max(1),
            request_id,
            Some((error, stop)),
        );
        if let Some(observer) = self.observer() {
            observer.call_given_up(&CallGivenUp {
                attempts: self.attempts.max(1),
                elapsed: self.elapsed(),
                stop,
                error,
                status,
                model: self.model.as_deref(),
            });
        }
    }
}

/// An error type that the retry machinery can classify and annotate, so that [`call`] (and
/// the `#[openai_call]` macro) work with user error types.
///
/// Implemented for [`Error`] and for [`BoxError`] (classified when it holds an [`Error`]). A
/// user type that wraps an [`Error`] implements it in a few lines:
///
/// ```
/// use oai_resilience::retry::RetryableError;
/// use oai_resilience::{Error, RetryContext};
///
/// #[derive(Debug)]
/// enum AppError {
///     Api(Error),
///     Parse(String),
/// }
///
/// impl RetryableError for AppError {
///     fn classification(&self) -> Option<&Error> {
///         match self {
///             AppError::Api(e) => Some(e),
///             AppError::Parse(_) => None, // never retried
///         }
///     }
///     fn attach_retry_context(self, ctx: RetryContext) -> Self {
///         match self {
///             AppError::Api(e) => AppError::Api(e.with_retry_context(ctx)),
///             other => other,
///         }
///     }
///     fn from_error(err: Error) -> Self {
///         AppError::Api(err)
///     }
/// }
///
/// let e = AppError::from_error(Error::new(oai_resilience::ErrorKind::ServerError));
/// assert!(e.classification().is_some());
/// let parse = AppError::Parse("bad json".into());
/// assert!(parse.classification().is_none());
/// assert!(matches!(parse, AppError::Parse(m) if m == "bad json"));
/// ```
pub trait RetryableError: Sized {
    /// The typed error the policy classifies, or `None` for an error that must not be retried.
    fn classification(&self) -> Option<&Error>;

    /// Returns the error with the final [`RetryContext`] attached (where it can hold one).
    fn attach_retry_context(self, ctx: RetryContext) -> Self;

    /// Builds this error from an [`Error`] that the retry machinery raised itself (the overall
    /// deadline passing during an attempt).
    fn from_error(err: Error) -> Self;
}

impl RetryableError for Error {
    fn classification(&self) -> Option<&Error> {
        Some(self)
    }

    fn attach_retry_context(self, ctx: RetryContext) -> Self {
        self.with_retry_context(ctx)
    }

    fn from_error(err: Error) -> Self {
        err
    }
}

impl RetryableError for BoxError {
    fn classification(&self) -> Option<&Error> {
        self.downcast_ref::<Error>()
    }

    fn attach_retry_context(self, ctx: RetryContext) -> Self {
        match self.downcast::<Error>() {
            Ok(e) => Box::new(e.with_retry_context(ctx)),
            Err(other) => other,
        }
    }

    fn from_error(err: Error) -> Self {
        Box::new(err)
    }
}

/// Runs `op` as one attempt, again and again, under `config`'s policy, backoff, budget and
/// deadline: the same loop as the retry layer, for closures.
///
/// `op` receives the attempt number (1 for the first; the official SDKs' retry count is
/// `attempt - 1`). The operation counts as not idempotent (like a POST), so local timeouts are
/// retried only if the policy retries POST timeouts. The overall deadline also cuts an attempt
/// in flight (it is dropped, and the error is [`ErrorKind::Timeout`] with
/// [`StopReason::Deadline`]).
///
/// # Errors
///
/// The last attempt's error, with the [`RetryContext`] attached through
/// [`RetryableError::attach_retry_context`].
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use oai_resilience::retry::{call, RetryConfig};
/// use oai_resilience::{Error, ErrorKind};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let config = RetryConfig::new().seed(7);
/// let calls = AtomicU32::new(0);
/// let answer = call(&config, |attempt| {
///     calls.fetch_add(1, Ordering::Relaxed);
///     async move {
///         if attempt < 3 { Err(Error::new(ErrorKind::ServerError)) } else { Ok(42) }
///     }
/// })
/// .await
/// .unwrap();
/// assert_eq!((answer, calls.load(Ordering::Relaxed)), (42, 3));
/// # }
/// ```
pub async fn call<T, E, F, Fut>(config: &RetryConfig, op: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: RetryableError,
{
    call_with(config, false, op).await
}

/// [`call`] for an operation that says whether it is idempotent (safe to repeat after a
/// timeout, like a GET): `idempotent` is what [`Attempt::is_idempotent`] reports to the policy.
///
/// # Errors
///
/// As [`call`].
pub async fn call_with<T, E, F, Fut>(
    config: &RetryConfig,
    idempotent: bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: RetryableError,
{
    let mut retrier = Retrier::new(config, idempotent);
    let call_span = retrier.call_span().clone();
    async move {
        loop {
            let attempt = retrier.start_attempt();
            let fut = op(attempt).instrument(retrier.attempt_span().clone());
            let result = match retrier.deadline_at() {
                Some(at) => match tokio::time::timeout_at(at, fut).await {
                    Ok(r) => r,
                    Err(_) => return Err(E::from_error(retrier.on_deadline())),
                },
                None => fut.await,
            };
            let err = match result {
                Ok(v) => {
                    retrier.on_success();
                    return Ok(v);
                }
                Err(e) => e,
            };
            let decision = match err.classification() {
                Some(e) => retrier.on_error(e, true),
                None => retrier.on_unclassified(),
            };
            match decision {
                Decision::Retry { delay, .. } => tokio::time::sleep(delay).await,
                Decision::Stop(reason) => return Err(retrier.finish_as(err, reason)),
            }
        }
    }
    .instrument(call_span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Jitter, TokenBudget};
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = ErrorKind> {
        prop_oneof![
            Just(ErrorKind::ServerError),
            Just(ErrorKind::RateLimited),
            Just(ErrorKind::Connection),
            Just(ErrorKind::Timeout),
            Just(ErrorKind::QuotaExceeded),
            Just(ErrorKind::InvalidRequest),
        ]
    }

    proptest! {
        #[test]
        fn attempts_never_exceed_the_maximum(
            max in 0u32..12,
            seed in any::<u64>(),
            kinds in proptest::collection::vec(kind_strategy(), 1..40),
            hint_ms in proptest::option::of(0u64..300_000),
        ) {
            let config = RetryConfig::new()
                .max_attempts(max)
                .seed(seed)
                .jitter(Jitter::Decorrelated)
                .no_deadline()
                .budget(TokenBudget::new(0.2, 1000.0));
            let mut r = Retrier::new(&config, true);
            let mut kinds = kinds.into_iter().cycle();
            // Bounded: the retrier must stop long before 1000 rounds.
            for _ in 0..1000 {
                let n = r.start_attempt();
                prop_assert!(n <= max.max(1));
                let mut err = Error::new(kinds.next().unwrap());
                if let Some(ms) = hint_ms {
                    err = err.with_retry_after(Duration::from_millis(ms), DelaySource::RetryAfterMs);
                }
                match r.on_error(&err, true) {
                    Decision::Retry { delay, source } => {
                        if source.is_server_hint() {
                            prop_assert!(delay >= Duration::from_millis(hint_ms.unwrap()));
                        } else {
                            prop_assert!(delay <= config.settings().backoff.cap());
                        }
                    }
                    Decision::Stop(reason) => {
                        let e = r.finish(err, reason);
                        let ctx = e.retry_context().unwrap();
                        prop_assert!(ctx.attempts <= max.max(1));
                        prop_assert_eq!(ctx.outcomes.len() as u32, ctx.attempts);
                        return Ok(());
                    }
                }
            }
            prop_assert!(false, "the retrier never stopped");
        }
    }

    #[test]
    fn limits_in_order() {
        let e503 = Error::new(ErrorKind::ServerError);
        // Not replayable: only when a retry would happen.
        let config = RetryConfig::new().seed(1);
        let mut r = Retrier::new(&config, false);
        r.start_attempt();
        assert_eq!(
            r.on_error(&Error::new(ErrorKind::InvalidRequest), false),
            Decision::Stop(StopReason::NotRetryable)
        );
        let mut r = Retrier::new(&config, false);
        r.start_attempt();
        assert_eq!(
            r.on_error(&e503, false),
            Decision::Stop(StopReason::NotReplayable)
        );
        let err = r.finish(
            e503.clone().with_request_id("req_9"),
            StopReason::NotReplayable,
        );
        assert_eq!(err.kind(), ErrorKind::NotReplayable);
        assert_eq!(err.request_id(), Some("req_9"));
        assert!(std::error::Error::source(&err).is_some());
        // Budget: empty bucket stops.
        let config = RetryConfig::new().budget(TokenBudget::new(0.0, 0.0));
        let mut r = Retrier::new(&config, false);
        r.start_attempt();
        assert_eq!(r.on_error(&e503, true), Decision::Stop(StopReason::Budget));
        // Hint above the ceiling.
        let config = RetryConfig::new().hint_ceiling(Duration::from_secs(10));
        let mut r = Retrier::new(&config, false);
        r.start_attempt();
        let long = e503
            .clone()
            .with_retry_after(Duration::from_secs(11), DelaySource::RetryAfter);
        assert_eq!(
            r.on_error(&long, true),
            Decision::Stop(StopReason::HintTooLong)
        );
        let ctx = r.context(StopReason::HintTooLong);
        assert_eq!(ctx.refused_hint, Some(Duration::from_secs(11)));
        // Unclassified errors stop.
        let mut r = Retrier::new(&config, false);
        r.start_attempt();
        assert_eq!(
            r.on_unclassified(),
            Decision::Stop(StopReason::NotRetryable)
        );
        assert_eq!(
            r.context(StopReason::NotRetryable).outcomes[0].kind,
            ErrorKind::Internal
        );
    }

    #[test]
    fn retry_count_header_values() {
        let config = RetryConfig::new();
        let mut r = Retrier::new(&config, false);
        r.start_attempt();
        assert_eq!(r.retry_count_value(), "0");
        for _ in 0..11 {
            r.start_attempt();
        }
        assert_eq!(r.retry_count_value(), "11");
    }

    #[test]
    fn boxed_errors_are_classified() {
        let boxed: BoxError = Box::new(Error::new(ErrorKind::ServerError));
        assert_eq!(
            boxed.classification().unwrap().kind(),
            ErrorKind::ServerError
        );
        let ctx = Retrier::new(&RetryConfig::new(), false).context(StopReason::MaxAttempts);
        let back = boxed.attach_retry_context(ctx);
        assert!(back
            .downcast_ref::<Error>()
            .unwrap()
            .retry_context()
            .is_some());
        let io: BoxError = Box::new(std::io::Error::other("x"));
        assert!(io.classification().is_none());
    }
}
