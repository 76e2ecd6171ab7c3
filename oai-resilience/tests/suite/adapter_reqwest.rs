//! The reqwest-middleware adapter end to end: a `ClientWithMiddleware` with `OpenAiMiddleware`
//! against the mock server over loopback.
#![cfg(all(feature = "reqwest", feature = "mock"))]

use super::stack_e2e::{failing_twice, quota_server, read_as_it_streams, ten_second_streams};
use crate::scripted;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::adapter::reqwest::{ErrorMode, OpenAiMiddleware};
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::{
    AuthCause, AuthLayer, Error, ErrorKind, OpenAiLayer, RetryConfig, RetryLayer,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use scripted::scripted;
use tower::{Layer, ServiceExt};

const KEY: &str = oai_resilience::mock::TEST_KEY;
use test_support::CHAT;

fn layer(key: &str) -> OpenAiLayer {
    OpenAiLayer::new()
        .auth(AuthLayer::from_key(key))
        .retry(RetryLayer::with_config(RetryConfig::new().seed(7)))
}

fn client(middleware: OpenAiMiddleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

async fn post(
    client: &ClientWithMiddleware,
    server: &MockServer,
    body: &'static str,
) -> reqwest_middleware::Result<reqwest::Response> {
    client
        .post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
}

/// The `oai_resilience::Error` a `reqwest_middleware::Error` carries.
fn carried(err: &reqwest_middleware::Error) -> &Error {
    match err {
        reqwest_middleware::Error::Middleware(e) => {
            e.downcast_ref::<Error>().expect("an oai_resilience::Error")
        }
        other => panic!("not a middleware error: {other:?}"),
    }
}

async fn json(res: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn quota_is_one_request_and_a_typed_error() {
    let server = quota_server(KEY).await;

    let err = post(&client(OpenAiMiddleware::new(layer(KEY))), &server, CHAT)
        .await
        .unwrap_err();
    let err = carried(&err);
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(err.code(), Some("insufficient_quota"));
    assert_eq!(server.counts().total, 1);

    // As a response: the upstream's 429 and error object, for code that reads the status.
    let by_status = client(OpenAiMiddleware::new(layer(KEY)).error_mode(ErrorMode::Response));
    let res = post(&by_status, &server, CHAT).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-should-retry"], "false");
    assert_eq!(res.url().as_str(), server.endpoint(Route::ChatCompletions));
    let body = json(res).await;
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(server.counts().total, 2);
}

#[tokio::test(start_paused = true)]
async fn local_rejections_send_nothing() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let as_errors = client(OpenAiMiddleware::new(layer(KEY)));
    let as_responses = client(OpenAiMiddleware::new(layer(KEY)).error_mode(ErrorMode::Response));

    // A missing `messages`.
    let missing = r#"{"model":"gpt-4o-mini"}"#;
    let err = post(&as_errors, &server, missing).await.unwrap_err();
    let err = carried(&err);
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert_eq!(err.param(), Some("messages"));
    let res = post(&as_responses, &server, missing).await.unwrap();
    assert_eq!(res.status(), 400);
    let body = json(res).await;
    assert_eq!(body["error"]["code"], "missing_required_parameter");
    assert_eq!(body["error"]["param"], "messages");

    // A placeholder key, in the request's own header as reqwest users set it.
    let no_key = || OpenAiMiddleware::new(OpenAiLayer::new().auth(AuthLayer::from_env()));
    for middleware in [no_key(), no_key().error_mode(ErrorMode::Response)] {
        let mode = client(middleware);
        let sent = mode
            .post(server.endpoint(Route::ChatCompletions))
            .bearer_auth("sk-...")
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
            .await;
        match sent {
            Err(err) => {
                let err = carried(&err);
                assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
                assert_eq!(err.auth_cause(), Some(AuthCause::Placeholder));
            }
            Ok(res) => {
                assert_eq!(res.status(), 401);
                assert_eq!(json(res).await["error"]["code"], "invalid_api_key");
            }
        }
    }

    assert_eq!(server.counts().total, 0);
}

/// A middleware that shows each request passing through it, with its extensions, to its
/// closure, then sends it on.
struct Tap<F>(F);

#[async_trait::async_trait]
impl<F> Middleware for Tap<F>
where
    F: Fn(&reqwest::Request, &http::Extensions) + Send + Sync + 'static,
{
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        (self.0)(&req, extensions);
        next.run(req, extensions).await
    }
}

/// A middleware that counts the requests passing through it in `count`, checking that each
/// carries the caller's extension.
fn count_into(count: &Arc<AtomicU32>) -> impl Middleware {
    let count = count.clone();
    Tap(move |_: &reqwest::Request, extensions: &http::Extensions| {
        count.fetch_add(1, Ordering::SeqCst);
        // The caller's extensions reach every attempt.
        assert_eq!(extensions.get::<&'static str>(), Some(&"caller"));
    })
}

#[tokio::test(start_paused = true)]
async fn transient_503s_are_retried_through_the_rest_of_the_chain() {
    let server = failing_twice(KEY, [503, 503]).await;
    let (before, after) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(count_into(&before))
        .with(OpenAiMiddleware::new(layer(KEY)))
        .with(count_into(&after))
        .build();
    let res = client
        .post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/json")
        .body(CHAT)
        .with_extension("caller")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(json(res).await["object"], "chat.completion");
    assert_eq!(server.counts().total, 3);
    // Middlewares after it run per attempt, those before it once per call.
    assert_eq!(after.load(Ordering::SeqCst), 3);
    assert_eq!(before.load(Ordering::SeqCst), 1);
    let retries: Vec<_> = server
        .requests()
        .iter()
        .map(|r| {
            r.headers["x-stainless-retry-count"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(retries, ["0", "1", "2"]);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_sent_once_and_said_not_replayable() {
    let server = scripted(Some(KEY), [MockResponse::status(503)]).await;
    // Not JSON to the validation layer, so it is not buffered: a stream, sent once.
    let stream = reqwest::Body::wrap(Full::new(Bytes::from_static(CHAT.as_bytes())));
    let err = client(OpenAiMiddleware::new(layer(KEY)))
        .post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/octet-stream")
        .body(stream)
        .send()
        .await
        .unwrap_err();
    let err = carried(&err);
    assert_eq!(err.kind(), ErrorKind::NotReplayable);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(server.counts().total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_chat_completion_arrives_whole_as_it_streams() {
    let server = ten_second_streams(KEY).await;
    let start = tokio::time::Instant::now();
    let res = post(
        &client(OpenAiMiddleware::new(layer(KEY))),
        &server,
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"one two three"}]}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Not buffered: the first event comes at once, the last after the stream's 10 s.
    let chunks = read_as_it_streams(start, res.bytes_stream(), "event").await;
    let text = String::from_utf8(chunks.concat()).unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let content: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "Mock reply to: one two three");
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_pacer_with_the_tower_stack() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let layer = layer(KEY);
    let middleware = OpenAiMiddleware::new(layer.clone());
    let (a, b) = (client(middleware.clone()), client(middleware));
    let c = client(layer.clone().into_reqwest_middleware());
    for client in [&a, &b, &c] {
        assert_eq!(post(client, &server, CHAT).await.unwrap().status(), 200);
    }
    // A hyper stack from the same layer.
    let hyper = layer.layer(test_support::http_client());
    let req = http::Request::post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap();
    assert_eq!(hyper.oneshot(req).await.unwrap().status(), 200);

    assert_eq!(layer.pace_layer().pacer().metrics().granted, 4);
    assert_eq!(server.counts().total, 4);
}

/// The URL and the timeout of a request.
type UrlAndTimeout = (String, Option<Duration>);

/// A middleware that records the URL and the timeout of each request passing through it in
/// `seen`.
fn record_into(seen: &Arc<std::sync::Mutex<Vec<UrlAndTimeout>>>) -> impl Middleware {
    let seen = seen.clone();
    Tap(move |req: &reqwest::Request, _: &http::Extensions| {
        let url_and_timeout = (req.url().to_string(), req.timeout().copied());
        seen.lock().unwrap().push(url_and_timeout);
    })
}

/// Each attempt is sent to the call's URL (query included) with the call's timeout, with or
/// without reqwest's per-request settings, and the response carries the URL.
#[tokio::test]
async fn every_attempt_has_the_url_and_the_timeout_of_the_call() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let url = format!("{}?trace=a%20b", server.endpoint(Route::ChatCompletions));
    let fast = RetryLayer::with_config(
        RetryConfig::new()
            .seed(7)
            .base_delay(Duration::from_millis(1)),
    );
    for timeout in [None, Some(Duration::from_secs(30))] {
        server.script(
            Route::ChatCompletions,
            [MockResponse::status(503), MockResponse::status(503)],
        );
        let seen = Arc::default();
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(OpenAiMiddleware::new(layer(KEY).retry(fast.clone())))
            .with(record_into(&seen))
            .build();
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(CHAT);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.url().as_str(), url);
        assert_eq!(json(res).await["object"], "chat.completion");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec![(url.clone(), timeout); 3], "timeout {timeout:?}");
    }
}
