//! Errors back as the HTTP responses the OpenAI API would have sent.
//!
//! A proxy in front of OpenAI clients (the `oai-gateway`), or an adapter under an SDK that
//! expects HTTP responses (async-openai, reqwest-middleware), must answer with something
//! the client understands when the stack gives up. [`error_response`] turns an [`Error`]
//! into OpenAI's shape, so that an unmodified SDK raises its usual typed error
//! (`RateLimitError`, `AuthenticationError`, `OpenAIError::ApiError` with its `code`):
//!
//! - **Status**: the upstream's when one answered; otherwise the one OpenAI uses for the same
//!   fault: 400 for a local validation failure, 401 for a missing or malformed key, 429 when
//!   the pacer gave up or the quota is gone, 413 for an oversized body, 502 for a connection
//!   failure or an upstream answer that could not be read or decoded, 504 for a timeout, 503
//!   for an open circuit, 500 otherwise. A retry the stack needed but could not make (the
//!   body could not be sent again, [`ErrorKind::NotReplayable`]) answers as the attempt that
//!   failed did (502 when there is none).
//! - **Body**: `{"error": {"message", "type", "param", "code"}}`, the upstream's own fields
//!   when it sent them (for a local failure: `missing_required_parameter` or `invalid_value`
//!   with the parameter's path in `param`, `invalid_api_key`, `rate_limit_exceeded`, …),
//!   plus `hint`, `request_id` and `attempts`. The hint is also appended to `message`, which
//!   is what a user sees in an SDK's exception.
//! - **Headers**: `x-should-retry: false` (the stack has already retried whatever could
//!   succeed, and the SDKs obey the header, so their own retries do not multiply requests;
//!   `true` for an open circuit, which sent nothing: the client may come back after
//!   `retry-after`, when the breaker lets a probe through; `true` for a retry the stack could
//!   not make because the body could not be sent again: the client still holds its body),
//!   [`HINT_HEADER`], [`ATTEMPTS_HEADER`], `x-request-id` when the upstream gave one, and
//!   `retry-after-ms`/`retry-after` when a delay is known.
//!
//! ```
//! use oai_resilience::{respond, Error, ErrorKind, Violation};
//!
//! let err = Error::new(ErrorKind::InvalidParameter)
//!     .with_violations(vec![Violation::new("messages", "Missing required parameter: 'messages'.")]);
//! let res = respond::error_response(&err);
//! assert_eq!(res.status(), 400);
//! assert_eq!(res.headers()["x-should-retry"], "false");
//! let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
//! assert_eq!(body["error"]["param"], "messages");
//! assert_eq!(body["error"]["code"], "missing_required_parameter");
//! assert_eq!(body["error"]["type"], "invalid_request_error");
//! ```

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use crate::error::{AuthCause, Error, ErrorKind};

/// The header that carries the hint of an error answer.
pub const HINT_HEADER: HeaderName = HeaderName::from_static("x-oai-resilience-hint");
/// The header that carries the attempts made for an error answer.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-oai-resilience-attempts");

/// The status OpenAI would answer for `err`: the upstream's status when one answered, else
/// the one OpenAI uses for the same fault (see the [module docs](self)).
pub fn status_for(err: &Error) -> StatusCode {
    if let Some(s) = err.status() {
        return s;
    }
    match err.kind() {
        ErrorKind::MissingApiKey | ErrorKind::MalformedApiKey | ErrorKind::Authentication => {
            StatusCode::UNAUTHORIZED
        }
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidParameter | ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::RateLimited | ErrorKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Timeout | ErrorKind::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Connection
        | ErrorKind::ServerError
        | ErrorKind::NotReplayable
        | ErrorKind::Decode
        | ErrorKind::ResponseBody => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's `type` for an error the upstream did not describe.
fn local_type(err: &Error, status: StatusCode) -> &'static str {
    match err.kind() {
        ErrorKind::RateLimited => "requests",
        ErrorKind::QuotaExceeded => "insufficient_quota",
        _ if status.is_server_error() => "server_error",
        _ => "invalid_request_error",
    }
}

/// OpenAI's `code` for an error the upstream did not describe.
fn local_code(err: &Error) -> Option<&'static str> {
    match err.kind() {
        ErrorKind::MalformedApiKey | ErrorKind::MissingApiKey => Some("invalid_api_key"),
        ErrorKind::InvalidParameter => {
            let missing = err
                .violations()
                .first()
                .is_some_and(|v| v.message.starts_with("Missing required"));
            Some(if missing {
                "missing_required_parameter"
            } else {
                "invalid_value"
            })
        }
        ErrorKind::RateLimited => Some("rate_limit_exceeded"),
        ErrorKind::QuotaExceeded => Some("insufficient_quota"),
        ErrorKind::Timeout => Some("timeout"),
        ErrorKind::CircuitOpen => Some("circuit_open"),
        _ => None,
    }
}

