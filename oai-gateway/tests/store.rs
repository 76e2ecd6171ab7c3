//! Gateway replicas that share one rate limit through Redis (`--store redis://...`):
//! two gateways, each with its own `RedisStore` and connection, in front of one mock with a
//! bucket of 20 requests refilled at 20/s, against a real `redis-server` started on a free
//! loopback port (`scripts/ensure-redis.sh` installs it).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use oai_gateway::upstream::pacing_store;
use oai_resilience::mock::{MockServer, RateLimit};
use oai_resilience::pace::{BucketLimits, LearnedLimits, PaceKey, PacingStore, RedisStore};
use oai_resilience::RetryConfig;
use support::KEY;
use test_support::redis_server::RedisServer;

mod support;

/// A gateway in front of `upstream` pacing through `store`, or in-process.
async fn gateway(upstream: &MockServer, store: Option<RedisStore>) -> SocketAddr {
    let url = upstream.url();
    let mut c = support::config(&["--upstream", &url], &[]);
    c.retry = RetryConfig::new().seed(7);
    let gw = oai_gateway::Gateway::with_store(&c, store).unwrap();
    support::serve(gw, &c).await
}

/// `calls` chat calls through the gateway at `addr`, `workers` at a time; the statuses.
async fn calls(addr: SocketAddr, calls: usize, workers: usize) -> Vec<u16> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let mut statuses = Vec::new();
                // Bounded by `calls`.
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < calls {
                    let res = client.request(support::chat_request(addr)).await.unwrap();
                    statuses.push(res.status().as_u16());
                    res.into_body().collect().await.unwrap();
                }
                statuses
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_bucket_through_redis() {
    let redis = RedisServer::start();
    let upstream = MockServer::builder()
        .api_key(KEY)
        .request_limit(RateLimit::bucket(20, 20.0))
        .start()
        .await;
    let a = pacing_store(&redis.url())
        .await
        .unwrap()
        .expect("a Redis store");
    let b = pacing_store(&redis.url())
        .await
        .unwrap()
        .expect("a Redis store");
    // The bucket, recorded up front (the store has no cold-key probe).
    let key = PaceKey::new(upstream.addr().to_string())
        .with_credential(format!("Bearer {KEY}").as_bytes())
        .with_model("gpt-4o-mini");
    let mut limits = LearnedLimits::default();
    limits.requests = Some(BucketLimits::new(20.0, 20.0));
    a.learn(&key, limits).await.unwrap();
    let (ga, gb) = (
        gateway(&upstream, Some(a.clone())).await,
        gateway(&upstream, Some(b.clone())).await,
    );
    let (x, y) = tokio::join!(calls(ga, 30, 8), calls(gb, 30, 8));
    let counts = upstream.counts();
    assert!(x.iter().chain(&y).all(|s| *s == 200), "{x:?} {y:?}");
    assert_eq!(x.len() + y.len(), 60);
    // The bucket held: every call sent once, plus at most two 429s from delivery jitter under
    // load (see `assert_bucket_held` in `oai-resilience/tests/support`), each retried.
    assert!(counts.rate_limited <= 2, "{counts:?}");
    assert_eq!(counts.total, 60 + counts.rate_limited, "{counts:?}");
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_redis_is_down_still_serves() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = pacing_store(&format!("redis://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .expect("a Redis store, failing open");
    let upstream = MockServer::builder().api_key(KEY).start().await;
    let gw = gateway(&upstream, Some(store.clone())).await;
    let statuses = calls(gw, 3, 1).await;
    assert_eq!(statuses, vec![200, 200, 200]);
    assert!(store.is_degraded());
    assert!(store.fallbacks() > 0);
}

#[tokio::test]
async fn store_argument() {
    assert!(pacing_store("memory").await.unwrap().is_none());
    assert!(pacing_store("in-process").await.unwrap().is_none());
    let err = pacing_store("memcached://127.0.0.1:11211")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected memory or redis://"),
        "{err}"
    );
    // A URL the client refuses; the message does not repeat it (it may hold a password).
    let err = pacing_store("redis://:hunter2@[bad").await.unwrap_err();
    assert!(err.to_string().contains("not a usable Redis URL"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // The default gateway paces in-process.
    let upstream = MockServer::builder().api_key(KEY).start().await;
    let gw = gateway(&upstream, None).await;
    assert_eq!(calls(gw, 2, 1).await, vec![200, 200]);
}
