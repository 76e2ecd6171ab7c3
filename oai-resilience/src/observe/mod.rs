//! Hooks on every attempt and every decision of the stack: the [`Observer`] trait.
//!
//! An observer is registered once and sees what the retry loop, the validation layer and the
//! auth layer decide, without writing a layer:
//!
//! - on the whole stack: [`OpenAiLayer::observer`](crate::OpenAiLayer::observer) (the
//!   adapters built from an [`OpenAiLayer`](crate::OpenAiLayer) get it too);
//! - on the retry layer alone: [`RetryLayer::observer`](crate::RetryLayer::observer) or
//!   [`RetryConfig::observer`](crate::RetryConfig::observer) (so `#[openai_call(retry = …)]`
//!   and [`retry::call`](crate::retry::call), which ride the same loop, get it too);
//! - on the local checks: [`ValidateLayer::observer`](crate::ValidateLayer::observer),
//!   [`AuthLayer::observer`](crate::AuthLayer::observer).
//!
//! Every method has an empty default body, so an observer implements only what it needs. The
//! methods are called synchronously on the task that drives the call: keep them short (count,
//! record, send on a channel). Without an observer (the default) the stack stores `None` and
//! pays one branch per hook: no allocation, no clock read.
//!
//! [`MetricsObserver`] (feature `metrics`) records the hooks through the `metrics` facade.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use oai_resilience::observe::{Observer, RetryScheduled};
//! use oai_resilience::retry::{call, RetryConfig};
//! use oai_resilience::{Error, ErrorKind};
//!
//! #[derive(Debug, Default)]
//! struct Retries(AtomicU32);
//!
//! impl Observer for Retries {
//!     fn retry_scheduled(&self, _event: &RetryScheduled<'_>) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let retries = Arc::new(Retries::default());
//! let config = RetryConfig::new().seed(7).observer(retries.clone());
//! let answer = call(&config, |attempt| async move {
//!     if attempt < 3 { Err(Error::new(ErrorKind::ServerError)) } else { Ok(42) }
//! })
//! .await
//! .unwrap();
//! assert_eq!((answer, retries.0.load(Ordering::Relaxed)), (42, 2));
//! # }
//! ```
//!
//! The pace layer reports its waits ([`Observer::pacing_wait`]:
//! [`PaceLayer::observer`](crate::pace::PaceLayer::observer), or the stack's observer), and
//! the usage layer ([`crate::usage`]) the tokens a response reports ([`Observer::tokens_used`],
//! through the pace layer that paced the call).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::error::{DelaySource, ErrorKind, StopReason};

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
mod metrics;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use self::metrics::{
    MetricsObserver, BUDGET_BALANCE, GAVE_UP, LOCAL_REJECTIONS, OPERATION_DURATION, PACING_WAIT,
    RATE_LIMITED, REQUEST_DURATION, RESEND_COUNT, RETRIES, TOKEN_USAGE,
};

/// An observer shared by the clones of a stack.
pub type SharedObserver = Arc<dyn Observer>;

/// Observer methods that do nothing by default: `$name(&self, event: &$event<'_>)`.
macro_rules! noop_hooks {
    ($($(#[$doc:meta])* $name:ident($event:ident);)*) => {
        $(
            $(#[$doc])*
            fn $name(&self, event: &$event<'_>) {
                let _ = event;
            }
        )*
    };
}

/// Receives the stack's events. Every method does nothing by default. See the [module
/// docs](self).
pub trait Observer: Send + Sync + 'static {
    noop_hooks! {
        /// An attempt is about to be sent (the first and each retry).
        attempt_started(AttemptStarted);
        /// An attempt ended, with a response or an error.
        attempt_finished(AttemptFinished);
        /// The retry loop will retry after a delay.
        retry_scheduled(RetryScheduled);
        /// A call ended with a success (after one attempt or several).
        call_succeeded(CallSucceeded);
        /// A call ended with an error: the retry loop stopped.
        call_given_up(CallGivenUp);
        /// An attempt answered 429: a rate limit (retried) or an exhausted quota (not retried).
        rate_limit_learned(RateLimitLearned);
        /// A local check refused the request before anything was sent (validation, API key).
        local_rejection(LocalRejection);
        /// An attempt waited for a pacing slot and got it (not called for an attempt that
        /// went out at once, nor for one that failed as paced locally: that one ends in
        /// [`attempt_finished`](Observer::attempt_finished) with its error).
        pacing_wait(PacingWait);
        /// A response reported the tokens it used (the `usage` object), read by the usage
        /// layer ([`crate::usage`]) as the body passed through.
        tokens_used(TokensUsed);
    }
}

impl fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Observer")
    }
}

