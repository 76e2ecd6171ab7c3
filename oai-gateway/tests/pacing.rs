//! Item 7 of issue #20 (the wait queue): a key's wait for a pacing slot is bounded by
//! `--max-pacing-wait`; a call that cannot be admitted by then gets a typed 429 (`paced
//! locally`, nothing sent), and the upstream sees only the calls its rate limit admits.
//!
//! The refusal comes at once: the pacer projects each queued call's slot from the refill the
//! calls surely ahead of it and itself need, and a call whose slot is past the bound fails
//! without waiting (measured here in virtual time: the eight calls beyond the limit were all
//! refused at 0 s).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oai_resilience::RetryConfig;
use support::{chat_as, chat_with, config_for, json_upstream, start, KEY};
use tokio::time::Instant;

/// An upstream whose rate limit is one request per second (a bucket of 1, empty after each
/// request, full again after 1 s), as its `x-ratelimit-*` headers say; counts requests.
async fn one_per_second() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let addr = json_upstream(
        &[
            ("x-ratelimit-limit-requests", "1"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
        ],
        br#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#,
        move || {
            seen.fetch_add(1, Ordering::SeqCst);
        },
    )
    .await;
    (addr, count)
}

/// A gateway over [`one_per_second`] with `--max-pacing-wait max_wait` and one attempt per
/// call (what the pacer answers reaches the client as it is), and the upstream's request
/// count.
async fn paced_gateway(max_wait: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let (upstream, sent) = one_per_second().await;
    let mut c = config_for(
        &format!("http://{upstream}/v1"),
        &["--max-pacing-wait", max_wait],
        &[],
    );
    c.retry = RetryConfig::new().max_attempts(1).seed(1);
    (start(c).await, sent)
}

#[tokio::test(start_paused = true)]
async fn calls_that_cannot_be_paced_within_max_pacing_wait_get_a_typed_429() {
    let (gw, sent) = paced_gateway("2s").await;
    // The first call teaches the pacer the limit: one per second, none left.
    let first = chat_as(gw, KEY).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Ten calls at once: the bucket admits one a second, so two fit in the 2 s wait.
    let t0 = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                let res = chat_as(gw, KEY).await;
                (res, t0.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = Vec::new();
    for call in calls {
        let (res, at) = call.await.unwrap();
        match res.status {
            200 => ok += 1,
            429 => {
                let e = &res.json()["error"];
                assert!(
                    e["message"].as_str().unwrap().contains("paced locally"),
                    "{}",
                    res.body
                );
                assert_eq!(e["code"], "rate_limit_exceeded", "{}", res.body);
                assert!(res.header("retry-after-ms").is_some(), "{}", res.head);
                refused.push(at);
            }
            other => panic!("{other}: {}", res.body),
        }
    }
    println!("admitted {ok}, refused {} at {refused:?}", refused.len());
    assert_eq!((ok, refused.len()), (2, 8));
    // The upstream saw the first call and the two admitted ones, nothing else.
    assert_eq!(sent.load(Ordering::SeqCst), 3);
    // Every refusal came at once (virtual time: the loopback round trip takes none).
    for at in &refused {
        assert!(*at < Duration::from_millis(50), "refused after {at:?}");
    }
}

/// `x-priority` puts a call in a lane of its key's queue: a `high` call sent after four `low`
/// ones that wait for a 1/s limit goes out first; a value that is no priority gets a 400 and
/// nothing is sent.
#[tokio::test(start_paused = true)]
async fn x_priority_puts_a_high_call_before_queued_low_ones_and_a_bad_value_gets_400() {
    let (gw, sent) = paced_gateway("30s").await;
    let first = chat_as(gw, KEY).await;
    assert_eq!(first.status, 200, "{}", first.body);

    let bad = chat_with(gw, KEY, &[("x-priority", "urgent")]).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("x-priority"), "{}", bad.body);
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "a bad priority sends nothing"
    );

    let t0 = Instant::now();
    let call = |lane: &'static str| {
        tokio::spawn(async move {
            let res = chat_with(gw, KEY, &[("x-priority", lane)]).await;
            (lane, res.status, t0.elapsed())
        })
    };
    let mut calls = Vec::new();
    for _ in 0..4 {
        calls.push(call("low"));
        // Each low call reaches the queue before the next is sent.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    calls.push(call("high"));
    let mut done = Vec::new();
    for c in calls {
        done.push(c.await.unwrap());
    }
    assert!(done.iter().all(|(_, status, _)| *status == 200), "{done:?}");
    let high = done.iter().find(|(lane, _, _)| *lane == "high").unwrap().2;
    let first_low = done
        .iter()
        .filter(|(lane, _, _)| *lane == "low")
        .map(|(_, _, at)| *at)
        .min()
        .unwrap();
    assert!(
        high < first_low,
        "high at {high:?}, first low at {first_low:?}: {done:?}"
    );
    assert_eq!(sent.load(Ordering::SeqCst), 6);
}
