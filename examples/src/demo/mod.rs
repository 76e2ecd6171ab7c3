//! The demo: a few hundred calls through the stack and through `#[openai_call]` functions,
//! against the embedded mock OpenAI server with a realistic mix of faults.
//!
//! [`run`] starts two mock servers on loopback (no key, no network):
//!
//! - the main project, with a rate limit that a burst exceeds (the headers report a
//!   per-minute limit, the server enforces it per second, as OpenAI warns it may), a seeded
//!   share of 5xx answers, some latency, and a key check;
//! - a second project whose quota is exhausted.
//!
//! The workload ([`plan`]) sends most calls through the tower stack
//! (`Validate -> Auth -> Retry -> Pace -> Classify -> hyper-util`) and every fourth through an
//! `#[openai_call]` function over `Pace -> Classify` (the attribute retries; there is one
//! retry loop per call, not two). Three calls cannot succeed: one without its `messages`
//! parameter, one whose key was pasted with quotes, one on the exhausted quota. Everything
//! else succeeds, some after retries and pacing waits.
//!
//! [`run`] returns a [`Summary`]: every number the binary prints is computed from it, and the
//! tests check that the numbers add up.

mod report;
mod workload;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oai_resilience::mock::{MockCounts, MockServer, RateLimit};
use oai_resilience::pace::{is_paced_locally, PaceMetrics};
use oai_resilience::{AuthLayer, BoxError, Error, RetryConfig};

pub use report::render;
pub use workload::{plan, CallKind, Via};

use crate::stack::{http_client, Layers};

/// The key of the demo's mock projects: a made-up key of OpenAI's shape. Never put a real
/// key in source.
pub const DEMO_KEY: &str = oai_resilience::mock::TEST_KEY;

/// What the demo runs. See [`DemoConfig::default`].
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Calls in the workload (at least 4, so that each failing call has its place).
    pub calls: usize,
    /// Calls in flight at once: the burst.
    pub concurrency: usize,
    /// Requests per second the main mock enforces (it reports 60× that per minute).
    pub rate_per_sec: u64,
    /// Share of requests that get a random 500/502/503/504.
    pub flaky: f64,
    /// The mock's latency per answer.
    pub latency: Duration,
    /// Seed of the mock's faults and of the retry jitter.
    pub seed: u64,
    /// Draw the live progress bar (on stderr, only if it is a terminal).
    pub progress: bool,
}

impl Default for DemoConfig {
    /// 300 calls, 64 in flight, 50 requests/s enforced (3,000 RPM reported), 4 % flaky 5xx,
    /// 20 ms latency, seed 7, with a progress bar.
    fn default() -> Self {
        DemoConfig {
            calls: 300,
            concurrency: 64,
            rate_per_sec: 50,
            flaky: 0.04,
            latency: Duration::from_millis(20),
            seed: 7,
            progress: true,
        }
    }
}

/// One call that could not succeed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The call's index in the workload.
    pub call: usize,
    /// What the call was.
    pub kind: CallKind,
    /// The error, whose `Display` is the one-line report with the hint.
    pub error: Error,
}

/// The outcome of one call.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The call's index in the workload.
    pub call: usize,
    /// What the call was.
    pub kind: CallKind,
    /// Requests that left the process for this call (0: refused locally).
    pub attempts: u32,
    /// `Ok(())` or the error.
    pub result: Result<(), Error>,
}

/// Everything the demo measured. Every number of the printed summary comes from here.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The configuration that ran.
    pub config: DemoConfig,
    /// Every call, in workload order.
    pub outcomes: Vec<CallOutcome>,
    /// The pacer's counters at the end.
    pub pacing: PaceMetrics,
    /// The longest pacing queue seen while the workload ran.
    pub max_queue: usize,
    /// Where the calls went: the embedded mock, or the real API's base URL.
    pub target: String,
    /// What the main project's mock server received and answered (`None` for the real API).
    pub server: Option<MockCounts>,
    /// What the exhausted project's mock server received and answered (`None` for the real
    /// API).
    pub billing_server: Option<MockCounts>,
    /// Wall-clock time of the workload.
    pub elapsed: Duration,
}

