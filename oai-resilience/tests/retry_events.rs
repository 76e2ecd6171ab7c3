//! The retry layer's `tracing` events, in a test binary of its own.
//!
//! With a thread-local subscriber (`set_default`) beside other tests, it would fail about one
//! run in thirty: another test thread registering the same callsite while no subscriber cared
//! caches a "never" interest, so no event reaches the subscriber. Alone in its binary with a
//! global subscriber, it cannot race.

use http::{Request, Response};
use oai_resilience::retry::RetryLayer;
use oai_resilience::Error;
use tower::{Layer, Service, ServiceExt};

use test_support::capture;

use capture::Captured;

// Not every fixture is used here.
#[allow(dead_code)]
#[path = "support/retry_fixtures.rs"]
mod retry_fixtures;

use retry_fixtures::{answering, config, post, status, Body};

/// An upstream that answers from `codes` (the last repeats), with a request id.
fn logging(
    codes: &'static [u16],
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Error> + Clone {
    answering(codes, |_req: &Request<Body>, code, _| status(code))
}

#[tokio::test(start_paused = true)]
async fn every_retry_emits_an_event() {
    let out = Captured::install_global(tracing::Level::INFO);

    let svc = RetryLayer::with_config(config()).layer(logging(&[503, 503, 200]));
    svc.oneshot(post("{}")).await.unwrap();
    let text = out.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (i, line) in lines.iter().enumerate() {
        for field in [
            format!("attempt={}", i + 1),
            "status=503".to_string(),
            "kind=server_error".to_string(),
            "req_abc".to_string(),
            format!("delay_ms={}", 100 << i),
            "delay_source=Backoff".to_string(),
        ] {
            assert!(line.contains(&field), "{field} missing in {line}");
        }
    }
}
