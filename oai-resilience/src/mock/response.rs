//! Scripted responses and OpenAI's error bodies.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::limit::{ceil_ms, go_duration};

/// The masked key fragment that [`AuthFailure::IncorrectKey`] echoes, as OpenAI's 401 does.
pub const ECHOED_KEY_FRAGMENT: &str = "sk-abc1***************************wxyz";

/// A response to script on a route: status, optional body, optional headers, optional delay.
///
/// Scripted responses are consumed in order, one per request, before any other behaviour of
/// the server (auth, quota, validation, rate limits): see
/// [`MockBuilder::script`](super::MockBuilder::script). They take nothing from the rate-limit
/// buckets. The server adds its usual headers (`x-request-id`, `openai-*`) to each.
///
/// Without a body, an error status gets OpenAI's error body for that status (see
/// [`MockResponse::status`]) and a success status gets the route's normal success body.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Option<Bytes>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) delay: Duration,
    pub(crate) disconnect: bool,
    pub(crate) stream_error_after: Option<usize>,
}

impl MockResponse {
    /// A response with `status` and the default body for it: the route's success body for
    /// 2xx, otherwise OpenAI's error object as the API sends it for that status (e.g. 503:
    /// "The server is overloaded or not ready yet.", type `server_error`). A code outside
    /// 100..=999 becomes 500.
    pub fn status(status: u16) -> Self {
        MockResponse {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: None,
            headers: Vec::new(),
            delay: Duration::ZERO,
            disconnect: false,
            stream_error_after: None,
        }
    }

    /// No response at all: after reading the request (and any delay), the server closes the
    /// connection. The client sees a connection error after the request was sent, the case
    /// where a POST may have been processed. Counted in
    /// [`MockCounts::disconnected`](super::MockCounts::disconnected), not recorded in
    /// [`MockServer::requests`](super::MockServer::requests).
    pub fn disconnect() -> Self {
        MockResponse {
            disconnect: true,
            ..MockResponse::status(500)
        }
    }

    /// A 200 event stream (whatever the request's `stream` flag) that sends `deltas` content
    /// deltas and then an `{"error": {…, "type": "server_error"}}` event instead of finishing:
    /// the mid-stream failure that a status check cannot see.
    pub fn stream_error_after(deltas: usize) -> Self {
        MockResponse {
            stream_error_after: Some(deltas),
            ..MockResponse::ok()
        }
    }

    /// 200 with the route's normal success body.
    pub fn ok() -> Self {
        MockResponse::status(200)
    }

    /// `status` with OpenAI's error body built from the four fields.
    pub fn error(
        status: u16,
        message: &str,
        error_type: Option<&str>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        MockResponse::status(status).with_body(error_body(message, error_type, param, code))
    }

    /// A 429 rate limit on requests per minute, with `retry-after`, `retry-after-ms` and the
    /// "Please try again in …" message all saying `retry_after`.
    pub fn rate_limited(retry_after: Duration) -> Self {
        let message = format!(
            "Rate limit reached for gpt-4o in organization org-mock on requests per min (RPM): \
             Limit 20, Used 20, Requested 1. Please try again in {}. Visit \
             https://platform.openai.com/account/rate-limits to learn more.",
            go_duration(retry_after)
        );
        let mut r = MockResponse::error(
            429,
            &message,
            Some("requests"),
            None,
            Some("rate_limit_exceeded"),
        );
        r.headers.extend(retry_headers(retry_after));
        r
    }

    /// A 429 `insufficient_quota` (a permanent error).
    pub fn quota_exceeded() -> Self {
        MockResponse::status(429).with_body(quota_body())
    }

    /// The 401 or 403 that OpenAI sends for `failure`.
    pub fn auth_failure(failure: AuthFailure) -> Self {
        let (status, body) = failure.response();
        MockResponse::status(status.as_u16()).with_body(body)
    }

    /// Replaces the body with raw bytes (any content: JSON, HTML, nothing).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Replaces the body with JSON.
    pub fn with_json(self, body: &Value) -> Self {
        self.with_body(body.to_string())
    }