impl Summary {
    /// Calls that succeeded.
    pub fn succeeded(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_ok()).count()
    }

    /// Calls that succeeded after at least one retry.
    pub fn succeeded_after_retries(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result.is_ok() && o.attempts > 1)
            .count()
    }

    /// The calls that could not succeed, in workload order.
    pub fn failures(&self) -> Vec<Failure> {
        self.outcomes
            .iter()
            .filter_map(|o| {
                o.result.as_ref().err().map(|e| Failure {
                    call: o.call,
                    kind: o.kind,
                    error: e.clone(),
                })
            })
            .collect()
    }

    /// Calls through `via`.
    pub fn calls_via(&self, via: Via) -> usize {
        self.outcomes.iter().filter(|o| o.kind.via() == via).count()
    }

    /// Requests that left the process (every attempt of every call).
    pub fn attempts(&self) -> u64 {
        self.outcomes.iter().map(|o| u64::from(o.attempts)).sum()
    }

    /// Retries: attempts after the first, over all calls.
    pub fn retries(&self) -> u64 {
        self.outcomes
            .iter()
            .map(|o| u64::from(o.attempts.saturating_sub(1)))
            .sum()
    }

    /// Calls refused before anything was sent (bad parameter, bad key, no pacing slot).
    pub fn rejected_locally(&self) -> usize {
        self.outcomes.iter().filter(|o| o.attempts == 0).count()
    }

    /// Requests that reached the two mock servers (`None` for the real API).
    pub fn server_requests(&self) -> Option<u64> {
        Some(self.server.as_ref()?.total + self.billing_server.as_ref()?.total)
    }
}

/// Live counters for the progress bar.
#[derive(Debug, Default)]
struct Live {
    done: AtomicUsize,
    failed: AtomicUsize,
    retries: AtomicU64,
    rejected: AtomicUsize,
    max_queue: AtomicUsize,
}

/// Runs the demo's workload against the embedded mock servers and returns the summary.
///
/// # Errors
///
/// If a mock server cannot start.
pub async fn run(config: DemoConfig) -> Result<Summary, BoxError> {
    if config.calls < 4 {
        return Err(format!("the demo needs at least 4 calls, got {}", config.calls).into());
    }
    let server = MockServer::builder()
        .api_key(DEMO_KEY)
        .organization("org-demo")
        .request_limit(RateLimit::quantized(
            config.rate_per_sec * 60,
            Duration::from_secs(1),
        ))
        .random_server_errors(config.flaky, config.seed)
        .latency(config.latency)
        .seed(config.seed)
        .try_start()
        .await?;
    let billing = MockServer::builder()
        .api_key(DEMO_KEY)
        .organization("org-demo-b")
        .quota_exhausted(true)
        .latency(config.latency)
        .seed(config.seed + 1)
        .try_start()
        .await?;
    let retry = RetryConfig::new()
        .seed(config.seed)
        // The default retry budget. The cold burst of 64 meets 9 to 36 rate-limit 429s (five
        // runs), which the budget leaves to the pacer, and a few random 5xx, which cost a
        // few of its 20 tokens: retries would stop only if a third of the attempts failed.
        .deadline(Duration::from_secs(60));
    let layers = Layers::new(AuthLayer::from_key(DEMO_KEY)).retry(retry);
    let clients = workload::Clients::new(
        &layers,
        layers.build(http_client()),
        layers.build_single_attempt(http_client()),
        &server.url(),
        &billing.url(),
        DEMO_KEY,
    );
    let kinds: Vec<CallKind> = (0..config.calls).map(|i| plan(i, config.calls)).collect();
    let (outcomes, elapsed, max_queue) = drive(&clients, &kinds, &config).await;
    Ok(Summary {
        target: "the embedded mock OpenAI server".to_owned(),
        config,
        outcomes,
        pacing: layers.pace.pacer().metrics(),
        max_queue,
        server: Some(server.counts()),
        billing_server: Some(billing.counts()),
        elapsed,
    })
}

/// The real API's workload: five cheap chat completions (`gpt-4o-mini`, at most 5 completion
/// tokens each) through the stack and the `#[openai_call]` function, then the two local
/// faults, which send nothing.
pub fn plan_real() -> Vec<CallKind> {
    vec![
        CallKind::Chat,
        CallKind::MacroChat,
        CallKind::Chat,
        CallKind::MacroChat,
        CallKind::Chat,
        CallKind::MissingParameter,
        CallKind::QuotedKey,
    ]
}

