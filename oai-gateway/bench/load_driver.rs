//! `load-driver`: the HTTP load generator of the gateway's benchmark (`oai-gateway/bench/`).
//!
//! Two modes, each printing one line of JSON on stdout:
//!
//! - `--rate R` (open loop, as wrk2): request `i` is due at `start + i / R`, whether or not
//!   earlier ones have been answered. A pacing thread sleeps until each due time
//!   (`std::thread::sleep`, tens of microseconds late at most on an idle core) and hands the
//!   request to the runtime. Each latency is measured twice: from the due time (`*_ms`, which
//!   includes any lateness of the driver, so queueing cannot hide: no coordinated omission)
//!   and from the moment the request was issued (`service_*_ms`). A request due while
//!   `--max-inflight` are unanswered is not sent and counted as `dropped`.
//! - `--concurrency C` (closed loop): C workers send back to back; `rps` is the answers per
//!   second, the maximum throughput at that concurrency.
//!
//! Requests in the first `--warmup S` seconds are sent but not counted. `--label TEXT` is
//! copied into the JSON; `--threads N` sets the runtime's worker threads (default 1). Every request is
//! `POST URL` with `Authorization: Bearer KEY` and a small chat body; a non-2xx answer, a
//! connection error or a `--timeout` counts as failed.
//!
//! ```sh
//! load-driver --url http://127.0.0.1:8787/v1/chat/completions --rate 1000 --duration 10
//! load-driver --url http://127.0.0.1:8787/v1/chat/completions --concurrency 64 --duration 10
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_completion_tokens":5}"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone)]
struct Args {
    url: String,
    key: String,
    rate: Option<f64>,
    concurrency: Option<usize>,
    duration: f64,
    warmup: f64,
    timeout: f64,
    max_inflight: usize,
    threads: usize,
    label: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: load-driver --url URL (--rate R | --concurrency C) [--duration S] [--warmup S] \
         [--timeout S] [--max-inflight N] [--key KEY] [--threads N] [--label TEXT]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        url: String::new(),
        key: oai_resilience::mock::TEST_KEY.to_owned(),
        rate: None,
        concurrency: None,
        duration: 10.0,
        warmup: 2.0,
        timeout: 10.0,
        max_inflight: 2000,
        threads: 1,
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        let num = || v.parse::<f64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--url" => a.url = v.clone(),
            "--key" => a.key = v.clone(),
            "--rate" => a.rate = Some(num()),
            "--concurrency" => a.concurrency = Some(num() as usize),
            "--duration" => a.duration = num(),
            "--warmup" => a.warmup = num(),
            "--timeout" => a.timeout = num(),
            "--max-inflight" => a.max_inflight = num() as usize,
            "--threads" => a.threads = num() as usize,
            "--label" => a.label = v.clone(),
            _ => usage(),
        }
    }
    if a.url.is_empty() || a.rate.is_some() == a.concurrency.is_some() {
        usage()
    }
    a
}

/// One answer: (latency from the due time, latency from the send, ok).
type Sample = (Duration, Duration, bool);

async fn one(client: &HttpClient, args: &Args) -> bool {
    let req = http::Request::post(args.url.as_str())
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", args.key))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())));
    let Ok(req) = req else { return false };
    let call = async {
        let res = client.request(req).await.ok()?;
        let ok = res.status().is_success();
        res.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs_f64(args.timeout), call).await,
        Ok(Some(true))
    )
}

fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(mode: &str, args: &Args, samples: Vec<Sample>, dropped: u64, measured: Duration) {
    let ok = samples.iter().filter(|s| s.2).count();
    let failed = samples.len() - ok;
    let mut due: Vec<Duration> = samples.iter().filter(|s| s.2).map(|s| s.0).collect();
    let mut service: Vec<Duration> = samples.iter().filter(|s| s.2).map(|s| s.1).collect();
    due.sort();
    service.sort();
    let out = serde_json::json!({
        "label": args.label,
        "mode": mode,
        "url": args.url,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "duration_s": measured.as_secs_f64(),
        "answered": samples.len(),
        "ok": ok,
        "failed": failed,
        "dropped": dropped,
        "rps": ok as f64 / measured.as_secs_f64().max(1e-9),
        "p50_ms": quantile_ms(&due, 0.50),
        "p90_ms": quantile_ms(&due, 0.90),
        "p99_ms": quantile_ms(&due, 0.99),
        "p999_ms": quantile_ms(&due, 0.999),
        "max_ms": quantile_ms(&due, 1.0),
        "service_p50_ms": quantile_ms(&service, 0.50),
        "service_p99_ms": quantile_ms(&service, 0.99),
    });
    println!("{out}");
}

async fn open_loop(client: HttpClient, args: Arc<Args>, rate: f64) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(bool, Sample)>();
    let inflight = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let total = ((args.warmup + args.duration) * rate).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let warm = (args.warmup * rate).round() as u64;
    let pacer = {
        let (args, inflight, dropped) = (args.clone(), inflight.clone(), dropped.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..total {
                let due = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let counted = i >= warm;
                if inflight.load(Ordering::Relaxed) >= args.max_inflight {
                    if counted {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                inflight.fetch_add(1, Ordering::Relaxed);
                let (client, args, inflight, tx) =
                    (client.clone(), args.clone(), inflight.clone(), tx.clone());
                handle.spawn(async move {
                    let sent = Instant::now();
                    let ok = one(&client, &args).await;
                    let done = Instant::now();
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send((counted, (done - due, done - sent, ok)));
                });
            }
            start
        })
    };
    let mut samples = Vec::with_capacity((args.duration * rate) as usize + 16);
    while let Some((counted, s)) = rx.recv().await {
        if counted {
            samples.push(s);
        }
    }
    let _ = pacer.join();
    let measured = Duration::from_secs_f64(args.duration);
    report(
        "rate",
        &args,
        samples,
        dropped.load(Ordering::Relaxed),
        measured,
    );
}

async fn closed_loop(client: HttpClient, args: Arc<Args>, concurrency: usize) {
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, args) = (client.clone(), args.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let ok = one(&client, &args).await;
                let done = Instant::now();
                // Only answers to requests sent and answered within the measured window.
                if sent >= warm_end && done <= end {
                    samples.push((done - sent, done - sent, ok));
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        if let Ok(s) = w.await {
            samples.extend(s);
        }
    }
    report(
        "concurrency",
        &args,
        samples,
        0,
        Duration::from_secs_f64(args.duration),
    );
}

fn main() {
    let args = Arc::new(parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("load-driver: cannot start the runtime: {e}");
            std::process::exit(1)
        });
    runtime.block_on(async {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(usize::MAX)
            .build(http);
        match (args.rate, args.concurrency) {
            (Some(r), _) => open_loop(client, args.clone(), r).await,
            (_, Some(c)) => closed_loop(client, args.clone(), c).await,
            _ => usage(),
        }
    });
}
