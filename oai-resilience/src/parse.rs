//! Lenient, total parsers for what the OpenAI API sends back.
//!
//! Plain functions, no tower needed: the layers, the `#[openai_call]` macro and users reuse
//! them. Every parser accepts any input without panicking and reads a bounded amount of it;
//! what it cannot understand gives `None`, never an error.
//!
//! ```
//! use std::time::Duration;
//! use oai_resilience::parse::{parse_go_duration, parse_try_again_in};
//!
//! assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
//! assert_eq!(parse_go_duration("8.64s"), Some(Duration::from_millis(8640)));
//! assert_eq!(
//!     parse_try_again_in("Rate limit reached … Please try again in 1.772s."),
//!     Some(Duration::from_millis(1772)),
//! );
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use crate::cause::{AuthCause, DelaySource};
pub use crate::redact::redact_secrets;
use crate::redact::redact_string;

/// The longest duration any parser returns: longer values (years, overflow) saturate here.
///
/// One year is far above any sane retry hint; callers compare against their own ceilings.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How many bytes of an error body the parsers look at.
pub const MAX_BODY_PARSE: usize = 1024 * 1024;

/// OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ApiError {
    /// The message (key fragments redacted).
    pub message: String,
    /// `type`, such as `invalid_request_error` or `insufficient_quota`.
    pub error_type: Option<String>,
    /// `param`: the parameter at fault, if the server named one.
    pub param: Option<String>,
    /// `code`: a string, or a number kept as its decimal text.
    pub code: Option<String>,
}

/// The billing codes that make a 429 permanent.
pub const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "billing_hard_limit_reached",
    "billing_not_active",
];

impl ApiError {
    /// An error object with just a message.
    pub fn new(message: impl Into<String>) -> Self {
        ApiError {
            message: message.into(),
            ..Default::default()
        }
    }

    /// Sets `type`.
    pub fn with_type(mut self, t: impl Into<String>) -> Self {
        self.error_type = Some(t.into());
        self
    }

    /// Sets `param`.
    pub fn with_param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }

    /// Sets `code`.
    pub fn with_code(mut self, c: impl Into<String>) -> Self {
        self.code = Some(c.into());
        self
    }

    /// Whether this is a quota or billing error (a permanent 429).
    pub fn is_quota(&self) -> bool {
        let t = self.error_type.as_deref().unwrap_or("");
        let c = self.code.as_deref().unwrap_or("");
        QUOTA_CODES.contains(&t)
            || QUOTA_CODES.contains(&c)
            || self.message.contains("exceeded your current quota")
    }

    /// Whether a 429 says the single request exceeds the limit ("Request too large … (TPM)").
    pub fn is_request_too_large(&self) -> bool {
        self.message.starts_with("Request too large")
            || self.code.as_deref() == Some("request_too_large")
    }
}

