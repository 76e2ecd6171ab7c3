//! Runs the `errors` example's logic and checks what it prints.

#[allow(dead_code)]
#[path = "../errors.rs"]
mod errors_example;

use oai_resilience::ErrorKind;

// Paused time: no timer runs, so the bucket's retry delay is exact.
#[tokio::test(start_paused = true)]
async fn errors_example_shows_each_failure() {
    let errors = errors_example::run().await.unwrap();
    let got: Vec<(&str, ErrorKind, bool)> = errors
        .iter()
        .map(|(label, e)| (*label, e.kind(), e.is_retryable()))
        .collect();
    assert_eq!(
        got,
        [
            ("missing parameter", ErrorKind::InvalidRequest, false),
            ("wrong API key", ErrorKind::Authentication, false),
            ("exhausted quota", ErrorKind::QuotaExceeded, false),
            ("rate limit", ErrorKind::RateLimited, true),
            ("overloaded server", ErrorKind::ServerError, true),
        ]
    );
    let texts: Vec<String> = errors
        .iter()
        .map(|(_, e)| errors_example::describe(e))
        .collect();
    assert!(texts[0].starts_with("400 invalid_request: Missing required parameter: 'messages'."));
    assert!(texts[0].contains("    param        messages\n"));
    assert!(texts[0].contains("    code         missing_required_parameter\n"));
    assert!(texts[1].contains("Incorrect API key provided: [redacted]."));
    assert!(texts[2].contains("    type         insufficient_quota\n"));
    assert!(texts[2].contains("retrying will not help"));
    assert!(texts[3].contains("    retry after  1s\n"), "{}", texts[3]);
    assert!(texts[4].contains("    status       503\n"));
    for text in &texts {
        assert!(text.contains("    request id   req_"), "{text}");
        assert!(
            !text.contains("M0ckTestKey") && !text.contains("WRONGwrong"),
            "{text}"
        );
        assert_eq!(
            text.lines().next().unwrap(),
            text.lines().next().unwrap().trim_end()
        );
    }
}
