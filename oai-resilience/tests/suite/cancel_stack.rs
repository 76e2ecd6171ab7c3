//! Cancellation through the full stack against the mock: dropping a call mid-request,
//! mid-backoff or mid-pacing-wait gives back its pacing slot, sends nothing more and leaves no
//! task running. Virtual time throughout.
#![cfg(feature = "mock")]

use crate::scripted;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::mock::{MockResponse, MockServer, RateLimit};
use oai_resilience::pace::{KeySnapshot, PaceKey};
use oai_resilience::retry::TokenBudget;
use oai_resilience::stack::{OpenAiLayer, OpenAiService};
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, RetryConfig, RetryLayer};
use scripted::scripted;
use tokio::time::sleep;
use tower::{Layer, ServiceExt};

const KEY: &str = "sk-proj-CancelTestKey0123456789abcdefghijklmnopqrs";
use test_support::CHAT;

type Http = Client<HttpConnector, ValidateBody<Full<Bytes>>>;

fn chat() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

struct Rig {
    server: MockServer,
    layer: OpenAiLayer,
    svc: OpenAiService<Http>,
    budget: TokenBudget,
}

async fn rig(server: MockServer) -> Rig {
    let budget = TokenBudget::default();
    let config = RetryConfig::new().seed(5).budget(budget.clone());
    let layer = OpenAiLayer::new()
        .base_url(server.url().parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .retry(RetryLayer::with_config(config));
    let svc = layer.layer(test_support::http_client());
    Rig {
        server,
        layer,
        svc,
        budget,
    }
}

impl Rig {
    fn key_state(&self) -> Option<KeySnapshot> {
        let pacer = self.layer.pace_layer().pacer();
        let base = PaceKey::new(self.server.addr().to_string())
            .with_credential(format!("Bearer {KEY}").as_bytes());
        pacer
            .key_state(&base.clone().with_model("gpt-4o-mini"))
            .or_else(|| pacer.key_state(&base))
    }

    /// Drops the stack and the server, then waits (bounded) for every task to end.
    async fn teardown(self, tasks_before: usize) {
        drop(self.svc);
        drop(self.layer);
        self.server.shutdown().await;
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..1000 {
            if metrics.num_alive_tasks() <= tasks_before {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            metrics.num_alive_tasks(),
            tasks_before,
            "tasks left running"
        );
    }
}

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_mid_request_frees_its_slot() {
    let before = alive();
    let server = MockServer::builder()
        .api_key(KEY)
        .latency(Duration::from_secs(30))
        .start()
        .await;
    let rig = rig(server).await;
    let call = rig.svc.clone().oneshot(chat());
    // The request reaches the server, which sits on it for 30 s; the caller gives up at 1 s.
    let outcome = tokio::time::timeout(Duration::from_secs(1), call).await;
    assert!(outcome.is_err(), "the call should still be in flight");
    assert_eq!(rig.server.counts().total, 1);
    let state = rig.key_state().expect("the key is known to the pacer");
    assert_eq!(state.in_flight, 0, "{state:?}");
    assert_eq!(state.queue_len, 0, "{state:?}");
    assert_eq!(rig.layer.pace_layer().pacer().metrics().queue_len, 0);
    // Nothing more is sent after the drop, no retry either.
    sleep(Duration::from_secs(120)).await;
    assert_eq!(rig.server.counts().total, 1);
    // A call after the cancelled one goes out at once (the slot was given back) and succeeds
    // after the server's 30 s.
    let start = tokio::time::Instant::now();
    rig.svc.clone().oneshot(chat()).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(31));
    assert_eq!(rig.server.counts().total, 2);
    rig.teardown(before).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_mid_backoff_sends_no_retry() {
    let before = alive();
    let server = scripted(
        Some(KEY),
        [MockResponse::status(503).with_header("retry-after", "20")],
    )
    .await;
    let rig = rig(server).await;
    let full = rig.budget.balance();
    let call = rig.svc.clone().oneshot(chat());
    // The 503 arrives at once; the retry waits 20 s; the caller gives up at 5 s.
    let outcome = tokio::time::timeout(Duration::from_secs(5), call).await;
    assert!(outcome.is_err(), "the call should be waiting to retry");
    assert_eq!(rig.server.counts().total, 1);
    // The budget counted the 503 (one token less); the retry itself costs nothing, so there
    // is nothing to give back when the call is dropped before the retry goes out.
    assert!(
        (rig.budget.balance() - (full - 1.0)).abs() < 1e-6,
        "{} vs {full}",
        rig.budget.balance()
    );
    let state = rig.key_state().expect("the key is known to the pacer");
    assert_eq!((state.in_flight, state.queue_len), (0, 0), "{state:?}");
    sleep(Duration::from_secs(60)).await;
    assert_eq!(rig.server.counts().total, 1, "no retry after the drop");
    // The stack still works: the next call succeeds with one request.
    rig.svc.clone().oneshot(chat()).await.unwrap();
    assert_eq!(rig.server.counts().total, 2);
    rig.teardown(before).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_mid_pacing_wait_gives_its_place_back() {
    let before = alive();
    let server = MockServer::builder()
        .api_key(KEY)
        .request_limit(RateLimit::bucket(1, 0.1))
        .start()
        .await;
    let rig = rig(server).await;
    // The first call takes the only request in the bucket; the pacer learns it is empty
    // (refill one per 10 s).
    rig.svc.clone().oneshot(chat()).await.unwrap();
    let pacer = rig.layer.pace_layer().pacer().clone();
    let waiting = tokio::spawn(rig.svc.clone().oneshot(chat()));
    // Let it reach the pacer's queue.
    for _ in 0..100 {
        if pacer.metrics().queue_len == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(pacer.metrics().queue_len, 1, "{:?}", pacer.metrics());
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(pacer.metrics().queue_len, 0);
    let state = rig.key_state().expect("the key is known to the pacer");
    assert_eq!((state.in_flight, state.queue_len), (0, 0), "{state:?}");
    sleep(Duration::from_secs(60)).await;
    // Only the first call reached the server.
    assert_eq!(rig.server.counts().total, 1);
    // The next call is not stuck behind the cancelled one.
    tokio::time::timeout(Duration::from_secs(30), rig.svc.clone().oneshot(chat()))
        .await
        .expect("not stuck behind the cancelled waiter")
        .unwrap();
    assert_eq!(rig.server.counts().total, 2);
    rig.teardown(before).await;
}
