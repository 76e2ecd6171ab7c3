//! Helpers shared by the fuzz targets (included with `#[path]`; not a target itself).
#![allow(dead_code)]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The header names the parsers read; a fuzz input picks one by index or spells its own.
pub const KNOWN_HEADERS: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-request-id",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-requests_usage_based",
    "x-ratelimit-limit-tokens_usage_based",
    "x-ratelimit-remaining-requests_usage_based",
    "x-ratelimit-remaining-tokens_usage_based",
    "x-ratelimit-reset-requests_usage_based",
    "x-ratelimit-reset-tokens_usage_based",
    "content-type",
];

/// A header name: one the parsers read, or arbitrary bytes (skipped when not a valid name).
#[derive(Debug, Arbitrary)]
pub enum Name<'a> {
    Known(u8),
    Raw(&'a [u8]),
}

impl Name<'_> {
    pub fn to_header_name(&self) -> Option<HeaderName> {
        match self {
            Name::Known(i) => Some(HeaderName::from_static(
                KNOWN_HEADERS[*i as usize % KNOWN_HEADERS.len()],
            )),
            Name::Raw(b) => HeaderName::from_bytes(b).ok(),
        }
    }
}

/// A header value: arbitrary bytes, or a shape the parsers are meant to understand.
#[derive(Debug, Arbitrary)]
pub enum Value<'a> {
    Raw(&'a [u8]),
    Int(u64),
    Neg(i64),
    Float(f64),
    Text(&'a str),
}

impl Value<'_> {
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        match self {
            Value::Raw(b) => HeaderValue::from_bytes(b).ok(),
            Value::Int(n) => Some(HeaderValue::from(*n)),
            Value::Neg(n) => Some(HeaderValue::from(*n)),
            Value::Float(f) => HeaderValue::from_str(&f.to_string()).ok(),
            Value::Text(s) => HeaderValue::from_str(s).ok(),
        }
    }
}

/// Builds a header map with `append` (repeated names allowed); invalid names/values are skipped.
pub fn header_map(headers: &[(Name<'_>, Value<'_>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter().take(64) {
        if let (Some(n), Some(v)) = (name.to_header_name(), value.to_header_value()) {
            map.append(n, v);
        }
    }
    map
}

/// Whether a character may be part of a redacted key token (mirrors the documented rule).
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')
}
