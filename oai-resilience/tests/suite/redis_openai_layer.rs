//! The full stack ([`OpenAiLayer`] with [`OpenAiLayer::pacing_store`]) paced through a real
//! `redis-server`: two stacks, each with its own `RedisStore` and connection (as two processes
//! would have), against one mock server with a bucket of 20 refilled at 20/s.
#![cfg(all(feature = "redis", feature = "mock"))]

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use oai_resilience::mock::{MockCounts, MockServer, RateLimit};
use oai_resilience::pace::{
    FailMode, PaceKey, PaceLayer, PacerConfig, RedisStore, RedisStoreConfig,
};
use oai_resilience::stack::OpenAiLayer;
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, ErrorKind};
use support::redis_server::RedisServer;
use tower::{Layer, ServiceExt};

use test_support::CHAT_5_TOKENS as CHAT;
use test_support::KEY;

fn config() -> RedisStoreConfig {
    let mut config = RedisStoreConfig::default();
    // Generous: a loaded CI machine must not turn a slow answer into a fallback.
    config.op_timeout = Duration::from_secs(2);
    config.retry_interval = Duration::from_millis(50);
    config
}

type Service =
    oai_resilience::stack::OpenAiService<Client<HttpConnector, ValidateBody<Full<Bytes>>>>;

fn stack(server: &MockServer, store: RedisStore) -> Service {
    stack_with(server, store, PaceLayer::new())
}

/// A stack whose pacer holds a cold key behind one probe request per process.
fn probing_stack(server: &MockServer, store: RedisStore) -> Service {
    let mut config = PacerConfig::default();
    config.cold_window = Some(1);
    stack_with(server, store, PaceLayer::with_config(config))
}

fn stack_with(server: &MockServer, store: RedisStore, pace: PaceLayer) -> Service {
    let client = test_support::http_client();
    OpenAiLayer::new()
        .base_url(server.url().parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .pace(pace)
        .pacing_store(store)
        .layer(client)
}

/// A mock server that expects the test key, with the bucket of 20 refilled at 20/s.
async fn bucket_20() -> MockServer {
    MockServer::builder()
        .api_key(KEY)
        .request_limit(RateLimit::bucket(20, 20.0))
        .start()
        .await
}

fn request() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// `calls` calls, `workers` at a time, through `svc`; returns (ok, error kinds).
async fn run<S>(svc: S, calls: usize, workers: usize) -> (usize, Vec<ErrorKind>)
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = oai_resilience::Error,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (svc, next) = (svc.clone(), next.clone());
            tokio::spawn(async move {
                let (mut ok, mut errs) = (0, Vec::new());
                // Bounded by `calls`.
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < calls {
                    match svc.clone().oneshot(request()).await {
                        Ok(res) => {
                            res.into_body().collect().await.unwrap();
                            ok += 1;
                        }
                        Err(e) => errs.push(e.kind()),
                    }
                }
                (ok, errs)
            })
        })
        .collect();
    let (mut ok, mut errs) = (0, Vec::new());
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        errs.extend(e);
    }
    (ok, errs)
}

/// The pacing key of the test key's calls to `server`.
fn mock_key(server: &MockServer) -> PaceKey {
    PaceKey::new(server.addr().to_string())
        .with_credential(format!("Bearer {KEY}").as_bytes())
        .with_model("gpt-4o-mini")
}

/// The mock's bucket for this test's key, configured up front (the store has no cold-key probe).
async fn seed(store: &RedisStore, server: &MockServer) {
    support::seed_bucket_20(store, &mock_key(server)).await;
}

/// Two stores on `redis`, each with its own connection (as two processes would have).
async fn two_stores(redis: &RedisServer) -> (RedisStore, RedisStore) {
    let a = RedisStore::connect(&redis.url(), config()).await.unwrap();
    let b = RedisStore::connect(&redis.url(), config()).await.unwrap();
    (a, b)
}

/// Runs 30 calls, 8 at a time, through each of two stacks made by `build` (one on store `a`,
/// one on `b`) while `alongside` runs too; prints the outcome under `label`, checks that all 60
/// calls succeeded and that neither store fell back, and returns the mock's counts and what
/// `alongside` returned.
async fn sixty_calls_through_two_stacks<T>(
    label: &str,
    server: &MockServer,
    (a, b): &(RedisStore, RedisStore),
    build: fn(&MockServer, RedisStore) -> Service,
    alongside: impl std::future::Future<Output = T>,
) -> (MockCounts, T) {
    let ((ok_a, err_a), (ok_b, err_b), out) = tokio::join!(
        run(build(server, a.clone()), 30, 8),
        run(build(server, b.clone()), 30, 8),
        alongside
    );
    let counts = server.counts();
    eprintln!("{label}: {ok_a} {err_a:?} / {ok_b} {err_b:?}; mock {counts:?}");
    assert_eq!(ok_a + ok_b, 60, "{err_a:?} {err_b:?}");
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
    (counts, out)
}