/// The model a request names, as a request extension: the validation layer inserts it (when
/// an observer is registered on it) from the JSON body it already read, and the retry layer
/// reports it in its events. A stack without the validation layer can insert it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel(pub Arc<str>);

/// What a response tells an observer: its status and request id. The retry layer requires it
/// of the responses it retries (implemented for every `http::Response`).
pub trait ResponseMeta {
    /// The HTTP status, if the response has one.
    fn status(&self) -> Option<StatusCode>;
    /// The server's request id (`x-request-id`), if any.
    fn request_id(&self) -> Option<&str>;
}

impl<B> ResponseMeta for http::Response<B> {
    fn status(&self) -> Option<StatusCode> {
        Some(http::Response::status(self))
    }

    fn request_id(&self) -> Option<&str> {
        self.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
    }
}

/// [`Observer::attempt_started`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AttemptStarted<'a> {
    /// The attempt's number: 1 for the first.
    pub attempt: u32,
    /// The request's path (`/v1/chat/completions`); `None` from loops that do not see the
    /// request ([`retry::call`](crate::retry::call), `#[openai_call]`).
    pub route: Option<&'a str>,
    /// The model the request names ([`RequestModel`]), if known.
    pub model: Option<&'a str>,
}

/// [`Observer::attempt_finished`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AttemptFinished<'a> {
    /// The attempt's number: 1 for the first.
    pub attempt: u32,
    /// The HTTP status: the error's, or the response's where the loop sees an HTTP response
    /// (the retry layer); `None` for a failure without a response or a success of
    /// [`retry::call`](crate::retry::call).
    pub status: Option<StatusCode>,
    /// The error's kind; `None` for a success.
    pub error: Option<ErrorKind>,
    /// The server's request id, if known.
    pub request_id: Option<&'a str>,
    /// From the start of the attempt to its end. In [`OpenAiLayer`](crate::OpenAiLayer) the
    /// pacer sits inside the retry layer, so this includes the wait for a pacing slot.
    pub latency: Duration,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

/// [`Observer::retry_scheduled`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RetryScheduled<'a> {
    /// The attempt that failed (the retry will be `attempt + 1`).
    pub attempt: u32,
    /// The failure that is retried.
    pub cause: ErrorKind,
    /// The delay before the retry.
    pub delay: Duration,
    /// Where the delay came from: the backoff or which server hint.
    pub source: DelaySource,
    /// The retry budget's balance after it allowed this retry, when the budget reports one
    /// ([`RetryBudget::current_balance`](crate::retry::RetryBudget::current_balance)).
    pub budget_balance: Option<f64>,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

/// [`Observer::call_succeeded`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallSucceeded<'a> {
    /// Attempts sent, the successful one included.
    pub attempts: u32,
    /// From the start of the call to its end, delays included.
    pub elapsed: Duration,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

/// [`Observer::call_given_up`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallGivenUp<'a> {
    /// Attempts sent.
    pub attempts: u32,
    /// From the start of the call to its end, delays included.
    pub elapsed: Duration,
    /// Why the loop stopped.
    pub stop: StopReason,
    /// The kind of the error the call returns.
    pub error: ErrorKind,
    /// The last HTTP status, if the last attempt got a response.
    pub status: Option<StatusCode>,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

crate::macros::str_enum! {
    /// Which 429 an attempt received.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum RateLimitKind {
        /// A rate limit: retried after the server's hint or the backoff.
        RateLimit = "rate_limit",
        /// An exhausted quota (`insufficient_quota`): not retried.
        Quota = "quota",
    }
    /// `"rate_limit"` or `"quota"`, the value of the `kind` attribute of
    /// `oai_resilience.rate_limited`.
    fn as_str;
}

/// [`Observer::rate_limit_learned`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RateLimitLearned<'a> {
    /// The attempt that received the 429.
    pub attempt: u32,
    /// Rate limit or quota.
    pub kind: RateLimitKind,
    /// The server's hint (`retry-after-ms`, `retry-after`, …), if it gave one.
    pub retry_after: Option<Duration>,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

