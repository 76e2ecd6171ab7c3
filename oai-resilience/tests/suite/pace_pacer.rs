//! The pacer's state machine in virtual time: learning, pauses, tokens, fairness,
//! cancellation, deadlines.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oai_resilience::pace::{
    is_paced_locally, Acquire, Cost, PaceKey, Pacer, PacerConfig, Permit, Priority, StaticLimits,
};
use oai_resilience::{ErrorKind, RateLimitSnapshot};
use tokio::time::Instant;

fn key() -> PaceKey {
    PaceKey::new("api.test").with_credential(b"Bearer sk-a")
}

fn snap_requests(limit: u64, remaining: u64, reset: Duration) -> RateLimitSnapshot {
    let mut s = RateLimitSnapshot::default();
    s.limit_requests = Some(limit);
    s.remaining_requests = Some(remaining);
    s.reset_requests = Some(reset);
    s
}

fn snap_tokens(limit: u64, remaining: u64, reset: Duration) -> RateLimitSnapshot {
    let mut s = RateLimitSnapshot::default();
    s.limit_tokens = Some(limit);
    s.remaining_tokens = Some(remaining);
    s.reset_tokens = Some(reset);
    s
}

fn static_limits(rpm: Option<u64>, tpm: Option<u64>) -> PacerConfig {
    let mut cfg = PacerConfig::default();
    cfg.static_limits = StaticLimits::new(rpm, tpm);
    cfg
}

/// A cold window of one: a cold key is probed by one request, whose answer ends the window.
fn probing() -> PacerConfig {
    let mut cfg = PacerConfig::default();
    cfg.cold_window = Some(1);
    cfg
}

/// One request of one token on `k`, granted.
async fn take(pacer: &Pacer, k: &PaceKey) -> Permit {
    pacer.acquire(k, Cost::tokens(1), None).await.unwrap()
}

/// `n` calls of one token on `k`, one after the other, each granted.
async fn take_n(pacer: &Pacer, k: &PaceKey, n: usize) -> Vec<Permit> {
    let mut permits = Vec::with_capacity(n);
    for _ in 0..n {
        permits.push(take(pacer, k).await);
    }
    permits
}

/// A pacer made from `cfg`, [`key`], and the granted permit of a first call on the key.
async fn first_call(cfg: PacerConfig) -> (Pacer, PaceKey, Permit) {
    let pacer = Pacer::new(cfg);
    let k = key();
    let first = take(&pacer, &k).await;
    (pacer, k, first)
}

/// A pacer made from `cfg`, and [`key`], after one call on the key was answered by `answer`.
async fn answered(cfg: PacerConfig, answer: impl FnOnce(Permit)) -> (Pacer, PaceKey) {
    let (pacer, k, first) = first_call(cfg).await;
    answer(first);
    (pacer, k)
}

/// A pacer made from `cfg`, and [`key`], after one call on the key was answered with the
/// requests bucket of [`snap_requests`]`(limit, remaining, reset)`.
async fn learned(
    cfg: PacerConfig,
    limit: u64,
    remaining: u64,
    reset: Duration,
) -> (Pacer, PaceKey) {
    answered(cfg, |p| {
        p.on_response(Some(&snap_requests(limit, remaining, reset)))
    })
    .await
}

/// The requests bucket of `k`: (capacity, level, refill per second).
fn requests(pacer: &Pacer, k: &PaceKey) -> (f64, f64, f64) {
    pacer.key_state(k).unwrap().requests.unwrap()
}

/// The level of the requests bucket of `k`, after asserting that it is `expected` (within 1e-6).
fn assert_level(pacer: &Pacer, k: &PaceKey, expected: f64) -> f64 {
    let (_, level, _) = requests(pacer, k);
    assert!((level - expected).abs() < 1e-6, "{level}");
    level
}

/// Lets spawned tasks run without moving virtual time.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Asks for a slot for one token on `k` in `lane`, with a deadline `within` from now if given.
pub(super) fn acquire_within(
    pacer: &Pacer,
    k: &PaceKey,
    lane: Priority,
    within: Option<Duration>,
) -> Acquire {
    pacer.acquire_in_lane(k, Cost::tokens(1), within.map(|w| Instant::now() + w), lane)
}

