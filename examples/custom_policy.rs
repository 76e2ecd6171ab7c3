//! Custom retry policies with `oai-resilience`, against the embedded mock server.
//!
//! 1. A policy written from scratch (the `Policy` trait, a few lines).
//! 2. The default OpenAI policy, adjusted: "also retry 404" for one route's stack.
//! 3. The default policy under plain `tower::retry::RetryLayer`, for stacks that already use it.
//!
//! Run: `cargo run -p examples --bin custom_policy`

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::retry::{
    Attempt, Decision, OpenAiPolicy, Policy, RetryConfig, RetryLayer, TowerPolicy,
};
use oai_resilience::{ClassifyLayer, ErrorKind};
use tower::{ServiceBuilder, ServiceExt};

/// Retries server errors only, at most for 10 s of the call, always after the backoff; never
/// rate limits (say, because a pacing layer elsewhere handles them).
///
/// The policy only decides whether to retry: the config it runs under bounds the call too.
/// Under `RetryConfig::new()` it would stop after 5 attempts or an empty budget, and its last
/// backoff could end after 10 s; under `RetryConfig::for_duration(10 s)` (below) the deadline
/// is 10 s, no delay is slept past it, and only the deadline bounds the attempts.
struct ServerErrorsFor10s;

impl Policy for ServerErrorsFor10s {
    fn decide(&self, attempt: &Attempt<'_>) -> Decision {
        let transient = attempt.error().kind() == ErrorKind::ServerError;
        if transient && attempt.elapsed() < Duration::from_secs(10) {
            Decision::backoff(attempt)
        } else {
            Decision::stop()
        }
    }
}

fn request(server: &MockServer) -> http::Request<Full<Bytes>> {
    http::Request::post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#,
        )))
        .unwrap()
}

/// Short delays, so the example finishes in well under a second.
fn quick() -> RetryConfig {
    RetryConfig::new()
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = MockServer::start().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    // 1. A policy from scratch.
    server.script(
        Route::ChatCompletions,
        [
            MockResponse::status(502),
            MockResponse::rate_limited(Duration::from_millis(50)),
        ],
    );
    let for_10s = RetryConfig::for_duration(Duration::from_secs(10))
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .policy(ServerErrorsFor10s);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(for_10s))
        .layer(ClassifyLayer::new())
        .service(client.clone());
    let err = svc.oneshot(request(&server)).await.unwrap_err();
    println!("1. custom policy: {err}");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.attempts(), 2);

    // 2. The default, but also retry 404 on this route (a resource that is still being created).
    server.reset_counts();
    server.script(Route::ChatCompletions, [MockResponse::status(404)]);
    let policy = OpenAiPolicy::new().retry_if(|e| e.status() == Some(http::StatusCode::NOT_FOUND));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(quick().policy(policy)))
        .layer(ClassifyLayer::new())
        .service(client.clone());
    let res = svc.oneshot(request(&server)).await.unwrap();
    println!(
        "2. default + 404: {} after {} requests",
        res.status(),
        server.counts().total
    );
    assert_eq!(server.counts().total, 2);

    // 3. The default policy under plain tower::retry.
    server.reset_counts();
    server.script(
        Route::ChatCompletions,
        [MockResponse::status(503), MockResponse::quota_exceeded()],
    );
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(TowerPolicy::new(quick())))
        .layer(ClassifyLayer::new())
        .service(client);
    let err = svc.oneshot(request(&server)).await.unwrap_err();
    let ctx = err.retry_context().expect("the retry context is attached");
    println!(
        "3. tower::retry + TowerPolicy: {err}\n   outcomes: {:?}",
        ctx.outcomes
            .iter()
            .map(|o| (o.attempt, o.kind.as_str(), o.delay))
            .collect::<Vec<_>>()
    );
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(server.counts().total, 2);
}
