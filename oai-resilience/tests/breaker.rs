//! The circuit breaker in virtual time: transitions on scripted sequences, what opens it and
//! what never does, probes half-open, and its agreement with the retry budget.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::breaker::{
    BreakerConfig, BreakerCounters, BreakerKey, CircuitBreakerLayer, CircuitState,
};
use oai_resilience::retry::{Backoff, Jitter, RetryBudget, RetryConfig, RetryLayer, TokenBudget};
use oai_resilience::{ClassifyLayer, Error, ErrorKind, StopReason};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

/// What the scripted upstream does for one request.
#[derive(Clone, Copy, Debug)]
enum Step {
    Status(u16),
    Body(u16, &'static str),
    Refused,
}

/// An upstream that answers from a script (then 200s) and counts the requests it receives.
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Step>>>,
    received: Arc<AtomicUsize>,
}

impl Upstream {
    fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().unwrap().extend(steps);
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
    > + Clone {
        let this = self.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            this.received.fetch_add(1, Ordering::SeqCst);
            let step = this.script.lock().unwrap().pop_front();
            async move {
                let (status, body) = match step.unwrap_or(Step::Status(200)) {
                    Step::Status(s) => (s, ""),
                    Step::Body(s, b) => (s, b),
                    Step::Refused => {
                        return Err(Box::new(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "refused",
                        )) as BoxError)
                    }
                };
                Ok(Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap())
            }
        })
    }
}

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::post("https://upstream.test/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn key(key: &str) -> BreakerKey {
    BreakerKey::new("upstream.test").with_credential(format!("Bearer {key}").as_bytes())
}

/// Breaker -> Classify -> upstream, boxed.
fn stack(
    breaker: &CircuitBreakerLayer,
    upstream: &Upstream,
) -> BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Error> {
    ServiceBuilder::new()
        .layer(breaker.clone())
        .layer(ClassifyLayer::new())
        .service(upstream.service())
        .boxed_clone()
}

async fn call<S>(svc: &S) -> Result<u16, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Error> + Clone,
{
    svc.clone()
        .oneshot(request("sk-a"))
        .await
        .map(|r| r.status().as_u16())
}

fn consecutive(n: u32, open_for: Duration) -> BreakerConfig {
    BreakerConfig::new()
        .failure_ratio(None)
        .consecutive_failures(n)
        .open_for(open_for)
}

#[tokio::test(start_paused = true)]
async fn closed_open_half_open_closed_then_open_again() {
    let upstream = Upstream::default();
    let breaker = CircuitBreakerLayer::with_config(consecutive(3, Duration::from_secs(10)));
    let svc = stack(&breaker, &upstream);
    let k = key("sk-a");

    // Two failures and a success: still closed (the count is of consecutive failures).
    upstream.push([Step::Status(503), Step::Status(502), Step::Status(200)]);
    for _ in 0..3 {
        let _ = call(&svc).await;
    }
    assert_eq!(breaker.state(&k), CircuitState::Closed);

    // Three in a row open it.
    upstream.push([Step::Status(500), Step::Refused, Step::Status(503)]);
    for _ in 0..3 {
        assert!(call(&svc).await.is_err());
    }
    let opened_at = Instant::now();
    assert_eq!(
        breaker.state(&k),
        CircuitState::Open {
            until: opened_at + Duration::from_secs(10)
        }
    );

    // Open: refused at once, nothing sent, the remaining time as retry_after.
    tokio::time::advance(Duration::from_secs(4)).await;
    let before = upstream.received();
    let err = call(&svc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(6)));
    assert!(!err.is_retryable());
    let detail = err.detail().unwrap();
    assert!(
        detail.contains("3 consecutive failures, the last: 503 server_error"),
        "{detail}"
    );
    assert!(detail.contains("next probe in 6 s"), "{detail}");
    assert!(!detail.contains("sk-a"), "{detail}");
    assert_eq!(upstream.received(), before);

    // After the open time: half-open; a successful probe closes it.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(breaker.state(&k), CircuitState::HalfOpen);
    assert_eq!(call(&svc).await.unwrap(), 200);
    assert_eq!(breaker.state(&k), CircuitState::Closed);

    // Open again, and a failed probe re-opens it for another full period.
    upstream.push([Step::Status(503); 3]);
    for _ in 0..3 {
        let _ = call(&svc).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    upstream.push([Step::Status(504)]);
    let err = call(&svc).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(504));
    assert_eq!(
        breaker.state(&k),
        CircuitState::Open {
            until: Instant::now() + Duration::from_secs(10)
        }
    );
    let err = call(&svc).await.unwrap_err();
    assert!(err.detail().unwrap().contains("a probe failed"), "{err}");

    let counters = breaker.counters(&k).unwrap();
    let mut want = BreakerCounters::default();
    want.admitted = 11;
    want.succeeded = 2;
    want.failed = 9;
    want.rejected = 2;
    want.opened = 3;
    assert_eq!(counters, want);
}

