//! Fuzzes `RateLimitSnapshot::from_headers` on arbitrary header names and values, and the
//! refill-rate functions.
//!
//! Invariants checked, beyond "does not panic":
//! - each field comes from its header, else from the `_usage_based` variant: a count is the
//!   header's integer (or a non-negative decimal's whole part), never from a negative or
//!   garbage value; a reset is exactly `parse_go_duration` of the header;
//! - `is_empty` holds exactly when every field is `None`;
//! - a refill rate, when `Some`, is finite, positive and equals `(limit − remaining) / reset`;
//!   it is `None` when a field is missing, the bucket is full or the reset is zero;
//! - `Error::from_response_parts` keeps the snapshot exactly when it is not empty.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::Duration;

use arbitrary::Arbitrary;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use oai_resilience::parse::{parse_go_duration, RateLimitSnapshot, MAX_DURATION};
use oai_resilience::Error;

use common::{header_map, Name, Value};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    headers: Vec<(Name<'a>, Value<'a>)>,
}

/// The trimmed text the snapshot reads for `name`: the header, else its `_usage_based` twin.
fn source<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let text = |n: &str| headers.get(n)?.to_str().ok().map(str::trim);
    text(name).or_else(|| text(&format!("{name}_usage_based")))
}

fn check_count(headers: &HeaderMap, name: &str, got: Option<u64>) {
    let Some(text) = source(headers, name) else {
        assert_eq!(got, None, "{name} absent");
        return;
    };
    if text.len() > 24 {
        assert_eq!(got, None, "{name}: {text:?} is too long");
    } else if let Ok(n) = text.parse::<u64>() {
        assert_eq!(got, Some(n), "{name}: {text:?}");
    } else if let Some(n) = got {
        let f: f64 = text
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {text:?} gave {n}"));
        assert!(f >= 0.0 && f.is_finite(), "{name}: {text:?} gave {n}");
        assert_eq!(n, f as u64, "{name}: {text:?}");
    }
    if text.starts_with('-')
        && text
            .trim_start_matches('-')
            .parse::<u64>()
            .is_ok_and(|n| n > 0)
    {
        assert_eq!(got, None, "{name}: negative {text:?} must be unknown");
    }
}

fn check_reset(headers: &HeaderMap, name: &str, got: Option<Duration>) {
    let want = source(headers, name).and_then(parse_go_duration);
    assert_eq!(got, want, "{name}: {:?}", source(headers, name));
    if let Some(d) = got {
        assert!(d <= MAX_DURATION);
    }
}

fn check_refill(
    what: &str,
    rate: Option<f64>,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
) {
    match (limit, remaining, reset) {
        (Some(l), Some(r), Some(d)) if l > r && !d.is_zero() => {
            let rate = rate.unwrap_or_else(|| panic!("{what}: no rate for {l}/{r}/{d:?}"));
            assert!(rate.is_finite() && rate > 0.0, "{what}: rate {rate}");
            let want = (l - r) as f64 / d.as_secs_f64();
            assert!(
                (rate - want).abs() <= want * 1e-12,
                "{what}: rate {rate}, want {want}"
            );
        }
        _ => assert_eq!(rate, None, "{what}: {limit:?}/{remaining:?}/{reset:?}"),
    }
}

fuzz_target!(|input: Input<'_>| {
    let headers = header_map(&input.headers);
    let rl = RateLimitSnapshot::from_headers(&headers);

    check_count(&headers, "x-ratelimit-limit-requests", rl.limit_requests);
    check_count(&headers, "x-ratelimit-limit-tokens", rl.limit_tokens);
    check_count(
        &headers,
        "x-ratelimit-remaining-requests",
        rl.remaining_requests,
    );
    check_count(
        &headers,
        "x-ratelimit-remaining-tokens",
        rl.remaining_tokens,
    );
    check_reset(&headers, "x-ratelimit-reset-requests", rl.reset_requests);
    check_reset(&headers, "x-ratelimit-reset-tokens", rl.reset_tokens);

    let all_none = rl.limit_requests.is_none()
        && rl.limit_tokens.is_none()
        && rl.remaining_requests.is_none()
        && rl.remaining_tokens.is_none()
        && rl.reset_requests.is_none()
        && rl.reset_tokens.is_none();
    assert_eq!(rl.is_empty(), all_none);

    check_refill(
        "requests",
        rl.request_refill_per_sec(),
        rl.limit_requests,
        rl.remaining_requests,
        rl.reset_requests,
    );
    check_refill(
        "tokens",
        rl.token_refill_per_sec(),
        rl.limit_tokens,
        rl.remaining_tokens,
        rl.reset_tokens,
    );

    let err = Error::from_response_parts(StatusCode::TOO_MANY_REQUESTS, &headers, b"");
    assert_eq!(err.rate_limit().copied(), (!rl.is_empty()).then_some(rl));
});