    /// Adds a header. An invalid name or value is skipped (with a `tracing` warning).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => self.headers.push((n, v)),
            _ => tracing::warn!(name, "mock: skipping an invalid scripted header"),
        }
        self
    }

    /// Delays this response by `delay` (on the tokio clock), on top of the server's latency.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The status this response will have.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }
}

/// Scriptable authentication and permission failures, with OpenAI's messages.
///
/// Use with [`MockResponse::auth_failure`]. The server's own key check (see
/// [`MockBuilder::api_key`](super::MockBuilder::api_key)) produces the first two by itself.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// 401 `invalid_api_key`: "Incorrect API key provided: sk-abc1****…wxyz. …" (echoes a
    /// masked fragment of the key: [`ECHOED_KEY_FRAGMENT`]).
    IncorrectKey,
    /// 401: "You didn't provide an API key. …"
    MissingKey,
    /// 401 `no_organization`: "You must be a member of an organization to use the API. …"
    NotOrgMember,
    /// 401 `ip_not_authorized`: the request's IP address is not on the allow-list.
    IpNotAuthorized,
    /// 403 `unsupported_country_region_territory`: "Country, region, or territory not supported".
    UnsupportedRegion,
    /// 401: "You have insufficient permissions for this operation. Missing scopes: …"
    MissingScope,
}

impl AuthFailure {
    pub(crate) fn response(self) -> (StatusCode, String) {
        match self {
            AuthFailure::IncorrectKey => incorrect_key(ECHOED_KEY_FRAGMENT),
            AuthFailure::MissingKey => (
                StatusCode::UNAUTHORIZED,
                error_body(
                    "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), \
                     or as the password field (with blank username) if you're accessing the API \
                     from your browser and are prompted for a username and password. You can \
                     obtain an API key from https://platform.openai.com/account/api-keys.",
                    Some("invalid_request_error"),
                    None,
                    None,
                ),
            ),
            AuthFailure::NotOrgMember => (
                StatusCode::UNAUTHORIZED,
                error_body(
                    "You must be a member of an organization to use the API. Please contact us \
                     through our help center at help.openai.com.",
                    Some("invalid_request_error"),
                    None,
                    Some("no_organization"),
                ),
            ),
            AuthFailure::IpNotAuthorized => (
                StatusCode::UNAUTHORIZED,
                error_body(
                    "You are not authorized to access this organization from your IP address \
                     (IP not authorized). Please contact your organization owner to update the \
                     IP allowlist.",
                    Some("invalid_request_error"),
                    None,
                    Some("ip_not_authorized"),
                ),
            ),
            AuthFailure::UnsupportedRegion => (
                StatusCode::FORBIDDEN,
                error_body(
                    "Country, region, or territory not supported",
                    Some("request_forbidden"),
                    None,
                    Some("unsupported_country_region_territory"),
                ),
            ),
            AuthFailure::MissingScope => (
                StatusCode::UNAUTHORIZED,
                error_body(
                    "You have insufficient permissions for this operation. Missing scopes: \
                     model.request. Check that you have the correct role in your organization \
                     (Reader, Writer, Owner) and project (Member, Owner), and if you're using a \
                     restricted API key, that it has the necessary scopes.",
                    Some("invalid_request_error"),
                    None,
                    None,
                ),
            ),
        }
    }
}

/// The 401 for a wrong key, echoing `masked` as OpenAI does.
pub(crate) fn incorrect_key(masked: &str) -> (StatusCode, String) {
    (
        StatusCode::UNAUTHORIZED,
        error_body(
            &format!(
                "Incorrect API key provided: {masked}. You can find your API key at \
                 https://platform.openai.com/account/api-keys."
            ),
            Some("invalid_request_error"),
            None,
            Some("invalid_api_key"),
        ),
    )
}

/// Masks a key as OpenAI's 401 message does: the first 7 and last 4 characters around stars.
pub(crate) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 11 {
        return "*".repeat(chars.len().max(1));
    }
    let head: String = chars[..7].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 11))
}

/// OpenAI's error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error_body(
    message: &str,
    error_type: Option<&str>,
    param: Option<&str>,
    code: Option<&str>,
) -> String {
    json!({
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": code,
        }
    })
    .to_string()
}

