//! The stack's hooks recorded as metrics, and its tracing spans: a small workload against the
//! embedded mock server through `OpenAiLayer` with a `MetricsObserver`; each `call` and
//! `attempt` span is printed with its fields as it closes (each attempt, then its call), then
//! every metric the recorder holds, by name (OpenTelemetry names where one exists,
//! `oai_resilience.*` for ours). A `tracing-opentelemetry` layer in place of the printing one
//! exports the same spans as traces.
//!
//! Run: `cargo run -p examples --bin observe`

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Prints each span of the retry loop with its fields when it closes, and counts them.
#[derive(Clone, Default)]
struct PrintSpans {
    calls: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

/// A span's fields as `name=value` text, kept in the span's extensions.
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for PrintSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut ext = span.extensions_mut();
        values.record(ext.get_mut::<Fields>().unwrap());
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let indent = if span.parent().is_some() { "  " } else { "" };
        match span.name() {
            "call" => self.calls.fetch_add(1, Ordering::Relaxed),
            _ => self.attempts.fetch_add(1, Ordering::Relaxed),
        };
        let ext = span.extensions();
        let fields = ext.get::<Fields>().map_or("", |f| &f.0);
        println!("{indent}span {}:{fields}", span.name());
    }
}

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
    let spans = PrintSpans::default();
    tracing_subscriber::registry()
        .with(
            spans.clone().with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("oai_resilience::retry", tracing::Level::DEBUG),
            ),
        )
        .init();

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
    // Five calls reached the retry loop (the invalid one was refused before it), in 8 attempts:
    // 503, 503, 200; 429, 200; the quota 429; 200; 200.
    assert_eq!(spans.calls.load(Ordering::Relaxed), 5);
    assert_eq!(spans.attempts.load(Ordering::Relaxed), 8);
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
        "oai_resilience.resends",
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
