//! Fuzzes the error-body path: `parse_error_body`, `body_snippet`, `redact_secrets` and
//! `Error::from_response_parts` with an arbitrary status, headers and body, then formats the
//! error with `{}` and `{:?}`.
//!
//! Invariants checked, beyond "does not panic":
//! - `redact_secrets` leaves no key-shaped `sk-` (only one inside a word, as in `task-1`) and
//!   no key token after `Bearer ` / `provided: `, is
//!   idempotent, and borrows (changes nothing) when the text has none of the markers;
//! - `body_snippet` is at most 200 characters plus an ellipsis, one line, whitespace folded,
//!   no control characters, no key-shaped `sk-`;
//! - a parsed `ApiError` has a redacted message;
//! - the `Error` agrees with the parsers (kind, API error, detail, retryability, auth cause,
//!   rate-limit snapshot), its retry hint is at most `MAX_DURATION`, and neither `Display`
//!   nor `Debug` has a line break or a key-shaped `sk-` fragment.
#![no_main]

#[path = "common.rs"]
mod common;

use std::borrow::Cow;

use arbitrary::Arbitrary;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use oai_resilience::parse::{self, body_snippet, parse_error_body, redact_secrets, MAX_DURATION};
use oai_resilience::{Error, ErrorKind};
use serde_json::{json, Map, Value as Json};

use common::{header_map, is_token_char, Name, Value};

/// A key-shaped secret the input may plant in any body field.
const SECRET: &str = "sk-proj-Fz9KeyAAAAbbbb1234";

#[derive(Debug, Arbitrary)]
enum Field<'a> {
    Absent,
    Null,
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Field<'a>>),
}

impl Field<'_> {
    fn to_json(&self, depth: u8) -> Option<Json> {
        Some(match self {
            Field::Absent => return None,
            Field::Null => Json::Null,
            Field::Str(s) => Json::String((*s).to_owned()),
            Field::Int(n) => json!(n),
            Field::Float(f) => json!(f),
            Field::Bool(b) => json!(b),
            Field::Array(items) if depth < 3 => Json::Array(
                items
                    .iter()
                    .take(8)
                    .filter_map(|f| f.to_json(depth + 1))
                    .collect(),
            ),
            Field::Array(_) => Json::Array(Vec::new()),
        })
    }
}

#[derive(Debug, Arbitrary)]
enum Body<'a> {
    /// Arbitrary bytes, with the secret spliced in at a position when `plant` is set.
    Raw { bytes: &'a [u8], plant: Option<u16> },
    /// OpenAI's error object (or the bare proxy shape), one field possibly carrying the secret.
    Object {
        wrapped: bool,
        message: Field<'a>,
        error_type: Field<'a>,
        param: Field<'a>,
        code: Field<'a>,
        /// 0: nowhere, 1: message, 2: type, 3: param, 4: code.
        secret_in: u8,
        secret_at: u16,
    },
    /// `{"error": "text"}`.
    ErrorString(&'a str),
}

fn splice(s: &str, at: u16) -> String {
    let mut at = usize::from(at).min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{SECRET}{}", &s[..at], &s[at..])
}

impl Body<'_> {
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Body::Raw { bytes, plant } => {
                let mut out = bytes.to_vec();
                if let Some(at) = plant {
                    let at = usize::from(*at).min(out.len());
                    out.splice(at..at, SECRET.bytes());
                }
                out
            }
            Body::Object {
                wrapped,
                message,
                error_type,
                param,
                code,
                secret_in,
                secret_at,
            } => {
                let mut obj = Map::new();
                let fields = [
                    ("message", message),
                    ("type", error_type),
                    ("param", param),
                    ("code", code),
                ];
                for (i, (key, field)) in fields.into_iter().enumerate() {
                    let planted = usize::from(*secret_in % 5) == i + 1;
                    let value = match (field, planted) {
                        (Field::Str(s), true) => Some(Json::String(splice(s, *secret_at))),
                        (_, true) => Some(Json::String(SECRET.to_owned())),
                        (f, false) => f.to_json(0),
                    };
                    if let Some(v) = value {
                        obj.insert(key.to_owned(), v);
                    }
                }
                let value = if *wrapped {
                    json!({ "error": obj })
                } else {
                    Json::Object(obj)
                };
                serde_json::to_vec(&value).unwrap()
            }
            Body::ErrorString(s) => serde_json::to_vec(&json!({ "error": s })).unwrap(),
        }
    }
}

/// The statuses the API sends (each has its own path), or any other.
const STATUSES: &[u16] = &[400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503];

#[derive(Debug, Arbitrary)]
enum Status {
    Common(u8),
    Any(u16),
}

