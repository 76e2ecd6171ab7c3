//! `async_openai`: the resilience stack as async-openai's HTTP service.
//!
//! ```sh
//! cargo run -p examples --bin async_openai
//! ```
//!
//! It starts the embedded mock OpenAI server (no key, no network) and calls it with an
//! `async_openai::Client` whose HTTP service is `OpenAiLayer::into_async_openai()`: a chat
//! completion behind a scripted 503 (retried by the stack; async-openai's own retry is
//! replaced), a streaming chat completion (printed as it arrives), an exhausted quota (one
//! request, `OpenAIError::ApiError` with code `insufficient_quota`) and a request without
//! `messages` (rejected before it is sent, as OpenAI's 400 `missing_required_parameter`).
//! Each outcome is printed and checked.

use std::io::Write;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use futures_util::StreamExt;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::OpenAiLayer;

/// A made-up key of OpenAI's shape, which the mock requires. Never put a real key in source.
const KEY: &str = oai_resilience::mock::TEST_KEY;

fn chat(content: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessage::from(content).into()])
        .build()
        .expect("a chat request")
}

/// The status and OpenAI error object of an `OpenAIError::ApiError`.
fn api_error(err: OpenAIError) -> (u16, async_openai::error::ApiError) {
    match err {
        OpenAIError::ApiError(e) => (e.status_code.as_u16(), e.api_error),
        other => panic!("expected OpenAIError::ApiError, got {other:?}"),
    }
}

#[tokio::main]
async fn main() {
    let server = MockServer::builder()
        .api_key(KEY)
        .script(Route::ChatCompletions, [MockResponse::status(503)])
        .start()
        .await;
    println!("mock OpenAI server at {}", server.url());

    // async-openai sends its key; the stack checks it before anything is sent.
    let layer = OpenAiLayer::new();
    let config = OpenAIConfig::new()
        .with_api_base(format!("{}/v1", server.url()))
        .with_api_key(KEY);
    let client = Client::with_config(config).with_http_service(layer.clone().into_async_openai());

    // 1. A chat completion, behind a scripted 503.
    let res = client
        .chat()
        .create(chat("Hello"))
        .await
        .expect("the chat completion");
    let reply = res.choices[0].message.content.clone().unwrap_or_default();
    println!(
        "\nchat completion: {reply:?} ({} requests: the 503 was retried by the stack)",
        server.counts().total
    );
    assert_eq!(reply, "Mock reply to: Hello");
    assert_eq!(server.counts().total, 2);

    // 2. A streaming chat completion, printed as it arrives.
    // (`stream` is set here because with async-openai's `byot` feature, used in 4.,
    // `create_stream` leaves it to the caller.)
    let mut request = chat("tell me a story");
    request.stream = Some(true);
    let mut stream = client
        .chat()
        .create_stream(request)
        .await
        .expect("the stream");
    print!("streaming chat completion: ");
    let mut content = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        if let Some(delta) = chunk
            .choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
        {
            print!("{delta}");
            std::io::stdout().flush().ok();
            content.push_str(delta);
        }
    }
    println!();
    assert_eq!(content, "Mock reply to: tell me a story");

    // 3. An exhausted quota: one request, not retried by the stack nor by async-openai.
    server.set_quota_exhausted(true);
    server.reset_counts();
    let err = client
        .chat()
        .create(chat("Hello"))
        .await
        .expect_err("a quota error");
    let (status, api) = api_error(err);
    println!(
        "\nquota: {status} {:?} ({} request)\n  message: {}",
        api.code,
        server.counts().total,
        api.message
    );
    assert_eq!(status, 429);
    assert_eq!(api.code.as_deref(), Some("insufficient_quota"));
    assert_eq!(server.counts().total, 1);
    server.set_quota_exhausted(false);

    // 4. A request without `messages` (async-openai's typed request always has them: a JSON
    //    value through `create_byot`): rejected locally, nothing sent.
    server.reset_counts();
    let err = client
        .chat()
        .create_byot::<_, serde_json::Value>(serde_json::json!({"model": "gpt-4o-mini"}))
        .await
        .expect_err("a validation error");
    let (status, api) = api_error(err);
    println!(
        "\nmissing parameter: {status} {:?} param {:?} ({} requests sent)\n  message: {}",
        api.code,
        api.param,
        server.counts().total,
        api.message
    );
    assert_eq!(status, 400);
    assert_eq!(api.code.as_deref(), Some("missing_required_parameter"));
    assert_eq!(api.param.as_deref(), Some("messages"));
    assert_eq!(server.counts().total, 0);
}
