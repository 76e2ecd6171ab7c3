//! The observer hooks and `MetricsObserver` on scripted upstreams, through `OpenAiLayer`:
//! 503, 503, 200; a quota 429; a rate limit with `retry-after-ms`; a validation failure; a
//! deadline. Each hook's fields, and the metrics recorded with `metrics-util`'s
//! `DebuggingRecorder`.
#![cfg(feature = "metrics")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::CompositeKey;

/// One snapshot of the recorder (taking one drains histograms, so tests take one only).
type Snap = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn take(s: &Snapshotter) -> Snap {
    s.snapshot().into_vec()
}
use oai_resilience::observe::{
    AttemptFinished, AttemptStarted, CallGivenUp, CallSucceeded, LocalRejection, MetricsObserver,
    Observer, PacingLimit, PacingWait, RateLimitKind, RateLimitLearned, RejectionSource,
    RetryScheduled, TokensUsed,
};
use oai_resilience::retry::RetryConfig;
use oai_resilience::stack::OpenAiService;
use oai_resilience::{AuthLayer, DelaySource, ErrorKind, OpenAiLayer, RetryLayer, StopReason};
use test_support::CHAT_5_TOKENS as CHAT;
use tower::{service_fn, Layer, Service, ServiceExt};

const KEY: &str = "sk-proj-TestTestTestTestTestTest0000";

/// An `attempt_finished`: attempt, status, error kind, request id, latency.
type Finished = (
    u32,
    Option<StatusCode>,
    Option<ErrorKind>,
    Option<String>,
    Duration,
);

/// What the hooks received, owned.
#[derive(Debug, Default)]
struct Seen {
    started: Vec<(u32, Option<String>, Option<String>)>,
    finished: Vec<Finished>,
    retries: Vec<(u32, ErrorKind, Duration, DelaySource, Option<f64>)>,
    succeeded: Vec<(u32, Option<String>)>,
    given_up: Vec<(u32, StopReason, ErrorKind, Option<StatusCode>)>,
    rate_limits: Vec<(u32, RateLimitKind, Option<Duration>)>,
    rejections: Vec<(RejectionSource, ErrorKind, Option<String>)>,
    waits: Vec<(Duration, PacingLimit, Option<String>)>,
    tokens: Vec<(u64, u64, Option<u64>, Option<String>)>,
}

/// Records every hook, then forwards it to a `MetricsObserver`.
#[derive(Debug, Default)]
struct Tee {
    seen: Mutex<Seen>,
    metrics: MetricsObserver,
}