impl Status {
    fn get(&self) -> Option<StatusCode> {
        let code = match self {
            Status::Common(i) => STATUSES[usize::from(*i) % STATUSES.len()],
            Status::Any(n) => *n,
        };
        StatusCode::from_u16(code).ok()
    }
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    status: Status,
    headers: Vec<(Name<'a>, Value<'a>)>,
    body: Body<'a>,
}

/// No key fragment: an `sk-` survives redaction only inside a word (`task-1`), and then
/// neither opens a typed key (`sk-proj-`, ...) nor is followed by a key-length run.
fn assert_no_key(what: &str, s: &str) {
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices("sk-") {
        let in_word = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        assert!(in_word, "{what} leaks a key fragment: {s:?}");
        let after = &s[i + 3..];
        for typed in ["proj-", "svcacct-", "admin-", "None-"] {
            assert!(!after.starts_with(typed), "{what} leaks a typed key: {s:?}");
        }
        let run = after
            .chars()
            .take_while(|&c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*'))
            .count();
        assert!(run < 20, "{what} leaks a key-length run: {s:?}");
    }
}

fn check_redaction(s: &str) {
    let r = redact_secrets(s);
    assert_no_key("redact_secrets", &r);
    for marker in ["Bearer ", "provided: "] {
        for (i, _) in r.match_indices(marker) {
            let next = r[i + marker.len()..].chars().next();
            assert!(
                !next.is_some_and(|c| is_token_char(c) && c != '.'),
                "token left after {marker:?}: {r:?}"
            );
        }
    }
    let has_marker = s.contains("sk-") || s.contains("Bearer ") || s.contains("provided: ");
    if !has_marker {
        assert!(matches!(r, Cow::Borrowed(_)), "changed a clean text: {s:?}");
        assert_eq!(r, s);
    }
    assert_eq!(
        redact_secrets(&r),
        r,
        "redaction is not idempotent on {s:?}"
    );
}

fn check_snippet(body: &[u8]) {
    let snip = body_snippet(body);
    assert!(
        snip.chars().count() <= 201,
        "snippet of {} chars: {snip:?}",
        snip.chars().count()
    );
    assert!(!snip.starts_with(' ') && !snip.ends_with(' '), "{snip:?}");
    assert!(!snip.contains("  "), "whitespace not folded: {snip:?}");
    assert!(
        snip.chars()
            .all(|c| c == ' ' || !(c.is_whitespace() || c.is_control())),
        "control character in {snip:?}"
    );
    assert_no_key("body_snippet", &snip);
}

fuzz_target!(|input: Input<'_>| {
    let body = input.body.to_bytes();
    let headers = header_map(&input.headers);

    check_redaction(&String::from_utf8_lossy(&body));
    check_snippet(&body);

    let api = parse_error_body(&body);
    if let Some(api) = &api {
        assert_no_key("ApiError::message", &api.message);
        assert!(
            !api.message.is_empty() || api.error_type.is_some() || api.code.is_some(),
            "empty ApiError returned: {api:?}"
        );
    }

    let Some(status) = input.status.get() else {
        return;
    };
    let err = Error::from_response_parts(status, &headers, &body);

    assert_eq!(err.status(), Some(status));
    assert_eq!(err.kind(), ErrorKind::from_status(status, api.as_ref()));
    assert_eq!(err.api_error(), api.as_ref());
    if api.is_none() {
        let snip = body_snippet(&body);
        assert_eq!(err.detail(), (!snip.is_empty()).then_some(snip.as_str()));
    } else {
        assert_eq!(err.detail(), None);
    }
    if let Some(d) = err.retry_after() {
        assert!(d <= MAX_DURATION, "retry_after {d:?}");
    }
    assert_eq!(
        err.retry_after().is_some(),
        err.retry_after_source().is_some()
    );
    // Statuses never make a local kind, so the server's verdict always wins.
    assert!(!err.kind().is_local());
    assert_eq!(
        err.is_retryable(),
        parse::should_retry(&headers).unwrap_or(err.kind().is_retryable())
    );
    assert_eq!(
        err.auth_cause().is_some(),
        matches!(
            err.kind(),
            ErrorKind::Authentication | ErrorKind::PermissionDenied
        )
    );
    let snapshot = parse::RateLimitSnapshot::from_headers(&headers);
    assert_eq!(
        err.rate_limit().copied(),
        (!snapshot.is_empty()).then_some(snapshot)
    );
    assert!(!err.hint().is_empty());

    let display = err.to_string();
    assert!(
        display.starts_with(&format!("{} {}", status.as_u16(), err.kind())),
        "{display:?}"
    );
    assert!(
        !display.contains(['\n', '\r']),
        "Display is not one line: {display:?}"
    );
    assert!(display.ends_with(err.hint().as_ref()), "{display:?}");
    assert_no_key("Display", &display);

    let debug = format!("{err:?}");
    assert!(!debug.contains('\n'), "{debug:?}");
    assert_no_key("Debug", &debug);
});
