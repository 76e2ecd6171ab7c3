//! The tower contract of `Retry<S>`: readiness before every retry, cancellation, replay, the
//! retry-count header, clones, observability.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use oai_resilience::retry::{Backoff, Jitter, RetryBudget, RetryLayer, TokenBudget};
use oai_resilience::{ClassifyLayer, Error, ErrorKind, StopReason};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

use crate::retry_fixtures;

use retry_fixtures::{config, post, status, Body};

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

/// An upstream that logs every request and answers from `codes` (the last repeats).
fn logging(
    codes: &'static [u16],
    seen: Seen,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Error> + Clone {
    let n = Arc::new(AtomicUsize::new(0));
    ClassifyLayer::new().layer(service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        let i = n.fetch_add(1, Ordering::SeqCst);
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            seen.requests.lock().unwrap().push((parts.headers, bytes));
            Ok::<_, Infallible>(status(codes[i.min(codes.len() - 1)]))
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn readiness_is_driven_before_every_retry() {
    let (mock, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    handle.allow(1);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(config()))
        .layer(ClassifyLayer::new())
        .service(mock);
    svc.ready().await.unwrap();
    let call = tokio::spawn(svc.call(post("{\"n\":1}")));

    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()["x-stainless-retry-count"], "0");
    send.send_response(status(503));

    // The backoff (100 ms) passes long before, but the service is not ready: no request.
    let waited = tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await;
    assert!(
        waited.is_err(),
        "a retry went out before poll_ready said ready"
    );

    handle.allow(1);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()["x-stainless-retry-count"], "1");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"n\":1}");
    send.send_response(status(200));
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_the_wait_for_readiness() {
    let (mock, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    handle.allow(1);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(
            config().deadline(Duration::from_secs(2)),
        ))
        .layer(ClassifyLayer::new())
        .service(mock);
    svc.ready().await.unwrap();
    let start = Instant::now();
    let call = tokio::spawn(svc.call(post("{}")));
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response(status(503));
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::Deadline);
    assert_eq!(ctx.attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_mid_backoff_stops_everything() {
    let (mock, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    handle.allow(10);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(config().backoff(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).with_jitter(Jitter::None),
        )))
        .layer(ClassifyLayer::new())
        .service(mock);
    svc.ready().await.unwrap();
    let mut fut = Box::pin(svc.call(post("{}")));
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response(status(503));
    // Poll into the backoff, then drop the future half-way through it.
    assert!(tokio::time::timeout(Duration::from_millis(500), &mut fut)
        .await
        .is_err());
    drop(fut);
    let later = tokio::time::timeout(Duration::from_secs(600), handle.next_request()).await;
    assert!(
        later.is_err(),
        "a request went out after the future was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_mid_attempt_drops_the_attempt() {
    let live = Arc::new(AtomicUsize::new(0));
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let l = live.clone();
    let svc = RetryLayer::with_config(config()).layer(service_fn(move |_r: Request<Body>| {
        l.fetch_add(1, Ordering::SeqCst);
        let g = Guard(l.clone());
        async move {
            let _g = g;
            std::future::pending::<Result<Response<Body>, Error>>().await
        }
    }));
    let mut fut = Box::pin(svc.oneshot(post("{}")));
    assert!(tokio::time::timeout(Duration::from_secs(5), &mut fut)
        .await
        .is_err());
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(fut);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn replays_the_same_request_with_the_retry_count() {
    let seen = Seen::default();
    let svc = RetryLayer::with_config(config()).layer(logging(&[503, 502, 200], seen.clone()));
    let res = svc.oneshot(post("{\"model\":\"gpt-4o\"}")).await.unwrap();
    assert_eq!(res.status(), 200);
    let reqs = seen.requests.lock().unwrap();
    assert_eq!(reqs.len(), 3);
    for (i, (headers, body)) in reqs.iter().enumerate() {
        assert_eq!(&body[..], b"{\"model\":\"gpt-4o\"}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-stainless-retry-count"], i.to_string().as_str());
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_count_header_is_configurable() {
    let seen = Seen::default();
    let name = HeaderName::from_static("x-attempt");
    let svc = RetryLayer::with_config(config().retry_count_header(Some(name)))
        .layer(logging(&[503, 200], seen.clone()));
    svc.oneshot(post("{}")).await.unwrap();
    {
        let reqs = seen.requests.lock().unwrap();
        assert_eq!(reqs[1].0["x-attempt"], "1");
        assert!(reqs[1].0.get("x-stainless-retry-count").is_none());
    }
    let seen = Seen::default();
    let svc = RetryLayer::with_config(config().retry_count_header(None))
        .layer(logging(&[503, 200], seen.clone()));
    svc.oneshot(post("{}")).await.unwrap();
    let reqs = seen.requests.lock().unwrap();
    assert!(reqs
        .iter()
        .all(|(h, _)| h.get("x-stainless-retry-count").is_none()));
}

type Streamed = BoxBody<Bytes, std::io::Error>;

fn streamed_upstream(
    code: u16,
    count: Arc<AtomicUsize>,
) -> impl Service<Request<Streamed>, Response = Response<Body>, Error = Error> + Clone {
    ClassifyLayer::new().layer(service_fn(move |_req: Request<Streamed>| {
        count.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(status(code)) }
    }))
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_fails_loudly() {
    let count = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::with_config(config()).layer(streamed_upstream(503, count.clone()));
    let req = Request::post("/v1/files")
        .body(BoxBody::new(
            Full::new(Bytes::from_static(b"data")).map_err(|e| match e {}),
        ))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1, "never re-sent");
    assert_eq!(err.kind(), ErrorKind::NotReplayable);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(err.request_id(), Some("req_abc"));
    assert_eq!(err.retry_context().unwrap().stop, StopReason::NotReplayable);
    assert!(err.to_string().contains("cannot be replayed"), "{err}");

    // An error that would not be retried anyway is returned as it is.
    let count = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::with_config(config()).layer(streamed_upstream(400, count.clone()));
    let err = svc
        .oneshot(Request::new(Streamed::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// A budget that records what the retry loop tells it, and allows every retry.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<&'static str>>>);

impl RetryBudget for Recording {
    fn on_request(&self) {
        self.0.lock().unwrap().push("request");
    }
    fn on_success(&self) {
        self.0.lock().unwrap().push("success");
    }
    fn on_failure(&self, _err: &Error) {
        self.0.lock().unwrap().push("failure");
    }
    fn try_retry(&self) -> bool {
        self.0.lock().unwrap().push("retry?");
        true
    }
    fn refund(&self) {
        self.0.lock().unwrap().push("refund");
    }
}

impl Recording {
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_hears_every_outcome() {
    let budget = Recording::default();
    let svc = RetryLayer::with_config(config().budget(budget.clone()))
        .layer(logging(&[503, 500, 200], Seen::default()));
    svc.clone().oneshot(post("{}")).await.unwrap();
    assert_eq!(
        budget.take(),
        ["request", "failure", "retry?", "failure", "retry?", "success"]
    );
    // A permanent error is neither a success nor a failure, and asks for no retry.
    let svc = RetryLayer::with_config(config().budget(budget.clone()))
        .layer(logging(&[400], Seen::default()));
    svc.oneshot(post("{}")).await.unwrap_err();
    assert_eq!(budget.take(), ["request"]);
    // The maximum attempts are checked before the budget: the last failure asks nothing.
    let svc = RetryLayer::with_config(config().max_attempts(2).budget(budget.clone()))
        .layer(logging(&[503], Seen::default()));
    let err = svc.oneshot(post("{}")).await.unwrap_err();
    assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
    assert_eq!(budget.take(), ["request", "failure", "retry?", "failure"]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_dropped_in_its_backoff_is_refunded_once() {
    let budget = Recording::default();
    let seen = Seen::default();
    let svc = RetryLayer::with_config(config().budget(budget.clone()))
        .layer(logging(&[503, 200], seen.clone()));
    // The retry waits 100 ms; the caller gives up at 50 ms.
    let out = tokio::time::timeout(Duration::from_millis(50), svc.oneshot(post("{}"))).await;
    assert!(out.is_err());
    assert_eq!(budget.take(), ["request", "failure", "retry?", "refund"]);
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    // A call that ends normally refunds nothing.
    let svc = RetryLayer::with_config(config().budget(budget.clone()))
        .layer(logging(&[503, 200], Seen::default()));
    svc.oneshot(post("{}")).await.unwrap();
    assert!(!budget.take().contains(&"refund"));
}

#[tokio::test(start_paused = true)]
async fn a_tower_budget_works_as_a_retry_budget() {
    let seen = Seen::default();
    // tower's TpsBudget with a reserve of 2 retries per second and no ratio.
    let tps = tower::retry::budget::TpsBudget::new(Duration::from_secs(1), 2, 0.0);
    let svc = RetryLayer::with_config(config().budget(tps)).layer(logging(&[503], seen.clone()));
    let err = svc.oneshot(post("{}")).await.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::Budget);
    assert_eq!(seen.requests.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_budget_not_the_calls() {
    let seen = Seen::default();
    // Four tokens, retries while above 2, nothing earned: one retry for the whole family of
    // clones (the first failure leaves 3, the second 2).
    let svc = RetryLayer::with_config(config().budget(TokenBudget::new(0.0, 4.0)))
        .layer(logging(&[503], seen.clone()));
    let a = svc.clone().oneshot(post("{}")).await.unwrap_err();
    let b = svc.clone().oneshot(post("{}")).await.unwrap_err();
    assert_eq!(a.attempts(), 2);
    assert_eq!(a.retry_context().unwrap().stop, StopReason::Budget);
    assert_eq!(b.attempts(), 1);
    assert_eq!(b.retry_context().unwrap().stop, StopReason::Budget);
    assert_eq!(seen.requests.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_poll_ready_ends_the_call_with_its_error() {
    #[derive(Clone)]
    struct BreaksAfterOne {
        calls: Arc<AtomicUsize>,
    }
    impl Service<Request<Body>> for BreaksAfterOne {
        type Response = Response<Body>;
        type Error = Error;
        type Future = std::future::Ready<Result<Response<Body>, Error>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
            if self.calls.load(Ordering::SeqCst) == 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Ready(Err(
                    Error::new(ErrorKind::Connection).with_detail("pool closed")
                ))
            }
        }
        fn call(&mut self, _req: Request<Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err(Error::new(ErrorKind::ServerError)))
        }
    }
    let svc = RetryLayer::with_config(config()).layer(BreaksAfterOne {
        calls: Arc::new(AtomicUsize::new(0)),
    });
    let err = svc.oneshot(post("{}")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert_eq!(err.detail(), Some("pool closed"));
    assert_eq!(err.attempts(), 1);
}