impl Tee {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

/// Implements each listed `Observer` hook on `Tee`: pushes what the closure-like `|e| record`
/// makes of the event onto that field of `Seen`, then forwards the event to the
/// `MetricsObserver`.
macro_rules! tee_hooks {
    ($($hook:ident($event:ident) => $field:ident: |$e:ident| $record:expr;)*) => {
        impl Observer for Tee {
            $(
                fn $hook(&self, $e: &$event<'_>) {
                    self.seen().$field.push($record);
                    self.metrics.$hook($e);
                }
            )*
        }
    };
}

tee_hooks! {
    attempt_started(AttemptStarted) => started:
        |e| (e.attempt, e.route.map(str::to_owned), e.model.map(str::to_owned));
    attempt_finished(AttemptFinished) => finished:
        |e| (e.attempt, e.status, e.error, e.request_id.map(str::to_owned), e.latency);
    retry_scheduled(RetryScheduled) => retries:
        |e| (e.attempt, e.cause, e.delay, e.source, e.budget_balance);
    call_succeeded(CallSucceeded) => succeeded: |e| (e.attempts, e.model.map(str::to_owned));
    call_given_up(CallGivenUp) => given_up: |e| (e.attempts, e.stop, e.error, e.status);
    rate_limit_learned(RateLimitLearned) => rate_limits: |e| (e.attempt, e.kind, e.retry_after);
    local_rejection(LocalRejection) => rejections:
        |e| (e.source, e.error, e.route.map(str::to_owned));
    pacing_wait(PacingWait) => waits: |e| (e.waited, e.limit, e.model.map(str::to_owned));
    tokens_used(TokensUsed) => tokens: |e| (
        e.input_tokens,
        e.output_tokens,
        e.estimated,
        e.model.map(str::to_owned),
    );
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// An upstream that answers every request 200 with `headers` and `body`.
fn answering<B>(
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
       + Clone {
    service_fn(
        move |_req: Request<B>| async move { Ok::<_, Infallible>(response(200, headers, body)) },
    )
}

fn ok(id: &str) -> Response<Full<Bytes>> {
    response(200, &[("x-request-id", id)], r#"{"id":"chatcmpl-1"}"#)
}

fn error_body(kind: &str, code: &str) -> String {
    format!(r#"{{"error":{{"message":"scripted","type":"{kind}","param":null,"code":"{code}"}}}}"#)
}

/// Sends one chat request with `body` through `svc` on a current-thread runtime (its clock
/// paused if `paused`), with `recorder` as the local metrics recorder.
fn send<S, B>(
    recorder: &DebuggingRecorder,
    svc: &mut S,
    body: &str,
    paused: bool,
) -> Result<Response<B>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(paused)
        .build()
        .unwrap();
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    metrics::with_local_recorder(recorder, || {
        rt.block_on(async { svc.ready().await?.call(req).await })
    })
}

/// Runs one request with `body` through `OpenAiLayer` (observer registered before a retry
/// layer with `config`) over an upstream that answers `script` in turn (or sleeps for an
/// hour once the script is empty), on a paused clock, with a local `DebuggingRecorder`.
/// Returns the call's result, what the hooks saw, the metrics and the upstream's call count.
fn run(
    config: RetryConfig,
    body: &str,
    script: Vec<Response<Full<Bytes>>>,
) -> (Result<StatusCode, oai_resilience::Error>, Seen, Snap, usize) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let tee = Arc::new(Tee::default());
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let calls = Arc::new(Mutex::new(0usize));
    let (s, c) = (script.clone(), calls.clone());
    let upstream = service_fn(move |_req: Request<_>| {
        *c.lock().unwrap() += 1;
        let next = s.lock().unwrap().pop_front();
        async move {
            match next {
                Some(r) => Ok::<_, Infallible>(r),
                None => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(ok("req_late"))
                }
            }
        }
    });
    let layer = OpenAiLayer::new()
        .observer(tee.clone())
        .auth(AuthLayer::from_key(KEY))
        .retry(RetryLayer::with_config(config));
    let mut svc = layer.layer(upstream);
    let result = send(&recorder, &mut svc, body, true).map(|r| r.status());
    let seen = std::mem::take(&mut *tee.seen.lock().unwrap());
    let n = *calls.lock().unwrap();
    (result, seen, take(&snapshotter), n)
}

/// The value of the metric `name` whose labels are exactly `labels`.
fn metric(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> Option<DebugValue> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    snap.iter()
        .find(|(key, _, _, _)| {
            let mut have: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            have.sort();
            key.key().name() == name && have == want
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => DebugValue::Counter(*n),
            DebugValue::Gauge(g) => DebugValue::Gauge(*g),
            DebugValue::Histogram(h) => DebugValue::Histogram(h.clone()),
        })
}

fn counter(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> u64 {
    match metric(snap, name, labels) {
        Some(DebugValue::Counter(n)) => n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn histogram(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match metric(snap, name, labels) {
        Some(DebugValue::Histogram(v)) => v.into_iter().map(|x| x.into_inner()).collect(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

const MODEL: (&str, &str) = ("gen_ai.request.model", "gpt-4o-mini");

#[test]
fn server_errors_then_success() {
    let e503 = || {
        response(
            503,
            &[("x-request-id", "req_503")],
            &error_body("server_error", "x"),
        )
    };
    let (result, seen, snap, calls) = run(
        RetryConfig::new().seed(7),
        CHAT,
        vec![e503(), e503(), ok("req_ok")],
    );
    assert_eq!(result.unwrap(), 200);
    assert_eq!(calls, 3);
    // Hooks.
    let route = Some("/v1/chat/completions".to_owned());
    let model = Some("gpt-4o-mini".to_owned());
    assert_eq!(
        seen.started,
        (1..=3)
            .map(|n| (n, route.clone(), model.clone()))
            .collect::<Vec<_>>()
    );
    let finished: Vec<_> = seen
        .finished
        .iter()
        .map(|(a, s, k, id, _)| (*a, *s, *k, id.clone()))
        .collect();
    assert_eq!(
        finished,
        vec![
            (
                1,
                Some(StatusCode::SERVICE_UNAVAILABLE),
                Some(ErrorKind::ServerError),
                Some("req_503".into())
            ),
            (
                2,
                Some(StatusCode::SERVICE_UNAVAILABLE),
                Some(ErrorKind::ServerError),
                Some("req_503".into())
            ),
            (3, Some(StatusCode::OK), None, Some("req_ok".into())),
        ]
    );
    assert_eq!(seen.retries.len(), 2);
    for (i, (attempt, cause, delay, source, balance)) in seen.retries.iter().enumerate() {
        assert_eq!(*attempt, i as u32 + 1);
        assert_eq!(*cause, ErrorKind::ServerError);
        assert_eq!(*source, DelaySource::Backoff);
        assert!(*delay <= Duration::from_secs(20));
        // The default TokenBudget (20 tokens) after one failure per retry.
        assert_eq!(*balance, Some(20.0 - (i + 1) as f64));
    }
    assert_eq!(seen.succeeded, vec![(3, model.clone())]);
    assert!(seen.given_up.is_empty() && seen.rate_limits.is_empty() && seen.rejections.is_empty());
    // Metrics: three attempts, two resends, two retries by cause.
    let e503_labels = [
        MODEL,
        ("http.response.status_code", "503"),
        ("error.type", "server_error"),
    ];
    assert_eq!(
        histogram(&snap, "http.client.request.duration", &e503_labels).len(),
        2
    );
    let ok_labels = [MODEL, ("http.response.status_code", "200")];
    assert_eq!(
        histogram(&snap, "http.client.request.duration", &ok_labels).len(),
        1
    );
    assert_eq!(
        histogram(&snap, "oai_resilience.resends", &[MODEL]),
        vec![2.0]
    );
    let duration = histogram(&snap, "gen_ai.client.operation.duration", &[MODEL]);
    assert_eq!(duration.len(), 1);
    assert!(duration[0] > 0.0, "the backoff delays count: {duration:?}");
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.retries",
            &[
                ("error.type", "server_error"),
                ("oai_resilience.delay_source", "backoff")
            ]
        ),
        2
    );
    match metric(&snap, "oai_resilience.retry_budget.balance", &[]) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 18.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn quota_is_not_retried() {
    let quota = response(
        429,
        &[("x-request-id", "req_quota")],
        &error_body("insufficient_quota", "insufficient_quota"),
    );
    let (result, seen, snap, calls) = run(RetryConfig::new().seed(1), CHAT, vec![quota]);
    assert_eq!(result.unwrap_err().kind(), ErrorKind::QuotaExceeded);
    assert_eq!(calls, 1);
    assert_eq!(seen.rate_limits, vec![(1, RateLimitKind::Quota, None)]);
    assert!(seen.retries.is_empty());
    assert_eq!(
        seen.given_up,
        vec![(
            1,
            StopReason::NotRetryable,
            ErrorKind::QuotaExceeded,
            Some(StatusCode::TOO_MANY_REQUESTS)
        )]
    );
    assert_eq!(seen.finished[0].3.as_deref(), Some("req_quota"));
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.rate_limited",
            &[("kind", "quota"), MODEL]
        ),
        1
    );
    assert!(metric(
        &snap,
        "oai_resilience.rate_limited",
        &[("kind", "rate_limit"), MODEL]
    )
    .is_none());
    assert!(snap
        .iter()
        .all(|(k, _, _, _)| k.key().name() != "oai_resilience.retries"));
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.gave_up",
            &[
                ("error.type", "quota_exceeded"),
                ("oai_resilience.stop_reason", "not_retryable")
            ]
        ),
        1
    );
    assert_eq!(
        histogram(
            &snap,
            "gen_ai.client.operation.duration",
            &[MODEL, ("error.type", "quota_exceeded")]
        )
        .len(),
        1
    );
    assert_eq!(
        histogram(&snap, "oai_resilience.resends", &[MODEL]),
        vec![0.0]
    );
}

#[test]
fn rate_limit_with_retry_after_ms() {
    let limited = response(
        429,
        &[("retry-after-ms", "250"), ("x-request-id", "req_429")],
        &error_body("requests", "rate_limit_exceeded"),
    );
    let (result, seen, snap, calls) = run(
        RetryConfig::new().seed(3),
        CHAT,
        vec![limited, ok("req_ok")],
    );
    assert_eq!(result.unwrap(), 200);
    assert_eq!(calls, 2);
    assert_eq!(
        seen.rate_limits,
        vec![(
            1,
            RateLimitKind::RateLimit,
            Some(Duration::from_millis(250))
        )]
    );
    let (attempt, cause, delay, source, _) = seen.retries[0];
    assert_eq!(
        (attempt, cause, source),
        (1, ErrorKind::RateLimited, DelaySource::RetryAfterMs)
    );
    assert!(
        delay >= Duration::from_millis(250) && delay <= Duration::from_millis(300),
        "{delay:?}"
    );
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.rate_limited",
            &[("kind", "rate_limit"), MODEL]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.retries",
            &[
                ("error.type", "rate_limited"),
                ("oai_resilience.delay_source", "retry_after_ms")
            ]
        ),
        1
    );
    assert_eq!(
        histogram(&snap, "oai_resilience.resends", &[MODEL]),
        vec![1.0]
    );
}

#[test]
fn validation_failure_is_a_local_rejection() {
    let bad =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"temperature":7}"#;
    let (result, seen, snap, calls) = run(RetryConfig::new().seed(1), bad, vec![ok("req_ok")]);
    assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidParameter);
    assert_eq!(calls, 0, "nothing was sent");
    assert_eq!(
        seen.rejections,
        vec![(
            RejectionSource::Validation,
            ErrorKind::InvalidParameter,
            Some("/v1/chat/completions".into())
        )]
    );
    assert!(seen.started.is_empty() && seen.given_up.is_empty());
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.local_rejections",
            &[("kind", "validation"), ("error.type", "invalid_parameter")]
        ),
        1
    );
}

