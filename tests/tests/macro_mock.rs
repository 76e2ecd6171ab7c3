//! `#[openai_call]` end to end over loopback HTTP against the mock server, in virtual time:
//! a body that sends one request through the classify layer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::classify::Classify;
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::{openai_call, ClassifyLayer, DelaySource, Error, ErrorKind, StopReason};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use test_support::KEY;

struct Api {
    http: Classify<Client<HttpConnector, Full<Bytes>>>,
    url: String,
}

impl Api {
    fn new(server: &MockServer) -> Self {
        let client = test_support::http_client();
        Api {
            http: ServiceBuilder::new()
                .layer(ClassifyLayer::new())
                .service(client),
            url: server.endpoint(Route::ChatCompletions),
        }
    }

    #[openai_call(
        retry = oai_resilience::retry::RetryConfig::new().seed(11).no_budget(),
        max_attempts = 4,
        api_key = api_key,
        validate(body = "POST /v1/chat/completions"),
        skip(self, api_key),
    )]
    async fn chat(&self, api_key: &str, body: &Value) -> Result<Value, Error> {
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {api_key}")).unwrap();
        auth.set_sensitive(true);
        let req = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("authorization", auth)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let res = self.http.clone().ready().await?.call(req).await?;
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(Error::from_service_error)?
            .to_bytes();
        Ok(serde_json::from_slice(&bytes).unwrap())
    }
}

fn hello() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]})
}

#[tokio::test(start_paused = true)]
async fn retries_over_http_with_the_server_hint() {
    // A 503, then a 429 whose hint asks for 2 s.
    let faults = [
        MockResponse::status(503),
        MockResponse::rate_limited(Duration::from_secs(2)),
    ];
    let server = MockServer::builder()
        .api_key(KEY)
        .script(Route::ChatCompletions, faults)
        .start()
        .await;
    let api = Api::new(&server);
    let start = Instant::now();
    let answer = api.chat(KEY, &hello()).await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(server.counts().total, 3);
    // The 429's hint (2 s, plus at most 10 % jitter) was waited, in virtual time.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn final_error_over_http_names_the_last_request() {
    let server = MockServer::builder()
        .api_key(KEY)
        .script(
            Route::ChatCompletions,
            (0..4).map(|_| MockResponse::status(503)),
        )
        .start()
        .await;
    let api = Api::new(&server);
    let err = api.chat(KEY, &hello()).await.unwrap_err();
    let sent = server.requests();
    assert_eq!(sent.len(), 4);
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert_eq!(err.request_id(), Some(sent[3].request_id.as_str()));
    let retry = err.retry_context().unwrap();
    assert_eq!((retry.attempts, retry.stop), (4, StopReason::MaxAttempts));
    assert!(retry
        .outcomes
        .iter()
        .all(|o| o.status.map(|s| s.as_u16()) == Some(503)));
    assert_eq!(retry.outcomes[0].delay_source, Some(DelaySource::Backoff));
    let call = err.call_context().unwrap();
    assert_eq!(call.function, "macro_mock::Api::chat");
    assert_eq!(call.args.len(), 1);
    assert_eq!(call.args[0].0, "body");
    assert!(!format!("{err:?}").contains("Zq3xV9"));
}

#[tokio::test(start_paused = true)]
async fn quota_and_local_failures_cost_at_most_one_request() {
    let server = MockServer::builder()
        .api_key(KEY)
        .quota_exhausted(true)
        .start()
        .await;
    let api = Api::new(&server);
    let err = api.chat(KEY, &hello()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(server.counts().total, 1);

    let no_messages = json!({"model": "gpt-4o-mini"});
    let err = api.chat(KEY, &no_messages).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    assert_eq!(err.param(), Some("messages"));
    let err = api.chat("your-api-key", &hello()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    assert_eq!(server.counts().total, 1, "the local checks sent nothing");
}