/// What went wrong, as a sentence, for an error without OpenAI's message.
fn local_message(err: &Error) -> String {
    if !err.violations().is_empty() {
        return err
            .violations()
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>()
            .join(" ");
    }
    let mut msg = match (err.kind(), err.auth_cause()) {
        (ErrorKind::MissingApiKey, _) => {
            "No API key: the request has no Authorization header and none is configured.".to_owned()
        }
        (_, Some(cause)) if cause != AuthCause::Other => {
            format!("Invalid API key: {}.", cause.describe())
        }
        _ => format!("The call could not be completed ({}).", err.kind()),
    };
    if let Some(detail) = err.detail() {
        msg.push_str(" Detail: ");
        msg.push_str(detail);
        if !detail.ends_with('.') {
            msg.push('.');
        }
    }
    msg
}

/// The `param` of the error object: the upstream's, else the first violated parameter.
fn param_for(err: &Error) -> Option<String> {
    err.param().map(str::to_owned).or_else(|| {
        err.violations()
            .first()
            .map(|v| v.param.clone())
            .filter(|p| !p.is_empty())
    })
}

/// The attempts made for `err`: the retry layer's count, else 0 when nothing was sent (a
/// local rejection, a call the pacer gave up on) and 1 otherwise.
fn attempts(err: &Error) -> u32 {
    let nothing_sent = err.kind().is_local() || crate::pace::is_paced_locally(err);
    err.retry_context()
        .map_or(if nothing_sent { 0 } else { 1 }, |r| r.attempts)
}

/// One error answer, whatever raised it: what goes into the body and the headers.
struct Answer<'a> {
    status: StatusCode,
    message: Cow<'a, str>,
    error_type: Cow<'a, str>,
    param: Option<String>,
    code: Option<Cow<'a, str>>,
    hint: Cow<'a, str>,
    request_id: Option<&'a str>,
    attempts: u32,
    retry_after: Option<std::time::Duration>,
    /// `x-should-retry`: `true` for an open circuit (nothing was sent and the stack did
    /// not retry it: the client may come back after `retry-after`, when a probe is let
    /// through) and for a retry the stack could not make (`NotReplayable`: the client, which
    /// holds its body, can); `false` for the rest, which the stack has already retried or
    /// which cannot succeed.
    should_retry: bool,
}

impl<'a> Answer<'a> {
    fn of(err: &'a Error) -> Self {
        if err.kind() == ErrorKind::NotReplayable {
            // The answer of the attempt that failed (its status, OpenAI's fields, its
            // request id), which the client may retry.
            let failed = std::error::Error::source(err)
                .and_then(|s| s.downcast_ref::<Error>())
                .filter(|cause| cause.kind() != ErrorKind::NotReplayable);
            return Answer {
                should_retry: true,
                ..failed.map_or_else(|| Answer::of_kind(err), Answer::of_kind)
            };
        }
        Answer::of_kind(err)
    }

    fn of_kind(err: &'a Error) -> Self {
        let status = status_for(err);
        let code = err.code().map(Cow::Borrowed).or_else(|| {
            // A response without OpenAI's object keeps `code: null`, as the API does.
            if err.api_error().is_none() && err.status().is_none() {
                local_code(err).map(Cow::Borrowed)
            } else {
                None
            }
        });
        Answer {
            status,
            message: err
                .message()
                .map_or_else(|| Cow::Owned(local_message(err)), Cow::Borrowed),
            error_type: Cow::Borrowed(err.error_type().unwrap_or_else(|| local_type(err, status))),
            param: param_for(err),
            code,
            hint: err.hint(),
            request_id: err.request_id(),
            attempts: attempts(err),
            retry_after: err.retry_after(),
            should_retry: err.kind() == ErrorKind::CircuitOpen,
        }
    }

