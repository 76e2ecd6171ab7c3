//! The default order of the stack, end to end over loopback: retry → pace → classify → hyper
//! client → the mock server, at the loadtest's shape (300 calls at concurrency 50 against a
//! bucket of 20 refilled 20/s) and its targets: no failed call, wall within 5 % of the
//! minimum, at most 15 % more requests than calls.
#![cfg(feature = "mock")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::mock::{MockServer, RateLimit, Route};
use oai_resilience::pace::PaceLayer;
use oai_resilience::retry::{RetryConfig, RetryLayer};
use oai_resilience::ClassifyLayer;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

use test_support::CHAT_5_TOKENS as CHAT;

struct Run {
    failed: usize,
    sent: u64,
    rate_limited: u64,
    wall: f64,
}

async fn load(limit: RateLimit, calls: usize, concurrency: usize) -> Run {
    load_with(limit, calls, concurrency, true).await
}

/// `paced: false` leaves the pace layer out: the baseline that shows what pacing saves.
async fn load_with(limit: RateLimit, calls: usize, concurrency: usize, paced: bool) -> Run {
    load_at(limit, calls, concurrency, paced, Duration::from_millis(20)).await
}

/// The mock answers after `latency` (its 429s at once).
async fn load_at(
    limit: RateLimit,
    calls: usize,
    concurrency: usize,
    paced: bool,
    latency: Duration,
) -> Run {
    let server = MockServer::builder()
        .request_limit(limit)
        .latency(latency)
        .start()
        .await;
    let client = test_support::http_client::<Full<Bytes>>();
    let pace = PaceLayer::new();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(RetryConfig::new().seed(7)))
        .option_layer(paced.then(|| pace.clone()))
        .layer(ClassifyLayer::new())
        .service(client);
    let url = server.endpoint(Route::ChatCompletions);
    let gate = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let (svc, url, gate) = (svc.clone(), url.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.unwrap();
            let req = http::Request::post(&url)
                .header(
                    "authorization",
                    "Bearer sk-proj-Zq3xV9mN2pL8rT5wY1kB7cD4fG6hJ0aS",
                )
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                .unwrap();
            svc.oneshot(req).await.is_ok()
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !t.await.unwrap() {
            failed += 1;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let counts = server.counts();
    eprintln!(
        "{limit:?} (paced: {paced}): {calls} calls, {} sent, {} 429s, {failed} failed, wall {wall:.3} s; {:?}",
        counts.total,
        counts.rate_limited,
        pace.pacer().metrics()
    );
    Run {
        failed,
        sent: counts.total,
        rate_limited: counts.rate_limited,
        wall,
    }
}

#[tokio::test(start_paused = true)]
async fn loadtest_shape_meets_the_targets() {
    let calls = 300;
    let run = load(RateLimit::bucket(20, 20.0), calls, 50).await;
    let min = (calls as f64 - 20.0) / 20.0;
    assert_eq!(run.failed, 0);
    assert!(run.wall <= min * 1.05, "wall {} vs minimum {min}", run.wall);
    assert!(run.sent as f64 <= calls as f64 * 1.15, "sent {}", run.sent);
    // The cold key's first wave (50 against a bucket of 20) collects 30 fast 429s; after
    // that, at most 5 more.
    assert!(run.rate_limited <= 30 + 5, "429s {}", run.rate_limited);
}

#[tokio::test(start_paused = true)]
async fn quantized_limit_through_the_whole_stack() {
    // Headers report 1,200/min; 20/s is enforced. The cold burst costs 429s (retried); then
    // the adaptive rate holds.
    let calls = 300;
    let run = load(
        RateLimit::quantized(1200, Duration::from_secs(1)),
        calls,
        50,
    )
    .await;
    let min = (calls as f64 - 20.0) / 20.0;
    assert_eq!(run.failed, 0);
    assert!(run.wall <= min * 1.3, "wall {} vs minimum {min}", run.wall);
    assert!(run.sent as f64 <= calls as f64 * 1.35, "sent {}", run.sent);
}

#[tokio::test(start_paused = true)]
async fn without_pacing_the_same_stack_meets_a_429_storm() {
    // The baseline of the two tests above: the same retry layer, same limit, no pace layer.
    let calls = 300;
    let paced = load(RateLimit::bucket(20, 20.0), calls, 50).await;
    let unpaced = load_with(RateLimit::bucket(20, 20.0), calls, 50, false).await;
    assert!(
        unpaced.rate_limited >= 10 * paced.rate_limited.max(1),
        "429s: {} unpaced vs {} paced",
        unpaced.rate_limited,
        paced.rate_limited
    );
    assert!(
        unpaced.sent as f64 >= paced.sent as f64 * 1.15,
        "sent: {} vs {}",
        unpaced.sent,
        paced.sent
    );
    // Calls whose five attempts all met a 429 (the maximum attempts, not the budget: 429s do
    // not count against it).
    assert!(unpaced.failed >= 100, "failed: {}", unpaced.failed);
    assert_eq!(paced.failed, 0);
}

#[tokio::test(start_paused = true)]
async fn loadtest_shape_at_a_model_latency_of_2_s_meets_the_targets() {
    // The answers take 2 s (a model's time), the 429s come at once: the minimum is the
    // refill of the last 280 calls (14 s) plus the last call's latency.
    let calls = 300;
    let latency = Duration::from_secs(2);
    let run = load_at(RateLimit::bucket(20, 20.0), calls, 50, true, latency).await;
    let min = (calls as f64 - 20.0) / 20.0 + latency.as_secs_f64();
    assert_eq!(run.failed, 0);
    assert!(run.wall <= min * 1.05, "wall {} vs minimum {min}", run.wall);
    assert!(run.sent as f64 <= calls as f64 * 1.15, "sent {}", run.sent);
}
