//! `reqwest_client`: the resilience stack as a reqwest-middleware middleware.
//!
//! ```sh
//! cargo run -p examples --bin reqwest_client
//! ```
//!
//! It starts the embedded mock OpenAI server (no key, no network) and calls it through a
//! `reqwest_middleware::ClientWithMiddleware` with `OpenAiMiddleware`: a chat completion
//! behind a scripted 503 (retried inside the middleware), a streaming chat completion
//! (printed as it arrives), an exhausted quota (one request, a typed error, or the 429 for
//! code that reads the status) and a request without `messages` (rejected before it is
//! sent). Each outcome is printed and checked.

use std::io::Write;

use futures_util::StreamExt;
use oai_resilience::adapter::reqwest::{ErrorMode, OpenAiMiddleware};
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::{AuthLayer, ErrorKind, OpenAiLayer};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

/// A made-up key of OpenAI's shape, which the mock requires. Never put a real key in source.
const KEY: &str = oai_resilience::mock::TEST_KEY;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#;

async fn chat(
    client: &ClientWithMiddleware,
    url: &str,
    body: &'static str,
) -> reqwest_middleware::Result<reqwest::Response> {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
}

#[tokio::main]
async fn main() {
    let server = MockServer::builder()
        .api_key(KEY)
        .script(Route::ChatCompletions, [MockResponse::status(503)])
        .start()
        .await;
    let url = server.endpoint(Route::ChatCompletions);
    println!("mock OpenAI server at {}", server.url());

    // One layer: clones of it (and everything built from them) share the pacer and the
    // retry budget. The auth layer adds the key; a key the request carries is checked instead.
    let layer = OpenAiLayer::new().auth(AuthLayer::from_key(KEY));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(layer.clone().into_reqwest_middleware())
        .build();

    // 1. A chat completion, behind a scripted 503.
    let res = chat(&client, &url, CHAT)
        .await
        .expect("the chat completion");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = json_body(res).await;
    let reply = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    println!(
        "\nchat completion: {reply:?} ({} requests: the 503 was retried)",
        server.counts().total
    );
    assert_eq!(reply, "Mock reply to: Hello");
    assert_eq!(server.counts().total, 2);

    // 2. A streaming chat completion, printed as it arrives.
    let streamed = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"tell me a story"}]}"#;
    let res = chat(&client, &url, streamed).await.expect("the stream");
    print!("streaming chat completion: ");
    let mut content = String::new();
    let mut events = res.bytes_stream();
    let mut pending = String::new();
    while let Some(chunk) = events.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: serde_json::Value = serde_json::from_str(data).expect("a JSON chunk");
            if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
                print!("{delta}");
                std::io::stdout().flush().ok();
                content.push_str(delta);
            }
        }
    }
    println!();
    assert_eq!(content, "Mock reply to: tell me a story");

    // 3. An exhausted quota: one request, not retried.
    server.set_quota_exhausted(true);
    server.reset_counts();
    let err = chat(&client, &url, CHAT).await.expect_err("a quota error");
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected the middleware's error, got {err:?}");
    };
    let err = err
        .downcast_ref::<oai_resilience::Error>()
        .expect("an oai_resilience::Error");
    println!(
        "\nquota: {} (code {:?}, {} request)\n  hint: {}",
        err.kind(),
        err.code(),
        server.counts().total,
        err.hint()
    );
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(err.code(), Some("insufficient_quota"));
    assert_eq!(server.counts().total, 1);

    // The same failure for code that reads the status: the upstream's 429 and error object.
    let by_status = ClientBuilder::new(reqwest::Client::new())
        .with(OpenAiMiddleware::new(layer.clone()).error_mode(ErrorMode::Response))
        .build();
    let res = chat(&by_status, &url, CHAT).await.expect("a response");
    let status = res.status();
    let body: serde_json::Value = json_body(res).await;
    println!(
        "quota, as a response: {status}, code {}",
        body["error"]["code"]
    );
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "insufficient_quota");
    server.set_quota_exhausted(false);

    // 4. A request without `messages`: rejected locally, nothing sent.
    server.reset_counts();
    let err = chat(&client, &url, r#"{"model":"gpt-4o-mini"}"#)
        .await
        .expect_err("a validation error");
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected the middleware's error, got {err:?}");
    };
    let err = err
        .downcast_ref::<oai_resilience::Error>()
        .expect("an oai_resilience::Error");
    println!(
        "\nmissing parameter: {} (param {:?}, {} requests sent)\n  hint: {}",
        err.kind(),
        err.param(),
        server.counts().total,
        err.hint()
    );
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert_eq!(err.param(), Some("messages"));
    assert_eq!(server.counts().total, 0);

    let metrics = layer.pace_layer().pacer().metrics();
    println!(
        "\nthe pacer shared by both clients granted {} slots",
        metrics.granted
    );
}

/// The JSON body of a response.
async fn json_body(res: reqwest::Response) -> serde_json::Value {
    let bytes = res.bytes().await.expect("a body");
    serde_json::from_slice(&bytes).expect("a JSON body")
}
