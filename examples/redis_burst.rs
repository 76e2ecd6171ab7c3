//! A burst split over several processes that share one rate limit, paced through Redis or
//! each in its own process.
//!
//! ```text
//! cargo run -p examples --bin redis_burst -- --store redis://127.0.0.1:6379/ --processes 4
//! cargo run -p examples --bin redis_burst -- --store pacer --processes 4
//! cargo run -p examples --bin redis_burst -- --store memory --clean --processes 1
//! ```
//!
//! The parent starts the mock server (a bucket of 20 requests refilled at 20/s, 20 ms latency
//! or `--latency-ms`; `--clean`: no limits), starts `--processes` copies of itself that share `--calls` calls,
//! and prints the calls that failed, the requests the server saw, 429s and the wall time
//! against the minimum. Stores: `redis://...` ([`RedisStore`] through [`SharedPaceLayer`], the
//! key's limits configured up front), `memory` (an [`InProcessStore`] per process, the same
//! configured limits), `pacer` (the adaptive in-process [`PaceLayer`]).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_resilience::mock::{MockServer, RateLimit, Route};
use oai_resilience::pace::{
    BucketLimits, InProcessStore, LearnedLimits, PaceKey, PaceLayer, PacingStore, RedisStore,
    RedisStoreConfig, SharedPaceLayer,
};
use oai_resilience::{ClassifyLayer, ErrorKind};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Svc = BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    oai_resilience::Error,
>;

const KEY: &str = "sk-proj-Zq3xV9mN2pL8rT5wY1kB7cD4fG6hJ0aS";
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}"#;

#[derive(Debug)]
struct Opts {
    store: String,
    processes: usize,
    calls: usize,
    concurrency: usize,
    clean: bool,
    latency_ms: u64,
    child_url: Option<String>,
}

fn parse() -> Result<Opts, BoxError> {
    let mut o = Opts {
        store: "pacer".into(),
        processes: 4,
        calls: 300,
        concurrency: 12,
        clean: false,
        latency_ms: 20,
        child_url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--store" => o.store = val()?,
            "--processes" => o.processes = val()?.parse()?,
            "--calls" => o.calls = val()?.parse()?,
            "--concurrency" => o.concurrency = val()?.parse()?,
            "--clean" => o.clean = true,
            "--latency-ms" => o.latency_ms = val()?.parse()?,
            "--child" => o.child_url = Some(val()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

fn key_for(url: &str) -> Result<PaceKey, BoxError> {
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().ok_or("no authority")?.as_str().to_owned();
    Ok(PaceKey::new(authority)
        .with_credential(format!("Bearer {KEY}").as_bytes())
        .with_model("gpt-4o-mini"))
}

const LIMITS: LearnedLimits = LearnedLimits {
    requests: Some(BucketLimits {
        capacity: 20.0,
        refill_per_sec: 20.0,
    }),
    tokens: None,
    remaining_requests: None,
    remaining_tokens: None,
};

async fn child(o: &Opts, url: &str) -> Result<(), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let key = key_for(url)?;
    let svc: Svc = if o.store == "pacer" {
        BoxCloneService::new(
            ServiceBuilder::new()
                .layer(PaceLayer::new())
                .layer(ClassifyLayer::new())
                .service(client),
        )
    } else {
        let layer = if o.store == "memory" {
            let s = InProcessStore::new();
            if !o.clean {
                s.learn(&key, LIMITS).await?;
            }
            SharedPaceLayer::new(s)
        } else {
            // The parent configured the limits in Redis.
            SharedPaceLayer::new(RedisStore::connect(&o.store, RedisStoreConfig::default()).await?)
        };
        BoxCloneService::new(
            ServiceBuilder::new()
                .layer(layer)
                .layer(ClassifyLayer::new())
                .service(client),
        )
    };
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let calls = o.calls;
    let tasks: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let (svc, next, failed, url) =
                (svc.clone(), next.clone(), failed.clone(), url.to_owned());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < calls {
                    let mut ok = false;
                    for _ in 0..10 {
                        let req = http::Request::post(&url)
                            .header("authorization", format!("Bearer {KEY}"))
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                            .expect("request");
                        match svc.clone().oneshot(req).await {
                            Ok(_) => {
                                ok = true;
                                break;
                            }
                            Err(e) if e.kind() == ErrorKind::RateLimited => {}
                            Err(_) => break,
                        }
                    }
                    if !ok {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    println!("failed {}", failed.load(Ordering::SeqCst));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let o = parse()?;
    if let Some(url) = &o.child_url {
        return child(&o, url).await;
    }
    let mut b = MockServer::builder().latency(Duration::from_millis(o.latency_ms));
    b = if o.clean {
        b.no_rate_limits()
    } else {
        b.request_limit(RateLimit::bucket(20, 20.0))
    };
    let server = b.start().await;
    let url = server.endpoint(Route::ChatCompletions);
    if o.store.starts_with("redis://") {
        let s = RedisStore::connect(&o.store, RedisStoreConfig::default()).await?;
        if !o.clean {
            s.learn(&key_for(&url)?, LIMITS).await?;
        }
    }
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut kids = Vec::new();
    for i in 0..o.processes {
        let share = o.calls / o.processes + usize::from(i < o.calls % o.processes);
        kids.push(
            tokio::process::Command::new(&exe)
                .args([
                    "--child",
                    &url,
                    "--store",
                    &o.store,
                    "--calls",
                    &share.to_string(),
                ])
                .args(["--concurrency", &o.concurrency.to_string()])
                .args(if o.clean { &["--clean"][..] } else { &[][..] })
                .stdout(Stdio::piped())
                .spawn()?,
        );
    }
    let mut failed = 0usize;
    for k in kids {
        let out = k.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        failed += text
            .trim()
            .strip_prefix("failed ")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("child said {text:?} ({})", out.status))?;
    }
    let wall = start.elapsed().as_secs_f64();
    let counts = server.counts();
    let min = if o.clean {
        0.0
    } else {
        (o.calls as f64 - 20.0) / 20.0
    };
    println!(
        "store={} processes={} calls={} failed={failed} sent={} ({:.3}x calls) 429s={} wall={wall:.2}s min={min:.2}s ({})",
        o.store,
        o.processes,
        o.calls,
        counts.total,
        counts.total as f64 / o.calls as f64,
        counts.rate_limited,
        if min > 0.0 { format!("{:.3}x min", wall / min) } else { "clean".into() },
    );
    Ok(())
}