/// At most a few 429s (the stack retried them), and nothing sent besides the 60 calls and
/// those retries.
fn assert_few_429s(counts: &MockCounts) {
    assert!(counts.rate_limited <= 3, "{counts:?}");
    assert!(counts.total <= 60 + counts.rate_limited, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_openai_stacks_share_one_bucket_through_redis() {
    let redis = RedisServer::start();
    let server = bucket_20().await;
    let stores = two_stores(&redis).await;
    seed(&stores.0, &server).await;
    let (counts, ()) =
        sixty_calls_through_two_stacks("openai stacks", &server, &stores, stack, async {}).await;
    support::assert_bucket_held(&counts, 60);
    // The stacks paced through Redis: the key's hash is there.
    assert_eq!(
        redis
            .command(&["EXISTS", &stores.0.key_name(&mock_key(&server))])
            .int(),
        1,
        "nothing in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_stacks_without_the_store_each_spend_the_bucket() {
    // The control for the test above: two default stacks (in-process pacers) against the
    // same bucket race each other and collect 429s, so the shared store is what made the
    // difference.
    let server = bucket_20().await;
    let build = || {
        OpenAiLayer::new()
            .base_url(server.url().parse().unwrap())
            .auth(AuthLayer::from_key(KEY))
            .layer(test_support::http_client::<ValidateBody<Full<Bytes>>>())
    };
    let a = OpenAiLayer::new();
    assert!(a.pace_layer().store().is_none(), "in-process by default");
    let (x, y) = tokio::join!(run(build(), 30, 8), run(build(), 30, 8));
    let counts = server.counts();
    eprintln!("default stacks: {x:?} / {y:?}; mock {counts:?}");
    assert!(counts.rate_limited > 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_whose_store_fails_closed_sends_nothing_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let server = MockServer::builder().api_key(KEY).start().await;
    let mut closed = config();
    closed.fail_mode = FailMode::Closed;
    closed.op_timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&redis.url(), closed).await.unwrap();
    let (ok, errs) = run(stack(&server, store.clone()), 1, 1).await;
    assert_eq!((ok, errs.len()), (1, 0), "{errs:?}");
    redis.kill();
    let before = server.counts().total;
    let (ok, errs) = run(stack(&server, store.clone()), 1, 1).await;
    assert_eq!(ok, 0);
    assert_eq!(errs, vec![ErrorKind::Connection]);
    assert_eq!(
        server.counts().total,
        before,
        "sent while the store was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cold_stacks_probe_once_each_then_share_what_they_learned() {
    // Nothing configured up front, and a cold window of one: each stack probes the cold key
    // with one request, the
    // others wait for its headers, learned into Redis. The second probe is not counted in the
    // first one's headers, and the store does not subtract requests in flight from the
    // headers' `remaining`, so a few 429s may come (retried by the stack); the same two stacks
    // without the store collect 18 to 33 (the control test above).
    let redis = RedisServer::start();
    let server = bucket_20().await;
    let stores = two_stores(&redis).await;
    let (counts, ()) =
        sixty_calls_through_two_stacks("cold stacks", &server, &stores, probing_stack, async {})
            .await;
    assert_few_429s(&counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cold_stacks_send_their_first_wave_at_once_then_pace_on_the_store() {
    // The default: no probe. Each stack's first wave (8 calls, 16 in all against a bucket of
    // 20) goes out at once; the first answers' headers go to Redis, and from then on both
    // stacks pace on them. (Real time: the stacks talk to a real Redis.)
    let redis = RedisServer::start();
    let server = MockServer::builder()
        .api_key(KEY)
        .request_limit(RateLimit::bucket(20, 20.0))
        .latency(Duration::from_secs(1))
        .start()
        .await;
    let stores = two_stores(&redis).await;
    let started = tokio::time::Instant::now();
    let (counts, first_wave) =
        sixty_calls_through_two_stacks("cold stacks, no probe", &server, &stores, stack, async {
            // Both waves are out long before the first answer (1 s): nothing waited for a
            // probe.
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.counts().total
        })
        .await;
    eprintln!("cold stacks, no probe: {:?}", started.elapsed());
    assert_eq!(first_wave, 16);
    assert_few_429s(&counts);
}
