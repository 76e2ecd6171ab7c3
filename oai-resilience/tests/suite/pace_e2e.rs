//! End to end over loopback: hyper client → classify → pace → the mock server's buckets.
//! Each call retries its 429s (up to 10 attempts) straight back into the pace layer.
#![cfg(feature = "mock")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::mock::{MockServer, RateLimit, Route};
use oai_resilience::pace::{PaceKey, PaceLayer};
use oai_resilience::{ClassifyLayer, ErrorKind};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use test_support::KEY;

#[derive(Debug)]
struct Outcome {
    failed: usize,
    sent: u64,
    rate_limited: u64,
    /// 429s after the first second, once the pacer has had the time to learn.
    late_rate_limited: usize,
    wall: f64,
}

/// One call with `body` to `url` through `svc`, its 429s retried: at most 10 tries; the 429s
/// that come over a second after `start` are counted in `late`. Whether one try succeeded.
async fn call_retrying_429s<S>(
    svc: &S,
    url: &str,
    body: &Bytes,
    start: Instant,
    late: &AtomicUsize,
) -> bool
where
    S: Service<http::Request<Full<Bytes>>, Error = oai_resilience::Error> + Clone,
{
    for _ in 0..10 {
        let req = http::Request::post(url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        match svc.clone().oneshot(req).await {
            Ok(_) => return true,
            Err(e) if e.kind() == ErrorKind::RateLimited => {
                if start.elapsed() > Duration::from_secs(1) {
                    late.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    false
}

async fn run(
    server: &MockServer,
    pace: &PaceLayer,
    calls: usize,
    concurrency: usize,
    body: &str,
) -> Outcome {
    let client = test_support::http_client::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(pace.clone())
        .layer(ClassifyLayer::new())
        .service(client);
    let url = server.endpoint(Route::ChatCompletions);
    // Calls taken, calls failed, late 429s.
    let tally: Arc<[AtomicUsize; 3]> = Arc::default();
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (svc, tally, url) = (svc.clone(), tally.clone(), url.clone());
            let body = Bytes::from(body.to_owned());
            tokio::spawn(async move {
                let [next, failed, late] = &*tally;
                while next.fetch_add(1, Ordering::SeqCst) < calls {
                    if !call_retrying_429s(&svc, &url, &body, start, late).await {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let counts = server.counts();
    let [_, failed, late] = &*tally;
    Outcome {
        failed: failed.load(Ordering::SeqCst),
        sent: counts.total,
        rate_limited: counts.rate_limited,
        late_rate_limited: late.load(Ordering::SeqCst),
        wall: start.elapsed().as_secs_f64(),
    }
}

/// A mock server with `requests` as its request limit (and `tokens` as its token limit, if
/// any) that answers after 20 ms.
async fn limited_server(requests: RateLimit, tokens: Option<RateLimit>) -> MockServer {
    let mut builder = MockServer::builder()
        .request_limit(requests)
        .latency(Duration::from_millis(20));
    if let Some(tokens) = tokens {
        builder = builder.token_limit(tokens);
    }
    builder.start().await
}

/// The pace key of the test key's chat calls to `server`.
fn pace_key(server: &MockServer) -> PaceKey {
    PaceKey::new(server.addr().to_string())
        .with_credential(format!("Bearer {KEY}").as_bytes())
        .with_model("gpt-4o-mini")
}

use test_support::CHAT_5_TOKENS as CHAT;

#[tokio::test(start_paused = true)]
async fn burst_against_a_small_fast_bucket_gets_nearly_no_429s() {
    let server = limited_server(RateLimit::bucket(20, 20.0), None).await;
    let pace = PaceLayer::new();
    // The loadtest's shape: 300 calls at concurrency 50, and its targets.
    let calls = 300;
    let out = run(&server, &pace, calls, 50, CHAT).await;
    let min = (calls as f64 - 20.0) / 20.0;
    eprintln!(
        "small fast bucket: {out:?} (minimum {min} s); {:?}",
        pace.pacer().metrics()
    );
    assert_eq!(out.failed, 0);
    // The cold key's first wave (50 calls against a bucket of 20) goes out at once and
    // collects 30 fast 429s; after that the headers pace the key and at most 3 more come.
    assert!(out.rate_limited <= 30 + 3, "{out:?}");
    assert!(out.sent as f64 <= calls as f64 * 1.15, "{out:?}");
    assert!(out.wall <= min * 1.05, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn minute_bucket_end_to_end() {
    let server = limited_server(RateLimit::per_minute(120), None).await;
    let pace = PaceLayer::new();
    let calls = 150;
    let out = run(&server, &pace, calls, 40, CHAT).await;
    let min = 30.0 / 2.0;
    eprintln!("minute bucket: {out:?} (minimum {min} s)");
    assert_eq!(out.failed, 0);
    assert!(out.rate_limited <= 3, "{out:?}");
    assert!(out.wall <= min * 1.1, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn quantized_limit_end_to_end() {
    // Headers: 1,200 per minute; enforced: 20 per second.
    let server = limited_server(RateLimit::quantized(1200, Duration::from_secs(1)), None).await;
    let pace = PaceLayer::new();
    let calls = 200;
    let out = run(&server, &pace, calls, 50, CHAT).await;
    let min = (calls as f64 - 20.0) / 20.0;
    let st = pace.pacer().key_state(&pace_key(&server)).unwrap();
    eprintln!("quantized: {out:?} (minimum {min} s); {st:?}");
    assert_eq!(out.failed, 0);
    assert!(st.adaptive_rate.is_some(), "{st:?}");
    // The cold burst of 50 meets the per-second limit of 20 with 30 fast 429s; after that,
    // pacing by headers alone would collect some 30 429s per second, while the adaptive
    // rate keeps them rare.
    assert!(out.late_rate_limited <= 8, "{out:?}");
    assert!(out.rate_limited <= 30 + 8, "{out:?}");
    assert!(out.wall <= min * 1.5, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn token_bucket_end_to_end() {
    // 6,000 tokens per minute (100/s), plenty of requests; each call costs about 200 tokens.
    let server = limited_server(
        RateLimit::per_minute(10_000),
        Some(RateLimit::per_minute(6_000)),
    )
    .await;
    let pace = PaceLayer::new();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":190}"#;
    let cost = oai_resilience::mock::estimate_tokens(body.as_bytes()) as f64;
    let calls = 60;
    let out = run(&server, &pace, calls, 20, body).await;
    let min = (calls as f64 * cost - 6_000.0) / 100.0;
    let st = pace.pacer().key_state(&pace_key(&server)).unwrap();
    eprintln!("token bucket: {out:?} (minimum {min:.2} s at {cost} tokens a call); {st:?}");
    assert_eq!(out.failed, 0);
    assert!(out.rate_limited <= 3, "{out:?}");
    assert!(out.wall <= min * 1.15, "{out:?}");
}
