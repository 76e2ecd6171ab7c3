//! The retry loop's `tracing` spans: one `call` span per call, one `attempt` span per attempt,
//! with the OpenTelemetry field names, recorded by a small layer.
//!
//! The layer is the binary's global subscriber (a thread-local one can miss callsites whose
//! interest another thread cached, see `test_support::capture`); each test runs on its own
//! thread with a current-thread runtime, and the layer keeps what it sees per thread.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::observe::RequestModel;
use oai_resilience::retry::{call, RetryConfig, RetryLayer};
use oai_resilience::{ClassifyLayer, Error, ErrorKind, ValidateLayer};
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

#[allow(dead_code)]
#[path = "support/retry_fixtures.rs"]
mod retry_fixtures;

use retry_fixtures::{answering, config, Body};

/// A closed span: its name, its parent's name, its fields and the messages of its events.
#[derive(Debug, Clone, Default)]
struct Closed {
    name: &'static str,
    parent: Option<&'static str>,
    fields: BTreeMap<String, String>,
    events: Vec<BTreeMap<String, String>>,
}

impl Closed {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

thread_local! {
    static CLOSED: RefCell<Vec<Closed>> = const { RefCell::new(Vec::new()) };
    static ROOT_EVENTS: RefCell<Vec<BTreeMap<String, String>>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Recording;

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recording {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("the new span");
        let mut closed = Closed {
            name: span.name(),
            parent: span.parent().map(|p| p.name()),
            ..Closed::default()
        };
        attrs.record(&mut Fields(&mut closed.fields));
        span.extensions_mut().insert(closed);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a recorded span");
        let mut ext = span.extensions_mut();
        let closed = ext.get_mut::<Closed>().expect("a span of this layer");
        values.record(&mut Fields(&mut closed.fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        match ctx.event_span(event) {
            Some(span) => {
                let mut ext = span.extensions_mut();
                if let Some(closed) = ext.get_mut::<Closed>() {
                    closed.events.push(fields);
                }
            }
            None => ROOT_EVENTS.with(|e| e.borrow_mut().push(fields)),
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("a closing span");
        let closed = span.extensions_mut().remove::<Closed>();
        if let Some(closed) = closed {
            CLOSED.with(|c| c.borrow_mut().push(closed));
        }
    }
}

/// Installs the recording layer once per binary and clears this thread's records.
fn recording() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::registry()
            .with(Recording.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG))
            .init();
    });
    CLOSED.with(|c| c.borrow_mut().clear());
    ROOT_EVENTS.with(|c| c.borrow_mut().clear());
}

/// The spans this thread closed, in closing order.
fn closed() -> Vec<Closed> {
    CLOSED.with(|c| c.borrow().clone())
}

fn named<'a>(spans: &'a [Closed], name: &str) -> Vec<&'a Closed> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// An upstream that answers from `codes` in order (the last repeats), with request ids
/// `req_1`, `req_2`, …
fn scripted<B: Send + 'static>(
    codes: &'static [u16],
) -> impl Service<Request<B>, Response = Response<Body>, Error = Error> + Clone {
    answering(codes, |_req: &Request<B>, code, i| {
        tracing::debug!("upstream answers");
        let res = Response::builder()
            .status(code)
            .header("x-request-id", format!("req_{}", i + 1));
        if code == 429 {
            let body = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
            return res
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
        }
        res.body(Full::new(Bytes::new())).unwrap()
    })
}

