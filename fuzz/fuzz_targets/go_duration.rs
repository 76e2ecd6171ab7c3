//! Fuzzes `parse_go_duration` (the `x-ratelimit-reset-*` format) and `parse_try_again_in`
//! (the hint inside a 429 message).
//!
//! Invariants checked, beyond "does not panic":
//! - every result is at most `MAX_DURATION`;
//! - surrounding whitespace and a leading `+` change nothing;
//! - a duration built from parts (`1h2m3.5s`, `20ms`, `5µs`, …) parses to the sum of the
//!   parts, within float rounding, saturated at `MAX_DURATION` (and `None` past 64 bytes);
//! - `parse_try_again_in("… Please try again in TOKEN. …")` equals `parse_go_duration(TOKEN)`.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use oai_resilience::parse::{parse_go_duration, parse_try_again_in, MAX_DURATION};

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Unit {
    H,
    M,
    S,
    Ms,
    Us,
    MicroSign,
    Mu,
    Ns,
}

impl Unit {
    fn text(self) -> &'static str {
        match self {
            Unit::H => "h",
            Unit::M => "m",
            Unit::S => "s",
            Unit::Ms => "ms",
            Unit::Us => "us",
            Unit::MicroSign => "µs",
            Unit::Mu => "μs",
            Unit::Ns => "ns",
        }
    }

    fn secs(self) -> f64 {
        match self {
            Unit::H => 3600.0,
            Unit::M => 60.0,
            Unit::S => 1.0,
            Unit::Ms => 1e-3,
            Unit::Us | Unit::MicroSign | Unit::Mu => 1e-6,
            Unit::Ns => 1e-9,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Part {
    whole: u32,
    /// Fraction digits: `(value, width)`, width 1..=9.
    frac: Option<(u32, u8)>,
    unit: Unit,
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    raw: &'a str,
    parts: Vec<Part>,
    prefix: &'a str,
}

fn check_bounded(what: &str, s: &str, d: Option<Duration>) {
    if let Some(d) = d {
        assert!(d <= MAX_DURATION, "{what}({s:?}) = {d:?}");
    }
}

fn is_hint_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == 'µ')
        && !s.ends_with('.')
}

fuzz_target!(|input: Input<'_>| {
    let raw = input.raw;
    let parsed = parse_go_duration(raw);
    check_bounded("parse_go_duration", raw, parsed);
    check_bounded("parse_try_again_in", raw, parse_try_again_in(raw));

    // Whitespace around the value is ignored.
    let padded = format!(" \t{raw}\n ");
    assert_eq!(
        parse_go_duration(&padded),
        parsed,
        "padding changed {raw:?}"
    );

    // A leading `+` is ignored (on a trimmed value that has none yet).
    if !raw.is_empty() && raw.trim() == raw && !raw.starts_with('+') && raw.len() < 64 {
        assert_eq!(
            parse_go_duration(&format!("+{raw}")),
            parsed,
            "`+` changed {raw:?}"
        );
    }

    // The hint inside a message is the duration parser's result for the token.
    let prefix = input.prefix;
    if is_hint_token(raw) && raw.len() <= 1024 && prefix.len() <= 1024 {
        let message = format!("{prefix} Please try again in {raw}. Visit the rate-limit page.");
        // Only when the first "try again in " is ours (the prefix may end with one).
        if message.find("try again in ") == Some(prefix.len() + " Please ".len()) {
            let hint = parse_try_again_in(&message);
            assert_eq!(hint, parsed, "message {message:?}");
        }
    }

    // A duration built from parts parses to their sum.
    if !input.parts.is_empty() && input.parts.len() <= 8 {
        let mut text = String::new();
        let mut want = 0f64;
        for part in &input.parts {
            let mut value = f64::from(part.whole);
            text.push_str(&part.whole.to_string());
            if let Some((digits, width)) = part.frac {
                let width = u32::from(width % 9) + 1;
                let digits = digits % 10u32.pow(width);
                text.push_str(&format!(".{digits:0width$}", width = width as usize));
                value += f64::from(digits) / 10f64.powi(width as i32);
            }
            text.push_str(part.unit.text());
            want += value * part.unit.secs();
        }
        let got = parse_go_duration(&text);
        if text.len() > 64 {
            assert_eq!(got, None, "{text:?} is longer than 64 bytes");
        } else {
            let got = got.unwrap_or_else(|| panic!("{text:?} rejected"));
            let max = MAX_DURATION.as_secs_f64();
            let tol = 2e-9 + want * 1e-12;
            if want >= max + tol {
                assert_eq!(got, MAX_DURATION, "{text:?}");
            } else {
                let diff = got.as_secs_f64() - want.min(max);
                assert!(diff.abs() <= tol, "{text:?}: got {got:?}, want {want} s");
            }
        }
    }
});
