//! The error model: one typed, matchable [`Error`] for everything the stack reports.
//!
//! Every layer of this crate fails with [`Error`]. Its [`ErrorKind`] tells the cases of
//! OpenAI's troubleshooting guide apart (an invalid request, a bad key, a transient rate
//! limit, an exhausted quota, a server error, …) and its accessors expose the facts that a
//! person or a policy needs: the HTTP status, OpenAI's error object, the request id, the
//! server's retry hint, the rate-limit snapshot and, for errors that went through retries, the
//! attempts made.
//!
//! ```
//! use oai_resilience::{Error, ErrorKind};
//!
//! let body = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
//! let err = Error::from_response_parts(http::StatusCode::TOO_MANY_REQUESTS, &http::HeaderMap::new(), body);
//! assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
//! assert!(!err.is_retryable());
//! assert!(err.hint().contains("retrying will not help"));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

pub use crate::cause::{AuthCause, DelaySource};
use crate::parse::{self, ApiError, RateLimitSnapshot};
use crate::redact::{redact_secrets, redact_string};

/// A type-erased error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in the terms of OpenAI's troubleshooting guide.
///
/// The kind decides retryability: see [`ErrorKind::is_retryable`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: the request is malformed, often a missing or invalid parameter.
    InvalidRequest,
    /// 401: no valid API key was sent.
    Authentication,
    /// 403: the key is valid but lacks permission (or the region is not supported).
    PermissionDenied,
    /// 404: the model or resource does not exist, or the key cannot see it.
    NotFound,
    /// 408: the server timed out waiting for the request.
    RequestTimeout,
    /// 409: a conflict, such as a lock timeout.
    Conflict,
    /// 422: the request was well-formed but could not be processed.
    Unprocessable,
    /// 429 `rate_limit_exceeded` / `slow_down`: transient, retry after the hint.
    RateLimited,
    /// 429 `insufficient_quota` and the other billing codes: permanent until billing changes.
    QuotaExceeded,
    /// 413, or a 429 whose single request exceeds the tokens-per-minute limit.
    RequestTooLarge,
    /// 500 and above: a server-side failure.
    ServerError,
    /// The connection failed before a response arrived (refused, reset, DNS, TLS).
    Connection,
    /// The call or an attempt timed out locally.
    Timeout,
    /// Any other non-success status.
    OtherStatus,
    /// No API key was configured or found (local check, nothing sent).
    MissingApiKey,
    /// The API key is malformed (local check, nothing sent).
    MalformedApiKey,
    /// The request body failed local validation (nothing sent).
    InvalidParameter,
    /// A retry was needed but the request body cannot be replayed.
    NotReplayable,
    /// A local component failed in a way that is none of the above (a key provider, a store).
    Internal,
    /// A response arrived but its body is not what the caller expected: JSON that does not
    /// decode into the caller's type ([`Error::decode`]). Not retryable: the server answered,
    /// and the same request gets the same answer.
    Decode,
    /// A response arrived but reading its body failed ([`Error::body`]). Not retryable: the
    /// server received and processed the request (a POST that generated tokens is billed), so
    /// sending it again is the caller's decision, as it is for the stack, which returns once
    /// the response's head arrives.
    ResponseBody,
    /// The circuit breaker of this upstream and key is open
    /// ([`CircuitBreaker`](crate::breaker::CircuitBreaker)): the upstream failed again and
    /// again, so the call was refused locally and nothing was sent. [`Error::retry_after`] is
    /// the time left until the breaker lets a probe through. Not retryable, and not a
    /// retry-budget withdrawal: retrying into an open circuit fails the same way at once.
    CircuitOpen,
}

impl ErrorKind {
    /// Maps a non-success HTTP status (and, for 429, OpenAI's error object) to a kind.
    pub fn from_status(status: StatusCode, api: Option<&ApiError>) -> Self {
        match status.as_u16() {
            400 => ErrorKind::InvalidRequest,
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 => ErrorKind::RequestTimeout,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::RequestTooLarge,
            422 => ErrorKind::Unprocessable,
            429 => match api {
                Some(api) if api.is_quota() => ErrorKind::QuotaExceeded,
                Some(api) if api.is_request_too_large() => ErrorKind::RequestTooLarge,
                _ => ErrorKind::RateLimited,
            },
            s if s >= 500 => ErrorKind::ServerError,
            _ => ErrorKind::OtherStatus,
        }
    }

