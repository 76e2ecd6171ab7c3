//! The circuit breaker in `OpenAiLayer`'s stack, in virtual time: switched on with
//! `OpenAiLayer::breaker`, it opens on scripted 5xx and stops sending, an open circuit costs the
//! retry budget nothing, a probe closes it; by default (and with `without_breaker`) every
//! attempt is sent.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::breaker::{BreakerConfig, CircuitBreakerLayer, CircuitState};
use oai_resilience::retry::{RetryConfig, RetryLayer, TokenBudget};
use oai_resilience::stack::ClientBody;
use oai_resilience::{AuthLayer, ErrorKind, OpenAiLayer, StopReason};
use test_support::{CHAT, KEY};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// An upstream that answers every request with `status` (changed at will) and counts them.
#[derive(Clone)]
struct Upstream {
    status: Arc<AtomicU16>,
    received: Arc<AtomicUsize>,
}

impl Upstream {
    fn new(status: u16) -> Self {
        Upstream {
            status: Arc::new(AtomicU16::new(status)),
            received: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn stack(
        &self,
        layer: OpenAiLayer,
    ) -> oai_resilience::OpenAiService<
        impl tower::Service<
                Request<ClientBody>,
                Response = Response<Full<Bytes>>,
                Error = Infallible,
                Future = impl Send,
            > + Clone,
    > {
        let this = self.clone();
        let client = service_fn(move |_req: Request<ClientBody>| {
            this.received.fetch_add(1, Ordering::SeqCst);
            let status = this.status.load(Ordering::SeqCst);
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"{}")))
                        .unwrap(),
                )
            }
        });
        layer
            .base_url("https://api.openai.com/v1".parse().unwrap())
            .auth(AuthLayer::from_key(KEY))
            .layer(client)
    }
}

fn chat() -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_breaker_with_the_default_config_opens_on_5xx_and_stops_sending() {
    let upstream = Upstream::new(503);
    let budget = TokenBudget::new(0.5, 100.0);
    let layer = OpenAiLayer::new()
        .retry(RetryLayer::with_config(
            RetryConfig::new()
                .max_attempts(3)
                .budget(budget.clone())
                .seed(5),
        ))
        .breaker(CircuitBreakerLayer::new());
    let breaker = layer.breaker_layer().clone();
    assert!(breaker.is_enabled());
    let svc = upstream.stack(layer);

    // Call 1: three 503s (max attempts). Call 2: two more make the default 5 consecutive
    // failures and open the circuit; its third attempt is refused locally.
    let err = svc.clone().oneshot(chat()).await.unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::ServerError, 3));
    let err = svc.clone().oneshot(chat()).await.unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::CircuitOpen, 3));
    assert_eq!(err.retry_context().unwrap().stop, StopReason::NotRetryable);
    assert_eq!(upstream.received(), 5);
    let key = breaker.keys().pop().unwrap();
    assert_eq!(key.base(), "api.openai.com");
    assert!(matches!(breaker.state(&key), CircuitState::Open { .. }));
    let balance = budget.balance();

    // Open: 20 calls fail at once, nothing sent, no budget spent, the time to the probe told.
    let start = Instant::now();
    for _ in 0..20 {
        let err = svc.clone().oneshot(chat()).await.unwrap_err();
        assert_eq!((err.kind(), err.attempts()), (ErrorKind::CircuitOpen, 1));
        assert!(err.retry_after().unwrap() <= Duration::from_secs(5));
        assert!(!err.to_string().contains(KEY), "{err}");
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstream.received(), 5);
    assert_eq!(budget.balance(), balance);
    assert_eq!(breaker.counters(&key).unwrap().rejected, 21);

    // The upstream recovers; after the default 5 s one probe goes and closes the circuit.
    upstream.set(200);
    tokio::time::advance(Duration::from_secs(5)).await;
    let res = svc.clone().oneshot(chat()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(breaker.state(&key), CircuitState::Closed);
    assert_eq!(upstream.received(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_configured_breaker_opens_and_without_one_every_attempt_is_sent() {
    // One failure opens a configured breaker.
    let upstream = Upstream::new(500);
    let breaker = CircuitBreakerLayer::with_config(
        BreakerConfig::new()
            .consecutive_failures(1)
            .open_for(Duration::from_secs(30)),
    );
    let layer = OpenAiLayer::new()
        .retry(RetryLayer::with_config(RetryConfig::new().max_attempts(4)))
        .breaker(breaker.clone());
    let svc = upstream.stack(layer);
    let err = svc.clone().oneshot(chat()).await.unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::CircuitOpen, 2));
    assert_eq!(upstream.received(), 1);
    assert_eq!(breaker.keys().len(), 1);

    // `without_breaker` switches a configured breaker off.
    let off = OpenAiLayer::new().breaker(breaker).without_breaker();
    assert!(!off.breaker_layer().is_enabled());

    // By default there is no breaker: every attempt of every call is sent.
    let upstream = Upstream::new(500);
    let layer = OpenAiLayer::new().retry(RetryLayer::with_config(
        RetryConfig::new()
            .max_attempts(4)
            .budget(TokenBudget::new(1.0, 1000.0)),
    ));
    let off = layer.breaker_layer().clone();
    assert!(!off.is_enabled());
    let svc = upstream.stack(layer);
    for _ in 0..5 {
        let err = svc.clone().oneshot(chat()).await.unwrap_err();
        assert_eq!((err.kind(), err.attempts()), (ErrorKind::ServerError, 4));
    }
    assert_eq!(upstream.received(), 20);
    assert!(off.keys().is_empty(), "a disabled breaker keeps no circuit");
}