    fn body(&self) -> serde_json::Value {
        let hint = &*self.hint;
        let mut full_message = self.message.trim_end().to_owned();
        full_message.push_str(" Hint: ");
        full_message.push_str(hint);
        if !hint.ends_with('.') {
            full_message.push('.');
        }
        if let Some(id) = self.request_id {
            full_message.push_str(&format!(" (upstream request {id})"));
        }
        json!({
            "error": {
                "message": full_message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
                "hint": hint,
                "request_id": self.request_id,
                "attempts": self.attempts,
            }
        })
    }

    fn response(&self) -> Response<Bytes> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-should-retry",
            HeaderValue::from_static(if self.should_retry { "true" } else { "false" }),
        );
        if let Ok(v) = HeaderValue::from_str(&self.hint) {
            headers.insert(HINT_HEADER, v);
        }
        headers.insert(ATTEMPTS_HEADER, HeaderValue::from(self.attempts));
        if let Some(Ok(v)) = self.request_id.map(HeaderValue::from_str) {
            headers.insert("x-request-id", v);
        }
        if let Some(after) = self.retry_after {
            let ms = after.as_millis().clamp(1, u64::MAX as u128) as u64;
            headers.insert("retry-after-ms", HeaderValue::from(ms));
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
        }
        let mut res = Response::new(Bytes::from(self.body().to_string()));
        *res.status_mut() = self.status;
        *res.headers_mut() = headers;
        res
    }
}

/// The JSON body OpenAI would have sent for `err` (see the [module docs](self)).
pub fn error_body(err: &Error) -> serde_json::Value {
    Answer::of(err).body()
}

/// The response OpenAI would have sent for `err`: status, JSON body and headers (see the
/// [module docs](self)). The body is the JSON bytes; wrap it in the body type a server needs
/// (`http_body_util::Full::new`).
pub fn error_response(err: &Error) -> Response<Bytes> {
    Answer::of(err).response()
}

