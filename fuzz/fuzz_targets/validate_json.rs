//! Fuzzes the body validator on arbitrary JSON values (`check_value`, `validate_value`), and
//! the streaming checker on the same value serialized (`check`, `validate`).
//!
//! Invariants checked, beyond "does not panic":
//! - checking is deterministic;
//! - the streaming checker (bytes) and the value checker give the same report for the same
//!   body (serializing keeps the value's key order, so even the order must agree; the value
//!   is read back from the bytes, as serde_json may parse a printed float one ULP off);
//! - `validate*` fails exactly when the report has violations, with every violation, kind
//!   `InvalidParameter`, the first violation's param, missing parameters first, and a
//!   one-line `Display`;
//! - a report from `Validator::check` on `POST /v1/<endpoint>` equals `check`'s.
#![no_main]

#[path = "json_gen.rs"]
mod json_gen;

use arbitrary::Unstructured;
use http::Method;
use libfuzzer_sys::fuzz_target;
use oai_resilience::validate::{self, Validator};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(endpoint) = json_gen::endpoint(&mut u) else {
        return;
    };
    // Mostly objects (every request body is one), sometimes any value.
    let body = if u.ratio(15, 16).unwrap_or(true) {
        json_gen::object(&mut u, 0)
    } else {
        json_gen::value(&mut u, 0)
    };
    let Ok(body) = body else {
        return;
    };

    let report = validate::check_value(endpoint, &body);
    assert_eq!(
        validate::check_value(endpoint, &body),
        report,
        "not deterministic"
    );
    let result = validate::validate_value(endpoint, &body);
    json_gen::check_report(&report, &result);

    // Compared with the value read back from the bytes: serde_json's default float parser may
    // land one ULP off a printed f64, and the messages print the number.
    let bytes = serde_json::to_vec(&body).unwrap();
    let reparsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let report = validate::check_value(endpoint, &reparsed);
    let streamed = validate::check(endpoint, &bytes);
    assert_eq!(
        streamed,
        report,
        "bytes and value disagree on {}",
        String::from_utf8_lossy(&bytes)
    );
    json_gen::check_report(&streamed, &validate::validate(endpoint, &bytes));

    let path = format!("/v1{}", endpoint.path());
    let routed = Validator::new().check(&Method::POST, &path, &bytes);
    assert_eq!(routed.as_ref(), Some(&report), "{path}");
});
