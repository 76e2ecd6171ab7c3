//! Exact retry schedules in virtual time: backoff growth and cap, seeded jitter, every server
//! hint source and their precedence, the hint ceiling, `x-should-retry`, the deadline and the
//! budget under an outage.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use oai_resilience::retry::{
    Backoff, HintJitter, Jitter, RandomSource, RetryConfig, RetryLayer, SplitMix, TokenBudget,
};
use oai_resilience::{ClassifyLayer, DelaySource, Error, ErrorKind, StopReason};
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

type Body = Full<Bytes>;

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: "",
    }
}

impl Reply {
    fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn body(mut self, b: &'static str) -> Self {
        self.body = b;
        self
    }
}

/// A scripted upstream: answers from the script (the last reply repeats), logs when each
/// request arrived.
#[derive(Clone)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Reply>>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Upstream {
    fn new(replies: impl IntoIterator<Item = Reply>) -> Self {
        Upstream {
            script: Arc::new(Mutex::new(replies.into_iter().collect())),
            arrivals: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Arrival times relative to `start`, in ms.
    fn times_ms(&self, start: Instant) -> Vec<u128> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start).as_millis())
            .collect()
    }

    fn service(
        &self,
        config: RetryConfig,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Error> + Clone {
        let up = self.clone();
        ServiceBuilder::new()
            .layer(RetryLayer::with_config(config))
            .layer(ClassifyLayer::new())
            .service(service_fn(move |_req: Request<Body>| {
                let up = up.clone();
                async move {
                    up.arrivals.lock().unwrap().push(Instant::now());
                    let r = {
                        let mut s = up.script.lock().unwrap();
                        if s.len() > 1 {
                            s.pop_front().unwrap()
                        } else {
                            s.front().cloned().unwrap_or_else(|| reply(200))
                        }
                    };
                    let mut b = Response::builder().status(r.status);
                    for (k, v) in &r.headers {
                        b = b.header(*k, v.as_str());
                    }
                    Ok::<_, Infallible>(
                        b.body(Full::new(Bytes::from_static(r.body.as_bytes())))
                            .unwrap(),
                    )
                }
            }))
    }
}

fn post() -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// A deterministic config: no jitter anywhere, no budget, no deadline.
fn exact() -> RetryConfig {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
    RetryConfig::new()
        .backoff(backoff.with_jitter(Jitter::None))
        .hint_jitter(HintJitter::NONE)
        .no_budget()
        .no_deadline()
        .max_attempts(6)
}

const RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

