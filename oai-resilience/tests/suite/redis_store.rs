//! `RedisStore` against a real `redis-server` (started by the test on a free port, stopped on
//! drop): separate clients share one bucket without over-admitting (the script's arithmetic
//! against the in-process model is checked by the crate's unit tests, in `pace/redis`), pauses and limits are shared, keys expire, and a Redis that
//! goes away degrades to in-process pacing (or fails closed) and comes back.
#![cfg(feature = "redis")]

use crate::support;

use std::time::Duration;

use oai_resilience::pace::{
    Admission, BucketLimits, Cost, FailMode, LearnedLimits, PaceKey, PacingStore, RedisStore,
    RedisStoreConfig,
};
use oai_resilience::ErrorKind;
use support::redis_server::RedisServer;

fn config() -> RedisStoreConfig {
    let mut config = RedisStoreConfig::default();
    // Generous: a loaded CI machine must not turn a slow answer into a fallback.
    config.op_timeout = Duration::from_secs(2);
    config
}

fn key(name: &str) -> PaceKey {
    PaceKey::new("api.example.test")
        .with_credential(format!("Bearer sk-test-{name}").as_bytes())
        .with_model("gpt-4o-mini")
}

/// One request of one token from `store` on `k`, which must not fail.
async fn admit(store: &RedisStore, k: &PaceKey) -> Admission {
    store.admit(k, Cost::tokens(1)).await.unwrap()
}

/// A store on `server` whose operations give up after 500 ms, with `tune` applied first.
async fn short_timeout_store(
    server: &RedisServer,
    tune: impl FnOnce(&mut RedisStoreConfig),
) -> RedisStore {
    let mut cfg = config();
    tune(&mut cfg);
    cfg.op_timeout = Duration::from_millis(500);
    RedisStore::connect(&server.url(), cfg).await.unwrap()
}

fn req_limits(capacity: f64, refill: f64, remaining: Option<f64>) -> LearnedLimits {
    let mut limits = LearnedLimits::default();
    limits.requests = Some(BucketLimits::new(capacity, refill));
    limits.remaining_requests = remaining;
    limits
}

/// A fresh server and two separate clients of it (each with its own connection, as two
/// processes would have).
async fn two_clients() -> (RedisServer, RedisStore, RedisStore) {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url(), config()).await.unwrap();
    let b = RedisStore::connect(&server.url(), config()).await.unwrap();
    (server, a, b)
}

/// [`two_clients`] and the key named `name`, on which the first client has learned a request
/// bucket of `capacity` refilled at 1 per 1000 s: too slow to add a slot during a test.
async fn two_clients_on_a_slow_bucket(
    name: &str,
    capacity: f64,
) -> (RedisServer, RedisStore, RedisStore, PaceKey) {
    let (server, a, b) = two_clients().await;
    let k = key(name);
    a.learn(&k, req_limits(capacity, 0.001, None))
        .await
        .unwrap();
    (server, a, b, k)
}

/// With the server's clock: a burst from two clients gets exactly the bucket's capacity now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_from_two_clients_gets_exactly_the_capacity() {
    let (_server, a, b, k) = two_clients_on_a_slow_bucket("burst", 20.0).await;
    let burst = |s: RedisStore, k: PaceKey| async move {
        let mut n = 0;
        let mut waits = 0;
        for _ in 0..30 {
            match admit(&s, &k).await {
                Admission::Admitted => n += 1,
                Admission::Wait(d) => {
                    assert!(d > Duration::from_secs(100), "{d:?}");
                    waits += 1;
                }
                other => panic!("refill is positive: {other:?}"),
            }
        }
        (n, waits)
    };
    let (x, y) = tokio::join!(
        tokio::spawn(burst(a.clone(), k.clone())),
        tokio::spawn(burst(b.clone(), k.clone()))
    );
    let ((xa, xw), (ya, yw)) = (x.unwrap(), y.unwrap());
    assert_eq!(xa + ya, 20);
    assert_eq!(xw + yw, 40);
    assert!(!a.is_degraded() && !b.is_degraded());
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
}

