//! # `loadtest`: the default stack against a rate-limited mock, with and without pacing
//!
//! Starts the embedded mock OpenAI server with a request limit, then sends `--calls` chat
//! calls (300) at `--concurrency` (50) through auth → retry → pace → classify → a hyper-util
//! client, and prints, once a second, the calls done, the pacer's queue length and the 429s,
//! then a summary against the targets: no failed call, wall time within 5 % of the
//! theoretical minimum, at most 15 % more requests sent than calls.
//!
//! - `--limit small` (default): a bucket of 20 refilled 20/s, whose headers tell the truth;
//! - `--limit quantized`: headers report 1,200/min while 20/s is enforced (as OpenAI may
//!   enforce a per-minute limit per second);
//! - `--no-pace`: the same stack without the pace layer (retry alone), as the baseline.
//!
//! Run it with `cargo run -p examples --bin loadtest -- [--calls N] [--concurrency N]
//! [--limit small|quantized] [--no-pace]`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_resilience::mock::{MockServer, RateLimit, Route};
use oai_resilience::pace::{PaceLayer, PaceMetrics};
use oai_resilience::{AuthLayer, BoxError, ClassifyLayer, RetryLayer};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

/// A test key: never put a real key in source.
const KEY: &str = "sk-proj-LOADloadLOADloadLOADload0000";
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}"#;

/// The limiter the mock enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A bucket of 20 refilled 20/s, reported truthfully.
    Small,
    /// Headers report 1,200/min; a bucket of 20 refilled 20/s is enforced.
    Quantized,
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) calls: usize,
    pub(crate) concurrency: usize,
    pub(crate) limit: Limit,
    pub(crate) pace: bool,
    pub(crate) latency: Duration,
    pub(crate) progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            calls: 300,
            concurrency: 50,
            limit: Limit::Small,
            pace: true,
            latency: Duration::from_millis(20),
            progress: true,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) calls: usize,
    pub(crate) failed: usize,
    pub(crate) sent: u64,
    pub(crate) rate_limited: u64,
    pub(crate) wall: Duration,
    pub(crate) minimum: Duration,
    pub(crate) pace: Option<PaceMetrics>,
}

impl Report {
    pub(crate) fn wall_ratio(&self) -> f64 {
        self.wall.as_secs_f64() / self.minimum.as_secs_f64()
    }

    pub(crate) fn sent_ratio(&self) -> f64 {
        self.sent as f64 / self.calls as f64
    }

    pub(crate) fn meets_targets(&self) -> bool {
        self.failed == 0 && self.wall_ratio() <= 1.05 && self.sent_ratio() <= 1.15
    }
}

type Svc = BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    oai_resilience::Error,
>;

/// Runs the load and returns the report.
///
/// # Errors
///
/// If the mock cannot start or a request cannot be built.
pub(crate) async fn run(opts: &Options) -> Result<Report, BoxError> {
    let limit = match opts.limit {
        Limit::Small => RateLimit::bucket(20, 20.0),
        Limit::Quantized => RateLimit::quantized(1200, Duration::from_secs(1)),
    };
    let (capacity, refill) = (limit.capacity() as f64, limit.refill_per_sec());
    let server = Arc::new(
        MockServer::builder()
            .request_limit(limit)
            .latency(opts.latency)
            .start()
            .await,
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let pace = PaceLayer::new();
    let svc: Svc = if opts.pace {
        BoxCloneService::new(
            ServiceBuilder::new()
                .layer(AuthLayer::from_key(KEY))
                .layer(RetryLayer::new())
                .layer(pace.clone())
                .layer(ClassifyLayer::new())
                .service(client),
        )
    } else {
        BoxCloneService::new(
            ServiceBuilder::new()
                .layer(AuthLayer::from_key(KEY))
                .layer(RetryLayer::new())
                .layer(ClassifyLayer::new())
                .service(client),
        )
    };
    let url = server.endpoint(Route::ChatCompletions);
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(opts.calls);
    for _ in 0..opts.calls {
        let (svc, gate, done) = (svc.clone(), gate.clone(), done.clone());
        let req = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(CHAT.as_bytes())))?;
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.ok()?;
            let res = svc.oneshot(req).await;
            done.fetch_add(1, Ordering::Relaxed);
            res.err()
        }));
    }
    let ticker = opts.progress.then(|| {
        let (done, pacer, server) = (done.clone(), pace.pacer().clone(), server.clone());
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                let m = pacer.metrics();
                println!(
                    "{:>5.1} s  done {:>4}  queued {:>3}  429s {:>3}  local waits {:>4}",
                    start.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    m.queue_len,
                    server.counts().rate_limited,
                    m.waits
                );
            }
        })
    });
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        if let Some(err) = t.await? {
            failed += 1;
            first_error.get_or_insert(err);
        }
    }
    let wall = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(err) = first_error {
        println!("first failure: {err}");
    }
    let counts = server.counts();
    Ok(Report {
        calls: opts.calls,
        failed,
        sent: counts.total,
        rate_limited: counts.rate_limited,
        wall,
        minimum: Duration::from_secs_f64(
            ((opts.calls as f64 - capacity).max(0.0) / refill).max(1e-3),
        ),
        pace: opts.pace.then(|| pace.pacer().metrics()),
    })
}

/// The summary, one fact a line.
pub(crate) fn summary(r: &Report) -> String {
    let mut out = format!(
        "calls {}  failed {}\nrequests sent {} ({:.3}x calls; target <= 1.15x)\n429s {}\n\
         wall {:.3} s ({:.3}x the minimum of {:.3} s; target <= 1.05x)\n",
        r.calls,
        r.failed,
        r.sent,
        r.sent_ratio(),
        r.rate_limited,
        r.wall.as_secs_f64(),
        r.wall_ratio(),
        r.minimum.as_secs_f64()
    );
    if let Some(m) = &r.pace {
        out.push_str(&format!(
            "local waits {}  total wait {:.1} s  paced errors {}\n",
            m.waits,
            m.wait_time.as_secs_f64(),
            m.paced_errors
        ));
    }
    out.push_str(if r.meets_targets() {
        "targets: met"
    } else {
        "targets: NOT met"
    });
    out
}

fn parse_args() -> Result<Options, BoxError> {
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calls" => opts.calls = args.next().ok_or("--calls needs a number")?.parse()?,
            "--concurrency" => {
                opts.concurrency = args.next().ok_or("--concurrency needs a number")?.parse()?
            }
            "--limit" => {
                opts.limit = match args.next().as_deref() {
                    Some("small") => Limit::Small,
                    Some("quantized") => Limit::Quantized,
                    _ => return Err("--limit takes small or quantized".into()),
                }
            }
            "--no-pace" => opts.pace = false,
            other => {
                return Err(format!(
                    "unknown argument {other}; expected --calls, --concurrency, --limit, --no-pace"
                )
                .into())
            }
        }
    }
    Ok(opts)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let opts = parse_args()?;
    println!(
        "{} calls at concurrency {} against the {:?} limit, {}",
        opts.calls,
        opts.concurrency,
        opts.limit,
        if opts.pace {
            "paced"
        } else {
            "not paced (baseline)"
        }
    );
    let report = run(&opts).await?;
    println!("{}", summary(&report));
    Ok(())
}
