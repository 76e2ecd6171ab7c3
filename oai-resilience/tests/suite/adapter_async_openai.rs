//! The async-openai adapter end to end: an `async_openai::Client` with
//! `OpenAiLayer::into_async_openai()` as its HTTP service, against the mock server over
//! loopback.
#![cfg(all(feature = "async-openai", feature = "mock"))]

use super::stack_e2e::{failing_twice, quota_server, read_as_it_streams, ten_second_streams};
use crate::scripted;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, CreateChatCompletionResponse,
};
use async_openai::Client;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::{AuthLayer, OpenAiLayer, RetryConfig, RetryLayer};
use scripted::scripted;
use tower::ServiceExt;

const KEY: &str = oai_resilience::mock::TEST_KEY;
use test_support::CHAT;

fn layer() -> OpenAiLayer {
    OpenAiLayer::new()
        .auth(AuthLayer::from_env())
        .retry(RetryLayer::with_config(RetryConfig::new().seed(7)))
}

fn client(server: &MockServer, key: &str, layer: OpenAiLayer) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(format!("{}/v1", server.url()))
        .with_api_key(key);
    Client::with_config(config).with_http_service(layer.into_async_openai())
}

fn chat(content: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([
            async_openai::types::chat::ChatCompletionRequestUserMessage::from(content).into(),
        ])
        .build()
        .unwrap()
}

/// A chat completion of "Hello" through `client(server, key, layer)`.
async fn say_hello(
    server: &MockServer,
    key: &str,
    layer: OpenAiLayer,
) -> Result<CreateChatCompletionResponse, OpenAIError> {
    client(server, key, layer)
        .chat()
        .create(chat("Hello"))
        .await
}

/// The status and OpenAI error object of an `OpenAIError::ApiError`.
fn api_error(err: OpenAIError) -> (u16, async_openai::error::ApiError) {
    match err {
        OpenAIError::ApiError(e) => (e.status_code.as_u16(), e.api_error),
        other => panic!("not an ApiError: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn quota_is_one_request_and_an_api_error() {
    let server = quota_server(KEY).await;
    let err = say_hello(&server, KEY, layer()).await.unwrap_err();
    let (status, api) = api_error(err);
    assert_eq!(status, 429);
    assert_eq!(api.code.as_deref(), Some("insufficient_quota"));
    assert!(api.message.contains("Hint:"), "{}", api.message);
    assert_eq!(server.counts().total, 1);
}

#[tokio::test(start_paused = true)]
async fn local_rejections_send_nothing() {
    let server = MockServer::builder().api_key(KEY).start().await;

    // A missing `messages` (async-openai's typed request always has them: sent as JSON).
    let err = client(&server, KEY, layer())
        .chat()
        .create_byot::<_, serde_json::Value>(serde_json::json!({"model": "gpt-4o-mini"}))
        .await
        .unwrap_err();
    let (status, api) = api_error(err);
    assert_eq!(status, 400);
    assert_eq!(api.code.as_deref(), Some("missing_required_parameter"));
    assert_eq!(api.param.as_deref(), Some("messages"));

    // A placeholder key.
    let err = say_hello(&server, "sk-...", layer()).await.unwrap_err();
    let (status, api) = api_error(err);
    assert_eq!(status, 401);
    assert_eq!(api.code.as_deref(), Some("invalid_api_key"));

    assert_eq!(server.counts().total, 0);
}

#[tokio::test(start_paused = true)]
async fn transient_503s_are_retried_by_the_stack_alone() {
    let server = failing_twice(KEY, [503, 503]).await;
    let res = say_hello(&server, KEY, layer()).await.unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some("Mock reply to: Hello")
    );
    assert_eq!(server.counts().total, 3);

    // async-openai's own retry is gone: with 2 attempts, an outage costs 2 requests.
    server.reset_counts();
    server.script(
        Route::ChatCompletions,
        (0..5).map(|_| MockResponse::status(503)),
    );
    let two = layer().retry(RetryLayer::with_config(
        RetryConfig::new().max_attempts(2).seed(7),
    ));
    let err = say_hello(&server, KEY, two).await.unwrap_err();
    assert_eq!(api_error(err).0, 503);
    assert_eq!(server.counts().total, 2);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_chat_completion_arrives_whole_as_it_streams() {
    let server = ten_second_streams(KEY).await;
    let start = tokio::time::Instant::now();
    // (With async-openai's `byot` feature, which the test above uses, `create_stream` leaves
    // setting `stream` to the caller.)
    let mut request = chat("one two three");
    request.stream = Some(true);
    let stream = client(&server, KEY, layer())
        .chat()
        .create_stream(request)
        .await
        .unwrap();
    // Not buffered: the first chunk comes at once, the last after the stream's 10 s.
    let chunks = read_as_it_streams(start, stream, "chunk").await;
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    let content: String = chunks
        .iter()
        .filter_map(|chunk| chunk.choices.first()?.delta.content.as_deref())
        .collect();
    assert_eq!(content, "Mock reply to: one two three");
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_pacer() {
    let server = MockServer::builder().api_key(KEY).start().await;
    let layer = layer();
    let service = layer.clone().into_async_openai();
    let config = || {
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", server.url()))
            .with_api_key(KEY)
    };
    let a = Client::with_config(config()).with_http_service(service.clone());
    let b = Client::with_config(config()).with_http_service(service);
    a.chat().create(chat("a")).await.unwrap();
    b.chat().create(chat("b")).await.unwrap();
    assert_eq!(layer.pace_layer().pacer().metrics().granted, 2);
    assert_eq!(server.counts().total, 2);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_replayed_through_the_factory() {
    let server = scripted(Some(KEY), [MockResponse::status(503)]).await;
    // A factory whose body is a stream (as a multipart form is) and whose content type
    // changes with each build (as a multipart boundary does).
    let builds = Arc::new(AtomicU32::new(0));
    let url = server.endpoint(Route::ChatCompletions);
    let counter = builds.clone();
    let factory = HttpRequestFactory::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let url = url.clone();
        async move {
            let body = reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from_static(
                CHAT.as_bytes(),
            )));
            Ok(reqwest::Client::new()
                .post(url)
                .bearer_auth(KEY)
                .header("content-type", format!("text/plain; build={n}"))
                .body(body)
                .build()?)
        }
    });
    let res = layer().into_async_openai().oneshot(factory).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(builds.load(Ordering::SeqCst), 2);
    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    for (i, req) in sent.iter().enumerate() {
        assert_eq!(req.body, CHAT.as_bytes());
        assert_eq!(
            req.headers["content-type"],
            format!("text/plain; build={i}").as_str()
        );
    }
}
