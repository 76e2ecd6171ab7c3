//! `--scenario tpm`: a tokens-per-minute limit that the calls' token estimates overstate
//! (#22).
//!
//! The mock enforces a bucket of `--tpm` (40,000) tokens refilled over a minute and a limit of
//! `--rpm` (1,000) requests per minute, and reports both in the `x-ratelimit-*` headers. It
//! charges
//! each call the tokens it really used
//! ([`MockBuilder::true_usage`](oai_resilience::mock::MockBuilder::true_usage)): a prompt of
//! 60 % of its character estimate (a tokenizer that packs more than four characters into a
//! token) and a completion of 30 % of `max_tokens` (answers that stop before their budget),
//! and reports those counts in `usage`. N = 150 calls at concurrency 40, answered after 2 s
//! (a model's latency: the calls in flight are what an estimate gets wrong),
//! with prompts of 200, 800, 2,000 or 4,000 characters and `max_tokens` of 32, 128, 256 or
//! 512 drawn from a fixed seed; every fourth call streams. Three clients run the same calls,
//! each against a fresh mock:
//!
//! - `stack`: [`OpenAiLayer`] over a [`UsageLayer`] with `include_usage(true)` next to
//!   hyper-util: the pacer replaces each call's estimate with the usage the answer reports
//!   and learns the per-model ratios of true to estimated tokens;
//! - `stack-estimates`: the same stack without the usage layer: the pacer paces on its
//!   estimates, corrected by the `x-ratelimit-remaining-tokens` headers only;
//! - `baseline (requests only)`: hyper-util paced by request count alone, at the mock's
//!   request limit (`--rpm`, one call every 60 ms), with 3 tries 100 ms apart on a 429 or
//!   5xx.
//!
//! The minimum wall time of a row is the latency plus the time the bucket takes to refill
//! what the mock counted beyond its capacity: `latency + max(0, T − tpm) / (tpm / 60 s)`,
//! with T the true tokens of the calls the mock admitted. Goal for `stack`: 0 failed calls,
//! wall ≤ 1.10× its minimum.
//!
//! With `--json`, one object per client row: `client`, `calls`, `ok`, `failed`,
//! `requests_sent`, `rate_limited` (the mock's 429s), `tokens_counted` (T), `tokens_estimated`
//! (the pacer's raw estimates of the same calls), `minimum_s`, `wall_s`, `wall_over_minimum`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use oai_resilience::mock::{MockServer, RateLimit, Route, TrueUsage};
use oai_resilience::pace::CostEstimator;
use oai_resilience::stack::{ClientBody, OpenAiLayer};
use oai_resilience::usage::UsageLayer;
use oai_resilience::{AuthLayer, BoxError, Error};
use test_support::http_client;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

/// The options of the scenario.
#[derive(Debug, Clone)]
struct Options {
    /// `--n`, `--concurrency`, `--latency-ms`, `--json`.
    base: super::AloneOptions,
    tpm: u64,
    rpm: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            base: super::AloneOptions {
                calls: 150,
                concurrency: 40,
                latency: Duration::from_secs(2),
                json: false,
            },
            tpm: 40_000,
            rpm: 1_000,
        }
    }
}

/// The shares of the estimate that the mock counts: prompt, completion.
const TRUE_USAGE: (f64, f64) = (0.6, 0.3);

const MODEL: &str = "gpt-4o-mini";

/// The usage lines of this scenario's own options.
const USAGE: &str = "\
Usage: loadtest --scenario tpm [--n N] [--concurrency C] [--tpm TOKENS] [--rpm REQUESTS]
                [--latency-ms MS] [--json]

  --tpm TOKENS     the mock's tokens-per-minute limit (default 40000)
  --rpm REQUESTS   the mock's requests-per-minute limit, the baseline's pace (default 1000)
  --latency-ms MS  the mock's answer time (default 2000)
";

/// Whether the command line asks for this scenario (`--scenario tpm`).
pub(crate) fn requested(raw: &[String]) -> bool {
    super::scenario_asked(raw, "tpm")
}

fn parse(raw: &[String]) -> Result<Options, String> {
    let mut o = super::parse_alone(
        raw,
        Options::default(),
        |o| &mut o.base,
        |o, arg, it| {
            match arg {
                "--tpm" => o.tpm = super::option_number(it, "--tpm")?.max(60),
                "--rpm" => o.rpm = super::option_number(it, "--rpm")?.max(1),
                other => return Err(format!("--scenario tpm does not take {other}\n{USAGE}")),
            }
            Ok(())
        },
    )?;
    // At least one call.
    o.base.calls = o.base.calls.max(1);
    Ok(o)
}