/// An error answer that a proxy makes itself, with nothing sent upstream (a refused route, a
/// bad access key), in the same shape as [`error_response`]: OpenAI's four fields (`param`
/// null), the hint appended to the message and in `hint` and [`HINT_HEADER`], `attempts: 0`,
/// `x-should-retry: false`.
///
/// ```
/// use oai_resilience::respond;
///
/// let res = respond::local_response(
///     http::StatusCode::NOT_FOUND,
///     "Invalid URL (GET /v2/x)",
///     "invalid_request_error",
///     None,
///     "this route is not forwarded",
/// );
/// assert_eq!(res.status(), 404);
/// assert_eq!(res.headers()["x-should-retry"], "false");
/// let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
/// assert_eq!(body["error"]["message"], "Invalid URL (GET /v2/x) Hint: this route is not forwarded.");
/// assert_eq!(body["error"]["attempts"], 0);
/// ```
pub fn local_response(
    status: StatusCode,
    message: &str,
    error_type: &str,
    code: Option<&str>,
    hint: &str,
) -> Response<Bytes> {
    Answer {
        status,
        message: Cow::Borrowed(message),
        error_type: Cow::Borrowed(error_type),
        param: None,
        code: code.map(Cow::Borrowed),
        hint: Cow::Borrowed(hint),
        request_id: None,
        attempts: 0,
        retry_after: None,
        should_retry: false,
    }
    .response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{DelaySource, Violation};

    fn json(res: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(res.body()).unwrap()
    }

    #[test]
    fn a_retry_the_body_prevented_answers_as_the_failed_attempt_and_may_be_retried() {
        let failed = Error::from_response_parts(
            StatusCode::SERVICE_UNAVAILABLE,
            &HeaderMap::new(),
            br#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#,
        )
        .with_request_id("req_1");
        let err = Error::new(ErrorKind::NotReplayable)
            .with_detail("a retry was needed, but the request body cannot be replayed")
            .with_source(failed.clone());
        let res = error_response(&err);
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["x-should-retry"], "true");
        assert_eq!(res.headers()["x-request-id"], "req_1");
        let v = json(&res);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("overloaded"));
        assert_eq!(v["error"]["type"], "server_error");
        // The same body as the failed attempt's own answer; only the header differs.
        assert_eq!(res.body(), error_response(&failed).body());

        // Without the failed attempt's error: 502, still retryable by the client.
        let bare = Error::new(ErrorKind::NotReplayable);
        let res = error_response(&bare);
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers()["x-should-retry"], "true");
        // A NotReplayable wrapped in another is answered once, not followed.
        let nested = Error::new(ErrorKind::NotReplayable).with_source(bare);
        assert_eq!(error_response(&nested).status(), 502);
    }

    #[test]
    fn upstream_errors_keep_their_status_and_fields() {
        let body = br#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("req_123"));
        let err = Error::from_response_parts(StatusCode::TOO_MANY_REQUESTS, &headers, body);
        let res = error_response(&err);
        assert_eq!(res.status(), 429);
        let v = json(&res);
        assert_eq!(v["error"]["code"], "insufficient_quota");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You exceeded your current quota."));
        assert_eq!(v["error"]["request_id"], "req_123");
        assert_eq!(res.headers()["x-request-id"], "req_123");
        assert_eq!(res.headers()["x-should-retry"], "false");
        assert_eq!(res.headers()["content-type"], "application/json");
    }

    #[test]
    fn an_upstream_answer_without_openai_json_keeps_code_null() {
        let err = Error::from_response_parts(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"<html>bad gateway</html>",
        );
        let res = error_response(&err);
        assert_eq!(res.status(), 502);
        let v = json(&res);
        assert!(v["error"]["code"].is_null(), "{v}");
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[test]
    fn local_failures_get_openais_status_type_and_code() {
        let cases = [
            (
                Error::new(ErrorKind::InvalidParameter).with_violations(vec![Violation::new(
                    "messages",
                    "Missing required parameter: 'messages'.",
                )]),
                400,
                "invalid_request_error",
                Some("missing_required_parameter"),
                Some("messages"),
            ),
            (
                Error::new(ErrorKind::InvalidParameter).with_violations(vec![Violation::new(
                    "temperature",
                    "Invalid 'temperature': decimal above maximum value.",
                )]),
                400,
                "invalid_request_error",
                Some("invalid_value"),
                Some("temperature"),
            ),
            (
                Error::new(ErrorKind::MalformedApiKey).with_auth_cause(AuthCause::Placeholder),
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            (
                Error::new(ErrorKind::MissingApiKey),
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            (
                Error::new(ErrorKind::RateLimited).with_detail("paced locally: no slot"),
                429,
                "requests",
                Some("rate_limit_exceeded"),
                None,
            ),
            (
                Error::new(ErrorKind::Timeout),
                504,
                "server_error",
                Some("timeout"),
                None,
            ),
            (
                Error::new(ErrorKind::Connection),
                502,
                "server_error",
                None,
                None,
            ),
            (
                Error::new(ErrorKind::ResponseBody),
                502,
                "server_error",
                None,
                None,
            ),
            (
                Error::new(ErrorKind::RequestTooLarge),
                413,
                "invalid_request_error",
                None,
                None,
            ),
        ];
        for (err, status, ty, code, param) in cases {
            let res = error_response(&err);
            assert_eq!(res.status(), status, "{err}");
            let v = json(&res);
            assert_eq!(v["error"]["type"], ty, "{err}");
            assert_eq!(v["error"]["code"].as_str(), code, "{err}");
            assert_eq!(v["error"]["param"].as_str(), param, "{err}");
            let sent = matches!(
                err.kind(),
                ErrorKind::Timeout
                    | ErrorKind::Connection
                    | ErrorKind::RequestTooLarge
                    | ErrorKind::ResponseBody
            );
            assert_eq!(v["error"]["attempts"], u32::from(sent), "{err}");
            assert_eq!(res.headers()["x-should-retry"], "false");
            let hint = v["error"]["hint"].as_str().unwrap();
            assert!(!hint.is_empty());
            assert!(v["error"]["message"].as_str().unwrap().contains(hint));
            assert_eq!(res.headers()[HINT_HEADER], hint);
        }
    }

    #[test]
    fn a_known_delay_becomes_retry_after_headers() {
        let err = Error::new(ErrorKind::RateLimited)
            .with_retry_after(Duration::from_millis(1500), DelaySource::RateLimitReset);
        let res = error_response(&err);
        assert_eq!(res.headers()["retry-after-ms"], "1500");
        assert_eq!(res.headers()["retry-after"], "2");
        // An absurd delay does not overflow.
        let err = Error::new(ErrorKind::RateLimited)
            .with_retry_after(Duration::from_secs(u64::MAX), DelaySource::RetryAfter);
        let res = error_response(&err);
        assert!(res.headers().contains_key("retry-after-ms"));
    }
}
