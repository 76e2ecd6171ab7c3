//! `retry::call` for closures (the loop `#[openai_call]` reuses) and `TowerPolicy` under plain
//! `tower::retry::RetryLayer`: the same decisions as `RetryLayer`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, Full};
use oai_resilience::retry::{
    call, call_with, Attempt, Decision, OpenAiPolicy, RetryableError, TokenBudget, TowerPolicy,
};
use oai_resilience::{BoxError, DelaySource, Error, ErrorKind, RetryContext, StopReason};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

// Only `config` is used here.
#[allow(dead_code)]
use crate::retry_fixtures;

use retry_fixtures::{answering, config};

#[tokio::test(start_paused = true)]
async fn call_retries_transient_errors_with_the_same_schedule() {
    let start = Instant::now();
    let times = Mutex::new(Vec::new());
    let out = call(&config(), |attempt| {
        times
            .lock()
            .unwrap()
            .push((attempt, (Instant::now() - start).as_millis()));
        async move {
            if attempt < 3 {
                Err(Error::new(ErrorKind::ServerError))
            } else {
                Ok("done")
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(out, "done");
    assert_eq!(*times.lock().unwrap(), [(1, 0), (2, 100), (3, 300)]);
}

#[tokio::test(start_paused = true)]
async fn call_stops_on_permanent_errors_and_attaches_context() {
    let n = AtomicU32::new(0);
    let err = call(&config(), |_| {
        n.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(Error::new(ErrorKind::QuotaExceeded)) }
    })
    .await
    .unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 1);
    let ctx = err.retry_context().unwrap();
    assert_eq!((ctx.attempts, ctx.stop), (1, StopReason::NotRetryable));
}

#[tokio::test(start_paused = true)]
async fn call_treats_closures_as_post_for_timeouts() {
    let n = AtomicU32::new(0);
    let op = |_| {
        n.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(Error::new(ErrorKind::Timeout)) }
    };
    call(&config(), op).await.unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 1);
    let cfg = config()
        .max_attempts(3)
        .policy(OpenAiPolicy::new().retry_post_timeouts(true));
    call(&cfg, op).await.unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 4);
    // An idempotent operation retries timeouts with the default policy.
    call_with(&config().max_attempts(2), true, op)
        .await
        .unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn call_deadline_cuts_an_attempt_in_flight() {
    let start = Instant::now();
    let err = call(&config().deadline(Duration::from_secs(3)), |_| async {
        std::future::pending::<Result<(), Error>>().await
    })
    .await
    .unwrap_err();
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::Deadline);
}

