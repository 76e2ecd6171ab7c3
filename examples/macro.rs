//! `#[openai_call]` against the embedded mock server: one function body, run under the retry
//! layer's policy, with local key and parameter checks before the first attempt and errors
//! that say which call failed, how, and after what.
//!
//! `cargo run -p examples --bin macro`

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::classify::Classify;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::{openai_call, ClassifyLayer, Error, ErrorKind};
use serde_json::{json, Value};
use tower::{Service, ServiceBuilder, ServiceExt};

const KEY: &str = oai_resilience::mock::TEST_KEY;

/// A minimal OpenAI client: hyper under the classify layer, so failures are typed errors.
#[derive(Clone)]
struct OpenAi {
    http: Classify<Client<HttpConnector, Full<Bytes>>>,
    base_url: String,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl OpenAi {
    fn new(base_url: String) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        OpenAi {
            http: ServiceBuilder::new()
                .layer(ClassifyLayer::new())
                .service(client),
            base_url,
        }
    }

    /// Sends one request; the attribute decides whether to send another.
    #[openai_call(
        max_attempts = 4,
        timeout = "30s",
        api_key = api_key,
        validate(body = "POST /v1/chat/completions"),
        skip(api_key),
    )]
    async fn chat(&self, api_key: &str, body: &Value) -> Result<Value, Error> {
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {api_key}"))
            .map_err(|e| Error::new(ErrorKind::MalformedApiKey).with_source(e))?;
        auth.set_sensitive(true);
        let request = http::Request::post(format!("{}/v1/chat/completions", self.base_url))
            .header("content-type", "application/json")
            .header("authorization", auth)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::new(ErrorKind::Internal).with_source(e))?;
        let response = self.http.clone().ready().await?.call(request).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(Error::from_service_error)?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| Error::new(ErrorKind::Internal).with_source(e))
    }
}

fn report(what: &str, err: &Error) {
    println!("{what}:");
    println!("  error:    {err}");
    if let Some(call) = err.call_context() {
        println!("  function: {}", call.function);
        println!("  args:     {:?}", call.args);
    }
    if let Some(retry) = err.retry_context() {
        println!(
            "  attempts: {} in {:?}, stopped: {:?}",
            retry.attempts, retry.elapsed, retry.stop
        );
        for o in &retry.outcomes {
            println!(
                "    attempt {}: {} {:?}, then wait {:?}",
                o.attempt,
                o.kind,
                o.status.map(|s| s.as_u16()),
                o.delay
            );
        }
    }
    println!("  request id of the last response: {:?}", err.request_id());
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = MockServer::builder()
        .api_key(KEY)
        .script(
            Route::ChatCompletions,
            [
                MockResponse::status(503),
                MockResponse::rate_limited(std::time::Duration::from_millis(300)),
            ],
        )
        .start()
        .await;
    let openai = OpenAi::new(server.url());
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
    });

    // 1. A 503, then a 429 with a 300 ms hint, then the answer: one call for the caller.
    let answer = openai
        .chat(KEY, &body)
        .await
        .expect("the third attempt succeeds");
    println!(
        "1. answered after {} requests: {}",
        server.counts().total,
        answer["choices"][0]["message"]["content"]
    );

    // 2. An exhausted quota is not retried: one request, and the error says why.
    server.reset_counts();
    server.set_quota_exhausted(true);
    let err = openai.chat(KEY, &body).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    report("2. quota exhausted", &err);
    println!("  requests sent: {}", server.counts().total);
    server.set_quota_exhausted(false);

    // 3. A bad parameter and a pasted key with its line break never leave the process.
    server.reset_counts();
    let bad = json!({"model": "gpt-4o-mini", "temperature": 3, "messages": []});
    let err = openai.chat(KEY, &bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    report("3. invalid body", &err);
    let pasted = format!("{KEY}\n");
    let err = openai.chat(&pasted, &body).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    report("4. malformed key", &err);
    assert_eq!(server.counts().total, 0);
    println!("requests sent for 3 and 4: {}", server.counts().total);
}