/// A SplitMix64 step: the calls' sizes from a fixed seed.
fn mix(i: u64) -> u64 {
    let mut z = i
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The body of call `i`: a prompt of 200 to 4,000 characters, `max_tokens` 32 to 512, every
/// fourth call streamed.
fn body(i: usize) -> String {
    let h = mix(i as u64 + 7);
    let chars = [200, 800, 2_000, 4_000][(h % 4) as usize];
    let max_tokens = [32, 128, 256, 512][((h >> 8) % 4) as usize];
    let stream = i % 4 == 3;
    // Words of five letters and a space: text a tokenizer would pack tighter than 4
    // characters per token.
    let text: String = "lorem ".repeat(chars / 6);
    format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{text}"}}],"max_tokens":{max_tokens},"stream":{stream}}}"#
    )
}

/// One client's row.
#[derive(Debug)]
struct Row {
    client: &'static str,
    calls: usize,
    failed: usize,
    requests: u64,
    rate_limited: u64,
    tokens_counted: u64,
    tokens_estimated: u64,
    minimum: Duration,
    wall: Duration,
}

impl Row {
    fn over(&self) -> f64 {
        self.wall.as_secs_f64() / self.minimum.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "tpm",
            "client": self.client,
            "calls": self.calls,
            "ok": self.calls - self.failed,
            "failed": self.failed,
            "requests_sent": self.requests,
            "rate_limited": self.rate_limited,
            "tokens_counted": self.tokens_counted,
            "tokens_estimated": self.tokens_estimated,
            "minimum_s": self.minimum.as_secs_f64(),
            "wall_s": self.wall.as_secs_f64(),
            "wall_over_minimum": self.over(),
        })
    }

    fn line(&self) -> String {
        format!(
            "{:<26} {:>5} {:>6} {:>8} {:>5} {:>9} {:>9} {:>8.2} {:>8.2} {:>7.3}x",
            self.client,
            self.calls,
            self.failed,
            self.requests,
            self.rate_limited,
            self.tokens_counted,
            self.tokens_estimated,
            self.minimum.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.over()
        )
    }
}

const HEADER: &str = "client                     calls failed requests  429s    tokens estimated  min (s) wall (s) wall/min";

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Error>;
type Svc = BoxCloneService<http::Request<Full<Bytes>>, http::Response<Body>, Error>;

fn into_error(e: impl Into<BoxError>) -> Error {
    let e: BoxError = e.into();
    match e.downcast::<Error>() {
        Ok(e) => *e,
        Err(e) => Error::new(oai_resilience::ErrorKind::Connection).with_detail(e.to_string()),
    }
}

/// The stack over hyper-util, with the usage layer next to the client when `usage` is set.
fn stack(usage: bool) -> Svc {
    let client = http_client::<ClientBody>();
    let layer = OpenAiLayer::new().auth(AuthLayer::from_key(super::TEST_KEY));
    if usage {
        let svc = layer.layer(UsageLayer::new().include_usage(true).layer(client));
        BoxCloneService::new(svc.map_response(|r| r.map(|b| b.map_err(into_error).boxed_unsync())))
    } else {
        let svc = layer.layer(client);
        BoxCloneService::new(svc.map_response(|r| r.map(|b| b.map_err(into_error).boxed_unsync())))
    }
}

/// hyper-util with 3 tries 100 ms apart on a 429 or 5xx, each call started no earlier than
/// its slot in a fixed schedule of `interval` per call: pacing by request count alone.
fn baseline() -> Svc {
    let client = http_client::<Full<Bytes>>();
    BoxCloneService::new(tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(into_error)?.to_bytes();
            let mut last = None;
            for attempt in 0..3 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut req = http::Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone());
                for (k, v) in &parts.headers {
                    req = req.header(k, v);
                }
                let req = req
                    .header("authorization", format!("Bearer {}", super::TEST_KEY))
                    .body(Full::new(bytes.clone()))
                    .map_err(into_error)?;
                let resp = client.request(req).await.map_err(into_error)?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(resp.map(|b| b.map_err(into_error).boxed_unsync()));
                }
                let retryable = status.as_u16() == 429 || status.is_server_error();
                let _ = resp.into_body().collect().await;
                last = Some(status);
                if !retryable {
                    break;
                }
            }
            Err(Error::new(oai_resilience::ErrorKind::RateLimited)
                .with_detail(format!("baseline gave up after {last:?}")))
        }
    }))
}

async fn start_mock(o: &Options) -> MockServer {
    MockServer::builder()
        .api_key(super::TEST_KEY)
        .latency(o.base.latency)
        .no_rate_limits()
        .request_limit(RateLimit::per_minute(o.rpm))
        .token_limit(RateLimit::per_minute(o.tpm))
        .true_usage(TrueUsage::new(TRUE_USAGE.0, TRUE_USAGE.1))
        .seed(22)
        .start()
        .await
}

