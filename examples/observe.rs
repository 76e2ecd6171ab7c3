//! The stack's hooks recorded as metrics: a small workload against the embedded mock server
//! through `OpenAiLayer` with a `MetricsObserver`, then every metric the recorder holds, by
//! name (OpenTelemetry names where one exists, `oai_resilience.*` for ours).
//!
//! Run: `cargo run -p examples --bin observe`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use oai_resilience::mock::{MockResponse, MockServer, Route};
use oai_resilience::observe::MetricsObserver;
use oai_resilience::stack::ClientBody;
use oai_resilience::{AuthLayer, ErrorKind, OpenAiLayer, RetryConfig, RetryLayer};
use tower::{Service, ServiceExt};

const KEY: &str = "sk-proj-ExampleExampleExampleExample0000";

fn chat(server: &MockServer, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(server.endpoint(Route::ChatCompletions))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

const HELLO: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;
const INVALID: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"temperature":7}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("no other recorder");
    MetricsObserver::describe();

    let server = MockServer::start().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ClientBody>();
    let quick = RetryConfig::new()
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
        .seed(1);
    let mut svc = OpenAiLayer::new()
        .observer(Arc::new(MetricsObserver::new()))
        .auth(AuthLayer::from_key(KEY))
        .retry(RetryLayer::with_config(quick))
        .service_for::<Full<Bytes>, _>(client);

    // A success after two server errors, a rate limit with retry-after-ms, an exhausted quota,
    // a request refused by validation, and two plain successes.
    server.script(
        Route::ChatCompletions,
        [
            MockResponse::status(503),
            MockResponse::status(503),
            MockResponse::ok(),
            MockResponse::rate_limited(Duration::from_millis(20)),
            MockResponse::ok(),
            MockResponse::quota_exceeded(),
        ],
    );
    let mut outcomes = Vec::new();
    for body in [HELLO, HELLO, HELLO, INVALID, HELLO, HELLO] {
        let res = svc.ready().await.unwrap().call(chat(&server, body)).await;
        outcomes.push(res.map(|r| r.status().as_u16()).map_err(|e| e.kind()));
    }
    println!("outcomes: {outcomes:?}");
    assert_eq!(outcomes[0], Ok(200));
    assert_eq!(outcomes[1], Ok(200));
    assert_eq!(outcomes[2], Err(ErrorKind::QuotaExceeded));
    assert_eq!(outcomes[3], Err(ErrorKind::InvalidParameter));

    let mut names = Vec::new();
    for (key, unit, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let value = match value {
            DebugValue::Counter(n) => format!("counter {n}"),
            DebugValue::Gauge(g) => format!("gauge {}", g.into_inner()),
            DebugValue::Histogram(h) => {
                let sum: f64 = h.iter().map(|x| x.into_inner()).sum();
                format!("histogram count={} sum={sum:.3}", h.len())
            }
        };
        let unit = unit.map_or(String::new(), |u| format!(" ({})", u.as_str()));
        println!(
            "{}{unit} {{{}}}: {value}",
            key.key().name(),
            labels.join(", ")
        );
        names.push(key.key().name().to_owned());
    }
    for expected in [
        "gen_ai.client.operation.duration",
        "http.client.request.duration",
        "http.request.resend_count",
        "oai_resilience.retries",
        "oai_resilience.rate_limited",
        "oai_resilience.local_rejections",
        "oai_resilience.gave_up",
        "oai_resilience.retry_budget.balance",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not recorded"
        );
    }
}