/// A 429 seen by one client pauses the other; limits learned by one are used by the other.
#[tokio::test]
async fn pause_and_limits_are_shared() {
    let (_server, a, b) = two_clients().await;
    let k = key("pause");
    assert_eq!(admit(&b, &k).await, Admission::Admitted);
    a.pause(&k, Duration::from_secs(30)).await.unwrap();
    match admit(&b, &k).await {
        Admission::Wait(d) => assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        ),
        other => panic!("not paused: {other:?}"),
    }
    // Other keys are not paused.
    assert_eq!(
        b.admit(&key("other"), Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );

    let k2 = key("limits");
    a.learn(&k2, req_limits(5.0, 0.0, Some(1.0))).await.unwrap();
    assert_eq!(
        b.admit(&k2, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
    assert_eq!(
        b.admit(&k2, Cost::tokens(1)).await.unwrap(),
        Admission::Blocked
    );
}

/// Keys expire by themselves, are named by a hash (no secret), and nothing else is written.
#[tokio::test]
async fn keys_expire_and_hold_no_secret() {
    let server = RedisServer::start();
    let mut cfg = config();
    cfg.ttl = Duration::from_secs(60);
    let a = RedisStore::connect(&server.url(), cfg).await.unwrap();
    let k = PaceKey::new("api.example.test").with_credential(b"Bearer sk-proj-SECRETSECRET");
    a.learn(&k, req_limits(10.0, 1.0, None)).await.unwrap();
    assert_eq!(admit(&a, &k).await, Admission::Admitted);
    let keys = server.command(&["KEYS", "*"]).strings();
    assert_eq!(keys, vec![a.key_name(&k)]);
    assert!(!keys[0].contains("SECRET") && !keys[0].contains("sk-"));
    let fields = server.command(&["HGETALL", &keys[0]]).strings();
    assert!(fields.iter().all(|f| !f.contains("SECRET")), "{fields:?}");
    let ttl = server.command(&["PTTL", &keys[0]]).int();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    // A long pause keeps the key alive past the pause.
    a.pause(&k, Duration::from_secs(600)).await.unwrap();
    let ttl = server.command(&["PTTL", &keys[0]]).int();
    assert!(ttl > 600_000, "{ttl}");
    assert!(!format!("{a:?}").contains("127.0.0.1"));
}

/// Redis killed: fail-open keeps admitting with the in-process copy of the limits (no panic,
/// a fallback counted); Redis back: the next operation goes to Redis again.
#[tokio::test]
async fn fail_open_degrades_and_recovers() {
    let mut server = RedisServer::start();
    let a = short_timeout_store(&server, |cfg| cfg.retry_interval = Duration::ZERO).await;
    let k = key("degrade");
    a.learn(&k, req_limits(2.0, 0.0, None)).await.unwrap();
    assert_eq!(admit(&a, &k).await, Admission::Admitted);
    server.kill();
    // In-process: it learned capacity 2, no refill, and has not counted Redis's admission.
    assert_eq!(admit(&a, &k).await, Admission::Admitted);
    assert!(a.is_degraded());
    assert_eq!(admit(&a, &k).await, Admission::Admitted);
    assert_eq!(admit(&a, &k).await, Admission::Blocked);
    assert!(a.fallbacks() >= 3);
    // Pause and learn keep working while degraded.
    a.pause(&k, Duration::from_millis(1)).await.unwrap();
    a.learn(&k, req_limits(3.0, 0.0, None)).await.unwrap();

    server.restart();
    assert!(server.is_up());
    // The restarted server is empty: the key is unknown there, so Redis admits. The
    // connection manager reconnects in the background: bounded polling for that I/O
    // readiness (up to 10 s), not a timing assertion.
    let mut back = false;
    for _ in 0..500 {
        let before = a.fallbacks();
        let r = admit(&a, &k).await;
        if a.fallbacks() == before {
            assert_eq!(r, Admission::Admitted);
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "never went back to Redis");
    assert!(!a.is_degraded());
    let name = a.key_name(&k);
    let exists = server.command(&["EXISTS", &name]).int();
    // Admission of an unknown key writes nothing; a learn does.
    assert_eq!(exists, 0);
    a.learn(&k, req_limits(3.0, 0.0, None)).await.unwrap();
    let exists = server.command(&["EXISTS", &name]).int();
    assert_eq!(exists, 1);
}

/// Fail-closed: with Redis gone every operation is a typed Connection error.
#[tokio::test]
async fn fail_closed_is_a_typed_error() {
    let mut server = RedisServer::start();
    let a = short_timeout_store(&server, |cfg| cfg.fail_mode = FailMode::Closed).await;
    let k = key("closed");
    assert_eq!(admit(&a, &k).await, Admission::Admitted);
    server.kill();
    let err = a.admit(&k, Cost::tokens(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(
        err.detail().is_some_and(|d| d.contains("pacing store")),
        "{err}"
    );
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(
        a.pause(&k, Duration::from_secs(1))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Connection
    );
    assert_eq!(
        a.learn(&k, req_limits(1.0, 1.0, None))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Connection
    );
    assert_eq!(a.fallbacks(), 0);
}

/// `connect` to nothing fails with a typed error, and `open` does not (it is lazy).
#[tokio::test]
async fn connect_to_a_dead_port_is_a_typed_error() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let err = RedisStore::connect(&url, config()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    let lazy = RedisStore::open(&url, config()).unwrap();
    // Fail-open: served in-process.
    assert_eq!(
        lazy.admit(&key("x"), Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
    assert!(lazy.is_degraded());
}

/// Lanes across processes: a client's calls that keep a reserve stop while the shared bucket
/// holds it; another client's call without one takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_is_kept_for_other_clients_higher_lanes() {
    // 4 in the bucket, learned by `batch`.
    let (_server, batch, interactive, k) = two_clients_on_a_slow_bucket("reserve", 4.0).await;
    let low = Cost::tokens(1).with_reserve(2);
    assert_eq!(batch.admit(&k, low).await.unwrap(), Admission::Admitted);
    assert_eq!(batch.admit(&k, low).await.unwrap(), Admission::Admitted);
    assert!(matches!(
        batch.admit(&k, low).await.unwrap(),
        Admission::Wait(_)
    ));
    assert_eq!(admit(&interactive, &k).await, Admission::Admitted);
    assert_eq!(admit(&interactive, &k).await, Admission::Admitted);
    assert!(matches!(admit(&interactive, &k).await, Admission::Wait(_)));
}
