//! The retry budget shared through a real `redis-server`: two budgets with their own
//! connections (as two processes would have) see one balance; a fleet in an outage sends the
//! retries of one budget, not of each; Redis killed → local budgeting, no panic; Redis back →
//! shared again.
#![cfg(all(feature = "redis", feature = "mock"))]

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::retry::redis::{RedisRetryBudget, RedisRetryBudgetConfig};
use oai_resilience::retry::{Backoff, HintJitter, Jitter, RetryBudget, RetryConfig};
use oai_resilience::{ClassifyLayer, Error, ErrorKind, RetryLayer, StopReason};
use support::redis_server::RedisServer;
use tower::{ServiceBuilder, ServiceExt};

use test_support::CHAT_5_TOKENS as CHAT;

/// No background sync in the way: the tests sync explicitly, so every figure is exact.
fn config() -> RedisRetryBudgetConfig {
    let mut config = RedisRetryBudgetConfig::default();
    config.sync_every = Duration::from_secs(3600);
    // Generous: a loaded CI machine must not turn a slow answer into a degraded budget.
    config.op_timeout = Duration::from_secs(2);
    config
}

async fn pair(redis: &RedisServer, name: &str) -> (RedisRetryBudget, RedisRetryBudget) {
    let a = RedisRetryBudget::connect(&redis.url(), name, config())
        .await
        .unwrap();
    let b = RedisRetryBudget::connect(&redis.url(), name, config())
        .await
        .unwrap();
    (a, b)
}

fn server_error() -> Error {
    Error::new(ErrorKind::ServerError)
}

#[tokio::test]
async fn two_budgets_share_one_balance() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "fleet").await;
    assert_eq!((a.balance(), b.balance()), (20.0, 20.0));
    for _ in 0..15 {
        a.on_failure(&server_error());
    }
    assert!(!a.try_retry());
    assert!(b.try_retry(), "B has not heard yet");
    assert_eq!(a.sync().await.unwrap(), 5.0);
    assert_eq!(b.sync().await.unwrap(), 5.0);
    assert!(!b.try_retry(), "A's failures closed B's retries");
    // B's successes reopen A's.
    for _ in 0..20 {
        b.on_success();
    }
    b.sync().await.unwrap();
    assert_eq!(a.sync().await.unwrap(), 15.0);
    assert!(a.try_retry());
    // Clamped at the maximum, fleet-wide.
    for _ in 0..100 {
        a.on_success();
    }
    a.sync().await.unwrap();
    assert_eq!(b.sync().await.unwrap(), 20.0);
    // Rate-limit 429s count for nobody.
    a.on_failure(&Error::new(ErrorKind::RateLimited));
    assert_eq!(a.sync().await.unwrap(), 20.0);
}

#[tokio::test]
async fn other_names_are_other_budgets_and_keys_hold_no_name() {
    let redis = RedisServer::start();
    let a = RedisRetryBudget::connect(&redis.url(), "sk-proj-SECRETsecret0123", config())
        .await
        .unwrap();
    let c = RedisRetryBudget::connect(&redis.url(), "another", config())
        .await
        .unwrap();
    for _ in 0..12 {
        a.on_failure(&server_error());
    }
    a.sync().await.unwrap();
    assert_eq!(c.sync().await.unwrap(), 20.0);
    let keys = redis.command(&["KEYS", "*"]).strings();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("SECRET")), "{keys:?}");
    assert!(keys.contains(&a.key_name().to_owned()), "{keys:?}");
    let ttl = redis.command(&["PTTL", a.key_name()]).int();
    assert!(ttl > 0 && ttl <= 600_000, "expires by itself: {ttl}");
}