crate::macros::str_enum! {
    /// Which local check refused a request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum RejectionSource {
        /// The validation layer (or `#[openai_call(validate(..))]`): a rule, the body limit, an
        /// unknown route in strict mode.
        Validation = "validation",
        /// The auth layer: a missing or malformed API key.
        Key = "key",
    }
    /// `"validation"` or `"key"`, the value of the `kind` attribute of
    /// `oai_resilience.local_rejections`.
    fn as_str;
}

/// [`Observer::local_rejection`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LocalRejection<'a> {
    /// Which check refused it.
    pub source: RejectionSource,
    /// The error's kind (`invalid_parameter`, `request_too_large`, `missing_api_key`, …).
    pub error: ErrorKind,
    /// The request's path, if known.
    pub route: Option<&'a str>,
}

crate::macros::str_enum! {
    /// What held a call in the pacer: the binding limit at its last wait.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum PacingLimit {
        /// Other calls ahead of it in the key's queue (first come, first served).
        Queue = "queue",
        /// The cap on requests in flight of a key not known yet
        /// ([`PacerConfig::cold_window`](crate::pace::PacerConfig::cold_window)).
        ColdWindow = "cold_window",
        /// The pause after a 429.
        Pause = "pause",
        /// The request bucket (requests per minute).
        Requests = "requests",
        /// The token bucket (tokens per minute).
        Tokens = "tokens",
        /// The adaptive (AIMD) rate after unexplained 429s.
        Adaptive = "adaptive",
    }
    /// `"queue"`, `"cold_window"`, `"pause"`, `"requests"`, `"tokens"` or `"adaptive"`, the
    /// value of the `oai_resilience.pacing.limit` attribute of `oai_resilience.pacing.wait`.
    fn as_str;
}

/// [`Observer::pacing_wait`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PacingWait<'a> {
    /// How long the attempt waited for its slot.
    pub waited: Duration,
    /// What held it at its last wait.
    pub limit: PacingLimit,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

/// [`Observer::tokens_used`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TokensUsed<'a> {
    /// Input (prompt) tokens: `prompt_tokens` or `input_tokens`.
    pub input_tokens: u64,
    /// Output (completion) tokens: `completion_tokens` or `output_tokens`.
    pub output_tokens: u64,
    /// The pacer's estimate for the call (corrected by the learned ratio), when the call
    /// was paced by the in-process pacer.
    pub estimated: Option<u64>,
    /// The model the request names, if known.
    pub model: Option<&'a str>,
}

/// The stable snake-case name of a stop reason (the `oai_resilience.stop_reason` attribute).
pub fn stop_reason_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::NotRetryable => "not_retryable",
        StopReason::MaxAttempts => "max_attempts",
        StopReason::Deadline => "deadline",
        StopReason::Budget => "budget",
        StopReason::HintTooLong => "hint_too_long",
        StopReason::Policy => "policy",
        StopReason::NotReplayable => "not_replayable",
    }
}

/// The stable snake-case name of a delay source (the `oai_resilience.delay_source`
/// attribute).
pub fn delay_source_name(source: DelaySource) -> &'static str {
    match source {
        DelaySource::Backoff => "backoff",
        DelaySource::RetryAfterMs => "retry_after_ms",
        DelaySource::RetryAfter => "retry_after",
        DelaySource::RateLimitReset => "rate_limit_reset",
        DelaySource::Message => "message",
    }
}

/// The top-level `"model"` of a JSON body, if it has one (read only when an observer is
/// registered).
pub(crate) fn model_of(body: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Model<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Model<'_>>(body)
        .ok()?
        .model
        .map(|m| Arc::from(&*m))
}

/// Tells `observer`, if any, that a local check refused a request with `error`: key errors
/// come from the auth layer, the rest from validation.
pub(crate) fn reject(observer: Option<&dyn Observer>, error: ErrorKind, route: Option<&str>) {
    if let Some(observer) = observer {
        let source = match error {
            ErrorKind::MissingApiKey | ErrorKind::MalformedApiKey => RejectionSource::Key,
            _ => RejectionSource::Validation,
        };
        observer.local_rejection(&LocalRejection {
            source,
            error,
            route,
        });
    }
}