#[tokio::test(start_paused = true)]
async fn backoff_grows_then_caps() {
    let up = Upstream::new([reply(503)]);
    let start = Instant::now();
    let err = up.service(exact()).oneshot(post()).await.unwrap_err();
    assert_eq!(up.times_ms(start), [0, 100, 300, 700, 1100, 1500]);
    assert_eq!(err.kind(), ErrorKind::ServerError);
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.attempts, 6);
    assert_eq!(ctx.stop, StopReason::MaxAttempts);
    assert_eq!(ctx.elapsed, Duration::from_millis(1500));
    let delays: Vec<_> = ctx
        .outcomes
        .iter()
        .map(|o| o.delay.map(|d| d.as_millis()))
        .collect();
    assert_eq!(
        delays,
        [Some(100), Some(200), Some(400), Some(400), Some(400), None]
    );
    assert!(ctx
        .outcomes
        .iter()
        .all(|o| o.status == Some(StatusCode::SERVICE_UNAVAILABLE)));
    assert!(
        err.to_string()
            .contains("after 6 attempts in 1.5 s (maximum attempts reached)"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_full_jitter_is_exact_and_seed_dependent() {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
    let run = |seed: u64| async move {
        let up = Upstream::new([reply(500)]);
        let start = Instant::now();
        let config = RetryConfig::new()
            .no_budget()
            .no_deadline()
            .max_attempts(5)
            .seed(seed);
        up.service(config).oneshot(post()).await.unwrap_err();
        up.times_ms(start)
    };
    // The expected schedule, from the same seeded source and the pure backoff function.
    // tokio's timer fires on whole milliseconds, rounding a deadline up.
    let rng = SplitMix::new(42);
    let mut t = 0;
    let mut expected = vec![0];
    for retry in 1..5 {
        t += ceil_ms(backoff.delay(retry, None, rng.next_unit()));
        expected.push(t);
    }
    let got = run(42).await;
    assert_eq!(got, expected);
    assert_eq!(run(42).await, got, "same seed, same schedule");
    assert_ne!(run(43).await, got, "another seed, another schedule");
    // Full jitter: each gap lies in [0, min(cap, base·2ⁿ⁻¹)].
    for (i, w) in got.windows(2).enumerate() {
        assert!(w[1] - w[0] <= backoff.ceiling(i as u32 + 1).as_millis());
    }
}

/// Whole milliseconds, rounded up, as tokio's timer fires.
fn ceil_ms(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

/// When the second request arrived, for a call whose first reply is `r`.
async fn second_arrival_ms(r: Reply, config: RetryConfig) -> u128 {
    let up = Upstream::new([r, reply(200)]);
    let start = Instant::now();
    up.service(config).oneshot(post()).await.unwrap();
    let times = up.times_ms(start);
    assert_eq!(times.len(), 2);
    times[1]
}

#[tokio::test(start_paused = true)]
async fn each_hint_source_sets_the_delay() {
    let cases = [
        (
            reply(429).body(RATE).header("retry-after-ms", "1500"),
            1500,
            DelaySource::RetryAfterMs,
        ),
        (
            reply(503).header("retry-after", "2"),
            2000,
            DelaySource::RetryAfter,
        ),
        (
            reply(429)
                .body(RATE)
                .header("x-ratelimit-reset-requests", "3s")
                .header("x-ratelimit-remaining-requests", "0"),
            3000,
            DelaySource::RateLimitReset,
        ),
        (reply(429).body(RATE), 120, DelaySource::Message),
        (reply(503), 100, DelaySource::Backoff),
    ];
    for (r, want_ms, want_source) in cases {
        let ms = second_arrival_ms(r.clone(), exact()).await;
        assert_eq!(ms, want_ms, "{want_source:?}");
        // The recorded source, from a call that fails after the first retry.
        let up = Upstream::new([r, reply(400)]);
        let err = up.service(exact()).oneshot(post()).await.unwrap_err();
        let o = &err.retry_context().unwrap().outcomes[0];
        assert_eq!(o.delay_source, Some(want_source));
        assert_eq!(o.delay, Some(Duration::from_millis(want_ms as u64)));
    }
}

#[tokio::test(start_paused = true)]
async fn hint_precedence_ms_then_seconds_then_reset_then_message() {
    let all = || {
        reply(429)
            .body(RATE)
            .header("retry-after-ms", "1500")
            .header("retry-after", "2")
            .header("x-ratelimit-reset-requests", "3s")
    };
    assert_eq!(second_arrival_ms(all(), exact()).await, 1500);
    let no_ms = reply(429)
        .body(RATE)
        .header("retry-after", "2")
        .header("x-ratelimit-reset-requests", "3s");
    assert_eq!(second_arrival_ms(no_ms, exact()).await, 2000);
    let reset_only = reply(429)
        .body(RATE)
        .header("x-ratelimit-reset-requests", "3s");
    assert_eq!(second_arrival_ms(reset_only, exact()).await, 3000);
}

#[tokio::test(start_paused = true)]
async fn hints_get_a_small_jitter_on_top() {
    let seed = 9;
    let up = Upstream::new([reply(503).header("retry-after", "2"), reply(200)]);
    let start = Instant::now();
    let config = exact().hint_jitter(HintJitter::default()).seed(seed);
    up.service(config).oneshot(post()).await.unwrap();
    // Draw order per failed attempt: the backoff draw, then the hint draw.
    let rng = SplitMix::new(seed);
    let _backoff = rng.next_unit();
    let want = HintJitter::default().apply(Duration::from_secs(2), rng.next_unit());
    let got = up.times_ms(start)[1];
    assert_eq!(got, ceil_ms(want));
    assert!((2000..=2200).contains(&got), "{got}");
}

#[tokio::test(start_paused = true)]
async fn hint_above_ceiling_ends_the_call_at_once() {
    let up = Upstream::new([reply(429).body(RATE).header("retry-after", "3600")]);
    let start = Instant::now();
    let err = up
        .service(RetryConfig::new().seed(1))
        .oneshot(post())
        .await
        .unwrap_err();
    assert_eq!(up.count(), 1);
    assert_eq!(Instant::now() - start, Duration::ZERO, "no sleep at all");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::HintTooLong);
    assert_eq!(ctx.refused_hint, Some(Duration::from_secs(3600)));
    assert!(
        err.to_string().contains("server asked to wait 3600 s"),
        "{err}"
    );
    // Just under a lowered ceiling: slept, not refused.
    let up = Upstream::new([reply(503).header("retry-after", "5"), reply(200)]);
    let config = exact().hint_ceiling(Duration::from_secs(5));
    up.service(config).oneshot(post()).await.unwrap();
    assert_eq!(up.times_ms(start), [0, 5000]);
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_wins_both_ways() {
    let up = Upstream::new([reply(503).header("x-should-retry", "false")]);
    let err = up.service(exact()).oneshot(post()).await.unwrap_err();
    assert_eq!(up.count(), 1);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::NotRetryable);

    let up = Upstream::new([reply(400).header("x-should-retry", "true"), reply(200)]);
    up.service(exact()).oneshot(post()).await.unwrap();
    assert_eq!(up.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn never_retried_statuses_cost_one_request() {
    for r in [
        reply(400),
        reply(401),
        reply(403),
        reply(404),
        reply(413),
        reply(422),
        reply(429).body(QUOTA),
    ] {
        let status = r.status;
        let up = Upstream::new([r]);
        let err = up.service(exact()).oneshot(post()).await.unwrap_err();
        assert_eq!(up.count(), 1, "{status}");
        assert_eq!(err.retry_context().unwrap().stop, StopReason::NotRetryable);
        assert_eq!(err.attempts(), 1);
    }
    for status in [408, 409, 500, 502, 504] {
        let up = Upstream::new([reply(status), reply(200)]);
        up.service(exact()).oneshot(post()).await.unwrap();
        assert_eq!(up.count(), 2, "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_delay_that_would_cross_the_deadline_is_not_slept() {
    let up = Upstream::new([reply(503)]);
    let start = Instant::now();
    let config = exact().deadline(Duration::from_secs(1)).backoff(
        Backoff::new(Duration::from_millis(400), Duration::from_secs(10)).with_jitter(Jitter::None),
    );
    let err = up.service(config).oneshot(post()).await.unwrap_err();
    // 0, 400; the next delay (800 ms) would end at 1.2 s > 1 s.
    assert_eq!(up.times_ms(start), [0, 400]);
    assert_eq!(Instant::now() - start, Duration::from_millis(400));
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::Deadline);
    assert_eq!(ctx.deadline, Some(Duration::from_secs(1)));
    assert!(
        err.to_string()
            .contains("after 2 attempts in 0.4 s (the next delay would cross the deadline of 1 s)"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_an_attempt_in_flight() {
    let config = exact().deadline(Duration::from_secs(2));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(config))
        .service(service_fn(|_req: Request<Body>| async {
            std::future::pending::<Result<Response<Body>, Error>>().await
        }));
    let start = Instant::now();
    let err = svc.oneshot(post()).await.unwrap_err();
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::Deadline);
    assert_eq!(ctx.outcomes.len(), 1);
    // The message says what happened: the deadline passed during the attempt, not that a
    // delay would have crossed it.
    let text = err.to_string();
    assert!(
        text.starts_with(
            "timeout: the overall deadline of 2 s passed during attempt 1 after 1 attempt in 2 s \
             (stopped at the deadline) — hint:"
        ),
        "{text}"
    );
    assert!(!text.contains("next delay"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn budget_caps_an_outage_then_reopens_after_it() {
    let up = Upstream::new([reply(503)]);
    let config = RetryConfig::new()
        .backoff(
            Backoff::new(Duration::from_millis(10), Duration::from_millis(10))
                .with_jitter(Jitter::None),
        )
        .no_deadline()
        .max_attempts(5)
        .budget(TokenBudget::default());
    let svc = up.service(config);
    let mut stops = Vec::new();
    for _ in 0..100 {
        let err = svc.clone().oneshot(post()).await.unwrap_err();
        stops.push(err.retry_context().unwrap().stop);
    }
    // 20 tokens, retries while above 10: call 1 retries at 19, 18, 17, 16 (its fifth failure
    // leaves 15), call 2 at 14, 13, 12, 11 (its fifth leaves 10); no call retries after that.
    assert_eq!(up.count(), 108);
    assert_eq!(&stops[..2], [StopReason::MaxAttempts; 2]);
    assert!(stops[2..].iter().all(|s| *s == StopReason::Budget));
    // The server heals: calls succeed at once and each success earns 0.5 token. After 20
    // of them the balance is 10, so a failure (down to 9) is not retried yet.
    *up.script.lock().unwrap() = VecDeque::from([reply(200)]);
    for _ in 0..20 {
        svc.clone().oneshot(post()).await.unwrap();
    }
    *up.script.lock().unwrap() = VecDeque::from([reply(503), reply(200)]);
    let err = svc.clone().oneshot(post()).await.unwrap_err();
    assert_eq!(err.retry_context().unwrap().stop, StopReason::Budget);
    // 25 more successes (9 + 12.5, capped at 20): the next failure is retried again.
    for _ in 0..25 {
        svc.clone().oneshot(post()).await.unwrap();
    }
    *up.script.lock().unwrap() = VecDeque::from([reply(503), reply(200)]);
    let before = up.count();
    svc.clone().oneshot(post()).await.unwrap();
    assert_eq!(up.count() - before, 2);
}

#[tokio::test(start_paused = true)]
async fn budget_lets_twenty_percent_failures_through() {
    // One request in five fails, in a fixed pattern, for 300 calls one after another.
    let mut script: Vec<Reply> = (0..2000)
        .map(|i| if i % 5 == 4 { reply(503) } else { reply(200) })
        .collect();
    script.push(reply(200));
    let up = Upstream::new(script);
    let config = exact().max_attempts(5).budget(TokenBudget::default());
    let svc = up.service(config);
    for _ in 0..300 {
        svc.clone().oneshot(post()).await.unwrap();
    }
    // Every fifth request fails and is retried: 300 calls need 374 requests (1.25 per call).
    assert_eq!(up.count(), 374);
}

#[tokio::test(start_paused = true)]
async fn budget_is_shared_by_concurrent_clones() {
    let up = Upstream::new([reply(503)]);
    let config = exact().max_attempts(5).budget(TokenBudget::default());
    let svc = up.service(config);
    let calls = (0..50).map(|_| svc.clone().oneshot(post()));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_err()));
    // The 50 first attempts fail together: the first nine failures leave 19 … 11 tokens and
    // are retried, the others are refused; the nine retries fail too and find the bucket
    // below the threshold.
    assert_eq!(up.count(), 59);
}

#[test]
fn config_knobs_round_trip() {
    let c = RetryConfig::new()
        .max_attempts(0)
        .base_delay(Duration::from_secs(1))
        .max_delay(Duration::from_secs(60))
        .jitter(Jitter::Decorrelated)
        .hint_ceiling(Duration::from_secs(30));
    assert_eq!(c.settings().max_attempts, 1);
    assert_eq!(c.settings().backoff.base(), Duration::from_secs(1));
    assert_eq!(c.settings().backoff.cap(), Duration::from_secs(60));
    assert_eq!(c.settings().backoff.jitter(), Jitter::Decorrelated);
    assert_eq!(c.settings().hint_ceiling, Duration::from_secs(30));
    let d = RetryConfig::default();
    assert_eq!(d.settings().max_attempts, 5);
    assert_eq!(d.settings().hint_ceiling, Duration::from_secs(120));
    assert!(d.settings().budget.as_ref().is_some());
    assert_eq!(
        d.settings().retry_count_header.as_ref().unwrap(),
        "x-stainless-retry-count"
    );
}

#[tokio::test(start_paused = true)]
async fn for_duration_retries_until_the_duration_and_sleeps_nothing_past_it() {
    // An outage: every attempt is a 503. The default config stops after 5 attempts; a pure
    // time bound keeps retrying (no budget, no 5-attempt cap) until the next delay would end
    // after 10 s, and does not sleep that delay.
    let up = Upstream::new([reply(503)]);
    let start = Instant::now();
    let config = RetryConfig::for_duration(Duration::from_secs(10)).seed(3);
    let err = up.service(config).oneshot(post()).await.unwrap_err();
    let took = Instant::now() - start;
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::Deadline, "{err}");
    assert!(ctx.attempts > 5, "{err}");
    assert_eq!(ctx.attempts as usize, up.count());
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The call returned when its last attempt failed: no sleep after it.
    let last = *up.times_ms(start).last().unwrap();
    assert_eq!(took.as_millis(), last);
    assert!(
        err.to_string()
            .contains("(the next delay would cross the deadline of 10 s)"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn for_duration_cuts_an_attempt_in_flight_at_the_duration() {
    // Each attempt takes 3 s and fails: attempts start at 0, ~3, ~6, ~9 s and the one in
    // flight at 10 s is cut there.
    let config = RetryConfig::for_duration(Duration::from_secs(10))
        .seed(5)
        .base_delay(Duration::from_millis(1));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(config))
        .layer(ClassifyLayer::new())
        .service(service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(res)
        }));
    let start = Instant::now();
    let err = svc.oneshot(post()).await.unwrap_err();
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.retry_context().unwrap().stop, StopReason::Deadline);
}