#[test]
fn malformed_key_is_a_local_rejection() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let tee = Arc::new(Tee::default());
    // The auth layer put in after the observer, with a placeholder key.
    let layer = OpenAiLayer::new()
        .observer(tee.clone())
        .auth(AuthLayer::from_key("sk-..."));
    let mut svc = layer.layer(service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(ok("req_ok"))
    }));
    let err = send(&recorder, &mut svc, CHAT, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    let snap = take(&snapshotter);
    let seen = tee.seen.lock().unwrap();
    assert_eq!(
        seen.rejections,
        vec![(
            RejectionSource::Key,
            ErrorKind::MalformedApiKey,
            Some("/v1/chat/completions".into())
        )]
    );
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.local_rejections",
            &[("kind", "key"), ("error.type", "malformed_api_key")]
        ),
        1
    );
}

#[test]
fn deadline_gives_up() {
    // The upstream never answers (the script is empty): the 2 s deadline cuts the attempt.
    let (result, seen, snap, calls) = run(
        RetryConfig::new().seed(1).deadline(Duration::from_secs(2)),
        CHAT,
        vec![],
    );
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Timeout);
    assert_eq!(calls, 1);
    assert_eq!(
        seen.given_up,
        vec![(1, StopReason::Deadline, ErrorKind::Timeout, None)]
    );
    let (attempt, status, kind, _, latency) = seen.finished[0];
    assert_eq!((attempt, status, kind), (1, None, Some(ErrorKind::Timeout)));
    assert_eq!(latency, Duration::from_secs(2));
    assert_eq!(
        counter(
            &snap,
            "oai_resilience.gave_up",
            &[
                ("error.type", "timeout"),
                ("oai_resilience.stop_reason", "deadline")
            ]
        ),
        1
    );
    assert_eq!(
        histogram(
            &snap,
            "gen_ai.client.operation.duration",
            &[MODEL, ("error.type", "timeout")]
        ),
        vec![2.0]
    );
}