#[tokio::test(start_paused = true)]
async fn the_failure_ratio_opens_it_over_a_minimum_of_calls() {
    let upstream = Upstream::default();
    let breaker = CircuitBreakerLayer::with_config(
        BreakerConfig::new()
            .consecutive_failures(None)
            .failure_ratio(0.5)
            .min_calls(10)
            .window(Duration::from_secs(10)),
    );
    let svc = stack(&breaker, &upstream);
    // Failure, success, alternating: 50 % from the start, but the minimum is 10 calls.
    for i in 0..9 {
        upstream.push([if i % 2 == 0 {
            Step::Status(503)
        } else {
            Step::Status(200)
        }]);
        let _ = call(&svc).await;
        assert_eq!(
            breaker.state(&key("sk-a")),
            CircuitState::Closed,
            "call {i}"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    upstream.push([Step::Status(200)]);
    let _ = call(&svc).await;
    assert_eq!(breaker.state(&key("sk-a")), CircuitState::Closed, "4 of 10");
    upstream.push([Step::Status(503)]);
    let _ = call(&svc).await;
    assert!(
        matches!(breaker.state(&key("sk-a")), CircuitState::Open { .. }),
        "6 of 11"
    );
    let err = call(&svc).await.unwrap_err();
    assert!(
        err.detail()
            .unwrap()
            .contains("6 of 11 calls failed in 10 s"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn client_errors_rate_limits_and_quota_never_open_it() {
    let upstream = Upstream::default();
    let breaker = CircuitBreakerLayer::with_config(
        BreakerConfig::new()
            .consecutive_failures(1)
            .failure_ratio(0.01)
            .min_calls(1),
    );
    let svc = stack(&breaker, &upstream);
    let steps = [
        Step::Status(400),
        Step::Status(401),
        Step::Status(403),
        Step::Status(404),
        Step::Status(409),
        Step::Status(422),
        Step::Body(429, RATE),
        Step::Body(429, QUOTA),
        Step::Status(429),
    ];
    for _ in 0..20 {
        upstream.push(steps);
        for _ in steps {
            let err = call(&svc).await.unwrap_err();
            assert_ne!(err.kind(), ErrorKind::CircuitOpen);
        }
    }
    assert_eq!(breaker.state(&key("sk-a")), CircuitState::Closed);
    let c = breaker.counters(&key("sk-a")).unwrap();
    assert_eq!((c.succeeded, c.failed, c.opened), (180, 0, 0));
    // One server error is enough with this configuration.
    upstream.push([Step::Status(500)]);
    let _ = call(&svc).await;
    assert!(matches!(
        breaker.state(&key("sk-a")),
        CircuitState::Open { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn circuits_are_per_upstream_and_key() {
    let upstream = Upstream::default();
    let breaker = CircuitBreakerLayer::with_config(consecutive(2, Duration::from_secs(5)));
    let svc = stack(&breaker, &upstream);
    upstream.push([Step::Status(503); 2]);
    for _ in 0..2 {
        let _ = svc.clone().oneshot(request("sk-a")).await;
    }
    assert!(matches!(
        breaker.state(&key("sk-a")),
        CircuitState::Open { .. }
    ));
    assert_eq!(breaker.state(&key("sk-b")), CircuitState::Closed);
    let res = svc.clone().oneshot(request("sk-b")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(breaker.key_for(&request("sk-a")), key("sk-a"));
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_only_the_probes_through_at_a_time() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let upstream = {
        let (gate, received, failing) = (gate.clone(), received.clone(), failing.clone());
        service_fn(move |_req: Request<Full<Bytes>>| {
            let (gate, received, failing) = (gate.clone(), received.clone(), failing.clone());
            async move {
                received.fetch_add(1, Ordering::SeqCst);
                if !failing.load(Ordering::SeqCst) {
                    gate.acquire().await.unwrap().forget();
                }
                let status = if failing.load(Ordering::SeqCst) {
                    503
                } else {
                    200
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }
        })
    };
    let breaker =
        CircuitBreakerLayer::with_config(consecutive(2, Duration::from_secs(5)).probes(2));
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .layer(ClassifyLayer::new())
        .service(upstream);
    for _ in 0..2 {
        let _ = svc.clone().oneshot(request("sk-a")).await;
    }
    assert!(matches!(
        breaker.state(&key("sk-a")),
        CircuitState::Open { .. }
    ));
    failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;

    // Five calls at once: two probes go out and wait; three are refused at once.
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(request("sk-a"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(received.load(Ordering::SeqCst), 4, "2 failures + 2 probes");
    assert_eq!(breaker.state(&key("sk-a")), CircuitState::HalfOpen);
    gate.add_permits(2);
    let mut ok = 0;
    let mut refused = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(res) => {
                assert_eq!(res.status(), 200);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::CircuitOpen);
                assert!(e.detail().unwrap().contains("2 probes in flight"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (2, 3));
    // Two probe successes close it.
    assert_eq!(breaker.state(&key("sk-a")), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot() {
    let upstream = Upstream::default();
    let breaker = CircuitBreakerLayer::with_config(consecutive(1, Duration::from_secs(5)));
    let svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .layer(ClassifyLayer::new())
        .service(service_fn({
            let upstream = upstream.clone();
            move |req| {
                let mut inner = upstream.service();
                async move {
                    // Slow enough to be dropped.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    inner.call(req).await
                }
            }
        }));
    upstream.push([Step::Status(503)]);
    let _ = svc.clone().oneshot(request("sk-a")).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    // The probe is dropped before it ends (a caller's timeout) ...
    let probe = tokio::time::timeout(
        Duration::from_millis(10),
        svc.clone().oneshot(request("sk-a")),
    );
    assert!(probe.await.is_err());
    assert_eq!(breaker.state(&key("sk-a")), CircuitState::HalfOpen);
    // ... so the next call can probe, and closes the circuit.
    assert_eq!(
        svc.clone().oneshot(request("sk-a")).await.unwrap().status(),
        200
    );
    assert_eq!(breaker.state(&key("sk-a")), CircuitState::Closed);
    assert_eq!(breaker.counters(&key("sk-a")).unwrap().ignored, 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_not_a_retry_budget_withdrawal() {
    let upstream = Upstream::default();
    upstream.push([Step::Status(503); 1000]);
    let budget = TokenBudget::new(0.5, 100.0);
    let breaker = CircuitBreakerLayer::with_config(consecutive(5, Duration::from_secs(60)));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(
            RetryConfig::new()
                .max_attempts(3)
                .backoff(
                    Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
                        .with_jitter(Jitter::None),
                )
                .budget(budget.clone())
                .seed(3),
        ))
        .layer(breaker.clone())
        .layer(ClassifyLayer::new())
        .service(upstream.service());

    // Call 1: three 503s. Call 2: two more open the circuit; its third attempt is refused.
    let err = svc.clone().oneshot(request("sk-a")).await.unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::ServerError, 3));
    let err = svc.clone().oneshot(request("sk-a")).await.unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::CircuitOpen, 3));
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::NotRetryable);
    assert_eq!(upstream.received(), 5);
    let balance = budget.balance();
    assert_eq!(balance, 95.0, "one token per 503 the policy would retry");

    // While open: every call fails at once, nothing sent, no retry, the budget untouched.
    let start = Instant::now();
    for _ in 0..50 {
        let err = svc.clone().oneshot(request("sk-a")).await.unwrap_err();
        assert_eq!((err.kind(), err.attempts()), (ErrorKind::CircuitOpen, 1));
        assert!(err.retry_after().is_some());
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstream.received(), 5);
    assert_eq!(budget.balance(), balance);
    assert!(budget.try_retry());
    assert_eq!(
        breaker.counters(&key("sk-a")).unwrap().rejected,
        51,
        "call 2's third attempt and the 50"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_maps_to_a_503_with_retry_after() {
    let upstream = Upstream::default();
    let breaker = CircuitBreakerLayer::with_config(consecutive(1, Duration::from_secs(30)));
    let svc = stack(&breaker, &upstream);
    upstream.push([Step::Status(502)]);
    let _ = call(&svc).await;
    let err = call(&svc).await.unwrap_err();
    let res = oai_resilience::respond::error_response(&err);
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "30");
    // Nothing was sent: a client may come back after the delay (an SDK obeys the header).
    assert_eq!(res.headers()["x-should-retry"], "true");
    let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(v["error"]["code"], "circuit_open");
    assert_eq!(v["error"]["attempts"], 0, "nothing was sent");
}