/// Parses an error body leniently: with or without the `error` wrapper (`{"code": 400,
/// "message": …}` from proxies), numeric `code`, truncated or non-JSON bodies (`None`).
///
/// Looks at the first [`MAX_BODY_PARSE`] bytes only. The message, `type`, `param` and `code`
/// are redacted of anything that looks like an API key ([`redact_secrets`]).
pub fn parse_error_body(body: &[u8]) -> Option<ApiError> {
    let body = &body[..body.len().min(MAX_BODY_PARSE)];
    let value: Value = serde_json::from_slice(body).ok()?;
    let obj = value.as_object()?;
    let inner = match obj.get("error") {
        Some(Value::Object(o)) => o,
        // `{"error": "text"}` (an empty text is no error object, as below)
        Some(Value::String(s)) => {
            return (!s.is_empty()).then(|| ApiError::new(redact_secrets(s).into_owned()));
        }
        _ => obj,
    };
    let message = match inner.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let text = |key: &str| -> Option<String> {
        match inner.get(key)? {
            // Redacted too: `Debug` and the hint show them.
            Value::String(s) => Some(redact_secrets(s).into_owned()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let api = ApiError {
        message: redact_string(message),
        error_type: text("type"),
        param: text("param"),
        code: text("code"),
    };
    if api.message.is_empty() && api.error_type.is_none() && api.code.is_none() {
        return None;
    }
    Some(api)
}

/// A short, printable, secret-free snippet of a body that is not OpenAI's JSON (an HTML page
/// from a gateway, plain text): at most 200 characters, whitespace folded.
pub fn body_snippet(body: &[u8]) -> String {
    let head = &body[..body.len().min(4096)];
    let text = String::from_utf8_lossy(head);
    let mut folded = String::with_capacity(text.len());
    let mut last_space = true;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            if !last_space {
                folded.push(' ');
                last_space = true;
            }
        } else {
            folded.push(c);
            last_space = false;
        }
    }
    // Redact before truncating: `[redacted]` is longer than a short token it replaces.
    let redacted = redact_secrets(folded.trim_end());
    let mut out: String = redacted.chars().take(200).collect();
    if redacted.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// The `x-request-id` header, if it is printable ASCII.
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The server's `x-should-retry` verdict (`true` / `false`, case-insensitive).
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let v = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A retry delay that the server asked for, and which header said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryHint {
    /// How long to wait.
    pub delay: Duration,
    /// Where it came from.
    pub source: DelaySource,
}

/// The server's retry hint from the headers: `retry-after-ms` wins, then `retry-after` (seconds
/// or an HTTP-date, relative to `now`). Invalid values are skipped, not errors.
///
/// `x-ratelimit-reset-*` is not a retry hint on its own (it is the time until the bucket is
/// full); the retry policy reads it from [`RateLimitSnapshot`] for 429s.
pub fn retry_hint(headers: &HeaderMap, now: SystemTime) -> Option<RetryHint> {
    if let Some(d) = headers.get("retry-after-ms").and_then(parse_retry_after_ms) {
        return Some(RetryHint {
            delay: d,
            source: DelaySource::RetryAfterMs,
        });
    }
    if let Some(d) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, now))
    {
        return Some(RetryHint {
            delay: d,
            source: DelaySource::RetryAfter,
        });
    }
    None
}

/// Parses `retry-after-ms`: float milliseconds. Negative, `nan`, `inf` and garbage give `None`;
/// huge values saturate at [`MAX_DURATION`].
pub fn parse_retry_after_ms(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    let ms = parse_finite_non_negative(s)?;
    Some(secs_f64_saturating(ms / 1000.0))
}

/// Parses `retry-after`: seconds (integer or fraction) or an HTTP-date, relative to `now`.
///
/// `0` gives zero; a date in the past gives zero; negative numbers, `nan`, `inf` and garbage give
/// `None`; huge values (and dates far in the future) saturate at [`MAX_DURATION`].
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+')
    {
        let secs = parse_finite_non_negative(s)?;
        return Some(secs_f64_saturating(secs));
    }
    if s.len() > 64 {
        return None;
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(match when.duration_since(now) {
        Ok(d) => d.min(MAX_DURATION),
        Err(_) => Duration::ZERO,
    })
}

fn parse_finite_non_negative(s: &str) -> Option<f64> {
    if s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        // Overflowing literals such as 1e999 parse to inf: treat as "very long".
        if v == f64::INFINITY {
            return Some(MAX_DURATION.as_secs_f64() * 1000.0);
        }
        return None;
    }
    Some(v)
}

fn secs_f64_saturating(secs: f64) -> Duration {
    if secs >= MAX_DURATION.as_secs_f64() {
        MAX_DURATION
    } else if secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// Parses a Go-style duration as OpenAI sends in `x-ratelimit-reset-*`: `1s`, `6m0s`, `20ms`,
/// `8.64s`, `1h2m3.5s`, `5us`, `5µs`, `100ns`, `0`. Negative values (`-1`: unknown), garbage
/// and empty strings give `None`; huge values saturate at [`MAX_DURATION`].
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            // A bare number is seconds (some compatible servers send `"12"`).
            "" if rest.is_empty() && total == 0.0 => 1.0,
            _ => return None,
        };
        total += num * scale;
        if !total.is_finite() {
            return Some(MAX_DURATION);
        }
    }
    Some(secs_f64_saturating(total))
}