    /// Whether a retry of the same request can succeed, by kind alone.
    ///
    /// Rate limits, 408, 409, server errors, connection failures and timeouts are retryable;
    /// everything the caller must change first (the request, the key, the billing) is not.
    /// [`Error::is_retryable`] also reads the server's `x-should-retry` verdict.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::RequestTimeout
                | ErrorKind::Conflict
                | ErrorKind::ServerError
                | ErrorKind::Connection
                | ErrorKind::Timeout
        )
    }

    /// Whether the error was raised locally, before anything was sent.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            ErrorKind::MissingApiKey
                | ErrorKind::MalformedApiKey
                | ErrorKind::InvalidParameter
                | ErrorKind::NotReplayable
                | ErrorKind::Internal
                | ErrorKind::CircuitOpen
        )
    }

    /// A short, stable, lower-case name: `rate_limited`, `quota_exceeded`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unprocessable => "unprocessable",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OtherStatus => "other_status",
            ErrorKind::MissingApiKey => "missing_api_key",
            ErrorKind::MalformedApiKey => "malformed_api_key",
            ErrorKind::InvalidParameter => "invalid_parameter",
            ErrorKind::NotReplayable => "not_replayable",
            ErrorKind::Internal => "internal",
            ErrorKind::Decode => "decode",
            ErrorKind::ResponseBody => "response_body",
            ErrorKind::CircuitOpen => "circuit_open",
        }
    }
}

crate::macros::display_as_str!(ErrorKind);

/// One local validation failure: the parameter's OpenAI-style path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// The parameter's path, as OpenAI writes it: `messages[1].content`, `temperature`.
    pub param: String,
    /// What is wrong, in the API's manner: "Invalid type for 'temperature': expected a number".
    pub message: String,
}

impl Violation {
    /// A violation of `param`. Anything in the path or the message that looks like an API key
    /// (a key pasted into a body field, or used as an object key) is redacted, because both
    /// reach `Display`.
    ///
    /// ```
    /// use oai_resilience::Violation;
    ///
    /// let v = Violation::new("input", "Invalid value: 'sk-proj-abcdefgh12345678'.");
    /// assert_eq!(v.to_string(), "input: Invalid value: '[redacted]'.");
    /// ```
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            param: redact_string(param.into()),
            message: redact_string(message.into()),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

/// The outcome of one attempt, as recorded by the retry machinery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptOutcome {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The kind of error that attempt ended with.
    pub kind: ErrorKind,
    /// The status, if a response arrived.
    pub status: Option<StatusCode>,
    /// The delay chosen before the next attempt, if there was one.
    pub delay: Option<Duration>,
    /// Where that delay came from.
    pub delay_source: Option<DelaySource>,
}

/// Why the retry machinery stopped.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The error cannot succeed on retry (quota, bad request, bad key, …).
    NotRetryable,
    /// The maximum number of attempts was reached.
    MaxAttempts,
    /// The overall deadline: it passed while an attempt (or a wait) was in flight, or the
    /// next delay would cross it. `Display` says which (the [`RetryContext`]'s `elapsed` has
    /// reached its `deadline` in the first case).
    Deadline,
    /// The retry budget shared by the stack's clones was exhausted.
    Budget,
    /// The server's hint was longer than the configured ceiling.
    HintTooLong,
    /// A custom policy said stop.
    Policy,
    /// A retry was needed but the request body cannot be replayed.
    NotReplayable,
}

impl StopReason {
    fn describe(self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not retryable",
            StopReason::MaxAttempts => "maximum attempts reached",
            StopReason::Deadline => "the overall deadline",
            StopReason::Budget => "retry budget exhausted",
            StopReason::HintTooLong => "the server's retry hint exceeds the ceiling",
            StopReason::Policy => "the policy stopped",
            StopReason::NotReplayable => "the request body cannot be replayed",
        }
    }
}

/// What the retry machinery did before it returned this error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryContext {
    /// Attempts made, counting the first.
    pub attempts: u32,
    /// Time from the first attempt to the end, delays included.
    pub elapsed: Duration,
    /// Why it stopped.
    pub stop: StopReason,
    /// Each attempt's outcome, in order.
    pub outcomes: Vec<AttemptOutcome>,
    /// The overall deadline, if one was configured.
    pub deadline: Option<Duration>,
    /// The hint that was refused, for [`StopReason::HintTooLong`].
    pub refused_hint: Option<Duration>,
}

