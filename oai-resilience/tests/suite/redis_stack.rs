//! Two full stacks (pace through their own `RedisStore` with `PaceLayer::pacing_store` →
//! classify → hyper client), as two processes would run them, against one mock server and one
//! real `redis-server`.
#![cfg(all(feature = "redis", feature = "mock"))]

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::mock::{MockServer, RateLimit, Route};
use oai_resilience::pace::{PaceKey, PaceLayer, PacerConfig, RedisStore, RedisStoreConfig};
use oai_resilience::{ClassifyLayer, ErrorKind};
use support::redis_server::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};

use test_support::CHAT_5_TOKENS as CHAT;
use test_support::KEY;

/// A pace layer that paces through `store`, waiting at most `max_wait` (default 60 s).
fn store_pace(store: RedisStore, max_wait: Option<Duration>) -> PaceLayer {
    let mut config = PacerConfig::default();
    if max_wait.is_some() {
        config.max_wait = max_wait;
    }
    PaceLayer::with_config(config).pacing_store(store)
}

fn config() -> RedisStoreConfig {
    let mut config = RedisStoreConfig::default();
    // Generous: a loaded CI machine must not turn a slow answer into a fallback.
    config.op_timeout = Duration::from_secs(2);
    config.retry_interval = Duration::from_millis(50);
    config
}

#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    failed: usize,
    rate_limited: usize,
}

/// A chat request to `url` with the test key.
fn chat_request(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// One chat call to `url` through `svc`, its 429s (counted in `limited`) retried: at most 10
/// tries. Whether one of them succeeded.
async fn call_retrying_429s<S>(svc: &S, url: &str, limited: &AtomicUsize) -> bool
where
    S: Service<http::Request<Full<Bytes>>, Error = oai_resilience::Error> + Clone,
{
    for _ in 0..10 {
        match svc.clone().oneshot(chat_request(url)).await {
            Ok(_) => return true,
            Err(e) if e.kind() == ErrorKind::RateLimited => {
                limited.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    false
}

/// `calls` calls at concurrency `workers` through one stack; 429s retried (at most 10 tries).
async fn run(layer: PaceLayer, url: String, calls: usize, workers: usize) -> Outcome {
    let client = test_support::http_client::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(ClassifyLayer::new())
        .service(client);
    // Calls taken, then calls done, failed, and 429s seen.
    let tally: Arc<[AtomicUsize; 4]> = Arc::default();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (svc, tally, url) = (svc.clone(), tally.clone(), url.clone());
            tokio::spawn(async move {
                let [next, ok, failed, limited] = &*tally;
                while next.fetch_add(1, Ordering::SeqCst) < calls {
                    if call_retrying_429s(&svc, &url, limited).await {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let [_, ok, failed, limited] = &*tally;
    Outcome {
        ok: ok.load(Ordering::SeqCst),
        failed: failed.load(Ordering::SeqCst),
        rate_limited: limited.load(Ordering::SeqCst),
    }
}

fn pace_key(server: &MockServer) -> PaceKey {
    PaceKey::new(server.addr().to_string())
        .with_credential(format!("Bearer {KEY}").as_bytes())
        .with_model("gpt-4o-mini")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stacks_share_one_bucket() {
    let redis = RedisServer::start();
    let server = MockServer::builder()
        .request_limit(RateLimit::bucket(20, 20.0))
        .start()
        .await;
    let a = RedisStore::connect(&redis.url(), config()).await.unwrap();
    let b = RedisStore::connect(&redis.url(), config()).await.unwrap();
    let key = pace_key(&server);
    support::seed_bucket_20(&a, &key).await;
    let url = server.endpoint(Route::ChatCompletions);
    let (x, y) = tokio::join!(
        run(store_pace(a.clone(), None), url.clone(), 30, 8),
        run(store_pace(b.clone(), None), url.clone(), 30, 8)
    );
    let counts = server.counts();
    eprintln!("two stacks: {x:?} {y:?}; mock {counts:?}");
    assert_eq!(x.ok + y.ok, 60);
    assert_eq!(x.failed + y.failed, 0);
    support::assert_bucket_held(&counts, 60);
    assert_eq!(
        x.rate_limited + y.rate_limited,
        counts.rate_limited as usize
    );
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_stack_pauses_the_other() {
    let redis = RedisServer::start();
    let server = MockServer::builder().no_rate_limits().start().await;
    let a = RedisStore::connect(&redis.url(), config()).await.unwrap();
    let b = RedisStore::connect(&redis.url(), config()).await.unwrap();
    // Stack A gets a 429 with a 30 s hint (the mock's script), so B's next call must wait:
    // with a 200 ms max_wait it fails as "paced locally" and sends nothing.
    server.script(
        Route::ChatCompletions,
        [oai_resilience::mock::MockResponse::rate_limited(
            Duration::from_secs(30),
        )],
    );
    let url = server.endpoint(Route::ChatCompletions);
    let call = |layer: PaceLayer| {
        let url = url.clone();
        async move {
            let client = test_support::http_client::<Full<Bytes>>();
            let svc = ServiceBuilder::new()
                .layer(layer)
                .layer(ClassifyLayer::new())
                .service(client);
            let req = http::Request::post(&url)
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                .unwrap();
            svc.oneshot(req).await
        }
    };
    let first = call(store_pace(a.clone(), None)).await.unwrap_err();
    assert_eq!(first.kind(), ErrorKind::RateLimited);
    assert!(first.status().is_some());
    let sent = server.counts().total;
    let second = call(store_pace(b.clone(), Some(Duration::from_millis(200))))
        .await
        .unwrap_err();
    assert!(oai_resilience::pace::is_paced_locally(&second), "{second}");
    assert_eq!(server.counts().total, sent, "B sent while paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_calls_continue_in_process() {
    let mut redis = RedisServer::start();
    let server = MockServer::builder()
        .request_limit(RateLimit::bucket(20, 20.0))
        .start()
        .await;
    let a = RedisStore::connect(&redis.url(), config()).await.unwrap();
    let key = pace_key(&server);
    support::seed_bucket_20(&a, &key).await;
    let url = server.endpoint(Route::ChatCompletions);
    let first = run(store_pace(a.clone(), None), url.clone(), 10, 4).await;
    assert_eq!(first.ok, 10);
    redis.kill();
    let during = run(store_pace(a.clone(), None), url.clone(), 20, 4).await;
    eprintln!("during outage: {during:?}, fallbacks {}", a.fallbacks());
    assert_eq!(during.failed, 0);
    assert_eq!(during.ok, 20);
    assert!(a.fallbacks() > 0);
    assert!(a.is_degraded());
    redis.restart();
    // Bounded polling while the connection manager reconnects (I/O readiness).
    let mut back = false;
    for _ in 0..200 {
        let after = run(store_pace(a.clone(), None), url.clone(), 1, 1).await;
        assert_eq!(after.ok, 1);
        if !a.is_degraded() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "shared pacing never resumed");
    let name = a.key_name(&key);
    assert_eq!(
        redis.command(&["EXISTS", &name]).int(),
        1,
        "nothing written after recovery"
    );
}
