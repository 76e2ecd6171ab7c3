//! Fixtures of the retry tests that live in more than one binary (`suite/retry_call.rs` and
//! `suite/retry_service.rs` in the `suite` binary, which includes this file once; `retry_events.rs`
//! and `spans.rs`, which need binaries of their own for their global subscriber). Include with
//! `#[path = "support/retry_fixtures.rs"] mod retry_fixtures;`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::retry::{Backoff, HintJitter, Jitter, RetryConfig};

pub(crate) type Body = Full<Bytes>;

/// Deterministic retries: 100 ms doubling to 1 s, no jitter, no budget, no deadline.
pub(crate) fn config() -> RetryConfig {
    RetryConfig::new()
        .backoff(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
                .with_jitter(Jitter::None),
        )
        .hint_jitter(HintJitter::NONE)
        .no_budget()
        .no_deadline()
}

/// A chat-completions `POST` with `body`.
pub(crate) fn post(body: &'static str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// An empty answer with `code` and a request id.
pub(crate) fn status(code: u16) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("x-request-id", "req_abc")
        .body(Full::new(Bytes::new()))
        .unwrap()
}