/// Context that `#[openai_call]` attaches: which function failed and with what arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallContext {
    /// The function's full path (`my_crate::summarize`).
    pub function: String,
    /// The arguments that are not skipped, as `(name, Debug text)`, truncated and redacted.
    pub args: Vec<(String, String)>,
}

/// One route's error in the error of a call that [fallback routes](crate::fallback) tried on
/// more than one route ([`Error::routes`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteError {
    /// The route's name, as its [`Route`](crate::fallback::Route) was given it.
    pub route: Arc<str>,
    /// The error that route ended with.
    pub error: Error,
}

impl RouteError {
    /// `route`'s error `error`.
    pub fn new(route: impl Into<Arc<str>>, error: Error) -> Self {
        RouteError {
            route: route.into(),
            error,
        }
    }
}

impl fmt::Display for RouteError {
    /// `name: 503 server_error`: the route and its error's status and kind (no message).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = one_line(&self.route, 100);
        write!(f, "{route}: {}", self.error.status_and_kind())
    }
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    status: Option<StatusCode>,
    api: Option<ApiError>,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    retry_after_source: Option<DelaySource>,
    should_retry: Option<bool>,
    rate_limit: Option<RateLimitSnapshot>,
    detail: Option<String>,
    auth_cause: Option<AuthCause>,
    violations: Vec<Violation>,
    retry: Option<RetryContext>,
    call: Option<CallContext>,
    routes: Vec<RouteError>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The error of every layer in this crate.
///
/// Cheap to clone (one allocation, shared source). `Display` is one line a person can act on;
/// the facts are accessors. See the [module docs](crate::error).
///
/// It converts into [`BoxError`] and back without loss:
///
/// ```
/// use oai_resilience::{BoxError, Error, ErrorKind};
///
/// let boxed: BoxError = Error::new(ErrorKind::ServerError).into();
/// let err = boxed.downcast_ref::<Error>().unwrap();
/// assert_eq!(err.kind(), ErrorKind::ServerError);
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

/// Builder setters `fn $name(mut self, $field: $ty) -> Self` that set `Inner::$field` to
/// `Some(value)`.
macro_rules! optional_setters {
    ($($(#[$doc:meta])* $name:ident($field:ident: $ty:ty);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.inner_mut().$field = Some($field);
                self
            }
        )*
    };
}

impl Error {
    /// An error of `kind` with no other facts; add them with the `with_*` methods.
    pub fn new(kind: ErrorKind) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                status: None,
                api: None,
                request_id: None,
                retry_after: None,
                retry_after_source: None,
                should_retry: None,
                rate_limit: None,
                detail: None,
                auth_cause: None,
                violations: Vec::new(),
                retry: None,
                call: None,
                routes: Vec::new(),
                source: None,
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Builds the error for a non-success response from its status, headers and (possibly
    /// truncated) body. Never fails: a body that is not OpenAI's JSON is kept as the detail.
    ///
    /// The kind comes from [`ErrorKind::from_status`]; the retry hint from
    /// [`parse::retry_hint`]; key fragments that a 401 message echoes are redacted.
    pub fn from_response_parts(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let api = parse::parse_error_body(body);
        let kind = ErrorKind::from_status(status, api.as_ref());
        let mut err = Error::new(kind).with_status(status);
        let inner = err.inner_mut();
        inner.request_id = parse::request_id(headers).map(|id| redact_secrets(id).into_owned());
        inner.should_retry = parse::should_retry(headers);
        let rl = RateLimitSnapshot::from_headers(headers);
        if !rl.is_empty() {
            inner.rate_limit = Some(rl);
        }
        if let Some(hint) = parse::retry_hint(headers, std::time::SystemTime::now()) {
            inner.retry_after = Some(hint.delay);
            inner.retry_after_source = Some(hint.source);
        } else if kind == ErrorKind::RateLimited {
            let from_message = api
                .as_ref()
                .and_then(|a| parse::parse_try_again_in(&a.message));
            if let Some(d) = from_message {
                inner.retry_after = Some(d);
                inner.retry_after_source = Some(DelaySource::Message);
            }
        }
        if matches!(
            kind,
            ErrorKind::Authentication | ErrorKind::PermissionDenied
        ) {
            inner.auth_cause = Some(
                api.as_ref()
                    .map(|a| parse::auth_cause(status, a))
                    .unwrap_or(AuthCause::Other),
            );
        }
        if api.is_none() {
            let text = parse::body_snippet(body);
            if !text.is_empty() {
                inner.detail = Some(text);
            }
        }
        inner.api = api;
        err
    }

    optional_setters! {
        /// Sets the HTTP status.
        with_status(status: StatusCode);
        /// Sets the server's `x-should-retry` verdict.
        with_should_retry(should_retry: bool);
        /// Sets the rate-limit snapshot.
        with_rate_limit(rate_limit: RateLimitSnapshot);
        /// Sets the authentication cause.
        with_auth_cause(auth_cause: AuthCause);
        /// Attaches what the retry machinery did.
        with_retry_context(retry: RetryContext);
        /// Attaches the `#[openai_call]` context.
        with_call_context(call: CallContext);
    }

    /// Sets OpenAI's error object (its message is redacted of key fragments).
    pub fn with_api_error(mut self, mut api: ApiError) -> Self {
        api.message = redact_string(std::mem::take(&mut api.message));
        self.inner_mut().api = Some(api);
        self
    }

    /// Sets the `x-request-id`.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.inner_mut().request_id = Some(id.into());
        self
    }