/// A chat-completions POST to an absolute URI, with the model as a [`RequestModel`].
fn chat() -> Request<Body> {
    let mut req = Request::post("http://api.test:8080/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut()
        .insert(RequestModel(Arc::from("gpt-4o-mini")));
    req
}

#[tokio::test(start_paused = true)]
async fn three_attempts_make_one_call_span_and_three_attempt_spans() {
    recording();
    let svc = RetryLayer::with_config(config()).layer(scripted(&[503, 503, 200]));
    let res = svc.oneshot(chat()).await.unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    let spans = closed();

    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1, "{spans:#?}");
    let call = calls[0];
    for (field, value) in [
        ("otel.name", "chat gpt-4o-mini"),
        ("otel.kind", "client"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("server.address", "api.test"),
        ("oai_resilience.attempts", "3"),
        ("http.request.resend_count", "2"),
        ("oai_resilience.request_id", "req_3"),
    ] {
        assert_eq!(call.field(field), Some(value), "{field} in {call:#?}");
    }
    for absent in [
        "error.type",
        "oai_resilience.stop_reason",
        "otel.status_code",
    ] {
        assert_eq!(call.field(absent), None, "{absent} in {call:#?}");
    }

    let attempts = named(&spans, "attempt");
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    let expected = [
        ("1", "503", Some("server_error"), None, Some("100")),
        ("2", "503", Some("server_error"), Some("1"), Some("200")),
        ("3", "200", None, Some("2"), None),
    ];
    for (span, (n, status, error, resends, delay)) in attempts.iter().zip(expected) {
        assert_eq!(span.parent, Some("call"));
        assert_eq!(span.field("oai_resilience.attempt"), Some(n));
        assert_eq!(span.field("otel.name"), Some("POST"));
        assert_eq!(span.field("http.request.method"), Some("POST"));
        assert_eq!(span.field("url.path"), Some("/v1/chat/completions"));
        assert_eq!(span.field("server.address"), Some("api.test"));
        assert_eq!(span.field("server.port"), Some("8080"));
        assert_eq!(span.field("http.response.status_code"), Some(status));
        assert_eq!(span.field("error.type"), error);
        assert_eq!(
            span.field("otel.status_code"),
            error.map(|_| "ERROR"),
            "{span:#?}"
        );
        assert_eq!(span.field("http.request.resend_count"), resends);
        let id = format!("req_{n}");
        assert_eq!(span.field("oai_resilience.request_id"), Some(&*id));
        // The upstream's own event nests under the attempt; a retry's delay is an event of
        // the attempt that failed.
        let messages: Vec<&str> = span
            .events
            .iter()
            .filter_map(|e| e.get("message").map(String::as_str))
            .collect();
        assert!(messages.contains(&"upstream answers"), "{span:#?}");
        let retrying = span
            .events
            .iter()
            .find(|e| e.get("message").map(String::as_str) == Some("retrying"));
        assert_eq!(
            retrying.and_then(|e| e.get("delay_ms")).map(String::as_str),
            delay,
            "{span:#?}"
        );
    }
    // The call span closes after its attempts.
    assert_eq!(spans.last().map(|s| s.name), Some("call"));
}

#[tokio::test(start_paused = true)]
async fn a_call_that_gives_up_records_the_error_and_the_stop_reason() {
    recording();
    let svc = RetryLayer::with_config(config()).layer(scripted(&[429]));
    let err = svc.oneshot(chat()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
    let spans = closed();
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1);
    for (field, value) in [
        ("error.type", "quota_exceeded"),
        ("oai_resilience.stop_reason", "not_retryable"),
        ("otel.status_code", "ERROR"),
        ("oai_resilience.attempts", "1"),
        ("http.request.resend_count", "0"),
        ("oai_resilience.request_id", "req_1"),
    ] {
        assert_eq!(calls[0].field(field), Some(value), "{field}");
    }
    let attempts = named(&spans, "attempt");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].field("http.response.status_code"), Some("429"));
    assert_eq!(attempts[0].field("error.type"), Some("quota_exceeded"));
    // The decision not to retry is an event of the attempt.
    assert!(attempts[0]
        .events
        .iter()
        .any(
            |e| e.get("message").map(String::as_str) == Some("not retrying")
                && e.get("stop").map(String::as_str) == Some("NotRetryable")
        ));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_during_an_attempt_ends_both_spans_as_a_timeout() {
    recording();
    let hanging = ClassifyLayer::new().layer(service_fn(|_req: Request<Body>| async {
        std::future::pending::<Result<Response<Body>, Infallible>>().await
    }));
    let cfg = config().deadline(Duration::from_secs(1));
    let err = RetryLayer::with_config(cfg)
        .layer(hanging)
        .oneshot(chat())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let spans = closed();
    let attempts = named(&spans, "attempt");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].field("error.type"), Some("timeout"));
    assert_eq!(attempts[0].field("http.response.status_code"), None);
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].field("oai_resilience.stop_reason"),
        Some("deadline")
    );
    assert_eq!(calls[0].field("error.type"), Some("timeout"));
}

#[tokio::test(start_paused = true)]
async fn retry_call_runs_each_attempt_in_its_span() {
    recording();
    let answer = call(&config(), |attempt| async move {
        tracing::info!(attempt, "inside the attempt");
        if attempt < 2 {
            Err(Error::new(ErrorKind::ServerError))
        } else {
            Ok(7)
        }
    })
    .await
    .unwrap();
    assert_eq!(answer, 7);
    let spans = closed();
    let attempts = named(&spans, "attempt");
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (i, span) in attempts.iter().enumerate() {
        assert_eq!(span.parent, Some("call"));
        let n = (i + 1).to_string();
        assert!(span.events.iter().any(|e| {
            e.get("message").map(String::as_str) == Some("inside the attempt")
                && e.get("attempt") == Some(&n)
        }));
        // No request: no request fields.
        assert_eq!(span.field("http.request.method"), None);
    }
    assert_eq!(attempts[0].field("error.type"), Some("server_error"));
    assert_eq!(attempts[1].field("error.type"), None);
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].field("oai_resilience.attempts"), Some("2"));
    assert_eq!(calls[0].field("gen_ai.operation.name"), None);
    assert!(ROOT_EVENTS.with(|e| e.borrow().is_empty()));
}

