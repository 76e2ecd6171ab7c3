//! The script against a real `redis-server` (started by the test on a free port, stopped on
//! drop), on an explicit clock: its arithmetic equals the in-process model's, and separate
//! clients share one bucket without over-admitting.

use std::time::Duration;

use proptest::prelude::*;

use super::{RedisStore, RedisStoreConfig};
use crate::pace::store::{BucketLimits, KeyModel, LearnedLimits, ModelAdmission};
use crate::pace::PaceKey;

use test_support::redis_server::RedisServer;

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
        requests: Some(BucketLimits::new(capacity, refill)),
        remaining_requests: remaining,
        ..LearnedLimits::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Admit { dt_us: u64, tokens: u16, keep: u8 },
    Learn { dt_us: u64, limits: LearnedLimits },
    Pause { dt_us: u64, dur_us: u32 },
}

fn bucket() -> impl Strategy<Value = Option<BucketLimits>> {
    prop::option::of(
        (1u32..50, 0u32..40).prop_map(|(c, r)| BucketLimits::new(f64::from(c), f64::from(r) / 4.0)),
    )
}

fn op() -> impl Strategy<Value = Op> {
    let dt = 0u64..400_000;
    prop_oneof![
        6 => (dt.clone(), 0u16..60, prop_oneof![3 => Just(0u8), 1 => 0u8..8])
            .prop_map(|(dt_us, tokens, keep)| Op::Admit { dt_us, tokens, keep }),
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
                    Op::Admit {
                        dt_us,
                        tokens,
                        keep,
                    } => {
                        now += dt_us;
                        let costs = (1.0, f64::from(*tokens), f64::from(*keep));
                        let want = model.admit_keeping(now, costs.0, costs.1, costs.2);
                        let got = rt.block_on(store.admit_at(&k, now, costs)).unwrap();
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

/// Two stores with their own connections (as two processes would have) taking turns at one bucket
/// of 20 refilled at 20/s: over 2 s of a shared clock they admit at most 20 + 20 × 2, and the
/// bucket is used (not starved).
#[tokio::test]
async fn two_clients_never_over_admit_one_bucket() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url(), config()).await.unwrap();
    let b = RedisStore::connect(&server.url(), config()).await.unwrap();
    let k = key("shared");
    let t0: u64 = 1_764_000_000_000_000;
    a.learn_at(&k, t0, req_limits(20.0, 20.0, None))
        .await
        .unwrap();
    let step_us = 10_000;
    // 2 s in steps of 10 ms.
    let steps = 200u64;
    // The two clients take turns at every step, the one that goes first alternating, so both
    // meet the bucket at every instant (two tasks racing on two cores could let one client run
    // its whole clock before the other starts, and leave the other nothing).
    let (mut x, mut y) = (0u64, 0u64);
    for s in 0..=steps {
        let order = if s % 2 == 0 {
            [(&a, 0), (&b, 1)]
        } else {
            [(&b, 1), (&a, 0)]
        };
        for (store, who) in order {
            // Each client tries 3 times per step: together they ask for 6 per 10 ms.
            for _ in 0..3 {
                if store
                    .admit_at(&k, t0 + s * step_us, (1.0, 0.0, 0.0))
                    .await
                    .unwrap()
                    == ModelAdmission::Admitted
                {
                    if who == 0 {
                        x += 1;
                    } else {
                        y += 1;
                    }
                }
            }
        }
    }
    // Admissions are bounded by the bucket over the whole span: capacity + refill × 2 s.
    assert!(x + y <= 60, "over-admitted: {x} + {y}");
    assert!(x + y >= 50, "starved: {x} + {y}");
    assert!(x > 0 && y > 0, "one client got nothing: {x}, {y}");
}