    /// Sets the server's retry hint and where it came from.
    pub fn with_retry_after(mut self, delay: Duration, source: DelaySource) -> Self {
        let inner = self.inner_mut();
        inner.retry_after = Some(delay);
        inner.retry_after_source = Some(source);
        self
    }

    /// Sets a human-readable detail (used when there is no OpenAI error object). Secrets that
    /// look like API keys are redacted.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.inner_mut().detail = Some(redact_string(detail.into()));
        self
    }

    /// Sets the validation violations (for [`ErrorKind::InvalidParameter`]).
    pub fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.inner_mut().violations = violations;
        self
    }

    /// Sets the error of each route a call went through ([`crate::fallback`]), in order.
    pub fn with_routes(mut self, routes: Vec<RouteError>) -> Self {
        self.inner_mut().routes = routes;
        self
    }

    /// Sets the underlying cause, kept for [`std::error::Error::source`].
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        let boxed: BoxError = source.into();
        self.inner_mut().source = Some(Arc::from(boxed));
        self
    }

    /// A response body that does not decode, such as a `serde_json::Error` from
    /// `serde_json::from_slice::<Reply>(&body)`: [`ErrorKind::Decode`], not retryable, with
    /// `err` as its source. For the body of an `#[openai_call]` function, and for any caller
    /// that decodes the responses of the stack.
    ///
    /// ```
    /// use oai_resilience::{Error, ErrorKind};
    ///
    /// let err = serde_json::from_slice::<Vec<u32>>(b"{\"object\":\"list\"}").unwrap_err();
    /// let err = Error::decode(err);
    /// assert_eq!(err.kind(), ErrorKind::Decode);
    /// assert!(!err.is_retryable());
    /// ```
    pub fn decode(err: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::Decode).with_source(err)
    }

    /// A failure while reading a response body that has begun to arrive (the error of
    /// `res.into_body().collect().await`): [`ErrorKind::ResponseBody`], not retryable, with
    /// `err` as its source. The server received the request, so neither the stack nor
    /// `#[openai_call]` sends it again; [`Error::from_service_error`] would make it a
    /// retryable [`ErrorKind::Connection`] error, which is right only before a response
    /// arrived.
    ///
    /// ```
    /// use oai_resilience::{Error, ErrorKind};
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    /// let err = Error::body(io);
    /// assert_eq!(err.kind(), ErrorKind::ResponseBody);
    /// assert!(!err.is_retryable());
    /// ```
    pub fn body(err: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::ResponseBody).with_source(err)
    }

    /// Turns an inner service's error into a connection or timeout error, keeping it as the
    /// source. An [`Error`] passes through unchanged.
    ///
    /// It is for errors that come *instead of* a response (the connection was refused,
    /// reset, timed out): they are retryable. An error that comes *after* a response arrived
    /// is [`Error::body`] (reading the body failed) or [`Error::decode`] (the body does not
    /// decode), neither retryable.
    pub fn from_service_error(err: impl Into<BoxError>) -> Self {
        let err: BoxError = err.into();
        let err = match err.downcast::<Error>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        let kind = if is_timeout(&*err) {
            ErrorKind::Timeout
        } else {
            ErrorKind::Connection
        };
        Error::new(kind).with_source(err)
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status, if a response arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// OpenAI's error object, if the body held one.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.inner.api.as_ref()
    }

    /// The OpenAI message, if any.
    pub fn message(&self) -> Option<&str> {
        self.api_error().map(|a| a.message.as_str())
    }

    /// OpenAI's `type`, if any.
    pub fn error_type(&self) -> Option<&str> {
        self.api_error().and_then(|a| a.error_type.as_deref())
    }

    /// OpenAI's `code`, if any (numeric codes as their decimal text).
    pub fn code(&self) -> Option<&str> {
        self.api_error().and_then(|a| a.code.as_deref())
    }

    /// The parameter OpenAI (or local validation, for the first violation) named, if any.
    pub fn param(&self) -> Option<&str> {
        self.api_error()
            .and_then(|a| a.param.as_deref())
            .or_else(|| self.inner.violations.first().map(|v| v.param.as_str()))
    }

    /// The `x-request-id` of the response.
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// The server's retry hint, if it gave one (from `retry-after-ms`, `retry-after`, or the
    /// "try again in" message).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Where [`Error::retry_after`] came from.
    pub fn retry_after_source(&self) -> Option<DelaySource> {
        self.inner.retry_after_source
    }

    /// The server's `x-should-retry` verdict, if it sent one.
    pub fn should_retry(&self) -> Option<bool> {
        self.inner.should_retry
    }

    /// The `x-ratelimit-*` snapshot of the response, if it had any of those headers.
    pub fn rate_limit(&self) -> Option<&RateLimitSnapshot> {
        self.inner.rate_limit.as_ref()
    }

    /// The human-readable detail for errors without an OpenAI error object.
    pub fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    /// The specific cause of an authentication or permission failure.
    pub fn auth_cause(&self) -> Option<AuthCause> {
        self.inner.auth_cause
    }

    /// The local validation violations, every one of them.
    pub fn violations(&self) -> &[Violation] {
        &self.inner.violations
    }

    /// What the retry machinery did, if the error went through it.
    pub fn retry_context(&self) -> Option<&RetryContext> {
        self.inner.retry.as_ref()
    }

    /// Attempts made (1 if the error did not go through retries).
    pub fn attempts(&self) -> u32 {
        self.inner.retry.as_ref().map_or(1, |r| r.attempts)
    }

    /// For a call that [fallback routes](crate::fallback) sent to more than one route: each
    /// route's error, in the order they were tried (the error itself is the last one's, with
    /// this list). Empty otherwise.
    pub fn routes(&self) -> &[RouteError] {
        &self.inner.routes
    }

    /// The status and the kind (`503 server_error`), or the kind alone, as `Display` begins.
    pub(crate) fn status_and_kind(&self) -> StatusKind<'_> {
        StatusKind(self)
    }

    /// The `#[openai_call]` context, if the error left an annotated function.
    pub fn call_context(&self) -> Option<&CallContext> {
        self.inner.call.as_ref()
    }

    /// Whether retrying the same request can succeed.
    ///
    /// The server's `x-should-retry` verdict wins; otherwise the kind decides
    /// ([`ErrorKind::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self.inner.should_retry {
            Some(verdict) if !self.inner.kind.is_local() => verdict,
            _ => self.inner.kind.is_retryable(),
        }
    }

    /// The troubleshooting guide's advice for this error, concrete where the facts allow.
    pub fn hint(&self) -> Cow<'static, str> {
        let inner = &*self.inner;
        if let Some(cause) = inner.auth_cause {
            return Cow::Borrowed(cause.hint());
        }
        match inner.kind {
            ErrorKind::InvalidRequest | ErrorKind::InvalidParameter => {
                let param = self.param();
                let missing = self
                    .message()
                    .map(|m| m.contains("Missing required parameter") || m.contains("required"))
                    .unwrap_or(false)
                    || inner.violations.iter().any(|v| v.message.contains("Missing required"));
                // The param comes from the body: keep `Display` one line.
                match param.map(|p| one_line(p, 200)) {
                    Some(p) if missing => Cow::Owned(format!("add the missing parameter `{p}`")),
                    Some(p) => Cow::Owned(format!("fix the parameter `{p}` (see the message)")),
                    None => Cow::Borrowed("check the request's parameters against the API reference"),
                }
            }
            ErrorKind::NotFound => Cow::Borrowed(
                "check the model name or resource id, and that this key's organization/project can access it",
            ),
            ErrorKind::RequestTimeout | ErrorKind::Conflict => {
                Cow::Borrowed("transient: retry after a short backoff")
            }
            ErrorKind::Unprocessable => {
                Cow::Borrowed("the request was understood but cannot be processed: check its content")
            }
            ErrorKind::RateLimited => match inner.retry_after {
                Some(d) => Cow::Owned(format!(
                    "rate limited: retry after {} or lower your request rate",
                    fmt_secs(d)
                )),
                None => Cow::Borrowed("rate limited: back off and retry, or lower your request rate"),
            },
            ErrorKind::QuotaExceeded => Cow::Borrowed(
                "you exceeded your quota: check plan and billing; retrying will not help",
            ),
            ErrorKind::RequestTooLarge => Cow::Borrowed(
                "the request is larger than the limit allows: shorten the prompt or lower max tokens; retrying will not help",
            ),
            ErrorKind::ServerError => {
                Cow::Borrowed("server-side error: retry with backoff; if it persists, check status.openai.com")
            }
            ErrorKind::Connection => {
                Cow::Borrowed("could not reach the server: check the base URL, network and proxy; retry with backoff")
            }
            ErrorKind::Timeout => Cow::Borrowed(
                "the call timed out: retry, raise the timeout, or request fewer tokens",
            ),
            ErrorKind::MissingApiKey => Cow::Borrowed(
                "set OPENAI_API_KEY (keys are at https://platform.openai.com/api-keys) or configure a key on the auth layer",
            ),
            ErrorKind::MalformedApiKey | ErrorKind::Authentication => Cow::Borrowed(
                "check that OPENAI_API_KEY holds a valid key (keys are at https://platform.openai.com/api-keys)",
            ),
            ErrorKind::PermissionDenied => {
                Cow::Borrowed("the key lacks permission for this resource: check its project, role and scopes")
            }
            ErrorKind::NotReplayable => Cow::Borrowed(
                "the request body cannot be replayed: send a buffered body (Full<Bytes>) to allow retries",
            ),
            ErrorKind::OtherStatus | ErrorKind::Internal => {
                Cow::Borrowed("read the message; retrying is unlikely to help")
            }
            ErrorKind::Decode => Cow::Borrowed(
                "the response does not decode into the expected type: check the type against the API reference (the source says where it failed); retrying will not help",
            ),
            ErrorKind::ResponseBody => Cow::Borrowed(
                "the connection failed while the response body was read; the server processed the request, so send it again only if repeating it is safe",
            ),
            ErrorKind::CircuitOpen => match inner.retry_after {
                Some(d) => Cow::Owned(format!(
                    "the upstream is failing and its circuit is open: nothing was sent; try again in {} or use another route",
                    fmt_secs(d)
                )),
                None => Cow::Borrowed(
                    "the upstream is failing and its circuit is open: nothing was sent; try again later or use another route",
                ),
            },
        }
    }
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<tokio::time::error::Elapsed>() || e.is::<tower::timeout::error::Elapsed>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// Formats a duration as seconds with up to three decimals: `1.2 s`, `0.12 s`, `20 s`.
pub(crate) fn fmt_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s} s")
    }
}