#[tokio::test]
async fn redis_killed_then_back() {
    let mut redis = RedisServer::start();
    let (a, b) = pair(&redis, "fleet").await;
    redis.kill();
    // Local budgeting goes on: ten failures close A's retries without Redis.
    for _ in 0..10 {
        a.on_failure(&server_error());
    }
    assert!(!a.try_retry());
    assert!(a.sync().await.is_err());
    assert!(a.is_degraded());
    assert_eq!(a.balance(), 10.0, "the local view is kept");
    redis.restart();
    // The restarted Redis has no balance (persistence off): a full one, with A's delta kept.
    assert_eq!(a.sync().await.unwrap(), 10.0);
    assert!(!a.is_degraded());
    assert_eq!(b.sync().await.unwrap(), 10.0, "shared again");
    assert!(a.failed_syncs() >= 1);
}

/// A stack whose attempts all fail at once (no backoff to wait through), with `budget`.
fn stack(
    budget: RedisRetryBudget,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = Error,
    Future = impl Send,
> + Clone {
    let client = test_support::http_client::<Full<Bytes>>();
    let retry = RetryConfig::new()
        .max_attempts(5)
        .backoff(
            Backoff::new(Duration::from_millis(1), Duration::from_millis(1))
                .with_jitter(Jitter::None),
        )
        .hint_jitter(HintJitter::NONE)
        .no_deadline()
        .budget(budget);
    ServiceBuilder::new()
        .layer(RetryLayer::with_config(retry))
        .layer(ClassifyLayer::new())
        .service(client)
}

async fn calls(
    svc: &(impl tower::Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
        Error = Error,
    > + Clone),
    url: &str,
    n: usize,
) -> Vec<Error> {
    let mut errors = Vec::new();
    for _ in 0..n {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
            .unwrap();
        if let Err(e) = svc.clone().oneshot(req).await {
            errors.push(e);
        }
    }
    errors
}

#[tokio::test]
async fn an_outage_is_bounded_fleet_wide() {
    let redis = RedisServer::start();
    let server = MockServer::builder()
        .no_rate_limits()
        .random_server_errors(1.0, 7)
        .start()
        .await;
    let url = server.endpoint(Route::ChatCompletions);
    let (a, b) = pair(&redis, "fleet").await;
    let (sa, sb) = (stack(a.clone()), stack(b.clone()));

    // Process A meets the outage first. The balance goes 20 → 10 in ten failures, and a
    // failure leaves a retry only while it stays above 10: the first call sends 5 attempts
    // (its maximum), the second 5 (the tenth failure is refused a retry), the other 18 one
    // each: 28 requests, 8 of them retries.
    let errors = calls(&sa, &url, 20).await;
    assert_eq!(errors.len(), 20);
    let after_a = server.counts().total;
    assert_eq!(after_a, 28, "20 calls + 8 retries");
    a.sync().await.unwrap();
    b.sync().await.unwrap();

    // Process B has sent nothing yet, but the fleet's budget is spent: no retries at all.
    let errors = calls(&sb, &url, 20).await;
    assert_eq!(errors.len(), 20);
    assert_eq!(server.counts().total - after_a, 20, "one request per call");
    assert!(errors
        .iter()
        .all(|e| e.retry_context().map(|c| c.stop) == Some(StopReason::Budget)));
}

#[tokio::test]
async fn the_background_task_shares_without_explicit_syncs() {
    let redis = RedisServer::start();
    let mut fast = config();
    fast.sync_every = Duration::from_millis(10);
    let a = RedisRetryBudget::connect(&redis.url(), "fleet", fast.clone())
        .await
        .unwrap();
    let b = RedisRetryBudget::connect(&redis.url(), "fleet", fast)
        .await
        .unwrap();
    for _ in 0..15 {
        a.on_failure(&server_error());
    }
    // Wait for I/O (both tasks' syncs), bounded: 500 polls of 10 ms.
    let mut seen = b.balance();
    for _ in 0..500 {
        if seen == 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = b.balance();
    }
    assert_eq!(seen, 5.0, "B adopted the fleet's balance");
    assert!(!b.try_retry());
    assert!(a.syncs() >= 2 && b.syncs() >= 2);
}
