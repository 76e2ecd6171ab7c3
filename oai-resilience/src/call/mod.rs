//! `#[openai_call]`: an `async fn` whose body is **one attempt** of an OpenAI call, run under
//! the same retry machinery as the retry layer, with errors that say which call failed, with
//! which arguments, after which attempts.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use oai_resilience::{openai_call, Error, ErrorKind, StopReason};
//!
//! #[derive(Debug, Default)]
//! struct Client {
//!     sent: AtomicU32,
//! }
//!
//! #[openai_call(max_attempts = 3, timeout = "60s", skip(api_key))]
//! async fn summarize(client: &Client, api_key: &str, text: &str) -> Result<String, Error> {
//!     // Builds and sends one request; here, a server that is always overloaded.
//!     let _ = (api_key, text);
//!     client.sent.fetch_add(1, Ordering::SeqCst);
//!     Err(Error::new(ErrorKind::ServerError).with_request_id("req_123"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let client = Client::default();
//! let err = summarize(&client, "sk-…", "a long text").await.unwrap_err();
//! assert_eq!(client.sent.load(Ordering::SeqCst), 3);
//!
//! // The facts, by accessor.
//! let call = err.call_context().unwrap();
//! assert_eq!(call.function, "rust_out::summarize");
//! assert_eq!(call.args[0], ("client".to_owned(), "Client { sent: 3 }".to_owned()));
//! assert_eq!(call.args[1], ("text".to_owned(), "\"a long text\"".to_owned()));
//! let retry = err.retry_context().unwrap();
//! assert_eq!((retry.attempts, retry.stop), (3, StopReason::MaxAttempts));
//! assert_eq!(retry.outcomes.len(), 3);
//! assert_eq!(err.request_id(), Some("req_123"));
//!
//! // One line for people.
//! assert!(err.to_string().starts_with(
//!     "server_error [request req_123] in rust_out::summarize after 3 attempts in"
//! ));
//! # }
//! ```
//!
//! # What the attribute does
//!
//! 1. **Checks, once, before the first attempt** (if asked): the API key with the function the
//!    auth layer decides with, [`check_key_for_host`](crate::auth::check_key_for_host), for
//!    the host the call targets (`base_url`, else `OPENAI_BASE_URL`'s, else OpenAI's), so the
//!    attribute and [`OpenAiLayer`](crate::stack::OpenAiLayer) accept the same keys for the
//!    same target (the key shape rules apply to OpenAI's hosts only, by default); and a body
//!    argument with the validation layer's rules
//!    ([`validate_value`](crate::validate::validate_value)). A failure returns at once with
//!    [`ErrorKind::MissingApiKey`](crate::ErrorKind::MissingApiKey),
//!    [`MalformedApiKey`](crate::ErrorKind::MalformedApiKey) or
//!    [`InvalidParameter`](crate::ErrorKind::InvalidParameter): the body runs zero times, and
//!    the error's [`RetryContext`] says 0 attempts.
//! 2. **Runs the body through [`retry::call_with`](crate::retry::call_with)**, the loop over the same
//!    [`Retrier`](crate::retry::Retrier) as the retry layer: the same
//!    [`OpenAiPolicy`](crate::retry::OpenAiPolicy) (rate limits and server errors retried,
//!    quota, bad requests and bad keys not; `x-should-retry` obeyed), the same backoff, server
//!    hints and hint ceiling, budget and deadline. The body is re-run on a retryable error.
//! 3. **Attaches the context** to the error that leaves the function: the retry loop attaches
//!    the [`RetryContext`] (attempts, elapsed time, each attempt's kind,
//!    status and chosen delay, why it stopped); the attribute adds the
//!    [`CallContext`] (the function's full path and its arguments). The
//!    request id of the last response stays on the error ([`Error::request_id`]).
//! 4. **Traces**: one `openai_call` span per call (field `function`, and `attempts` at the
//!    end), a `debug` event per attempt, the retry loop's `info` event per retry.
//!
//! # Options
//!
//! `retry`, `policy`, `max_attempts`, `base_delay`, `max_delay`, `timeout`, `idempotent`,
//! `skip(..)`, `skip_all`, `name`, `validate(..)`, `api_key`, `key_rules`, `base_url` and
//! `crate`: each is documented on the attribute, [`openai_call`](crate::openai_call), with an
//! example. The retry configuration is built **once per function**, at its first call, and
//! kept in a static: the calls of one function share its retry budget.
//!
//! # Arguments
//!
//! Every attempt borrows the arguments. An owned argument that the body moves (`send(body)`)
//! cannot be moved twice: clone it in the body (`send(body.clone())`), as the compiler's
//! error suggests. `&mut self` is not supported (a `&mut` borrow cannot be shared between
//! attempts): take `&self` and use interior mutability. Free functions, `&self` and `self`
//! methods, methods of trait impls, generic functions and `impl Trait` arguments and return
//! types work.
//!
//! The context records each argument that is not skipped and is a plain identifier, as its
//! `Debug` text, cut at 256 characters and with anything that looks like an API key replaced
//! by `[redacted]`; an argument whose name ends in `key`, `secret`, `password`, `token` or
//! `credentials` is recorded as `[redacted]` whatever its value. Arguments are formatted only
//! when an error leaves the function. Every recorded argument must implement `Debug`.
//!
//! # Errors inside the body
//!
//! The body returns the error of its one attempt; its kind decides whether the attempt is
//! run again, as in the retry layer:
//!
//! | what failed | turn it into | retried |
//! |---|---|---|
//! | a request through [`ClassifyLayer`](crate::ClassifyLayer) or the stack | the [`Error`] it returns, as it is | as the policy says (rate limits, 5xx, connection failures) |
//! | the connection, before a response (a client's own error) | [`Error::from_service_error`] | yes ([`ErrorKind::Connection`](crate::ErrorKind::Connection)) |
//! | reading the body of a response that arrived (`collect().await`) | [`Error::body`] | no: the server processed the request ([`ErrorKind::ResponseBody`](crate::ErrorKind::ResponseBody)) |
//! | decoding the body (`serde_json::from_slice`) | [`Error::decode`] | no: the same request gets the same answer ([`ErrorKind::Decode`](crate::ErrorKind::Decode)) |
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use oai_resilience::{openai_call, Error, ErrorKind};
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct Reply {
//!     # #[allow(dead_code)]
//!     id: String,
//! }
//!
//! #[openai_call(max_attempts = 3)]
//! async fn fetch(sent: &AtomicU32) -> Result<Reply, Error> {
//!     sent.fetch_add(1, Ordering::SeqCst);
//!     // The bytes the response carried; `Error::body` maps a failed read.
//!     let body: &[u8] = br#"{"object":"chat.completion"}"#;
//!     serde_json::from_slice(body).map_err(Error::decode)
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let sent = AtomicU32::new(0);
//! let err = fetch(&sent).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Decode);
//! assert_eq!(sent.load(Ordering::SeqCst), 1); // not re-sent
//! # }
//! ```
//!
//! # With the tower stack
//!
//! The attribute *is* the retry loop of the call, so the body should send its one request
//! through a stack without a second one: [`ClassifyLayer`](crate::ClassifyLayer) (so that
//! failures are typed [`Error`]s), plus pacing and auth as wanted, or an
//! [`OpenAiLayer`](crate::stack::OpenAiLayer) whose retry layer allows one attempt
//! (`RetryLayer::with_config(RetryConfig::new().max_attempts(1))`). Retries stacked on
//! retries multiply: 5 attempts over a stack that makes 5 is 25 requests per failure.
//!
//! # Error types
//!
//! The function returns `Result<T, E>` where `E` implements [`CallError`]: [`Error`] and
//! [`BoxError`] do, and so can a user's own error type (an application enum, a wrapper of
//! another client's error) in a few lines: see [`CallError`].
//!
//! # Compile-time errors
//!
//! A function that is not `async`, takes `&mut self`, or does not return a `Result`; an
//! unknown option (the message lists the accepted ones); an option given twice (pointing at
//! the second); `skip` or `validate` of an argument that does not exist; a bad duration or
//! endpoint literal. Each error points at the offending token, and the function is still
//! emitted unchanged so that the rest of the crate type-checks.

#[doc(hidden)]
pub mod runtime;

#[cfg(doc)]
use crate::error::RetryContext;
use crate::error::{BoxError, CallContext, Error};
use crate::retry::RetryableError;

/// The error types an `#[openai_call]` function may return: a [`RetryableError`] (the retry
/// layer's classification, so the attribute retries exactly what the layer retries) that can
/// also carry the call's [`CallContext`].
///
/// Implemented for [`Error`] and [`BoxError`]. A user error type implements
/// [`RetryableError`] and this one-method trait:
///
/// ```
/// use oai_resilience::call::CallError;
/// use oai_resilience::retry::RetryableError;
/// use oai_resilience::{openai_call, CallContext, Error, ErrorKind, RetryContext};
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
/// impl CallError for AppError {
///     fn attach_call_context(self, ctx: CallContext) -> Self {
///         match self {
///             AppError::Api(e) => AppError::Api(e.with_call_context(ctx)),
///             other => other,
///         }
///     }
/// }
///
/// #[openai_call(max_attempts = 2)]
/// async fn parse_reply(reply: &str) -> Result<u32, AppError> {
///     reply.trim().parse().map_err(|_| AppError::Parse(reply.to_owned()))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// assert_eq!(parse_reply(" 42 ").await.unwrap(), 42);
/// assert!(matches!(parse_reply("n/a").await, Err(AppError::Parse(r)) if r == "n/a"));
/// let _ = ErrorKind::ServerError;
/// # }
/// ```
pub trait CallError: RetryableError {
    /// Returns the error with the call's context attached (where it can hold one).
    fn attach_call_context(self, ctx: CallContext) -> Self;
}

impl CallError for Error {
    fn attach_call_context(self, ctx: CallContext) -> Self {
        self.with_call_context(ctx)
    }
}

impl CallError for BoxError {
    fn attach_call_context(self, ctx: CallContext) -> Self {
        match self.downcast::<Error>() {
            Ok(e) => Box::new(e.with_call_context(ctx)),
            Err(other) => other,
        }
    }
}