#[tokio::test(start_paused = true)]
async fn a_call_outside_any_model_or_route_has_no_operation_name() {
    recording();
    let req = Request::get("/v1/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let svc = RetryLayer::with_config(RetryConfig::new().seed(1)).layer(scripted(&[200]));
    svc.oneshot(req).await.unwrap();
    let spans = closed();
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].field("gen_ai.operation.name"), None);
    assert_eq!(calls[0].field("gen_ai.request.model"), None);
    assert_eq!(calls[0].field("otel.name"), None);
    let attempts = named(&spans, "attempt");
    assert_eq!(attempts[0].field("http.request.method"), Some("GET"));
    assert_eq!(attempts[0].field("server.address"), None);
}

#[tokio::test(start_paused = true)]
async fn the_validation_layer_reads_the_model_for_the_spans_without_an_observer() {
    recording();
    let svc = ValidateLayer::new().layer(RetryLayer::with_config(config()).layer(scripted(&[200])));
    let req = Request::post("/v1/embeddings")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"text-embedding-3-small","input":"Hi"}"#,
        )))
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let spans = closed();
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1, "{spans:#?}");
    assert_eq!(
        calls[0].field("gen_ai.request.model"),
        Some("text-embedding-3-small")
    );
    assert_eq!(calls[0].field("gen_ai.operation.name"), Some("embeddings"));
    assert_eq!(
        calls[0].field("otel.name"),
        Some("embeddings text-embedding-3-small")
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_id_that_looks_like_a_key_is_recorded_redacted() {
    recording();
    let upstream = ClassifyLayer::new().layer(service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(200)
                .header("x-request-id", "sk-proj-AAAA1111bbbb2222cccc3333")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    }));
    RetryLayer::with_config(config())
        .layer(upstream)
        .oneshot(chat())
        .await
        .unwrap();
    let spans = closed();
    for name in ["call", "attempt"] {
        let span = named(&spans, name)[0];
        assert_eq!(
            span.field("oai_resilience.request_id"),
            Some("[redacted]"),
            "{span:#?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn tower_retry_with_the_tower_policy_records_the_same_spans() {
    recording();
    let policy = oai_resilience::retry::TowerPolicy::new(config());
    let svc = tower::retry::RetryLayer::new(policy).layer(scripted(&[503, 200]));
    let res = svc.oneshot(chat()).await.unwrap();
    assert_eq!(res.status(), 200);
    let spans = closed();
    let attempts = named(&spans, "attempt");
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert_eq!(attempts[0].field("error.type"), Some("server_error"));
    assert_eq!(attempts[0].field("http.response.status_code"), Some("503"));
    assert_eq!(attempts[1].field("error.type"), None);
    assert_eq!(attempts[1].field("http.request.resend_count"), Some("1"));
    for attempt in &attempts {
        assert_eq!(attempt.field("url.path"), Some("/v1/chat/completions"));
    }
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1, "{spans:#?}");
    assert_eq!(calls[0].field("oai_resilience.attempts"), Some("2"));
    assert_eq!(calls[0].field("gen_ai.request.model"), Some("gpt-4o-mini"));
}

#[oai_resilience::openai_call(max_attempts = 3, base_delay = "10ms")]
async fn flaky_twice(calls: &AtomicUsize) -> Result<u32, Error> {
    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
        Err(Error::new(ErrorKind::ServerError))
    } else {
        Ok(7)
    }
}

#[tokio::test(start_paused = true)]
async fn openai_call_nests_the_call_span_in_its_function_span() {
    recording();
    let calls = AtomicUsize::new(0);
    assert_eq!(flaky_twice(&calls).await.unwrap(), 7);
    let spans = closed();
    let attempts = named(&spans, "attempt");
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    assert!(attempts.iter().all(|a| a.parent == Some("call")));
    let calls = named(&spans, "call");
    assert_eq!(calls.len(), 1, "{spans:#?}");
    assert_eq!(calls[0].parent, Some("openai_call"));
    assert_eq!(calls[0].field("oai_resilience.attempts"), Some("3"));
    let function = named(&spans, "openai_call");
    assert_eq!(function.len(), 1);
    assert!(function[0]
        .field("function")
        .unwrap()
        .ends_with("flaky_twice"));
}