pub(crate) fn quota_body() -> String {
    error_body(
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, read the docs: \
         https://platform.openai.com/docs/guides/error-codes/api-errors.",
        Some("insufficient_quota"),
        None,
        Some("insufficient_quota"),
    )
}

/// `retry-after` (whole seconds, rounded up) and `retry-after-ms` (whole ms, rounded up).
pub(crate) fn retry_headers(wait: Duration) -> [(HeaderName, HeaderValue); 2] {
    let ms = ceil_ms(wait).max(1);
    let secs = ms.div_ceil(1000);
    [
        (http::header::RETRY_AFTER, HeaderValue::from(secs)),
        (
            HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(ms),
        ),
    ]
}

/// OpenAI's error body for a status without a scripted body.
pub(crate) fn default_error_body(status: StatusCode, model: &str) -> String {
    let (message, t, code): (String, &str, Option<&str>) = match status.as_u16() {
        400 => (
            "Invalid request: check the request's parameters.".into(),
            "invalid_request_error",
            None,
        ),
        401 => return AuthFailure::IncorrectKey.response().1,
        403 => return AuthFailure::UnsupportedRegion.response().1,
        404 => (
            format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model_not_found"),
        ),
        408 => (
            "Request timed out.".into(),
            "invalid_request_error",
            Some("request_timeout"),
        ),
        409 => (
            "The request conflicted with another request (lock timeout). Please try again.".into(),
            "invalid_request_error",
            Some("conflict"),
        ),
        413 => (
            "Request exceeds the maximum allowed size.".into(),
            "invalid_request_error",
            Some("request_too_large"),
        ),
        422 => (
            "The request was well-formed but could not be processed.".into(),
            "invalid_request_error",
            Some("unprocessable_entity"),
        ),
        429 => {
            return MockResponse::rate_limited(Duration::from_millis(50))
                .body
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        }
        500 => (
            "The server had an error while processing your request. Sorry about that!".into(),
            "server_error",
            None,
        ),
        502 => ("Bad gateway.".into(), "server_error", Some("bad_gateway")),
        503 => (
            "The server is overloaded or not ready yet.".into(),
            "server_error",
            Some("server_is_overloaded"),
        ),
        504 => (
            "Gateway timeout.".into(),
            "server_error",
            Some("gateway_timeout"),
        ),
        s if s >= 500 => ("Server error.".into(), "server_error", None),
        _ => (
            format!(
                "Request failed with status {}.",
                status.canonical_reason().unwrap_or("unknown")
            ),
            "invalid_request_error",
            None,
        ),
    };
    error_body(&message, Some(t), None, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_error_body;

    #[test]
    fn masks_like_openai() {
        assert_eq!(
            mask_key("sk-abc123456789012345678901234567890wxyz"),
            format!("sk-abc1{}wxyz", "*".repeat(29))
        );
        assert_eq!(mask_key("short"), "*****");
        assert_eq!(mask_key(""), "*");
    }

    #[test]
    fn default_bodies_parse_as_openai_errors() {
        for code in [
            400u16, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 418,
        ] {
            let body = default_error_body(StatusCode::from_u16(code).unwrap(), "gpt-4o");
            let api = parse_error_body(body.as_bytes()).expect("parses");
            assert!(!api.message.is_empty(), "{code}");
        }
    }

    #[test]
    fn retry_headers_round_up() {
        let [(_, secs), (_, ms)] = retry_headers(Duration::from_millis(50));
        assert_eq!((secs.to_str().unwrap(), ms.to_str().unwrap()), ("1", "50"));
        let [(_, secs), (_, ms)] = retry_headers(Duration::from_millis(2001));
        assert_eq!(
            (secs.to_str().unwrap(), ms.to_str().unwrap()),
            ("3", "2001")
        );
    }

    #[test]
    fn invalid_scripted_headers_are_skipped() {
        let r = MockResponse::status(503)
            .with_header("bad name", "x")
            .with_header("x-ok", "1");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(MockResponse::status(7).status_code(), 500);
    }
}