/// Runs [`plan_real`] against the real API at `base_url` (`https://api.openai.com`) with
/// `api_key`. Needs the `real` feature (TLS).
///
/// # Errors
///
/// None so far: every failure of a call is in the summary.
#[cfg(feature = "real")]
pub async fn run_real(
    base_url: &str,
    api_key: &str,
    mut config: DemoConfig,
) -> Result<Summary, BoxError> {
    use oai_resilience::auth::EnvSource;
    let key = api_key.to_owned();
    let env = EnvSource::with_lookup(move |name| (name == "OPENAI_API_KEY").then(|| key.clone()));
    let layers = Layers::new(AuthLayer::new(env)).retry(
        RetryConfig::new()
            .seed(config.seed)
            .max_attempts(3)
            .deadline(Duration::from_secs(60)),
    );
    let clients = workload::Clients::new(
        &layers,
        layers.build(crate::stack::https_client()),
        layers.build_single_attempt(crate::stack::https_client()),
        base_url,
        base_url,
        api_key,
    );
    let kinds = plan_real();
    config.calls = kinds.len();
    config.concurrency = config.concurrency.min(2);
    let (outcomes, elapsed, max_queue) = drive(&clients, &kinds, &config).await;
    Ok(Summary {
        target: format!("{} (the real API)", base_url.trim_end_matches('/')),
        config,
        outcomes,
        pacing: layers.pace.pacer().metrics(),
        max_queue,
        server: None,
        billing_server: None,
        elapsed,
    })
}

/// Runs `kinds` through `clients`, `config.concurrency` at a time, with the progress bar.
async fn drive(
    clients: &workload::Clients,
    kinds: &[CallKind],
    config: &DemoConfig,
) -> (Vec<CallOutcome>, Duration, usize) {
    let bar = progress_bar(config, kinds.len());
    let live = Arc::new(Live::default());
    let started = tokio::time::Instant::now();
    let ticker = tokio::spawn(tick(
        bar.clone(),
        live.clone(),
        clients.pace.pacer().clone(),
    ));
    // The calls run as one stream, `concurrency` at a time, on this task (the connections
    // run on their own tasks). Not spawned: an `#[openai_call]` future is not `Send` yet.
    let calls = futures_util::stream::iter(kinds.iter().copied().enumerate()).map(|(i, kind)| {
        let live = &live;
        let bar = &bar;
        async move {
            let attempts = Arc::new(AtomicU32::new(0));
            let result = clients.call(i, kind, attempts.clone()).await;
            let attempts = attempts.load(Ordering::SeqCst);
            live.retries
                .fetch_add(u64::from(attempts.saturating_sub(1)), Ordering::Relaxed);
            if attempts == 0 {
                live.rejected.fetch_add(1, Ordering::Relaxed);
            }
            if result.is_err() {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
            live.done.fetch_add(1, Ordering::Relaxed);
            bar.inc(1);
            CallOutcome {
                call: i,
                kind,
                attempts,
                result,
            }
        }
    });
    let mut outcomes: Vec<CallOutcome> = calls
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    ticker.abort();
    let _ = ticker.await;
    bar.finish_and_clear();
    outcomes.sort_by_key(|o| o.call);
    (outcomes, elapsed, live.max_queue.load(Ordering::Relaxed))
}

fn progress_bar(config: &DemoConfig, calls: usize) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(calls as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner:.green} {elapsed:>3} [{bar:24.cyan/blue}] {pos:>3}/{len} calls  {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Refreshes the bar's message every 50 ms and records the longest pacing queue, until
/// aborted.
async fn tick(bar: ProgressBar, live: Arc<Live>, pacer: oai_resilience::Pacer) {
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    loop {
        interval.tick().await;
        let m = pacer.metrics();
        live.max_queue.fetch_max(m.queue_len, Ordering::Relaxed);
        bar.set_message(format!(
            "failed {} · retries {} · rejected locally {} · pacing waits {} (queue {:>2})",
            live.failed.load(Ordering::Relaxed),
            live.retries.load(Ordering::Relaxed),
            live.rejected.load(Ordering::Relaxed),
            m.waits,
            m.queue_len,
        ));
        bar.tick();
    }
}

/// Whether `err` was raised without sending anything.
pub fn is_local(err: &Error) -> bool {
    err.kind().is_local() || is_paced_locally(err)
}