/// Runs the calls through `svc` against a fresh mock; `interval` spaces the call starts.
async fn run_row(
    o: &Options,
    client: &'static str,
    svc: Svc,
    interval: Option<Duration>,
) -> Result<Row, BoxError> {
    let mock = start_mock(o).await;
    let url = mock.endpoint(Route::ChatCompletions);
    let bodies: Vec<String> = (0..o.base.calls).map(body).collect();
    let usage = TrueUsage::new(TRUE_USAGE.0, TRUE_USAGE.1);
    let estimator = CostEstimator::default();
    let tokens_estimated = bodies
        .iter()
        .map(|b| estimator.estimate(Some(b.as_bytes())).tokens)
        .sum();
    let counted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(o.base.concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(o.base.calls);
    for (i, b) in bodies.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        if let Some(every) = interval {
            tokio::time::sleep_until(start + every.mul_f64(i as f64)).await;
        }
        let (svc, url, counted, failed) =
            (svc.clone(), url.clone(), counted.clone(), failed.clone());
        let tokens = usage.counts(b.as_bytes()).map_or(0, |(p, c)| p + c);
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(b)))
                .expect("a valid request");
            let ok = match svc.oneshot(req).await {
                Ok(resp) => resp.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                counted.fetch_add(tokens, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let wall = start.elapsed();
    let counts = mock.counts();
    let tokens_counted = counted.load(Ordering::Relaxed);
    Ok(Row {
        client,
        calls: o.base.calls,
        failed: failed.load(Ordering::Relaxed) as usize,
        requests: counts.total,
        rate_limited: counts.rate_limited,
        tokens_counted,
        tokens_estimated,
        minimum: minimum(o, tokens_counted),
        wall,
    })
}

/// The latency plus the refill of what the mock counted beyond its capacity.
fn minimum(o: &Options, tokens: u64) -> Duration {
    let beyond = tokens.saturating_sub(o.tpm) as f64;
    o.base.latency + Duration::from_secs_f64(beyond / (o.tpm as f64 / 60.0))
}

/// Runs the scenario: `stack`, `stack-estimates`, and the request-count-only baseline.
pub(crate) async fn main(raw: &[String]) -> Result<(), BoxError> {
    let o = super::or_exit(parse(raw));
    let say = |s: &str| super::print_line(o.base.json, s);
    say(&format!(
        "tpm: {} calls at {}, {} tokens and {} requests per minute, latency {} ms; the mock \
         counts {:.0} % of the prompt estimate and {:.0} % of max_tokens",
        o.base.calls,
        o.base.concurrency,
        o.tpm,
        o.rpm,
        o.base.latency.as_millis(),
        TRUE_USAGE.0 * 100.0,
        TRUE_USAGE.1 * 100.0
    ));
    say(HEADER);
    let mut rows = Vec::new();
    for (name, svc) in [("stack", stack(true)), ("stack-estimates", stack(false))] {
        let row = run_row(&o, name, svc, None).await?;
        say(&row.line());
        rows.push(row);
    }
    // Paced by request count alone: at the request limit.
    let rate_interval = Duration::from_secs(60).div_f64(o.rpm as f64);
    let row = run_row(
        &o,
        "baseline (requests only)",
        baseline(),
        Some(rate_interval),
    )
    .await?;
    say(&row.line());
    rows.push(row);
    let s = &rows[0];
    let met = s.failed == 0 && s.over() <= 1.10;
    say(&format!(
        "tpm: target {} (stack: {} failed, wall {:.3}x minimum; goal 0 failed, <= 1.10x); \
         stack-estimates {} failed, {:.3}x; baseline {} failed, {:.3}x",
        if met { "met" } else { "MISSED" },
        s.failed,
        s.over(),
        rows[1].failed,
        rows[1].over(),
        rows[2].failed,
        rows[2].over()
    ));
    if o.base.json {
        for r in &rows {
            println!("{}", r.json());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_vary_and_the_mock_counts_less_than_the_estimate() {
        let bodies: Vec<String> = (0..40).map(body).collect();
        let sizes: std::collections::BTreeSet<usize> = bodies.iter().map(String::len).collect();
        assert!(sizes.len() >= 8, "{sizes:?}");
        let usage = TrueUsage::new(TRUE_USAGE.0, TRUE_USAGE.1);
        for b in &bodies {
            let (p, c) = usage.counts(b.as_bytes()).unwrap();
            let est = CostEstimator::default().estimate(Some(b.as_bytes())).tokens;
            assert!(p + c < est, "{p} + {c} vs {est}");
        }
    }

    #[test]
    fn options_parse_and_refuse_unknown_flags() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let o = parse(&args("--scenario tpm --n 10 --tpm 1000 --json")).unwrap();
        assert_eq!((o.base.calls, o.tpm, o.base.json), (10, 1000, true));
        assert!(parse(&args("--scenario tpm --client reqwest")).is_err());
        assert!(parse(&args("--scenario tpm --n")).is_err());
        assert!(requested(&args("--scenario tpm")));
        assert!(!requested(&args("--scenario burst")));
    }

    #[test]
    fn the_minimum_is_the_refill_beyond_the_capacity() {
        let o = Options::default();
        assert_eq!(minimum(&o, 10), o.base.latency);
        // 2,000 tokens beyond the bucket refill in 3 s at 40,000 per minute.
        let beyond = minimum(&o, 42_000) - o.base.latency;
        assert!((beyond.as_secs_f64() - 3.0).abs() < 1e-9, "{beyond:?}");
    }
}