/// A user error type: API errors are classified, the others never retried.
#[derive(Debug)]
enum AppError {
    Api(Error),
    Decode(&'static str),
}

impl RetryableError for AppError {
    fn classification(&self) -> Option<&Error> {
        match self {
            AppError::Api(e) => Some(e),
            AppError::Decode(_) => None,
        }
    }
    fn attach_retry_context(self, ctx: RetryContext) -> Self {
        match self {
            AppError::Api(e) => AppError::Api(e.with_retry_context(ctx)),
            other => other,
        }
    }
    fn from_error(err: Error) -> Self {
        AppError::Api(err)
    }
}

#[tokio::test(start_paused = true)]
async fn call_works_with_user_error_types() {
    let n = AtomicU32::new(0);
    let err = call(&config().max_attempts(3), |_| {
        n.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(AppError::Api(Error::new(ErrorKind::RateLimited))) }
    })
    .await
    .unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 3);
    match err {
        AppError::Api(e) => assert_eq!(e.retry_context().unwrap().stop, StopReason::MaxAttempts),
        other => panic!("{other:?}"),
    }
    let err = call(&config(), |_| async {
        Err::<(), _>(AppError::Decode("bad json"))
    })
    .await
    .unwrap_err();
    assert!(matches!(err, AppError::Decode("bad json")));
    // BoxError: classified through downcast.
    let n = AtomicU32::new(0);
    let err: BoxError = call(&config().max_attempts(2), |_| {
        n.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>(Box::new(Error::new(ErrorKind::ServerError))) }
    })
    .await
    .unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(err.downcast_ref::<Error>().unwrap().attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn custom_policies_decide_but_limits_still_apply() {
    // "Retry everything after 1 s": the maximum attempts still stops it.
    let cfg = config()
        .max_attempts(4)
        .policy(|_: &Attempt<'_>| Decision::after(Duration::from_secs(1)));
    let start = Instant::now();
    let err = call(&cfg, |_| async {
        Err::<(), _>(Error::new(ErrorKind::InvalidRequest))
    })
    .await
    .unwrap_err();
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
    assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
    // A policy that stops on its own records StopReason::Policy.
    let cfg = config().policy(|a: &Attempt<'_>| {
        if a.elapsed() >= Duration::from_millis(150) {
            Decision::stop()
        } else {
            Decision::backoff(a)
        }
    });
    let err = call(&cfg, |_| async {
        Err::<(), _>(Error::new(ErrorKind::ServerError))
    })
    .await
    .unwrap_err();
    let ctx = err.retry_context().unwrap();
    assert_eq!((ctx.attempts, ctx.stop), (3, StopReason::Policy));
    // A policy-supplied "hint" above the ceiling is refused too.
    let cfg = config().policy(|_: &Attempt<'_>| Decision::Retry {
        delay: Duration::from_secs(500),
        source: DelaySource::RetryAfter,
    });
    let err = call(&cfg, |_| async {
        Err::<(), _>(Error::new(ErrorKind::ServerError))
    })
    .await
    .unwrap_err();
    assert_eq!(err.retry_context().unwrap().stop, StopReason::HintTooLong);
}

type Body = Full<Bytes>;

fn upstream<B: Send + 'static>(
    codes: &'static [u16],
    log: Arc<Mutex<Vec<Option<String>>>>,
) -> impl tower::Service<Request<B>, Response = Response<Body>, Error = Error, Future = impl Send> + Clone
{
    answering(codes, move |req: &Request<B>, code, _| {
        log.lock().unwrap().push(
            req.headers()
                .get("x-stainless-retry-count")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        Response::builder()
            .status(code)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
}

#[tokio::test(start_paused = true)]
async fn tower_policy_under_plain_tower_retry() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(TowerPolicy::new(config())))
        .service(upstream::<Body>(&[503, 503, 200, 429, 503], log.clone()));
    let start = Instant::now();
    let res = svc
        .clone()
        .oneshot(Request::new(Full::new(Bytes::from_static(b"{}"))))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(Instant::now() - start, Duration::from_millis(300));
    assert_eq!(
        *log.lock().unwrap(),
        [None, Some("1".into()), Some("2".into())]
    );
    // A second call through the same service starts afresh (attempt counter, clock).
    let err = svc
        .oneshot(Request::new(Full::new(Bytes::from_static(b"{}"))))
        .await
        .unwrap_err();
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.attempts, 5, "{ctx:?}");
    assert_eq!(ctx.stop, StopReason::MaxAttempts);
    assert_eq!(ctx.outcomes[0].kind, ErrorKind::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn tower_policy_refuses_to_replay_streams() {
    let log = Arc::new(Mutex::new(Vec::new()));
    type Streamed = BoxBody<Bytes, std::io::Error>;
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(TowerPolicy::new(config())))
        .service(upstream::<Streamed>(&[503], log.clone()));
    let err = svc
        .oneshot(Request::new(Streamed::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReplayable);
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "the stand-in body is never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn tower_policy_spends_the_shared_budget() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(TowerPolicy::new(
            // 6 tokens, retries while above 3, nothing earned.
            config().budget(TokenBudget::new(0.0, 6.0)),
        )))
        .service(upstream::<Body>(&[503], log.clone()));
    for _ in 0..3 {
        svc.clone()
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap_err();
    }
    // 3 requests + the 2 retries the budget allowed (after the failures that left 5 and 4;
    // the third failure leaves 3, not above the threshold).
    assert_eq!(log.lock().unwrap().len(), 5);
}
