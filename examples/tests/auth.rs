//! Runs the `auth` example's logic and checks each step.

#[allow(dead_code)]
#[path = "../auth.rs"]
mod auth_example;

use oai_resilience::{AuthCause, ErrorKind};

/// A step as (label, status or (kind, cause), requests the server had received).
type Seen<'a> = (&'a str, Result<u16, (ErrorKind, Option<AuthCause>)>, u64);

#[tokio::test]
async fn auth_example_catches_bad_keys_before_sending() {
    let steps = auth_example::run().await.unwrap();
    let got: Vec<Seen<'_>> = steps
        .iter()
        .map(|s| {
            (
                s.label,
                s.result
                    .as_ref()
                    .map(|status| *status)
                    .map_err(|e| (e.kind(), e.auth_cause())),
                s.server_total,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "key with a trailing line break",
                Err((ErrorKind::MalformedApiKey, Some(AuthCause::Whitespace))),
                0
            ),
            (
                "placeholder key",
                Err((ErrorKind::MalformedApiKey, Some(AuthCause::Placeholder))),
                0
            ),
            (
                "wrong key",
                Err((ErrorKind::Authentication, Some(AuthCause::IncorrectKey))),
                1
            ),
            ("revoked key, refreshed once", Ok(200), 3),
            ("right key", Ok(200), 4),
        ]
    );
    let wrong = steps[2].result.as_ref().unwrap_err().to_string();
    assert!(wrong.contains("[redacted]"), "{wrong}");
    assert!(!wrong.contains("OLDold"), "{wrong}");
}