/// The error of [`acquire_within`], after asserting that it came at once and from the pacer.
pub(super) async fn refused_at_once(
    pacer: &Pacer,
    k: &PaceKey,
    lane: Priority,
    within: Option<Duration>,
) -> oai_resilience::Error {
    let start = Instant::now();
    let err = acquire_within(pacer, k, lane, within).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(is_paced_locally(&err), "{err}");
    err
}

/// Asserts that `err` suggests a retry after `secs` seconds, give or take 10 ms.
pub(super) fn assert_retry_after(err: &oai_resilience::Error, secs: f64) {
    let hint = err.retry_after().unwrap().as_secs_f64();
    assert!((hint - secs).abs() < 0.01, "{hint}");
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(f).poll(&mut cx).is_pending()
}

#[tokio::test(start_paused = true)]
async fn cold_key_probes_with_one_request() {
    let (pacer, k, first) = first_call(probing()).await;
    assert_eq!(first.waited(), Duration::ZERO);
    // The second waits for the probe's headers, however long that takes.
    let (p2, k2) = (pacer.clone(), k.clone());
    let second = tokio::spawn(async move { p2.acquire(&k2, Cost::tokens(1), None).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!second.is_finished());
    assert_eq!(pacer.metrics().queue_len, 1);
    first.on_response(Some(&snap_requests(20, 19, Duration::from_millis(50))));
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.waited(), Duration::from_secs(5));
    let st = pacer.key_state(&k).unwrap();
    assert!(st.known);
    assert_eq!(st.in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_lets_the_next_request_probe() {
    let (pacer, k, first) = first_call(probing()).await;
    let (p2, k2) = (pacer.clone(), k.clone());
    let second = tokio::spawn(async move { p2.acquire(&k2, Cost::tokens(1), None).await });
    settle().await;
    assert!(!second.is_finished());
    drop(first);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.waited(), Duration::ZERO);
    assert!(!pacer.key_state(&k).unwrap().known);
}

#[tokio::test(start_paused = true)]
async fn learns_capacity_and_refill_from_headers() {
    // A small bucket with a fast refill: 20, of which 19 left, full again in 50 ms → 20/s.
    let (pacer, k) = learned(probing(), 20, 19, Duration::from_millis(50)).await;
    let (cap, level, refill) = requests(&pacer, &k);
    assert_eq!(cap, 20.0);
    assert_eq!(level, 19.0);
    assert!((refill - 20.0).abs() < 1e-9, "{refill}");
    let start = Instant::now();
    let _permits = take_n(&pacer, &k, 19).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The bucket is empty: the 20th waits one refill interval, 1/20 s.
    let p = take(&pacer, &k).await;
    let waited = p.waited();
    assert!(
        waited >= Duration::from_millis(50) && waited <= Duration::from_millis(51),
        "{waited:?}"
    );
    let m = pacer.metrics();
    assert_eq!(m.waits, 1);
    assert_eq!(m.granted, 21);
    assert!(m.wait_time >= Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn refill_comes_from_the_headers_for_a_minute_bucket_too() {
    // 600 RPM, 590 left, full again in 1 s: 10/s, read from the headers.
    let (pacer, k) = learned(probing(), 600, 590, Duration::from_secs(1)).await;
    let (cap, _, refill) = requests(&pacer, &k);
    assert_eq!(cap, 600.0);
    assert!((refill - 10.0).abs() < 1e-9, "{refill}");
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_are_subtracted_from_remaining() {
    let (pacer, k) = learned(probing(), 10, 9, Duration::from_millis(100)).await;
    let a = take(&pacer, &k).await;
    let _b = take(&pacer, &k).await;
    let _c = take(&pacer, &k).await;
    // The server answers `a` with 8 left; `b` and `c` are still in flight, uncounted there.
    a.on_response(Some(&snap_requests(10, 8, Duration::from_millis(200))));
    let (_, level, _) = requests(&pacer, &k);
    assert_eq!(level, 6.0);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_pauses_the_whole_key_until_the_hint() {
    let (pacer, k) = learned(probing(), 100, 99, Duration::from_millis(600)).await;
    let other = PaceKey::new("api.test").with_credential(b"Bearer sk-b");
    pacer
        .acquire(&other, Cost::tokens(1), None)
        .await
        .unwrap()
        .on_response(None);
    let p = take(&pacer, &k).await;
    // A 429 with a 2 s hint: every request on the key waits, not only a retry of this one.
    p.on_rate_limited(
        Some(Duration::from_secs(2)),
        Some(&snap_requests(100, 0, Duration::from_secs(60))),
    );
    let start = Instant::now();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (p, k) = (pacer.clone(), k.clone());
            tokio::spawn(async move {
                p.acquire(&k, Cost::tokens(1), None)
                    .await
                    .map(|x| x.waited())
            })
        })
        .collect();
    // Another key is not paused.
    let free = pacer.acquire(&other, Cost::tokens(1), None).await.unwrap();
    assert_eq!(free.waited(), Duration::ZERO);
    for w in waiters {
        let waited = w.await.unwrap().unwrap();
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
    }
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert_eq!(pacer.metrics().rate_limited, 1);
}

#[tokio::test(start_paused = true)]
async fn unexplained_rate_limit_switches_on_the_adaptive_rate() {
    // A service that sends no headers at all: the 429s alone drive the rate.
    let (pacer, k) = answered(probing(), |p| p.on_response(None)).await;
    let mut permits = take_n(&pacer, &k, 10).await;
    // Eleven requests in the last second; a 429 without a hint: ten accepted.
    let start = Instant::now();
    let first = permits.remove(0);
    first.on_rate_limited(None, None);
    let st = pacer.key_state(&k).unwrap();
    let rate = st.adaptive_rate.expect("adaptive rate on");
    assert!((rate - 10.0 * 0.7).abs() < 1e-6, "{rate}");
    // Default pause of 1 s.
    assert_eq!(st.paused_until, Some(start + Duration::from_secs(1)));
    // The other 429s of the same round do not cut the rate multiplicatively again (0.7⁵ × 10
    // would be 1.7): they hold it at 0.7 × the accepted rate, 11 sent less 5 refused.
    for p in permits.drain(..4) {
        p.on_rate_limited(None, None);
    }
    let rate = pacer.key_state(&k).unwrap().adaptive_rate.unwrap();
    assert!((rate - 6.0 * 0.7).abs() < 1e-6, "{rate}");
    // After the pause, requests are spaced at the adaptive rate.
    let a = take(&pacer, &k).await;
    assert!(start.elapsed() >= Duration::from_secs(1));
    let t = Instant::now();
    let _b = take(&pacer, &k).await;
    let gap = t.elapsed().as_secs_f64();
    assert!((gap - 1.0 / rate).abs() < 0.002, "{gap}");
    // Successes raise it additively.
    a.on_response(None);
    let after = pacer.key_state(&k).unwrap().adaptive_rate.unwrap();
    assert!((after - (rate + 2.0 / rate)).abs() < 1e-9, "{after}");
    // A 429 that the headers explain (the bucket at zero) does not cut the rate.
    for p in permits.drain(..) {
        p.on_rate_limited(None, Some(&snap_requests(50, 0, Duration::from_secs(1))));
    }
    assert_eq!(pacer.key_state(&k).unwrap().adaptive_rate, Some(after));
}

#[tokio::test(start_paused = true)]
async fn token_limit_paces_by_estimated_cost() {
    let pacer = Pacer::new(static_limits(None, Some(600)));
    let k = key();
    // 600 TPM: a minute bucket of 600 tokens refilled 10/s.
    let a = pacer.acquire(&k, Cost::tokens(300), None).await.unwrap();
    let b = pacer.acquire(&k, Cost::tokens(300), None).await.unwrap();
    assert_eq!(a.waited() + b.waited(), Duration::ZERO);
    let c = pacer.acquire(&k, Cost::tokens(100), None).await.unwrap();
    let w = c.waited().as_secs_f64();
    assert!((w - 10.0).abs() < 0.01, "{w}");
    // A request larger than the whole bucket waits for a full bucket, not forever.
    let d = pacer.acquire(&k, Cost::tokens(5_000), None).await.unwrap();
    let w = d.waited().as_secs_f64();
    assert!((w - 60.0).abs() < 0.01, "{w}");
    assert_eq!(pacer.key_state(&k).unwrap().in_flight, 4);
}

#[tokio::test(start_paused = true)]
async fn token_estimate_is_corrected_from_headers() {
    let pacer = Pacer::new(probing());
    let k = key();
    let probe = pacer.acquire(&k, Cost::tokens(100), None).await.unwrap();
    probe.on_response(Some(&snap_tokens(10_000, 9_800, Duration::from_secs(1))));
    // The server counts every request at twice the estimate.
    for _ in 0..12 {
        let before = pacer.key_state(&k).unwrap().tokens.unwrap().1;
        let p = pacer.acquire(&k, Cost::tokens(100), None).await.unwrap();
        let remaining = (before - 200.0).floor() as u64;
        p.on_response(Some(&snap_tokens(
            10_000,
            remaining,
            Duration::from_secs(1),
        )));
    }
    let st = pacer.key_state(&k).unwrap();
    assert!(
        (st.token_ratio - 2.0).abs() < 0.1,
        "ratio {}",
        st.token_ratio
    );
    let p = pacer.acquire(&k, Cost::tokens(100), None).await.unwrap();
    assert!(p.tokens() >= 190 && p.tokens() <= 210, "{}", p.tokens());
}

#[tokio::test(start_paused = true)]
async fn waiting_is_first_come_first_served() {
    let pacer = Pacer::new(static_limits(Some(60), Some(600)));
    let k = key();
    // Drain the token bucket; then a big request queues first, small ones behind it.
    let _drain = pacer.acquire(&k, Cost::tokens(600), None).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, tokens) in [(0u64, 300u64), (1, 10), (2, 10), (3, 10)] {
        let (p, k, order) = (pacer.clone(), k.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = p.acquire(&k, Cost::tokens(tokens), None).await.unwrap();
            order.lock().unwrap().push(i);
            permit
        }));
        settle().await;
    }
    assert_eq!(pacer.metrics().queue_len, 4);
    for t in tasks {
        t.await.unwrap();
    }
    // The small ones did not overtake the big one, though tokens for them came sooner.
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_gives_its_place_back() {
    let pacer = Pacer::new(static_limits(Some(60), None));
    let k = key();
    let held = take_n(&pacer, &k, 60).await;
    // The bucket is empty (1 per second). Queue three waiters; drop the head.
    let mut head = pacer.acquire(&k, Cost::tokens(1), None);
    assert!(poll_once(&mut head));
    let (p2, k2) = (pacer.clone(), k.clone());
    let second = tokio::spawn(async move { p2.acquire(&k2, Cost::tokens(1), None).await });
    let (p3, k3) = (pacer.clone(), k.clone());
    let third = tokio::spawn(async move { p3.acquire(&k3, Cost::tokens(1), None).await });
    settle().await;
    assert_eq!(pacer.key_state(&k).unwrap().queue_len, 3);
    assert_eq!(pacer.metrics().queue_len, 3);
    drop(head);
    assert_eq!(pacer.key_state(&k).unwrap().queue_len, 2);
    assert_eq!(pacer.metrics().queue_len, 2);
    // The second takes the slot the head would have had: 1 s, not 2 s.
    let second = second.await.unwrap().unwrap();
    let w = second.waited().as_secs_f64();
    assert!((w - 1.0).abs() < 0.01, "{w}");
    let third = third.await.unwrap().unwrap();
    let w = third.waited().as_secs_f64();
    assert!((w - 2.0).abs() < 0.01, "{w}");
    assert_eq!(pacer.key_state(&k).unwrap().queue_len, 0);
    // Dropped permits free their place among the requests in flight.
    assert_eq!(pacer.key_state(&k).unwrap().in_flight, 62);
    drop(held);
    drop(second);
    drop(third);
    assert_eq!(pacer.key_state(&k).unwrap().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_past_the_deadline_fails_at_once() {
    let (pacer, k) = answered(probing(), |p| {
        p.on_rate_limited(Some(Duration::from_secs(30)), None)
    })
    .await;
    // No point sleeping until the deadline: the pause is known to outlast it.
    let err = refused_at_once(&pacer, &k, Priority::NORMAL, Some(Duration::from_secs(5))).await;
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.status(), None);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert!(err.to_string().contains("deadline"), "{err}");
    let m = pacer.metrics();
    assert_eq!(m.paced_errors, 1);
    assert_eq!(m.queue_len, 0);
    assert_eq!(pacer.key_state(&k).unwrap().queue_len, 0);
}

#[tokio::test(start_paused = true)]
async fn the_head_fails_at_once_when_its_slot_is_past_the_max_wait() {
    let mut cfg = static_limits(Some(1), None);
    cfg.max_wait = Some(Duration::from_secs(3));
    let pacer = Pacer::new(cfg);
    let k = key();
    let _a = take(&pacer, &k).await;
    // The next slot is 60 s away: the head fails at once, with the expected wait.
    let err = pacer.acquire(&k, Cost::tokens(1), None).await.unwrap_err();
    assert!(is_paced_locally(&err));
    assert!(err.to_string().contains("max wait"), "{err}");
    assert_retry_after(&err, 60.0);
    // A server 429 is not "paced locally".
    let server = oai_resilience::Error::new(ErrorKind::RateLimited)
        .with_status(http::StatusCode::TOO_MANY_REQUESTS);
    assert!(!is_paced_locally(&server));
}

#[tokio::test(start_paused = true)]
async fn a_queued_waiter_fails_when_its_deadline_passes() {
    let pacer = Pacer::new(probing());
    let k = key();
    // A probe in flight holds everyone else, for an unknown time.
    let _probe = take(&pacer, &k).await;
    let start = Instant::now();
    let err = acquire_within(
        &pacer,
        &k,
        Priority::NORMAL,
        Some(Duration::from_millis(750)),
    )
    .await
    .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(750));
    assert!(is_paced_locally(&err));
    assert_eq!(err.retry_after(), None);
    assert_eq!(pacer.key_state(&k).unwrap().queue_len, 0);
    assert_eq!(pacer.metrics().queue_len, 0);
}

#[tokio::test(start_paused = true)]
async fn headers_with_room_wake_the_head_early() {
    let (pacer, k) = learned(probing(), 10, 0, Duration::from_secs(10)).await;
    let task = tokio::spawn(pacer.acquire(&k, Cost::tokens(1), None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished());
    // Headers from elsewhere say the bucket has room again: the head goes now, not in 1 s.
    pacer.on_response(&k, &snap_requests(10, 5, Duration::from_secs(5)));
    let permit = task.await.unwrap().unwrap();
    assert_eq!(permit.waited(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn the_cold_window_ends_at_the_first_answer_and_a_429_lowers_the_rate() {
    let (pacer, k, probe) = first_call(probing()).await;
    assert_eq!(pacer.key_state(&k).unwrap().window, Some(1));
    let mut waiting: Vec<_> = (0..4)
        .map(|_| pacer.acquire(&k, Cost::tokens(1), None))
        .collect();
    for w in &mut waiting {
        assert!(poll_once(w));
    }
    // The headers show plenty of room: every waiting call goes at once.
    probe.on_response(Some(&snap_requests(1000, 999, Duration::from_millis(60))));
    assert_eq!(pacer.key_state(&k).unwrap().window, None);
    let mut permits = Vec::new();
    for w in waiting {
        let p = w.await.unwrap();
        assert_eq!(p.waited(), Duration::ZERO);
        permits.push(p);
    }
    let mut e = pacer.acquire(&k, Cost::tokens(1), None);
    let b = permits.pop().unwrap();
    // A 429 the headers do not explain: after its pause, the adaptive rate spaces requests.
    b.on_rate_limited(Some(Duration::from_millis(100)), None);
    assert!(poll_once(&mut e));
    let st = pacer.key_state(&k).unwrap();
    assert_eq!(st.window, None);
    // Five sent in the last second, one refused: 0.7 × 4 = 2.8 per second, so the next goes
    // 1/2.8 s after the 429 (which outlasts its 100 ms pause).
    let rate = st.adaptive_rate.unwrap();
    assert!((rate - 2.8).abs() < 1e-9, "{rate}");
    let e = e.await.unwrap();
    let w = e.waited().as_secs_f64();
    assert!((w - 1.0 / 2.8).abs() < 0.002, "{w}");
}

#[tokio::test(start_paused = true)]
async fn a_cold_burst_goes_out_without_waiting_for_a_first_answer() {
    let pacer = Pacer::default();
    let k = key();
    assert_eq!(pacer.key_state(&k), None);
    let mut permits = Vec::new();
    for _ in 0..50 {
        let p = take(&pacer, &k).await;
        assert_eq!(p.waited(), Duration::ZERO);
        permits.push(p);
    }
    let st = pacer.key_state(&k).unwrap();
    assert_eq!(st.in_flight, 50);
    assert_eq!(st.window, None);
    assert!(!st.known);
    assert_eq!(pacer.metrics().waits, 0);
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_server_sends_no_rate_limit_headers_is_never_held_back() {
    let pacer = Pacer::default();
    let k = key();
    for round in 0..5 {
        let permits: Vec<_> = futures_util::future::join_all(
            (0..40).map(|_| pacer.acquire(&k, Cost::tokens(500), None)),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        for p in permits {
            assert_eq!(p.waited(), Duration::ZERO, "round {round}");
            p.on_response(None);
        }
    }
    let st = pacer.key_state(&k).unwrap();
    assert!(st.known);
    assert_eq!(
        (st.requests, st.tokens, st.adaptive_rate),
        (None, None, None)
    );
    assert_eq!(pacer.metrics().waits, 0);
}

#[tokio::test(start_paused = true)]
async fn headers_reporting_five_remaining_admit_five_and_pace_the_rest() {
    // 5 of 10 left, full again in 1 s: refilled at 5 per second.
    let (pacer, k) = learned(PacerConfig::default(), 10, 5, Duration::from_secs(1)).await;
    let start = Instant::now();
    let mut granted_at = Vec::new();
    for _ in 0..8 {
        let _p = take(&pacer, &k).await;
        granted_at.push((Instant::now() - start).as_secs_f64());
    }
    assert_eq!(granted_at[..5], [0.0; 5]);
    // The rest at 5 per second: 200 ms apart.
    for (i, at) in granted_at[5..].iter().enumerate() {
        let expected = 0.2 * (i + 1) as f64;
        assert!(
            (at - expected).abs() < 0.002,
            "call {}: at {at} s, expected {expected} s",
            i + 6
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_after_a_model_latency_counts_the_refill_and_the_calls_sent_since() {
    // The server decided on the first call when it arrived; its answer comes 2 s later.
    let (pacer, k, first) = first_call(PacerConfig::default()).await;
    let _since = take_n(&pacer, &k, 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 0 of 20 left when it arrived, refilled 20 per second: 40 refilled since, 30 taken by
    // the calls sent after it, so 10 are left now.
    first.on_response(Some(&snap_requests(20, 0, Duration::from_secs(1))));
    let (_, _, refill) = requests(&pacer, &k);
    assert!((refill - 20.0).abs() < 1e-9, "{refill}");
    assert_level(&pacer, &k, 10.0);
    for _ in 0..10 {
        let p = take(&pacer, &k).await;
        assert_eq!(p.waited(), Duration::ZERO);
    }
    let p = take(&pacer, &k).await;
    assert_eq!(p.waited(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn a_large_remaining_keeps_a_headroom_for_other_clients() {
    let (pacer, k) = learned(PacerConfig::default(), 1000, 500, Duration::from_secs(60)).await;
    // 2 % of 500 kept back.
    assert_level(&pacer, &k, 490.0);
}

#[tokio::test(start_paused = true)]
async fn calls_refused_with_a_429_are_not_counted_as_taken_from_the_bucket() {
    let (pacer, k, first) = first_call(PacerConfig::default()).await;
    let mut later = take_n(&pacer, &k, 5).await;
    // Three of the five sent after the first are refused at once: the server did not take
    // them from its bucket.
    for p in later.drain(..3) {
        p.on_rate_limited(None, Some(&snap_requests(20, 0, Duration::from_secs(1))));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 0 of 20 left when the first arrived, refilled 20 per second: 10 refilled since, 2
    // taken by the calls sent after it and not refused.
    first.on_response(Some(&snap_requests(20, 0, Duration::from_secs(1))));
    assert_level(&pacer, &k, 8.0);
}

#[tokio::test(start_paused = true)]
async fn an_older_snapshot_lowers_the_level_but_never_raises_it() {
    let (pacer, k, old) = first_call(PacerConfig::default()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = take(&pacer, &k).await;
    // The newer request's answer (a fast 429) says the bucket is empty now.
    fresh.on_rate_limited(None, Some(&snap_requests(20, 0, Duration::from_secs(1))));
    let after_fresh = assert_level(&pacer, &k, 0.0);
    // The older request's answer comes 2 s after it was sent, with 5 left then: corrected by
    // its age it would claim 20 (its refill estimate times 2 s), but the newer snapshot wins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.on_response(Some(&snap_requests(20, 5, Duration::from_millis(750))));
    let (_, level, refill) = requests(&pacer, &k);
    let modelled = after_fresh + refill * 0.5;
    assert!((level - modelled).abs() < 1e-6, "{level} vs {modelled}");
    // An older snapshot that reports less than the model may still lower it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = take(&pacer, &k).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b = take(&pacer, &k).await;
    b.on_response(Some(&snap_requests(20, 19, Duration::from_millis(50))));
    assert_level(&pacer, &k, 19.0);
    a.on_response(Some(&snap_requests(20, 0, Duration::from_secs(1))));
    let (_, level, _) = requests(&pacer, &k);
    assert!(level < 0.0, "{level}");
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_forgotten_and_busy_ones_kept() {
    let pacer = Pacer::default();
    // A key that is still paused by a 429 must be kept, whatever the number of keys.
    let held = PaceKey::new("api.test").with_credential(b"Bearer sk-held");
    let p = pacer.acquire(&held, Cost::tokens(1), None).await.unwrap();
    p.on_rate_limited(Some(Duration::from_secs(3600)), None);
    // 20,000 distinct callers, each sending one request whose bucket is full again 100 ms later.
    for i in 0..20_000u32 {
        let k = PaceKey::new("api.test").with_credential(format!("Bearer sk-{i}").as_bytes());
        let p = pacer.acquire(&k, Cost::tokens(1), None).await.unwrap();
        p.on_response(Some(&snap_requests(10, 9, Duration::from_millis(100))));
        if i % 1000 == 999 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let keys = pacer.metrics().keys;
    // Bounded by the keys used since the last sweep, not by the 20,000 seen.
    assert!(keys <= 2 * 1024 + 1, "{keys} keys kept");
    let st = pacer.key_state(&held).expect("the paused key is kept");
    assert!(st.paused_until.is_some());
    // A key that holds a permit is kept too, and a forgotten key starts again as a new one.
    let busy = PaceKey::new("api.test").with_credential(b"Bearer sk-busy");
    let _permit = pacer.acquire(&busy, Cost::tokens(1), None).await.unwrap();
    for i in 20_000..24_000u32 {
        let k = PaceKey::new("api.test").with_credential(format!("Bearer sk-{i}").as_bytes());
        let p = pacer.acquire(&k, Cost::tokens(1), None).await.unwrap();
        p.on_response(None);
    }
    assert_eq!(pacer.key_state(&busy).unwrap().in_flight, 1);
    let first = PaceKey::new("api.test").with_credential(b"Bearer sk-0");
    assert_eq!(pacer.key_state(&first), None);
}