/// The last-resort hint inside a 429 message: "Please try again in 1.772s" (also `120ms`,
/// `6m0s`, `20s.`). Reads at most the first 4 KiB of the message.
pub fn parse_try_again_in(message: &str) -> Option<Duration> {
    let head = truncate_at_char_boundary(message, 4096);
    let idx = head.find("try again in ")?;
    let after = &head[idx + "try again in ".len()..];
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == 'µ'))
        .unwrap_or(after.len());
    let token = after[..end].trim_end_matches('.');
    parse_go_duration(token)
}

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The six `x-ratelimit-*` headers (and their `_usage_based` variants), parsed.
///
/// `limit` is the per-minute limit, `remaining` what is left in the bucket now, `reset` the time
/// until the bucket is full again. `-1` (unknown, as Azure sends) and garbage are `None`.
///
/// ```
/// use oai_resilience::parse::RateLimitSnapshot;
/// let mut h = http::HeaderMap::new();
/// h.insert("x-ratelimit-limit-requests", "500".parse().unwrap());
/// h.insert("x-ratelimit-remaining-requests", "499".parse().unwrap());
/// h.insert("x-ratelimit-reset-requests", "120ms".parse().unwrap());
/// let rl = RateLimitSnapshot::from_headers(&h);
/// assert_eq!(rl.limit_requests, Some(500));
/// assert_eq!(rl.reset_requests, Some(std::time::Duration::from_millis(120)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RateLimitSnapshot {
    /// `x-ratelimit-limit-requests`.
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens`.
    pub limit_tokens: Option<u64>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-requests`.
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens`.
    pub reset_tokens: Option<Duration>,
}

impl RateLimitSnapshot {
    /// Reads the headers; each one falls back to its `_usage_based` variant.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // Static names: this runs on every response, so it must not allocate.
        const NAMES: [[&str; 2]; 6] = [
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-limit-requests_usage_based",
            ],
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-limit-tokens_usage_based",
            ],
            [
                "x-ratelimit-remaining-requests",
                "x-ratelimit-remaining-requests_usage_based",
            ],
            [
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-remaining-tokens_usage_based",
            ],
            [
                "x-ratelimit-reset-requests",
                "x-ratelimit-reset-requests_usage_based",
            ],
            [
                "x-ratelimit-reset-tokens",
                "x-ratelimit-reset-tokens_usage_based",
            ],
        ];
        let value = |i: usize| -> Option<&str> {
            let [plain, usage] = NAMES[i];
            header_str(headers, plain).or_else(|| header_str(headers, usage))
        };
        RateLimitSnapshot {
            limit_requests: value(0).and_then(parse_count),
            limit_tokens: value(1).and_then(parse_count),
            remaining_requests: value(2).and_then(parse_count),
            remaining_tokens: value(3).and_then(parse_count),
            reset_requests: value(4).and_then(parse_go_duration),
            reset_tokens: value(5).and_then(parse_go_duration),
        }
    }

    /// Whether no header was present (or none parsed).
    pub fn is_empty(&self) -> bool {
        *self == RateLimitSnapshot::default()
    }

    /// The refill rate that the headers imply, in requests per second:
    /// `(limit − remaining) / reset`. `None` without all three, when the bucket is full, or
    /// when `reset` is under 10 ms (too coarse to divide by: servers round it to the
    /// millisecond). The pacer and the pacing stores derive their refill by the same rule.
    pub fn request_refill_per_sec(&self) -> Option<f64> {
        RefillSample::new(
            self.limit_requests?,
            self.remaining_requests?,
            self.reset_requests?,
        )
        .map(RefillSample::per_sec)
    }

    /// The same for tokens.
    pub fn token_refill_per_sec(&self) -> Option<f64> {
        RefillSample::new(
            self.limit_tokens?,
            self.remaining_tokens?,
            self.reset_tokens?,
        )
        .map(RefillSample::per_sec)
    }
}

/// What one bucket's headers say of its refill: `limit − remaining` used, full again in
/// `reset`. The one place that derives a refill rate from headers (the pacer, the pacing
/// stores and [`RateLimitSnapshot::request_refill_per_sec`] all use it).
///
/// The rule: no sample when the bucket is full (nothing used: no rate to see) or when `reset`
/// is under [`MIN_RESET`] (10 ms): servers round the reset to the millisecond, so a reset that
/// short is too coarse to divide by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RefillSample {
    /// `limit − remaining`.
    pub(crate) used: f64,
    /// `reset`, in seconds.
    pub(crate) reset_secs: f64,
}

/// The shortest reset a refill rate is derived from.
pub(crate) const MIN_RESET: Duration = Duration::from_millis(10);

impl RefillSample {
    /// The sample of a bucket with `limit`, `remaining` and `reset`, if it has one.
    pub(crate) fn new(limit: u64, remaining: u64, reset: Duration) -> Option<Self> {
        let used = limit.saturating_sub(remaining);
        if used == 0 || reset < MIN_RESET {
            return None;
        }
        Some(RefillSample {
            used: used as f64,
            reset_secs: reset.as_secs_f64(),
        })
    }

    /// The refill rate, per second: `(limit − remaining) / reset`.
    pub(crate) fn per_sec(self) -> f64 {
        self.used / self.reset_secs
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn parse_count(s: &str) -> Option<u64> {
    if s.len() > 24 {
        return None;
    }
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    // Some servers send `"500.0"`; a negative value (`-1`) means unknown.
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

/// Whether `word` occurs in `text` delimited by non-alphanumeric characters.
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == word)
}

/// Reads the specific cause of a 401/403 from OpenAI's message and code.
pub fn auth_cause(status: StatusCode, api: &ApiError) -> AuthCause {
    let m = api.message.to_ascii_lowercase();
    let code = api.code.as_deref().unwrap_or("");
    if code == "invalid_api_key" || m.contains("incorrect api key") || m.contains("invalid api key")
    {
        AuthCause::IncorrectKey
    } else if m.contains("didn't provide an api key")
        || m.contains("did not provide an api key")
        || code == "missing_api_key"
    {
        AuthCause::MissingKey
    } else if m.contains("member of an organization") || code == "no_organization" {
        AuthCause::NotOrgMember
    } else if code == "ip_not_authorized"
        || (has_word(&m, "ip")
            && (m.contains("not authorized")
                || m.contains("not allowed")
                || m.contains("allowlist")
                || m.contains("allow list")))
    {
        AuthCause::IpNotAllowed
    } else if m.contains("country")
        || m.contains("region")
        || code == "unsupported_country_region_territory"
    {
        AuthCause::UnsupportedRegion
    } else if m.contains("scope") || m.contains("insufficient permissions") {
        AuthCause::MissingScope
    } else if status == StatusCode::UNAUTHORIZED && m.contains("invalid authentication") {
        AuthCause::IncorrectKey
    } else {
        AuthCause::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn error_body_shapes() {
        let wrapped = br#"{"error":{"message":"Missing required parameter: 'messages'.","type":"invalid_request_error","param":"messages","code":"missing_required_parameter"}}"#;
        let api = parse_error_body(wrapped).unwrap();
        assert_eq!(api.param.as_deref(), Some("messages"));
        assert_eq!(api.error_type.as_deref(), Some("invalid_request_error"));

        let bare = br#"{"code": 400, "message": "bad"}"#;
        let api = parse_error_body(bare).unwrap();
        assert_eq!(api.code.as_deref(), Some("400"));
        assert_eq!(api.message, "bad");

        assert_eq!(parse_error_body(b""), None);
        assert_eq!(parse_error_body(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(parse_error_body(br#"{"error":{"message":"trunc"#), None);
        assert_eq!(parse_error_body(b"[1,2]"), None);
        assert_eq!(parse_error_body(b"{}"), None);
        let s = parse_error_body(br#"{"error":"plain"}"#).unwrap();
        assert_eq!(s.message, "plain");
        let numeric =
            parse_error_body(br#"{"error":{"message":"x","code":429,"type":null,"param":null}}"#)
                .unwrap();
        assert_eq!(numeric.code.as_deref(), Some("429"));
        assert_eq!(numeric.error_type, None);
    }

    #[test]
    fn huge_body_is_bounded() {
        let mut big = br#"{"error":{"message":""#.to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * MAX_BODY_PARSE));
        big.extend(br#""}}"#);
        // Beyond the bound, the JSON is truncated and therefore unparsed: None, no panic.
        assert_eq!(parse_error_body(&big), None);
        assert!(body_snippet(&big).chars().count() <= 201);
    }

    // Found by `fuzz/fuzz_targets/error_body.rs`: `{"error": ""}` gave an empty error object
    // (no message, type or code), which hid the body from the error's detail.
    #[test]
    fn empty_error_string_is_no_error_object() {
        assert_eq!(parse_error_body(br#"{"error":""}"#), None);
        assert_eq!(
            parse_error_body(br#"{"error":"x"}"#),
            Some(ApiError::new("x"))
        );
    }

    // Found by the error_body fuzz target: `type`, `param` and `code` kept key fragments, and
    // `Debug` (and the hint, for `param`) printed them.
    #[test]
    fn every_text_field_is_redacted() {
        let body = br#"{"error":{"message":"m","type":"sk-proj-AAAA1111","param":"Bearer sk-BBBB2222","code":"sk-CCCC3333"}}"#;
        let api = parse_error_body(body).unwrap();
        let all = format!("{api:?}");
        for key in ["AAAA1111", "BBBB2222", "CCCC3333"] {
            assert!(!all.contains(key), "{all}");
        }
        assert_eq!(api.param.as_deref(), Some("Bearer [redacted]"));
        // Codes that classify errors are untouched.
        let quota = parse_error_body(br#"{"error":{"message":"","code":"insufficient_quota"}}"#);
        assert!(quota.unwrap().is_quota());
    }

    // Found by the error_body fuzz target: the snippet was cut at 200 bytes before redaction,
    // and `[redacted]` is longer than `sk-`, so a body of short keys gave ~500 characters.
    #[test]
    fn snippet_stays_short_after_redaction() {
        let body = "sk- ".repeat(100);
        let snip = body_snippet(body.as_bytes());
        assert_eq!(snip.chars().count(), 201, "{snip}");
        assert!(snip.ends_with('…'), "{snip}");
        assert!(!snip.contains("sk-"), "{snip}");
        // Short bodies are whole, without the ellipsis.
        assert_eq!(body_snippet(b"  bad\n\tgateway  "), "bad gateway");
    }

    #[test]
    fn retry_after_ms_edges() {
        assert_eq!(
            parse_retry_after_ms(&hv("1200")),
            Some(Duration::from_millis(1200))
        );
        assert_eq!(
            parse_retry_after_ms(&hv("12.5")),
            Some(Duration::from_micros(12500))
        );
        assert_eq!(parse_retry_after_ms(&hv("0")), Some(Duration::ZERO));
        assert_eq!(parse_retry_after_ms(&hv("-5")), None);
        assert_eq!(parse_retry_after_ms(&hv("nan")), None);
        assert_eq!(parse_retry_after_ms(&hv("inf")), None);
        assert_eq!(parse_retry_after_ms(&hv("abc")), None);
        assert_eq!(parse_retry_after_ms(&hv("1e999")), Some(MAX_DURATION));
        assert_eq!(
            parse_retry_after_ms(&hv("99999999999999999999999")),
            Some(MAX_DURATION)
        );
    }

    #[test]
    fn retry_after_edges() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&hv("20"), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after(&hv("1.5"), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after(&hv("0"), now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&hv("-1"), now), None);
        assert_eq!(parse_retry_after(&hv("nan"), now), None);
        assert_eq!(parse_retry_after(&hv("inf"), now), None);
        assert_eq!(
            parse_retry_after(&hv("99999999999"), now),
            Some(MAX_DURATION)
        );
        assert_eq!(parse_retry_after(&hv("garbage"), now), None);
        assert_eq!(parse_retry_after(&hv(""), now), None);
        let future = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&hv(&future), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&hv(&past), now), Some(Duration::ZERO));
        // Year 100000 is not a valid HTTP-date: rejected, not a panic.
        assert_eq!(
            parse_retry_after(&hv("Mon, 01 Jan 100000 00:00:00 GMT"), now),
            None
        );
        let bytes = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(parse_retry_after(&bytes, now), None);
    }

    #[test]
    fn hint_precedence() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        h.insert("retry-after", hv("3"));
        assert_eq!(retry_hint(&h, now).unwrap().source, DelaySource::RetryAfter);
        h.insert("retry-after-ms", hv("250"));
        let hint = retry_hint(&h, now).unwrap();
        assert_eq!(hint.source, DelaySource::RetryAfterMs);
        assert_eq!(hint.delay, Duration::from_millis(250));
        h.insert("retry-after-ms", hv("bogus"));
        assert_eq!(retry_hint(&h, now).unwrap().delay, Duration::from_secs(3));
    }

    #[test]
    fn go_durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1s", Some(Duration::from_secs(1))),
            ("6m0s", Some(Duration::from_secs(360))),
            ("20ms", Some(Duration::from_millis(20))),
            ("8.64s", Some(Duration::from_millis(8640))),
            ("1m12s", Some(Duration::from_secs(72))),
            ("1h2m3.5s", Some(Duration::from_millis(3_723_500))),
            ("5us", Some(Duration::from_micros(5))),
            ("5µs", Some(Duration::from_micros(5))),
            ("100ns", Some(Duration::from_nanos(100))),
            ("0", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            ("-1", None),
            ("-1s", None),
            ("", None),
            ("s", None),
            ("1x", None),
            ("1.2.3s", None),
            ("99999999999999h", Some(MAX_DURATION)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input), *want, "{input}");
        }
    }

    #[test]
    fn try_again_in_message() {
        let m = "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit https://platform.openai.com/account/rate-limits";
        assert_eq!(parse_try_again_in(m), Some(Duration::from_millis(120)));
        assert_eq!(
            parse_try_again_in("Please try again in 1.772s."),
            Some(Duration::from_millis(1772))
        );
        assert_eq!(
            parse_try_again_in("Please try again in 6m0s."),
            Some(Duration::from_secs(360))
        );
        assert_eq!(parse_try_again_in("Please try again later."), None);
        assert_eq!(parse_try_again_in("no hint"), None);
    }

    #[test]
    fn rate_limit_snapshot() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-requests", hv("60"));
        h.insert("x-ratelimit-remaining-requests", hv("-1"));
        h.insert("x-ratelimit-reset-requests", hv("1s"));
        h.insert("x-ratelimit-limit-tokens_usage_based", hv("150000"));
        h.insert("x-ratelimit-remaining-tokens", hv("149000"));
        h.insert("x-ratelimit-reset-tokens", hv("garbage"));
        let rl = RateLimitSnapshot::from_headers(&h);
        assert_eq!(rl.limit_requests, Some(60));
        assert_eq!(rl.remaining_requests, None);
        assert_eq!(rl.limit_tokens, Some(150000));
        assert_eq!(rl.remaining_tokens, Some(149000));
        assert_eq!(rl.reset_tokens, None);
        assert!(RateLimitSnapshot::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn refill_rate_from_headers() {
        let rl = RateLimitSnapshot {
            limit_requests: Some(20),
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(rl.request_refill_per_sec(), Some(20.0));
    }

    #[test]
    fn auth_causes() {
        let c = |s: u16, m: &str| auth_cause(StatusCode::from_u16(s).unwrap(), &ApiError::new(m));
        assert_eq!(
            c(401, "Incorrect API key provided: [redacted]."),
            AuthCause::IncorrectKey
        );
        assert_eq!(
            c(
                401,
                "You must be a member of an organization to use the API."
            ),
            AuthCause::NotOrgMember
        );
        assert_eq!(c(401, "IP not authorized"), AuthCause::IpNotAllowed);
        // "ip" inside another word is not an IP address.
        assert_eq!(
            c(401, "Membership not allowed for this recipient"),
            AuthCause::Other
        );
        let ip = ApiError::new("Your request is not allowed from this network.")
            .with_code("ip_not_authorized");
        assert_eq!(
            auth_cause(StatusCode::UNAUTHORIZED, &ip),
            AuthCause::IpNotAllowed
        );
        assert_eq!(
            c(403, "Country, region, or territory not supported"),
            AuthCause::UnsupportedRegion
        );
        assert_eq!(c(401, "You have insufficient permissions for this operation. Missing scopes: api.model.read."), AuthCause::MissingScope);
        assert_eq!(
            c(401, "You didn't provide an API key."),
            AuthCause::MissingKey
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn error_body_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_error_body(&bytes);
                let _ = body_snippet(&bytes);
            }

            #[test]
            fn redaction_removes_keys(prefix in "[a-z ]{0,20}", key in "[A-Za-z0-9]{8,40}") {
                let s = format!("{prefix}sk-proj-{key} end");
                let r = redact_secrets(&s);
                prop_assert!(!r.contains(&key));
            }

            #[test]
            fn header_parsers_never_panic(s in "\\PC{0,40}") {
                let _ = parse_go_duration(&s);
                let _ = parse_try_again_in(&s);
                let _ = redact_secrets(&s);
                if let Ok(v) = HeaderValue::from_str(&s) {
                    let _ = parse_retry_after_ms(&v);
                    let _ = parse_retry_after(&v, SystemTime::now());
                }
            }

            #[test]
            fn durations_are_bounded(s in "[0-9.]{1,12}(h|m|s|ms|us|ns)") {
                if let Some(d) = parse_go_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
            }

            #[test]
            fn numeric_hints_roundtrip(ms in 0u64..10_000_000) {
                let v = HeaderValue::from_str(&ms.to_string()).unwrap();
                prop_assert_eq!(parse_retry_after_ms(&v), Some(Duration::from_millis(ms)));
            }
        }
    }
}
