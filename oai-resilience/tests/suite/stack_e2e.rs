//! The whole default stack (`OpenAiLayer`) over a hyper-util client against the mock server.
#![cfg(feature = "mock")]

use crate::scripted;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::{MockResponse, MockServer, RateLimit};
use oai_resilience::stack::{OpenAiLayer, OpenAiService};
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthCause, AuthLayer, ErrorKind, RetryConfig, RetryLayer};
use scripted::scripted;
use tower::util::Oneshot;
use tower::{Layer, ServiceExt};

const KEY: &str = "sk-proj-StackTestKey0123456789abcdefghijklmnopqrstuv";
use test_support::CHAT;

type Http = Client<HttpConnector, ValidateBody<Full<Bytes>>>;

fn stack(server: &MockServer, key: &str) -> OpenAiService<Http> {
    let client = test_support::http_client();
    OpenAiLayer::new()
        .base_url(server.url().parse().unwrap())
        .auth(AuthLayer::from_key(key))
        .retry(RetryLayer::with_config(RetryConfig::new().seed(7)))
        .layer(client)
}

/// One chat request with `body` through the stack with the test key.
fn send(
    server: &MockServer,
    body: &'static str,
) -> Oneshot<OpenAiService<Http>, http::Request<Full<Bytes>>> {
    stack(server, KEY).oneshot(post("/v1/chat/completions", body))
}

fn post(path: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// A mock server that expects `key` and answers every call with `insufficient_quota`.
pub(super) async fn quota_server(key: &str) -> MockServer {
    MockServer::builder()
        .api_key(key)
        .quota_exhausted(true)
        .start()
        .await
}

/// A mock server that expects `key` and answers its first two chat completions with the
/// statuses `first` (transient server errors for a retry to recover from), then normally.
pub(super) async fn failing_twice(key: &str, first: [u16; 2]) -> MockServer {
    scripted(Some(key), first.map(MockResponse::status)).await
}

/// A mock server that expects `key` and streams each completion over 10 s.
#[cfg(any(feature = "reqwest", feature = "async-openai"))]
pub(super) async fn ten_second_streams(key: &str) -> MockServer {
    MockServer::builder()
        .api_key(key)
        .stream_duration(Duration::from_secs(10))
        .start()
        .await
}

/// Reads `stream` (from a [`ten_second_streams`] server) to its end and checks that it was
/// passed on as it came, not buffered: its first item arrived less than 2 s after `start`,
/// its last at least 9 s after. `item` names an item in the failure messages.
#[cfg(any(feature = "reqwest", feature = "async-openai"))]
pub(super) async fn read_as_it_streams<T, E: std::fmt::Debug>(
    start: tokio::time::Instant,
    stream: impl futures_util::Stream<Item = Result<T, E>>,
    item: &str,
) -> Vec<T> {
    let mut stream = std::pin::pin!(stream);
    let mut items = Vec::new();
    let mut first = None;
    while let Some(next) = futures_util::StreamExt::next(&mut stream).await {
        first.get_or_insert_with(|| start.elapsed());
        items.push(next.unwrap());
    }
    let (first, all) = (first.unwrap(), start.elapsed());
    assert!(
        first < Duration::from_secs(2),
        "first {item} after {first:?}"
    );
    assert!(all >= Duration::from_secs(9), "whole stream after {all:?}");
    items
}

#[tokio::test(start_paused = true)]
async fn burst_at_the_rate_limit_all_succeed() {
    let server = MockServer::builder()
        .api_key(KEY)
        .request_limit(RateLimit::bucket(10, 10.0))
        .start()
        .await;
    let svc = stack(&server, KEY);
    let calls = (0..40).map(|_| svc.clone().oneshot(post("/v1/chat/completions", CHAT)));
    let results = futures_util::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    let counts = server.counts();
    assert_eq!(counts.ok, 40);
    // The cold key's first wave (40 calls against a bucket of 10) collects 30 fast 429s;
    // after that pacing keeps them rare, and retries recover the few that happen.
    let cold_wave = 40 - 10;
    assert!(
        counts.total <= 40 + cold_wave + 6,
        "requests sent: {}",
        counts.total
    );
    assert!(
        counts.rate_limited <= cold_wave + 6,
        "429s: {}",
        counts.rate_limited
    );
}

#[tokio::test(start_paused = true)]
async fn quota_costs_one_request() {
    let server = quota_server(KEY).await;
    let err = send(&server, CHAT).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert!(!err.is_retryable());
    assert_eq!(server.counts().total, 1);
    assert!(err.hint().contains("retrying will not help"));
}

#[tokio::test(start_paused = true)]
async fn transient_503s_are_retried() {
    let server = failing_twice(KEY, [503, 502]).await;
    let res = send(&server, CHAT).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(server.counts().total, 3);
}

#[tokio::test(start_paused = true)]
async fn local_failures_send_nothing() {
    let server = MockServer::builder().api_key(KEY).start().await;

    let err = send(&server, r#"{"model":"gpt-4o-mini"}"#)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert_eq!(err.param(), Some("messages"));
    assert_eq!(err.hint(), "add the missing parameter `messages`");

    let err = stack(&server, "sk-...")
        .oneshot(post("/v1/chat/completions", CHAT))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    assert_eq!(err.auth_cause(), Some(AuthCause::Placeholder));

    let err = stack(&server, &format!("{KEY}\n"))
        .oneshot(post("/v1/chat/completions", CHAT))
        .await
        .unwrap_err();
    assert_eq!(err.auth_cause(), Some(AuthCause::Whitespace));
    assert!(!err.to_string().contains(KEY), "{err}");

    assert_eq!(server.counts().total, 0);
}

#[tokio::test(start_paused = true)]
async fn wrong_key_is_a_typed_401_with_redacted_echo() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let other = "sk-proj-WrongKeyWrongKeyWrongKey0123456789abcdefgh";
    let err = stack(&server, other)
        .oneshot(post("/v1/chat/completions", CHAT))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication);
    assert_eq!(err.auth_cause(), Some(AuthCause::IncorrectKey));
    assert_eq!(server.counts().total, 1, "a 401 is not retried");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("WrongKey"), "{text}");
        assert!(!text.contains("efgh"), "{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_an_outage() {
    let server = scripted(Some(KEY), (0..50).map(|_| MockResponse::status(503))).await;
    let client = test_support::http_client();
    let svc = OpenAiLayer::new()
        .base_url(server.url().parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .retry(RetryLayer::with_config(
            RetryConfig::new()
                .seed(3)
                .max_attempts(50)
                .deadline(Duration::from_secs(5)),
        ))
        .layer(client);
    let start = tokio::time::Instant::now();
    let err = svc
        .oneshot(post("/v1/chat/completions", CHAT))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert!(start.elapsed() <= Duration::from_secs(5));
    let ctx = err.retry_context().unwrap();
    assert!(ctx.attempts >= 2 && ctx.attempts < 50, "{ctx:?}");
}
