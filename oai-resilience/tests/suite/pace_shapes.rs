//! Three limiter shapes, each a simulated server in virtual time driven through the pacer:
//! a minute bucket, a small bucket with a fast refill, and a quantized limiter whose headers
//! report the minute limit while it enforces a per-second one.
//!
//! Each call retries its 429s (up to 10 attempts) straight back into the pacer, as the retry
//! layer does; the pacer alone must keep the 429s rare and the wall time near the minimum.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oai_resilience::pace::{Cost, PaceKey, Pacer, PacerConfig};
use oai_resilience::RateLimitSnapshot;
use tokio::time::Instant;

type Answer = Result<RateLimitSnapshot, (Duration, RateLimitSnapshot)>;

/// A token bucket that refills continuously; its headers tell the truth: `limit` = capacity,
/// `remaining` = the whole requests left, `reset` = the time until full.
struct Bucket {
    cap: f64,
    level: f64,
    refill: f64,
    at: Instant,
}

impl Bucket {
    fn new(cap: f64, refill: f64) -> Self {
        Bucket {
            cap,
            level: cap,
            refill,
            at: Instant::now(),
        }
    }

    fn advance(&mut self, now: Instant) {
        let dt = (now - self.at).as_secs_f64();
        self.level = (self.level + dt * self.refill).min(self.cap);
        self.at = now;
    }

    fn snapshot(&self) -> RateLimitSnapshot {
        let mut s = RateLimitSnapshot::default();
        s.limit_requests = Some(self.cap as u64);
        s.remaining_requests = Some(self.level.max(0.0).floor() as u64);
        s.reset_requests = Some(Duration::from_secs_f64(
            (self.cap - self.level) / self.refill,
        ));
        s
    }

    fn take(&mut self, now: Instant) -> Answer {
        self.advance(now);
        if self.level >= 1.0 {
            self.level -= 1.0;
            Ok(self.snapshot())
        } else {
            let hint = Duration::from_secs_f64((1.0 - self.level) / self.refill);
            Err((hint, self.snapshot()))
        }
    }
}

/// Headers from a minute bucket; enforcement in fixed one-second windows of `per_second`.
struct Quantized {
    minute: Bucket,
    per_second: u32,
    window: u64,
    count: u32,
    start: Instant,
}

impl Quantized {
    fn take(&mut self, now: Instant) -> Answer {
        let elapsed = (now - self.start).as_secs_f64();
        let window = elapsed.floor() as u64;
        if window != self.window {
            self.window = window;
            self.count = 0;
        }
        self.minute.advance(now);
        if self.count < self.per_second && self.minute.level >= 1.0 {
            self.count += 1;
            self.minute.level -= 1.0;
            Ok(self.minute.snapshot())
        } else {
            let hint = Duration::from_secs_f64((window + 1) as f64 - elapsed);
            Err((hint, self.minute.snapshot()))
        }
    }
}

enum Server {
    Bucket(Bucket),
    Quantized(Quantized),
}

