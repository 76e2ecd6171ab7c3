//! Fixtures of the retry tests that live in more than one binary (`suite/retry_call.rs` and
//! `suite/retry_service.rs` in the `suite` binary, which includes this file once; `retry_events.rs`
//! and `spans.rs`, which need binaries of their own for their global subscriber). Include with
//! `#[path = "support/retry_fixtures.rs"] mod retry_fixtures;`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::retry::{Backoff, HintJitter, Jitter, RetryConfig};
use oai_resilience::{ClassifyLayer, Error};
use tower::{service_fn, Layer, Service};

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

/// A classified upstream that answers its `n`th request (from 0) with `answer(&request,
/// code, n)`, `code` being `codes[n]` (the last code repeats). `answer` runs inside the
/// response future, so what it logs or records happens when the attempt is polled.
pub(crate) fn answering<B, F>(
    codes: &'static [u16],
    answer: F,
) -> impl Service<Request<B>, Response = Response<Body>, Error = Error, Future = impl Send> + Clone
where
    B: Send + 'static,
    F: Fn(&Request<B>, u16, usize) -> Response<Body> + Clone + Send + 'static,
{
    let n = Arc::new(AtomicUsize::new(0));
    ClassifyLayer::new().layer(service_fn(move |req: Request<B>| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(answer(&req, codes[i.min(codes.len() - 1)], i)) }
    }))
}
