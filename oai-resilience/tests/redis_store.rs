//! `RedisStore` against a real `redis-server` (started by the test on a free port, stopped on
//! drop): the script's arithmetic equals the in-process model's, separate clients share one
//! bucket without over-admitting, pauses and limits are shared, keys expire, and a Redis that
//! goes away degrades to in-process pacing (or fails closed) and comes back.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use oai_resilience::pace::{
    Admission, BucketLimits, Cost, FailMode, KeyModel, LearnedLimits, ModelAdmission, PaceKey,
    PacingStore, RedisStore, RedisStoreConfig,
};
use oai_resilience::ErrorKind;
use proptest::prelude::*;
use support::redis_server::RedisServer;

fn config() -> RedisStoreConfig {
    RedisStoreConfig {
        // Generous: a loaded CI machine must not turn a slow answer into a fallback.
        op_timeout: Duration::from_secs(2),
        ..RedisStoreConfig::default()
    }
}

fn key(name: &str) -> PaceKey {
    PaceKey::new("api.example.test")
        .with_credential(format!("Bearer sk-test-{name}").as_bytes())
        .with_model("gpt-4o-mini")
}

fn req_limits(capacity: f64, refill: f64, remaining: Option<f64>) -> LearnedLimits {
    LearnedLimits {
        requests: Some(BucketLimits {
            capacity,
            refill_per_sec: refill,
        }),
        remaining_requests: remaining,
        ..LearnedLimits::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Admit { dt_us: u64, tokens: u16 },
    Learn { dt_us: u64, limits: LearnedLimits },
    Pause { dt_us: u64, dur_us: u32 },
}

fn bucket() -> impl Strategy<Value = Option<BucketLimits>> {
    prop::option::of((1u32..50, 0u32..40).prop_map(|(c, r)| BucketLimits {
        capacity: f64::from(c),
        refill_per_sec: f64::from(r) / 4.0,
    }))
}

fn op() -> impl Strategy<Value = Op> {
    let dt = 0u64..400_000;
    prop_oneof![
        6 => (dt.clone(), 0u16..60).prop_map(|(dt_us, tokens)| Op::Admit { dt_us, tokens }),
        2 => (dt.clone(), bucket(), bucket(), prop::option::of(0u32..60), prop::option::of(0u32..60))
            .prop_map(|(dt_us, requests, tokens, rr, rt)| Op::Learn {
                dt_us,
                limits: LearnedLimits {
                    requests,
                    tokens,
                    remaining_requests: rr.map(f64::from),
                    remaining_tokens: rt.map(f64::from),
                },
            }),
        1 => (dt, 0u32..2_000_000).prop_map(|(dt_us, dur_us)| Op::Pause { dt_us, dur_us }),
    ]
}

/// The script and `KeyModel` admit the same sequences, with the same waits, on the same clock.
#[test]
fn script_matches_the_in_process_model() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt
        .block_on(RedisStore::connect(&server.url(), config()))
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = std::cell::Cell::new(0u64);
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            case.set(case.get() + 1);
            let k = key(&format!("model-{}", case.get()));
            let mut model = KeyModel::default();
            // A realistic epoch: microseconds since 1970, as the server's clock gives.
            let mut now: u64 = 1_764_000_000_000_000;
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Admit { dt_us, tokens } => {
                        now += dt_us;
                        let want = model.admit(now, 1.0, f64::from(*tokens));
                        let got = rt
                            .block_on(store.admit_at(&k, now, 1.0, f64::from(*tokens)))
                            .unwrap();
                        prop_assert_eq!(got, want, "op {} of {:?}", i, ops);
                    }
                    Op::Learn { dt_us, limits } => {
                        now += dt_us;
                        model.learn(now, *limits);
                        rt.block_on(store.learn_at(&k, now, *limits)).unwrap();
                    }
                    Op::Pause { dt_us, dur_us } => {
                        now += dt_us;
                        model.pause(now, u64::from(*dur_us));
                        rt.block_on(store.pause_at(
                            &k,
                            now,
                            Duration::from_micros(u64::from(*dur_us)),
                        ))
                        .unwrap();
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Two stores with their own connections (as two processes would have) racing for one bucket
/// of 20 refilled at 20/s: over 2 s of a shared clock they admit at most 20 + 20 × 2, and the
/// bucket is used (not starved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_never_over_admit_one_bucket() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url(), config()).await.unwrap();
    let b = RedisStore::connect(&server.url(), config()).await.unwrap();
    let k = key("shared");
    let t0: u64 = 1_764_000_000_000_000;
    a.learn_at(&k, t0, req_limits(20.0, 20.0, None))
        .await
        .unwrap();
    let step_us = 10_000; // 10 ms
    let steps = 200u64; // 2 s
    let run = |store: RedisStore, k: PaceKey| async move {
        let mut admitted = 0u64;
        for s in 0..=steps {
            // Each client tries 3 times per step: together they ask for 6 per 10 ms.
            for _ in 0..3 {
                if store
                    .admit_at(&k, t0 + s * step_us, 1.0, 0.0)
                    .await
                    .unwrap()
                    == ModelAdmission::Admitted
                {
                    admitted += 1;
                }
            }
        }
        admitted
    };
    let (x, y) = tokio::join!(
        tokio::spawn(run(a.clone(), k.clone())),
        tokio::spawn(run(b.clone(), k.clone()))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    // The two tasks interleave their clocks, so admissions are bounded by the bucket over the
    // whole span: capacity + refill × 2 s.
    assert!(x + y <= 60, "over-admitted: {x} + {y}");
    assert!(x + y >= 50, "starved: {x} + {y}");
    assert!(x > 0 && y > 0, "one client got nothing: {x}, {y}");
}

/// With the server's clock: a burst from two clients gets exactly the bucket's capacity now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_from_two_clients_gets_exactly_the_capacity() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url(), config()).await.unwrap();
    let b = RedisStore::connect(&server.url(), config()).await.unwrap();
    let k = key("burst");
    // Refill so slow that the burst's duration cannot add a slot: 1 per 1000 s.
    a.learn(&k, req_limits(20.0, 0.001, None)).await.unwrap();
    let burst = |s: RedisStore, k: PaceKey| async move {
        let mut n = 0;
        let mut waits = 0;
        for _ in 0..30 {
            match s.admit(&k, Cost::tokens(1)).await.unwrap() {
                Admission::Admitted => n += 1,
                Admission::Wait(d) => {
                    assert!(d > Duration::from_secs(100), "{d:?}");
                    waits += 1;
                }
                Admission::Blocked => panic!("refill is positive"),
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
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url(), config()).await.unwrap();
    let b = RedisStore::connect(&server.url(), config()).await.unwrap();
    let k = key("pause");
    assert_eq!(
        b.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
    a.pause(&k, Duration::from_secs(30)).await.unwrap();
    match b.admit(&k, Cost::tokens(1)).await.unwrap() {
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
    let cfg = RedisStoreConfig {
        ttl: Duration::from_secs(60),
        ..config()
    };
    let a = RedisStore::connect(&server.url(), cfg).await.unwrap();
    let k = PaceKey::new("api.example.test").with_credential(b"Bearer sk-proj-SECRETSECRET");
    a.learn(&k, req_limits(10.0, 1.0, None)).await.unwrap();
    assert_eq!(
        a.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
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
    let cfg = RedisStoreConfig {
        retry_interval: Duration::ZERO,
        op_timeout: Duration::from_millis(500),
        ..config()
    };
    let a = RedisStore::connect(&server.url(), cfg).await.unwrap();
    let k = key("degrade");
    a.learn(&k, req_limits(2.0, 0.0, None)).await.unwrap();
    assert_eq!(
        a.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
    server.kill();
    // In-process: it learned capacity 2, no refill, and has not counted Redis's admission.
    assert_eq!(
        a.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
    assert!(a.is_degraded());
    assert_eq!(
        a.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
    assert_eq!(
        a.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Blocked
    );
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
        let r = a.admit(&k, Cost::tokens(1)).await.unwrap();
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
    let cfg = RedisStoreConfig {
        fail_mode: FailMode::Closed,
        op_timeout: Duration::from_millis(500),
        ..config()
    };
    let a = RedisStore::connect(&server.url(), cfg).await.unwrap();
    let k = key("closed");
    assert_eq!(
        a.admit(&k, Cost::tokens(1)).await.unwrap(),
        Admission::Admitted
    );
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