/// An error's status and kind, as the first words of its `Display`: `503 server_error`, or
/// the kind alone without a status.
pub(crate) struct StatusKind<'a>(&'a Error);

impl fmt::Display for StatusKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.0.inner;
        match inner.status {
            Some(s) => write!(f, "{} {}", s.as_u16(), inner.kind),
            None => write!(f, "{}", inner.kind),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        write!(f, "{}", self.status_and_kind())?;
        if let Some(cause) = inner.auth_cause {
            write!(f, " ({})", cause.describe())?;
        }
        if let Some(api) = &inner.api {
            write!(f, ": {}", one_line(&api.message, 300))?;
        } else if !inner.violations.is_empty() {
            f.write_str(": ")?;
            for (i, v) in inner.violations.iter().take(5).enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{}", one_line(&v.to_string(), 200))?;
            }
            if inner.violations.len() > 5 {
                write!(f, "; and {} more", inner.violations.len() - 5)?;
            }
        } else if let Some(detail) = &inner.detail {
            write!(f, ": {}", one_line(detail, 300))?;
        } else if let Some(src) = &inner.source {
            write!(f, ": {}", one_line(&redact_secrets(&src.to_string()), 300))?;
        }
        if let Some(id) = &inner.request_id {
            write!(f, " [request {id}]")?;
        }
        if let Some(call) = &inner.call {
            write!(f, " in {}", call.function)?;
        }
        if let Some(r) = &inner.retry {
            if r.attempts == 0 {
                // A local check refused the call: there was no attempt to count or time.
                f.write_str(", refused before the first attempt (nothing was sent)")?;
            } else {
                write!(
                    f,
                    " after {} attempt{} in {} (",
                    r.attempts,
                    if r.attempts == 1 { "" } else { "s" },
                    fmt_secs(r.elapsed),
                )?;
                match (r.stop, r.deadline) {
                    // The deadline cut an attempt (or a wait) in flight.
                    (StopReason::Deadline, Some(d)) if r.elapsed >= d => {
                        f.write_str("stopped at the deadline")?
                    }
                    (StopReason::Deadline, Some(d)) => write!(
                        f,
                        "the next delay would cross the deadline of {}",
                        fmt_secs(d)
                    )?,
                    (stop, _) => f.write_str(stop.describe())?,
                }
                f.write_str(")")?;
                if let Some(h) = r.refused_hint {
                    write!(f, " (server asked to wait {})", fmt_secs(h))?;
                }
            }
        }
        if !inner.routes.is_empty() {
            f.write_str(" (routes: ")?;
            for (i, r) in inner.routes.iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{r}")?;
            }
            f.write_str(")")?;
        }
        write!(f, " — hint: {}", self.hint())
    }
}