#[test]
fn no_observer_no_events() {
    // Without an observer the stack works as before (nothing to record into).
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let mut svc = OpenAiLayer::new()
        .auth(AuthLayer::from_key(KEY))
        .layer(service_fn(|_req: Request<_>| async {
            Ok::<_, Infallible>(ok("req_ok"))
        }));
    let res = send(&recorder, &mut svc, CHAT, false);
    assert_eq!(res.unwrap().status(), 200);
    assert!(take(&snap).is_empty());
}

/// Runs `calls` chat requests one after the other through `svc` on a paused current-thread
/// runtime with `recorder`, reading each response body to its end.
fn send_all<S, B>(recorder: &DebuggingRecorder, svc: &mut S, calls: usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || {
        rt.block_on(async {
            for _ in 0..calls {
                let req = Request::post("/v1/chat/completions")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(CHAT)))
                    .unwrap();
                let resp = svc.ready().await.unwrap().call(req).await.unwrap();
                resp.into_body().collect().await.unwrap();
            }
        })
    })
}

/// Sends `calls` chat requests with [`send_all`] through `OpenAiLayer` (a [`Tee`] observer,
/// the test key) over `inner`, with a local `DebuggingRecorder`; returns what the hooks saw and
/// the metrics.
fn observe_calls<S, B>(inner: S, calls: usize) -> (Seen, Snap)
where
    OpenAiService<S>: Service<Request<Full<Bytes>>, Response = Response<B>>,
    <OpenAiService<S> as Service<Request<Full<Bytes>>>>::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let tee = Arc::new(Tee::default());
    let mut svc = OpenAiLayer::new()
        .observer(tee.clone())
        .auth(AuthLayer::from_key(KEY))
        .layer(inner);
    send_all(&recorder, &mut svc, calls);
    let seen = std::mem::take(&mut *tee.seen.lock().unwrap());
    (seen, take(&snapshotter))
}

