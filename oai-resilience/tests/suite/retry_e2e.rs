//! End to end over loopback HTTP: hyper-util client → `ClassifyLayer` → `RetryLayer` → the
//! mock server, in virtual time.
#![cfg(feature = "mock")]

use crate::scripted;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::retry::{Backoff, HintJitter, RandomSource, RetryConfig, RetryLayer, SplitMix};
use oai_resilience::Classify;
use oai_resilience::{ClassifyLayer, DelaySource, Error, ErrorKind, Retry, StopReason};
use scripted::scripted;
use tower::util::Oneshot;
use tower::{ServiceBuilder, ServiceExt};

type Stack = Retry<Classify<Client<HttpConnector, Full<Bytes>>>>;

use test_support::CHAT;

fn stack(config: RetryConfig) -> Stack {
    let client = test_support::http_client();
    ServiceBuilder::new()
        .layer(RetryLayer::with_config(config))
        .layer(ClassifyLayer::new())
        .service(client)
}

fn chat(server: &MockServer) -> http::Request<Full<Bytes>> {
    http::Request::post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// One chat request to `server` through a stack with `config`.
fn send(config: RetryConfig, server: &MockServer) -> Oneshot<Stack, http::Request<Full<Bytes>>> {
    stack(config).oneshot(chat(server))
}

fn ceil_ms(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

/// Gaps between consecutive requests the mock received, in ms.
fn gaps_ms(server: &MockServer) -> Vec<u128> {
    let reqs = server.requests();
    reqs.windows(2)
        .map(|w| (w[1].received_at - w[0].received_at).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn quota_exhausted_costs_exactly_one_request() {
    let server = MockServer::builder().quota_exhausted(true).start().await;
    let err: Error = send(RetryConfig::new().seed(1), &server).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(server.counts().total, 1);
    let ctx = err.retry_context().unwrap();
    assert_eq!((ctx.attempts, ctx.stop), (1, StopReason::NotRetryable));
    assert_eq!(ctx.elapsed, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn two_503s_then_success_on_the_third_attempt_with_the_right_delays() {
    let seed = 2024;
    let server = scripted(None, [MockResponse::status(503), MockResponse::status(503)]).await;
    let res = send(RetryConfig::new().seed(seed), &server).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["object"], "chat.completion");

    let counts = server.counts();
    assert_eq!((counts.total, counts.status(503), counts.ok), (3, 2, 1));
    // The default backoff (500 ms base, full jitter), drawn from the same seeded source.
    let rng = SplitMix::new(seed);
    let b = Backoff::default();
    let want: Vec<u128> = (1..=2)
        .map(|n| ceil_ms(b.delay(n, None, rng.next_unit())))
        .collect();
    assert_eq!(gaps_ms(&server), want);
    // Each attempt is the same request, with its retry count.
    for (i, r) in server.requests().iter().enumerate() {
        assert_eq!(&r.body[..], CHAT.as_bytes());
        assert_eq!(r.headers["x-stainless-retry-count"], i.to_string().as_str());
    }
}

#[tokio::test(start_paused = true)]
async fn the_mock_rate_limit_hint_is_honoured_with_a_little_jitter() {
    let seed = 5;
    let server = scripted(
        None,
        [MockResponse::rate_limited(Duration::from_millis(1500))],
    )
    .await;
    send(RetryConfig::new().seed(seed), &server).await.unwrap();
    let rng = SplitMix::new(seed);
    let _backoff_draw = rng.next_unit();
    let want = HintJitter::default().apply(Duration::from_millis(1500), rng.next_unit());
    let gaps = gaps_ms(&server);
    assert_eq!(gaps, [ceil_ms(want)]);
    assert!((1500..=1650).contains(&gaps[0]), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hint_of_an_hour_fails_at_once() {
    let server = scripted(
        None,
        [MockResponse::status(503).with_header("retry-after", "3600")],
    )
    .await;
    let err = send(RetryConfig::new().seed(1), &server).await.unwrap_err();
    assert_eq!(server.counts().total, 1);
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::HintTooLong);
    assert_eq!(ctx.refused_hint, Some(Duration::from_secs(3600)));
    assert_eq!(err.retry_after_source(), Some(DelaySource::RetryAfter));
}