impl Server {
    fn take(&mut self, now: Instant) -> Answer {
        match self {
            Server::Bucket(b) => b.take(now),
            Server::Quantized(q) => q.take(now),
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    sent: usize,
    rate_limited: usize,
    failed: usize,
    wall: Duration,
}

async fn drive(pacer: &Pacer, server: Server, calls: usize, concurrency: usize) -> Outcome {
    let latency = Duration::from_millis(10);
    let key = PaceKey::new("api.sim").with_credential(b"Bearer sk-sim");
    let server = Arc::new(Mutex::new(server));
    let next = Arc::new(AtomicUsize::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (pacer, key, server, next, outcome) = (
                pacer.clone(),
                key.clone(),
                server.clone(),
                next.clone(),
                outcome.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < calls {
                    let mut ok = false;
                    for _attempt in 0..10 {
                        let permit = pacer.acquire(&key, Cost::tokens(1), None).await.unwrap();
                        tokio::time::sleep(latency / 2).await;
                        let answer = server.lock().unwrap().take(Instant::now());
                        // The limiter answers before the model runs: a 429 comes back at
                        // once, a success after the model's time.
                        if answer.is_ok() {
                            tokio::time::sleep(latency / 2).await;
                        }
                        outcome.lock().unwrap().sent += 1;
                        match answer {
                            Ok(snap) => {
                                permit.on_response(Some(&snap));
                                ok = true;
                                break;
                            }
                            Err((hint, snap)) => {
                                outcome.lock().unwrap().rate_limited += 1;
                                permit.on_rate_limited(Some(hint), Some(&snap));
                            }
                        }
                    }
                    if !ok {
                        outcome.lock().unwrap().failed += 1;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let mut out = std::mem::take(&mut *outcome.lock().unwrap());
    out.wall = start.elapsed();
    out
}

/// `calls` calls at concurrency 50 against a bucket of `capacity` refilled `refill` per
/// second, on a fresh pacer; prints the outcome with the least wall time the bucket allows
/// (the calls beyond the capacity, at the refill rate) and checks that none failed.
async fn bucket_run(
    label: &str,
    capacity: f64,
    refill: f64,
    calls: usize,
) -> (Pacer, Outcome, f64) {
    let pacer = Pacer::new(PacerConfig::default());
    let out = drive(
        &pacer,
        Server::Bucket(Bucket::new(capacity, refill)),
        calls,
        50,
    )
    .await;
    let min = (calls as f64 - capacity) / refill;
    eprintln!("{label}: {out:?} (minimum {min} s)");
    assert_eq!(out.failed, 0);
    (pacer, out, min)
}

#[tokio::test(start_paused = true)]
async fn minute_bucket() {
    // 120 RPM: capacity 120, refilled 2 per second. 200 calls: 120 at once, then 80 at 2/s.
    let (_, out, min) = bucket_run("minute bucket", 120.0, 2.0, 200).await;
    assert_eq!(min, 80.0 / 2.0);
    assert!(out.rate_limited <= 2, "{out:?}");
    assert!(out.wall.as_secs_f64() <= min * 1.05, "{out:?}");
    assert!(out.wall.as_secs_f64() >= min * 0.98, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn small_bucket_with_fast_refill() {
    // Capacity 20, refilled 20 per second; the loadtest's shape: 300 calls at concurrency 50.
    let (pacer, out, min) = bucket_run("small fast bucket", 20.0, 20.0, 300).await;
    assert_eq!(min, 280.0 / 20.0);
    // The cold key's first wave (50 against a bucket of 20) collects 30 429s; after that,
    // at most 2 more.
    assert!(out.rate_limited <= 30 + 2, "{out:?}");
    assert!(out.sent as f64 <= 300.0 * 1.15, "{out:?}");
    assert!(out.wall.as_secs_f64() <= min * 1.05, "{out:?}");
    let m = pacer.metrics();
    assert!(m.waits > 200, "{m:?}");
    assert_eq!(m.queue_len, 0);
}

#[tokio::test(start_paused = true)]
async fn quantized_limiter_adapts_to_the_429s() {
    // Headers: 1,200 RPM (refilled 20/s, always room); enforced: 20 per one-second window.
    let pacer = Pacer::new(PacerConfig::default());
    let server = Server::Quantized(Quantized {
        minute: Bucket::new(1200.0, 20.0),
        per_second: 20,
        window: 0,
        count: 0,
        start: Instant::now(),
    });
    let out = drive(&pacer, server, 300, 50).await;
    let min = 14.0;
    eprintln!("quantized: {out:?} (minimum about {min} s)");
    let key = PaceKey::new("api.sim").with_credential(b"Bearer sk-sim");
    let st = pacer.key_state(&key).unwrap();
    eprintln!("quantized: final state {st:?}");
    assert_eq!(out.failed, 0);
    // Pacing by the headers alone would send the whole queue at every window and collect
    // about 30 429s per second (over 400 here); slow start and the adaptive rate keep them
    // few.
    assert!(out.rate_limited <= 40, "{out:?}");
    assert!(out.wall.as_secs_f64() <= min * 1.5, "{out:?}");
    assert!(st.adaptive_rate.is_some());
}