/// Collapses line breaks and truncates to `max` characters, so `Display` stays one line.
fn one_line(s: &str, max: usize) -> Cow<'_, str> {
    let needs_fold = s.contains(['\n', '\r']);
    let too_long = s.chars().count() > max;
    if !needs_fold && !too_long {
        return Cow::Borrowed(s);
    }
    let mut out: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .take(max)
        .collect();
    if too_long {
        out.push('…');
    }
    Cow::Owned(out)
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.kind);
        field_if(&mut d, "status", inner.status.map(|s| s.as_u16()));
        field_if(&mut d, "api", inner.api.as_ref());
        field_if(&mut d, "request_id", inner.request_id.as_ref());
        if let Some(r) = inner.retry_after {
            d.field("retry_after", &r);
            d.field("retry_after_source", &inner.retry_after_source);
        }
        field_if(&mut d, "should_retry", inner.should_retry);
        field_if(&mut d, "rate_limit", inner.rate_limit.as_ref());
        field_if(&mut d, "detail", inner.detail.as_ref());
        field_if(&mut d, "auth_cause", inner.auth_cause);
        if !inner.violations.is_empty() {
            d.field("violations", &inner.violations);
        }
        field_if(&mut d, "retry", inner.retry.as_ref());
        field_if(&mut d, "call", inner.call.as_ref());
        if !inner.routes.is_empty() {
            d.field("routes", &inner.routes);
        }
        if let Some(s) = &inner.source {
            d.field("source", &redact_secrets(&format!("{s:?}")));
        }
        d.finish()
    }
}