#[test]
fn pacing_wait_names_the_limit_that_held_the_attempt() {
    // A bucket of one request, empty after each answer, full again in 1 s.
    let upstream = answering(
        &[
            ("x-ratelimit-limit-requests", "1"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
        ],
        r#"{"id":"c"}"#,
    );
    let (seen, snap) = observe_calls(upstream, 3);
    // The first call went out at once: no event; the next two waited a second each.
    let model = Some("gpt-4o-mini".to_owned());
    assert_eq!(
        seen.waits,
        vec![
            (Duration::from_secs(1), PacingLimit::Requests, model.clone()),
            (Duration::from_secs(1), PacingLimit::Requests, model),
        ]
    );
    assert_eq!(
        histogram(
            &snap,
            "oai_resilience.pacing.wait",
            &[("oai_resilience.pacing.limit", "requests"), MODEL]
        ),
        vec![1.0, 1.0]
    );
}

#[test]
fn tokens_used_reports_the_usage_the_usage_layer_reads() {
    use oai_resilience::usage::UsageLayer;
    let usage =
        r#"{"id":"c","usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
    let upstream = answering(&[], usage);
    let (seen, snap) = observe_calls(UsageLayer::new().layer(upstream), 2);
    // "Hello": 2 prompt tokens + 4 for the message + 3, and max_tokens 5: estimated 14. The
    // second call is estimated from the first one's usage: 12/9 of the prompt and 3/5 of the
    // completion budget, with the 2 % margin: ceil(15 × 1.02) = 16.
    let model = Some("gpt-4o-mini".to_owned());
    assert_eq!(
        seen.tokens,
        vec![(12, 3, Some(14), model.clone()), (12, 3, Some(16), model)]
    );
    assert!(seen.waits.is_empty());
    assert_eq!(
        histogram(
            &snap,
            "gen_ai.client.token.usage",
            &[("gen_ai.token.type", "input"), MODEL]
        ),
        vec![12.0, 12.0]
    );
    assert_eq!(
        histogram(
            &snap,
            "gen_ai.client.token.usage",
            &[("gen_ai.token.type", "output"), MODEL]
        ),
        vec![3.0, 3.0]
    );
}

/// Acquires a slot on `key` for `cost` tokens from `pacer` (on a paused runtime) and
/// returns what held it and how long it waited.
async fn held(
    pacer: &oai_resilience::Pacer,
    key: &oai_resilience::pace::PaceKey,
    tokens: u64,
) -> (Option<PacingLimit>, Duration) {
    let permit = pacer
        .acquire(key, oai_resilience::pace::Cost::tokens(tokens), None)
        .await
        .unwrap();
    let out = (permit.held_by(), permit.waited());
    permit.on_response(None);
    out
}

#[tokio::test(start_paused = true)]
async fn permits_say_which_limit_held_them() {
    use oai_resilience::pace::{PaceKey, PacerConfig, StaticLimits};
    use oai_resilience::Pacer;
    let key = PaceKey::new("api.example.test");
    // Tokens: 600 per minute (10 per second), a first call takes all of them.
    let mut config = PacerConfig::default();
    config.static_limits = StaticLimits::new(None, Some(600));
    let pacer = Pacer::new(config);
    assert_eq!(held(&pacer, &key, 600).await, (None, Duration::ZERO));
    assert_eq!(
        held(&pacer, &key, 50).await,
        (Some(PacingLimit::Tokens), Duration::from_secs(5))
    );
    // A 429 that the headers explain (no request left, full again in 700 ms) pauses the key.
    let pacer = Pacer::default();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
    headers.insert("x-ratelimit-reset-requests", "700ms".parse().unwrap());
    let snap = oai_resilience::RateLimitSnapshot::from_headers(&headers);
    pacer.on_rate_limited(&key, None, Some(&snap));
    assert_eq!(
        held(&pacer, &key, 1).await,
        (Some(PacingLimit::Pause), Duration::from_millis(700))
    );
    // One that nothing explains switches the adaptive rate on, at its floor of 0.5/s here.
    let pacer = Pacer::default();
    pacer.on_rate_limited(&key, Some(Duration::from_millis(700)), None);
    assert_eq!(
        held(&pacer, &key, 1).await,
        (Some(PacingLimit::Adaptive), Duration::from_secs(2))
    );
    // A cold window of one: the second request waits for the first one's answer.
    let mut config = PacerConfig::default();
    config.cold_window = Some(1);
    let pacer = Pacer::new(config);
    let first = pacer
        .acquire(&key, oai_resilience::pace::Cost::tokens(1), None)
        .await
        .unwrap();
    let second = tokio::spawn({
        let (pacer, key) = (pacer.clone(), key.clone());
        async move { held(&pacer, &key, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.on_response(None);
    assert_eq!(
        second.await.unwrap(),
        (Some(PacingLimit::ColdWindow), Duration::from_millis(300))
    );
    // The names the metric's attribute takes.
    let names: Vec<&str> = [
        PacingLimit::Queue,
        PacingLimit::ColdWindow,
        PacingLimit::Pause,
        PacingLimit::Requests,
        PacingLimit::Tokens,
        PacingLimit::Adaptive,
    ]
    .iter()
    .map(|l| l.as_str())
    .collect();
    assert_eq!(
        names,
        [
            "queue",
            "cold_window",
            "pause",
            "requests",
            "tokens",
            "adaptive"
        ]
    );
}
