//! Fuzzes the retry-hint parsers: `parse_retry_after_ms`, `parse_retry_after` (with an
//! arbitrary `now`) and `retry_hint` over a header map built from the input.
//!
//! Invariants checked, beyond "does not panic":
//! - every result is at most `MAX_DURATION`;
//! - surrounding whitespace changes nothing;
//! - integer milliseconds / seconds give that duration (saturated), within float rounding;
//!   negative integers give `None`;
//! - an HTTP-date `now + k` seconds gives `k` seconds minus `now`'s sub-second part (zero
//!   for the past), saturated;
//! - `retry_hint` takes `retry-after-ms` first, then `retry-after`, and reports the source.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use oai_resilience::parse::{parse_retry_after, parse_retry_after_ms, retry_hint, MAX_DURATION};
use oai_resilience::DelaySource;

use common::{header_map, Name, Value};

/// 9999-12-31T23:59:59Z, the last second an HTTP-date can spell.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

#[derive(Debug, Arbitrary)]
enum Hint<'a> {
    Absent,
    Raw(&'a [u8]),
    Int(u64),
    Neg(i64),
    Float(f64),
    /// An HTTP-date this many seconds from `now` (whole seconds).
    Date(i64),
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    now_secs: i64,
    now_nanos: u32,
    ms: Hint<'a>,
    secs: Hint<'a>,
    other: Vec<(Name<'a>, Value<'a>)>,
}

fn system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::from(nanos % 1_000_000_000));
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

/// The header value for a hint, and, where the hint has a known meaning, the expected
/// duration in seconds (`Some(None)`: must be rejected).
fn render(
    hint: &Hint<'_>,
    now_secs: i64,
    millis: bool,
) -> (Option<HeaderValue>, Option<Option<f64>>) {
    match hint {
        Hint::Absent => (None, None),
        Hint::Raw(b) => (HeaderValue::from_bytes(b).ok(), None),
        Hint::Int(n) => {
            let secs = if millis {
                *n as f64 / 1000.0
            } else {
                *n as f64
            };
            (Some(HeaderValue::from(*n)), Some(Some(secs)))
        }
        Hint::Neg(n) => {
            let n = n.saturating_abs().max(1);
            (Some(HeaderValue::from(-n)), Some(None))
        }
        Hint::Float(f) => {
            let text = f.to_string();
            let expect = if text.len() > 64 || !f.is_finite() {
                None
            } else if *f < 0.0 && *f != 0.0 {
                Some(None)
            } else {
                Some(Some(if millis { f / 1000.0 } else { *f }))
            };
            (HeaderValue::from_str(&text).ok(), expect)
        }
        Hint::Date(offset) => {
            // An HTTP-date only exists for whole seconds in years 1970..=9999; the exact value
            // is checked by the caller when `now + offset` is in that range.
            let t = now_secs
                .checked_add(*offset)
                .unwrap_or(0)
                .clamp(0, LAST_HTTP_DATE as i64) as u64;
            let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t));
            let expect = if millis { Some(None) } else { None };
            (Some(HeaderValue::from_str(&date).unwrap()), expect)
        }
    }
}

fn saturate(secs: f64) -> Duration {
    if secs >= MAX_DURATION.as_secs_f64() {
        MAX_DURATION
    } else {
        Duration::from_secs_f64(secs.max(0.0))
    }
}

fn assert_close(got: Option<Duration>, want_secs: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: rejected, want {want_secs} s"));
    let want = saturate(want_secs);
    let diff = got.as_secs_f64() - want.as_secs_f64();
    let tol = 1e-6 + want.as_secs_f64() * 1e-12;
    assert!(diff.abs() <= tol, "{what}: got {got:?}, want {want:?}");
}

fn padded(v: &HeaderValue) -> Option<HeaderValue> {
    let mut bytes = b" \t".to_vec();
    bytes.extend_from_slice(v.as_bytes());
    bytes.extend_from_slice(b"  ");
    HeaderValue::from_bytes(&bytes).ok()
}

fuzz_target!(|input: Input<'_>| {
    let Some(now) = system_time(input.now_secs, input.now_nanos) else {
        return;
    };
    let mut headers: HeaderMap = header_map(&input.other);
    headers.remove("retry-after-ms");
    headers.remove("retry-after");

    let (ms_value, ms_expect) = render(&input.ms, input.now_secs, true);
    let (secs_value, secs_expect) = render(&input.secs, input.now_secs, false);

    let mut ms_result = None;
    if let Some(v) = &ms_value {
        ms_result = parse_retry_after_ms(v);
        if let Some(d) = ms_result {
            assert!(d <= MAX_DURATION, "retry-after-ms {v:?} gave {d:?}");
        }
        if let Some(p) = padded(v) {
            assert_eq!(parse_retry_after_ms(&p), ms_result, "padding changed {v:?}");
        }
        match ms_expect {
            Some(Some(secs)) => assert_close(ms_result, secs, "retry-after-ms"),
            Some(None) => assert_eq!(ms_result, None, "retry-after-ms {v:?}"),
            None => {}
        }
        headers.insert("retry-after-ms", v.clone());
    }

    let mut secs_result = None;
    if let Some(v) = &secs_value {
        secs_result = parse_retry_after(v, now);
        if let Some(d) = secs_result {
            assert!(d <= MAX_DURATION, "retry-after {v:?} gave {d:?}");
        }
        if let Some(p) = padded(v) {
            assert_eq!(
                parse_retry_after(&p, now),
                secs_result,
                "padding changed {v:?}"
            );
        }
        match secs_expect {
            Some(Some(secs)) => assert_close(secs_result, secs, "retry-after"),
            Some(None) => assert_eq!(secs_result, None, "retry-after {v:?}"),
            None => {}
        }
        if let Hint::Date(offset) = input.secs {
            let t = input.now_secs.checked_add(offset);
            if t.is_some_and(|t| (0..=LAST_HTTP_DATE as i64).contains(&t)) {
                let when = UNIX_EPOCH + Duration::from_secs(t.unwrap() as u64);
                let want = when
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_DURATION);
                assert_eq!(secs_result, Some(want), "HTTP-date {v:?} at {now:?}");
            }
        }
        headers.insert("retry-after", v.clone());
    }

    let hint = retry_hint(&headers, now);
    match (ms_result, secs_result) {
        (Some(d), _) => {
            let h = hint.expect("retry-after-ms parsed but no hint");
            assert_eq!((h.delay, h.source), (d, DelaySource::RetryAfterMs));
        }
        (None, Some(d)) => {
            let h = hint.expect("retry-after parsed but no hint");
            assert_eq!((h.delay, h.source), (d, DelaySource::RetryAfter));
        }
        (None, None) => assert_eq!(hint, None),
    }
});