/// Adds the field `name` to `d` if `value` is `Some`.
fn field_if<T: fmt::Debug>(d: &mut fmt::DebugStruct<'_, '_>, name: &str, value: Option<T>) {
    if let Some(v) = value {
        d.field(name, &v);
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_from_status() {
        let cases = [
            (400, ErrorKind::InvalidRequest),
            (401, ErrorKind::Authentication),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (408, ErrorKind::RequestTimeout),
            (409, ErrorKind::Conflict),
            (413, ErrorKind::RequestTooLarge),
            (422, ErrorKind::Unprocessable),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::ServerError),
            (503, ErrorKind::ServerError),
            (418, ErrorKind::OtherStatus),
        ];
        for (code, kind) in cases {
            assert_eq!(
                ErrorKind::from_status(StatusCode::from_u16(code).unwrap(), None),
                kind,
                "{code}"
            );
        }
    }

    #[test]
    fn should_retry_header_overrides_kind() {
        let e = Error::new(ErrorKind::ServerError).with_should_retry(false);
        assert!(!e.is_retryable());
        let e = Error::new(ErrorKind::InvalidRequest).with_should_retry(true);
        assert!(e.is_retryable());
        // A local error is never made retryable by a header.
        let e = Error::new(ErrorKind::MissingApiKey).with_should_retry(true);
        assert!(!e.is_retryable());
    }

    #[test]
    fn boxed_round_trip_keeps_everything() {
        let e = Error::new(ErrorKind::RateLimited)
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .with_request_id("req_1")
            .with_retry_after(Duration::from_millis(1200), DelaySource::RetryAfterMs);
        let boxed: BoxError = e.into();
        let back = boxed.downcast_ref::<Error>().unwrap();
        assert_eq!(back.request_id(), Some("req_1"));
        assert_eq!(back.retry_after(), Some(Duration::from_millis(1200)));
        assert!(back.hint().contains("retry after 1.2 s"), "{}", back.hint());
        let again = Error::from_service_error(boxed);
        assert_eq!(again.kind(), ErrorKind::RateLimited);
    }

    #[test]
    fn display_is_one_line() {
        let e = Error::new(ErrorKind::ServerError)
            .with_detail("<html>\n<body>bad gateway</body>\n</html>");
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(s.contains("bad gateway"));
    }

    // Found by `fuzz/fuzz_targets/error_body.rs`: an `x-request-id` that looked like a key
    // was printed as is by `Display` and `Debug`.
    #[test]
    fn request_id_is_redacted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "sk-proj-AAAA1111".parse().unwrap());
        let e = Error::from_response_parts(StatusCode::BAD_GATEWAY, &headers, b"");
        assert_eq!(e.request_id(), Some("[redacted]"));
        assert!(!e.to_string().contains("AAAA1111"), "{e}");
        assert!(!format!("{e:?}").contains("AAAA1111"), "{e:?}");
        headers.insert("x-request-id", "req_123".parse().unwrap());
        let e = Error::from_response_parts(StatusCode::BAD_GATEWAY, &headers, b"");
        assert_eq!(e.request_id(), Some("req_123"));
    }

    // Regression: the validator echoes offending values and unknown keys, so a key pasted
    // into a body reached `Display` and `Debug`.
    #[test]
    fn violations_redact_keys_in_values_and_paths() {
        use crate::validate::{validate, Endpoint};
        let body = br#"{"model":"text-embedding-3-small","input":"hi",
            "encoding_format":"sk-proj-AAAA1111bbbb2222",
            "sk-proj-CCCC3333dddd4444":1}"#;
        let e = validate(Endpoint::Embeddings, body).unwrap_err();
        let shown = format!("{e} {e:?} {:?}", e.violations());
        for secret in ["AAAA1111", "CCCC3333"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(e.violations().len(), 2, "{:?}", e.violations());
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    // Found by `fuzz/fuzz_targets/error_body.rs`: a `param` with a line break reached
    // `Display` through the hint.
    #[test]
    fn display_is_one_line_with_a_multiline_param() {
        let body = br#"{"error":{"message":"bad","param":"messages\n[0]\r"}}"#;
        let e = Error::from_response_parts(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        let s = e.to_string();
        assert!(!s.contains(['\n', '\r']), "{s:?}");
        assert!(
            s.ends_with("fix the parameter `messages [0] ` (see the message)"),
            "{s}"
        );
        // The accessor keeps the server's text.
        assert_eq!(e.param(), Some("messages\n[0]\r"));
    }

    #[test]
    fn service_errors_become_connection_or_timeout() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::from_service_error(io);
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(std::error::Error::source(&e).is_some());
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(Error::from_service_error(io).kind(), ErrorKind::Timeout);
    }

    #[test]
    fn routes_show_each_route_kind_without_messages() {
        let quota = Error::from_response_parts(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"error":{"message":"quota for sk-proj-AAAA1111bbbb2222","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        let last = Error::new(ErrorKind::CircuitOpen);
        let e = last.clone().with_routes(vec![
            RouteError::new("primary", quota),
            RouteError::new("backup\nregion", last),
        ]);
        assert_eq!(e.routes().len(), 2);
        assert_eq!(e.routes()[0].error.kind(), ErrorKind::QuotaExceeded);
        let s = e.to_string();
        assert!(
            s.contains("(routes: primary: 429 quota_exceeded; backup region: circuit_open)"),
            "{s}"
        );
        assert!(!s.contains("AAAA1111"), "{s}");
        assert!(!format!("{e:?}").contains("AAAA1111"));
        assert!(Error::new(ErrorKind::ServerError).routes().is_empty());
    }

    #[test]
    fn fmt_secs_is_short() {
        assert_eq!(fmt_secs(Duration::from_millis(1200)), "1.2 s");
        assert_eq!(fmt_secs(Duration::from_secs(20)), "20 s");
        assert_eq!(fmt_secs(Duration::from_millis(120)), "0.12 s");
    }
}
