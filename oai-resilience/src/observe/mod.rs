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
        /// Other calls ahead of it in the key's queue: first come, first served within a lane, higher
        /// [lanes](crate::pace::Priority) first.
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

/// The top-level `"model"` of a JSON body, if it has one (read only when an observer or the
/// spans want it).
///
/// One forward pass over the bytes that stops at the model's value: the top-level keys are
/// read, every other value is skipped by counting brackets outside strings, and nothing is
/// allocated but the name. A body that is not a JSON object, or a model that is not a plain
/// string, gives `None` (escaped names are read through `serde_json`). Validation has already
/// judged the body; this only labels metrics and spans.
pub(crate) fn model_of(body: &[u8]) -> Option<Arc<str>> {
    let mut s = Scan { b: body, i: 0 };
    s.ws();
    s.eat(b'{')?;
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if key == b"model" {
            let start = s.i;
            let raw = s.string()?;
            if raw.contains(&b'\\') {
                let text: String = serde_json::from_slice(&body[start..s.i]).ok()?;
                return Some(Arc::from(text));
            }
            return std::str::from_utf8(raw).ok().map(Arc::from);
        }
        s.skip_value()?;
        s.ws();
        match s.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// A cursor over a JSON body for [`model_of`]; every step is bounds-checked and `None` ends
/// the scan.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// A string's raw bytes between its quotes (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i - 1]),
                b'\\' => {
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// Skips one value: a string, or anything up to the `,` or `}` that closes it at its
    /// own depth.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.string()?;
                    if depth == 0 {
                        return Some(());
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Some(()),
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                b',' if depth == 0 => return Some(()),
                _ => {}
            }
            self.i += 1;
        }
    }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::model_of;

    /// What `serde_json` reads as the top-level model (the reference for well-formed bodies).
    fn reference(body: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        v.get("model")?.as_str().map(str::to_owned)
    }

    #[test]
    fn the_model_is_found_wherever_it_is_among_the_top_level_keys() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#,
            br#"{"messages":[{"role":"user","content":"a \"model\": \"x\", {[}]"}],"model":"gpt-4o"}"#,
            br#" { "n" : 2 , "stop" : ["}", "]"], "meta": {"model": "inner"}, "model" : "o3" } "#,
            br#"{"x":[1,[2,{"model":"deep"}]],"y":null,"z":true,"w":-1.5e3,"model":"m"}"#,
            br#"{"model":"gpt-\u00e9\"q"}"#,
            br#"{"model":"gpt-4o","model":"second"}"#,
        ];
        let want = [
            "gpt-4o-mini",
            "gpt-4o",
            "o3",
            "m",
            "gpt-\u{e9}\"q",
            "gpt-4o",
        ];
        for (body, want) in bodies.iter().zip(want) {
            assert_eq!(
                model_of(body).as_deref(),
                Some(want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bodies_without_a_plain_string_model_give_none_and_never_panic() {
        let bodies: &[&[u8]] = &[
            b"",
            b"garbage",
            b"[\"model\",\"x\"]",
            br#"{"model":5}"#,
            br#"{"model":null}"#,
            br#"{"model":["gpt-4o"]}"#,
            br#"{"messages":[{"model":"inner"}]}"#,
            br#"{"model":"unterminated"#,
            br#"{"model""#,
            br#"{"a":"\"#,
            br#"{"a":[1,2"#,
            br#"{"a":1 "model":"x"}"#,
            b"{\"model\":\"\xff\xfe\"}",
            br#"{"model":"bad \u12"}"#,
        ];
        for body in bodies {
            assert_eq!(model_of(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    proptest! {
        /// On any JSON object the scan agrees with `serde_json` (keys unique, as serde_json's
        /// map keeps the last of a repeated key).
        #[test]
        fn the_scan_agrees_with_serde_json(
            fields in proptest::collection::btree_map("[a-z\"\\\\{}]{0,6}", prop_oneof![
                Just(serde_json::json!(null)),
                "[ -~]{0,12}".prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                proptest::collection::vec("[ -~]{0,6}", 0..4).prop_map(|v| serde_json::json!(v)),
                ("[ -~]{0,6}", "[ -~]{0,6}").prop_map(|(k, v)| serde_json::json!({ k: [v] })),
            ], 0..6),
            model in proptest::option::of("[ -~\u{e9}]{0,12}"),
            pretty in any::<bool>(),
        ) {
            let mut map: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
            if let Some(m) = &model {
                map.insert("model".into(), m.clone().into());
            }
            let value = serde_json::Value::Object(map);
            let body = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            prop_assert_eq!(model_of(&body).map(|m| m.to_string()), reference(&body));
        }
    }
}
