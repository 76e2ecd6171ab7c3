//! # `loadtest`: load scenarios through the full stack, with a baseline client in the same run
//!
//! Drives N chat calls at concurrency C over real HTTP through
//! [`OpenAiLayer`] (base URL → validate → auth → retry → pace → classify →
//! hyper-util), and
//! through a baseline client (a plain `tower::retry` policy, 3 tries with a fixed 100 ms delay,
//! over classify + hyper-util), against the embedded mock server, or against any
//! OpenAI-compatible server given with `--base-url URL`.
//!
//! Scenarios (`--scenario NAME`, several as `NAME,NAME`; `all` for the first five):
//!
//! | name | mock | latency | N | C | minimum wall time (`wall / min`) |
//! |------|------|---------|---|---|----------------------------------|
//! | `burst` | bucket of 20 refilled 20/s | 20 ms | 300 | 50 | (N − 20) / 20 s + latency (14.02 s) |
//! | `flaky` | 20 % random 5xx, no limit | 20 ms | 300 | 20 | - |
//! | `quota` | every call a quota 429 | 20 ms | 20 | 20 | - |
//! | `outage` | 100 % 5xx for 10 s, then healthy; 20 calls/s for 15 s | 20 ms | 300 | 50 | - |
//! | `clean` | none; the baseline is a bare hyper-util client | 0 | 2000 | 50 | - |
//! | `latency` | 1,000,000 requests and 10^9 tokens per minute, with headers | 2 s | 200 | 50 | ⌈N/C⌉ × latency (8 s) |
//! | `stream-long` | as `latency`; `"stream": true` calls whose event streams last 10 s | 0 + 10 s stream | 100 | 50 | ⌈N/C⌉ × (latency + stream) (20 s) |
//! | `priority` | bucket of 20 refilled 20/s; a batch lane of N calls at C and an interactive call every 200 ms (`priority.rs`) | 20 ms | 1000 | 100 | - |
//!
//! The minimum is a lower bound that no client can beat: for `burst` the last call cannot be
//! admitted before the bucket has refilled N − 20 requests, and its answer takes the latency;
//! every scenario with a minimum is also bound by ⌈N/C⌉ rounds of the answer time (the larger
//! bound wins). Each scenario prints a target line (`target met` / `target MISSED`) for the
//! stack, with the baseline's figure beside it where it has one:
//!
//! - `burst`: 0 failed, wall ≤ 1.05× minimum, ≤ 1.15 requests per call;
//! - `latency`: 0 failed, wall ≤ 1.05× minimum, p99 ≤ 1.10× latency, requests = calls;
//! - `stream-long`: 0 failed, wall ≤ 1.05× minimum;
//! - `flaky`, `quota`, `outage`, `clean`: see [`Report::target`].
//!
//! `all` leaves out `latency` and `stream-long` (at their default latencies they add about a
//! minute, twice that before the pacer admits a cold burst at once); run them by name, e.g.
//! `--scenario latency,stream-long`, or `--scenario burst --latency-ms 2000`.
//!
//! Options:
//!
//! - `--n N`, `--concurrency C`: override the scenario's defaults;
//! - `--latency-ms MS`: the mock's answer time for every scenario run (the time before the
//!   headers; for `stream-long` the stream's duration comes on top);
//! - `--stream-ms MS`: how long each `stream-long` event stream lasts (default 10,000);
//! - `--base-url URL`: another server (`http://host:port` or `http://host:port/v1`, as
//!   OpenAI's SDKs take it; the loadtest appends `/v1/...` itself), its own faults, no minimum;
//! - `--api-key KEY` (else `OPENAI_API_KEY`, else a test key), `--baseline` (with
//!   `--base-url`: run the baseline too; with the mock it always runs);
//! - `--json`: one JSON object per scenario on stdout (the table goes to stderr); every client
//!   row has `failed`, `wall_s`, `minimum_s`, `wall_over_minimum`, `requests_sent`, `p99_ms`;
//! - `--svg PATH`: write the burst plot there (nothing is written without it);
//! - `--client hyper|reqwest|async-openai`: the HTTP client the calls go through (below);
//! - `--help`, `-h`: the usage.
//!
//! Clients (`--client`, default `hyper`). Each runs the scenario with the stack and, as the
//! baseline in the same run, with that client's own default retry:
//!
//! | `--client` | stack row | baseline row | `clean`'s bare row |
//! |------------|-----------|--------------|--------------------|
//! | `hyper` | `stack`: [`OpenAiLayer`] over hyper-util | `baseline`: `tower::retry`, 3 tries, 100 ms apart | `bare`: hyper-util |
//! | `reqwest` | `stack (reqwest)`: reqwest-middleware with `OpenAiMiddleware` | `baseline (reqwest-retry)`: reqwest-retry's `RetryTransientMiddleware` with `ExponentialBackoff::builder().build_with_max_retries(3)` (its documented example: waits drawn uniformly below 1 s × 2ⁿ, `Retry-After` not read) | `bare (reqwest)`: no middleware |
//! | `async-openai` | `stack (async-openai)`: `Client::with_http_service(OpenAiLayer::into_async_openai())` | `baseline (async-openai retry)`: async-openai's built-in retry (`OpenAIRetryLayer::default()` over `ReqwestService`, the layers of its default client: 3 retries of 429, 5xx and connect errors, 100 ms × 2ⁿ capped at 8 s or `Retry-After`) | `bare (async-openai)`: `ReqwestService` without the retry layer |
//!
//! The reqwest and async-openai clients send the same JSON (async-openai's typed
//! `CreateChatCompletionRequest`, read from it) and read the answer as their users do (the
//! typed response, or the event stream to its end). Requests are counted by the mock, as for
//! hyper; against `--base-url` they are counted on the client side (for the async-openai
//! stack, the pacer's granted slots). `--processes`/`--store` run the hyper client only.
//!
//! Run it with `cargo run --release -p loadtest -- --scenario all`.
//!
//! Measurement: each client runs against a fresh mock, and the embedded mock runs on a tokio
//! runtime of its own (one worker thread), so that the server's work does not wait behind the
//! client's tasks on shared workers; this applies to the stack and the baseline alike. `clean`
//! runs 5 rounds of (stack, bare client) in alternating order and reports each client's
//! median round by calls/s (every round's figures are printed after the table).
//!
//! Several processes (see `loadtest_procs.rs`): `--processes P` splits the calls and the
//! concurrency over P worker processes (this binary, re-executed) against one server, and
//! `--store redis://HOST:PORT` (or `--store redis`: a throwaway `redis-server` started for the
//! run) runs the scenario twice in the same run, P processes pacing in-process and P pacing
//! through Redis; `--store memory` is the default. `latency` and `stream-long` add a third
//! row, the baseline client over the same P processes. `--repeat K` runs that set K times
//! (order alternating) and reports the median calls/s ratio. For example
//! `cargo run --release -p loadtest -- --scenario burst --processes 4 --store redis`
//! or, the cold start at 2 s,
//! `cargo run --release -p loadtest -- --scenario latency --processes 4 --store redis`.

mod brownout;
mod loadtest_procs;
mod priority;
mod stall;
mod tpm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::types::chat::CreateChatCompletionRequest;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::mock::{MockServer, RateLimit};
use oai_resilience::stack::OpenAiLayer;
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, BoxError, ClassifyLayer, Error, ErrorKind};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// A test key: never put a real key in source.
const TEST_KEY: &str = oai_resilience::mock::TEST_KEY;
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":5,"stream":true}"#;
const PATH: &str = "/v1/chat/completions";

/// The usage, for `--help`.
pub(crate) const USAGE: &str = "\
Usage: loadtest [OPTIONS]

Load scenarios through the full stack (OpenAiLayer) and a baseline client in the same run,
against an embedded mock OpenAI server (or --base-url).

Options:
  --scenario NAME[,NAME..]  burst, flaky, quota, outage, clean, latency, stream-long, or all
                            (all: the first five; latency and stream-long run by name)
  --scenario tpm            a tokens-per-minute limit that the estimates overstate: the
                            stack with usage correction, with estimates only, and a
                            request-count-only baseline (runs alone; --n, --concurrency,
                            --tpm TOKENS, --latency-ms, --json)
  --scenario brownout       the primary 503 for 20 s, a healthy secondary: fallback routes
                            and the breaker against one route (runs alone; --json,
                            --outage-ms MS)
  --scenario priority       a batch lane and an interactive lane on one bucket of 20
                            refilled 20/s: the stack with lanes and the FIFO pacer (by
                            name; --n, --concurrency, --latency-ms, --json)
  --n N                     calls (default: the scenario's)
  --concurrency C           calls in flight (default: the scenario's)
  --latency-ms MS           the mock's answer time (default: 20; latency 2000; clean and
                            stream-long 0)
  --stream-ms MS            stream-long: how long each event stream lasts (default 10000)
  --base-url URL            another server, http://host:port or http://host:port/v1
  --api-key KEY             the key (else OPENAI_API_KEY, else a test key)
  --baseline                with --base-url: run the baseline client too
  --json                    one JSON object per scenario on stdout, the table on stderr
  --svg PATH                write the burst plot to PATH (no plot without it)
  --client hyper|reqwest|async-openai
                            the HTTP client, with the stack and with its own default
                            retry as the baseline (default: hyper)
  --processes P             split the calls over P worker processes
  --store memory|redis|redis://HOST:PORT
                            pacing state of the worker processes (redis: start a
                            throwaway redis-server)
  --repeat K                with --processes/--store: K rounds, median ratio
  -h, --help                print this and exit

Examples:
  loadtest --scenario all
  loadtest --scenario latency
  loadtest --scenario burst --latency-ms 2000
  loadtest --scenario burst,quota,flaky --client reqwest
  loadtest --scenario latency --processes 4 --store redis
  loadtest --scenario priority --json
";

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// 300 calls at 50 against a bucket of 20 refilled 20/s.
    Burst,
    /// 20 % random 5xx.
    Flaky,
    /// Every call a quota 429.
    Quota,
    /// 100 % 5xx for a while, then healthy.
    Outage,
    /// No faults: throughput against a bare client.
    Clean,
    /// Answers after a real model's latency (2 s), limits far above the demand.
    Latency,
    /// Streamed answers that last 10 s each, limits far above the demand.
    StreamLong,
    /// A batch lane and an interactive lane on one key's bucket (`priority.rs`).
    Priority,
}

impl Scenario {
    /// What `all` runs (and no `--scenario`): every scenario but the slow real-latency ones.
    pub(crate) const ALL: [Scenario; 5] = [
        Scenario::Burst,
        Scenario::Flaky,
        Scenario::Quota,
        Scenario::Outage,
        Scenario::Clean,
    ];

    /// Every scenario, by name.
    pub(crate) const EVERY: [Scenario; 8] = [
        Scenario::Burst,
        Scenario::Flaky,
        Scenario::Quota,
        Scenario::Outage,
        Scenario::Clean,
        Scenario::Latency,
        Scenario::StreamLong,
        Scenario::Priority,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::Flaky => "flaky",
            Scenario::Quota => "quota",
            Scenario::Outage => "outage",
            Scenario::Clean => "clean",
            Scenario::Latency => "latency",
            Scenario::StreamLong => "stream-long",
            Scenario::Priority => "priority",
        }
    }

    /// `NAME`, `NAME,NAME,..` or `all`.
    fn parse(s: &str) -> Option<Vec<Scenario>> {
        let mut out = Vec::new();
        for name in s.split(',') {
            if name == "all" {
                out.extend(Scenario::ALL);
            } else {
                out.push(Scenario::EVERY.into_iter().find(|sc| sc.name() == name)?);
            }
        }
        Some(out)
    }

    /// Whether its calls ask for an event stream.
    pub(crate) fn streams(self) -> bool {
        self == Scenario::StreamLong
    }

    /// The request body of its calls.
    pub(crate) fn body(self) -> &'static str {
        if self.streams() {
            CHAT_STREAM
        } else {
            CHAT
        }
    }

    /// The issue's defaults: (calls, concurrency).
    pub(crate) fn defaults(self) -> (usize, usize) {
        match self {
            Scenario::Burst => (300, 50),
            Scenario::Flaky => (300, 20),
            Scenario::Quota => (20, 20),
            Scenario::Outage => (300, 50),
            Scenario::Clean => (2000, 50),
            Scenario::Latency => (200, 50),
            Scenario::StreamLong => (100, 50),
            Scenario::Priority => (1000, 100),
        }
    }

    /// The mock's default answer time (before the headers).
    pub(crate) fn default_latency(self) -> Duration {
        match self {
            Scenario::Clean | Scenario::StreamLong => Duration::ZERO,
            Scenario::Latency => Duration::from_secs(2),
            _ => Duration::from_millis(20),
        }
    }
}

/// The base URL without a trailing `/v1` (and slashes): `http://host:port/v1/` and
/// `http://host:port` both give `http://host:port`, to which the loadtest appends
/// `/v1/chat/completions` itself.
pub(crate) fn api_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let url = match url.strip_suffix("/v1") {
        Some(base) if base.contains("://") => base,
        _ => url,
    };
    url.trim_end_matches('/').to_string()
}

/// The HTTP client the calls go through (`--client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ClientKind {
    /// hyper-util: the stack as a tower service, the baseline a `tower::retry` policy.
    #[default]
    Hyper,
    /// reqwest-middleware: the stack as `OpenAiMiddleware`, the baseline reqwest-retry.
    Reqwest,
    /// async-openai: the stack as its HTTP service, the baseline its built-in retry.
    AsyncOpenAi,
}

impl ClientKind {
    /// Every client, by name.
    pub(crate) const EVERY: [ClientKind; 3] = [
        ClientKind::Hyper,
        ClientKind::Reqwest,
        ClientKind::AsyncOpenAi,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ClientKind::Hyper => "hyper",
            ClientKind::Reqwest => "reqwest",
            ClientKind::AsyncOpenAi => "async-openai",
        }
    }

    fn parse(s: &str) -> Option<ClientKind> {
        ClientKind::EVERY.into_iter().find(|c| c.name() == s)
    }

    /// The row's name for a run of `which` through this client: `stack`, `baseline` and
    /// `bare` for hyper (as before the other clients), else e.g. `stack (reqwest)`,
    /// `baseline (reqwest-retry)`.
    pub(crate) fn label(self, which: Which) -> &'static str {
        match (self, which) {
            (ClientKind::Hyper, w) => w.name(),
            (ClientKind::Reqwest, Which::Stack) => "stack (reqwest)",
            (ClientKind::Reqwest, Which::Baseline) => "baseline (reqwest-retry)",
            (ClientKind::Reqwest, Which::Bare) => "bare (reqwest)",
            (ClientKind::AsyncOpenAi, Which::Stack) => "stack (async-openai)",
            (ClientKind::AsyncOpenAi, Which::Baseline) => "baseline (async-openai retry)",
            (ClientKind::AsyncOpenAi, Which::Bare) => "bare (async-openai)",
        }
    }
}

/// How one scenario is run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) scenario: Scenario,
    /// The HTTP client of both rows.
    pub(crate) client: ClientKind,
    pub(crate) calls: usize,
    pub(crate) concurrency: usize,
    /// The mock's answer latency, before the headers (the clean scenario uses none).
    pub(crate) latency: Duration,
    /// How long the mock spreads an event stream over (`stream-long`; zero: all at once).
    pub(crate) stream: Duration,
    /// Outage: how long the 5xx last.
    pub(crate) outage: Duration,
    /// Outage: time between call starts (open loop).
    pub(crate) arrival: Duration,
    /// `None`: the embedded mock; `Some(url)`: that server, its faults.
    pub(crate) base_url: Option<String>,
    pub(crate) api_key: String,
    pub(crate) baseline: bool,
    /// Sample the requests sent/answered for a plot.
    pub(crate) sample: Option<Duration>,
    /// Run the embedded mock on a runtime of its own (one worker thread) rather than on the
    /// clients' runtime. Real time only: a paused clock does not reach another runtime.
    pub(crate) mock_runtime: bool,
    /// Rounds of (stack, baseline), in alternating order; the table shows each client's
    /// median round by calls/s.
    pub(crate) rounds: usize,
}

impl Config {
    pub(crate) fn new(scenario: Scenario) -> Self {
        let (calls, concurrency) = scenario.defaults();
        Config {
            scenario,
            client: ClientKind::Hyper,
            calls,
            concurrency,
            latency: scenario.default_latency(),
            stream: if scenario == Scenario::StreamLong {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            },
            outage: Duration::from_secs(10),
            arrival: Duration::from_millis(50),
            base_url: None,
            api_key: TEST_KEY.to_string(),
            baseline: true,
            sample: (scenario == Scenario::Burst).then_some(Duration::from_millis(250)),
            mock_runtime: false,
            rounds: 1,
        }
    }

    /// The theoretical minimum wall time of this run against the embedded mock (none with
    /// `--base-url`: its limits and latency are unknown).
    pub(crate) fn minimum(&self) -> Option<Duration> {
        self.minimum_over(&[(self.calls, self.concurrency)])
    }

    /// The minimum when the calls are split into `shares` of (calls, concurrency), one per
    /// process: every share needs ⌈calls/concurrency⌉ rounds of the answer time (latency plus
    /// stream), and for `burst` the last call cannot be admitted before the bucket of 20
    /// (refilled 20/s) has refilled N − 20 requests, and then takes the latency. The larger
    /// bound wins.
    pub(crate) fn minimum_over(&self, shares: &[(usize, usize)]) -> Option<Duration> {
        if self.base_url.is_some() {
            return None;
        }
        let answer = self.latency + self.stream;
        let rounds = shares
            .iter()
            .map(|&(n, c)| n.div_ceil(c.max(1)))
            .max()
            .unwrap_or(0);
        let by_rounds = answer.mul_f64(rounds as f64);
        let calls: usize = shares.iter().map(|s| s.0).sum();
        match self.scenario {
            Scenario::Burst => {
                let refill = Duration::from_secs_f64(calls.saturating_sub(BUCKET) as f64 / 20.0);
                Some((refill + answer).max(by_rounds))
            }
            Scenario::Latency | Scenario::StreamLong => Some(by_rounds),
            _ => None,
        }
    }
}

/// `burst`: the mock's bucket, refilled as many per second.
const BUCKET: usize = 20;

/// Which client ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Stack,
    Baseline,
    Bare,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Stack => "stack",
            Which::Baseline => "baseline",
            Which::Bare => "bare",
        }
    }
}

/// One client's run of one scenario.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) which: Which,
    /// The HTTP client it went through.
    pub(crate) client: ClientKind,
    pub(crate) calls: usize,
    pub(crate) ok: usize,
    /// Failed calls by kind, sorted by kind name.
    pub(crate) failed_by_kind: Vec<(String, usize)>,
    pub(crate) requests_sent: u64,
    pub(crate) wall: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// Outage: (requests sent during it, calls started during it, calls started after it,
    /// of which ok).
    pub(crate) outage: Option<(u64, usize, usize, usize)>,
    /// (seconds since start, requests sent so far, answers so far).
    pub(crate) samples: Vec<(f64, u64, u64)>,
    /// CPU time the whole process (client, embedded mock, runtime) spent during the run, where
    /// the OS tells it (Linux).
    pub(crate) cpu: Option<Duration>,
}

impl Run {
    /// The row's name: `stack`, `baseline (reqwest-retry)`, … (see [`ClientKind::label`]).
    pub(crate) fn label(&self) -> &'static str {
        self.client.label(self.which)
    }

    pub(crate) fn failed(&self) -> usize {
        self.failed_by_kind.iter().map(|(_, n)| n).sum()
    }

    pub(crate) fn per_call(&self) -> f64 {
        self.requests_sent as f64 / self.calls.max(1) as f64
    }

    pub(crate) fn rps(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The wall time over `minimum`, where there is one.
    pub(crate) fn over(&self, minimum: Option<Duration>) -> Option<f64> {
        let m = minimum.filter(|m| !m.is_zero())?;
        Some(self.wall.as_secs_f64() / m.as_secs_f64())
    }

    /// [`Run::json`] with the minimum and the wall time over it.
    pub(crate) fn json_against(&self, minimum: Option<Duration>) -> serde_json::Value {
        let mut v = self.json();
        v["minimum_s"] = minimum.map(|m| m.as_secs_f64()).into();
        v["wall_over_minimum"] = self.over(minimum).into();
        v
    }

    /// `{"client":..,"ok":..,"failed":..,...}`.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "client": self.label(),
            "http_client": self.client.name(),
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed(),
            "failed_by_kind": kinds_json(&self.failed_by_kind),
            "requests_sent": self.requests_sent,
            "wall_s": self.wall.as_secs_f64(),
            "p50_ms": self.p50.as_secs_f64() * 1e3,
            "p99_ms": self.p99.as_secs_f64() * 1e3,
        })
    }
}

/// A scenario's runs: the stack's and, if run, the baseline's.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) scenario: Scenario,
    pub(crate) concurrency: usize,
    /// The mock's answer latency, and how long a stream lasts.
    pub(crate) latency: Duration,
    pub(crate) stream: Duration,
    /// The theoretical minimum wall time, where the mock's limit defines one.
    pub(crate) minimum: Option<Duration>,
    pub(crate) stack: Run,
    pub(crate) baseline: Option<Run>,
    /// Calls/s of every round: (stack, baseline).
    pub(crate) rounds: Vec<(f64, Option<f64>)>,
    /// Process CPU seconds per call over all rounds: (stack, baseline), when known.
    pub(crate) cpu_per_call: Option<(f64, f64)>,
}

impl Report {
    /// The stack's figures at the top level, the baseline's under `"baseline"`.
    pub(crate) fn json(&self) -> serde_json::Value {
        let mut v = self.stack.json_against(self.minimum);
        v["scenario"] = self.scenario.name().into();
        v["concurrency"] = self.concurrency.into();
        v["latency_ms"] = (self.latency.as_secs_f64() * 1e3).into();
        v["stream_ms"] = (self.stream.as_secs_f64() * 1e3).into();
        v["baseline"] = self
            .baseline
            .as_ref()
            .map(|b| b.json_against(self.minimum))
            .into();
        if let Some((sent, during, after, after_ok)) = self.stack.outage {
            v["outage"] = serde_json::json!({
                "requests_during": sent, "calls_during": during,
                "calls_after": after, "ok_after": after_ok,
            });
        }
        v
    }

    /// Whether the issue's target for this scenario is met (the clean one compares with the
    /// bare client).
    pub(crate) fn target(&self) -> (bool, String) {
        let s = &self.stack;
        let wall = s.over(self.minimum).unwrap_or(f64::NAN);
        // The baseline's figure beside the stack's, where a baseline ran.
        let beside = |f: &dyn Fn(&Run) -> String| {
            self.baseline
                .as_ref()
                .map_or(String::new(), |b| format!("; baseline {}", f(b)))
        };
        let wall_of = |r: &Run| {
            r.over(self.minimum)
                .map_or("-".into(), |w| format!("{w:.3}x"))
        };
        match self.scenario {
            Scenario::Burst => (
                s.failed() == 0 && wall <= 1.05 && s.per_call() <= 1.15,
                format!(
                    "0 failed ({}), wall <= 1.05x min ({wall:.3}x{}), req/call <= 1.15 ({:.3}{})",
                    s.failed(),
                    beside(&wall_of),
                    s.per_call(),
                    beside(&|b| format!("{:.3}", b.per_call())),
                ),
            ),
            Scenario::Latency => {
                let p99 = s.p99.as_secs_f64() / self.latency.as_secs_f64().max(1e-9);
                let p99_of = |r: &Run| {
                    format!(
                        "{:.3}x",
                        r.p99.as_secs_f64() / self.latency.as_secs_f64().max(1e-9)
                    )
                };
                (
                    s.failed() == 0
                        && wall <= 1.05
                        && p99 <= 1.10
                        && s.requests_sent == s.calls as u64,
                    format!(
                        "0 failed ({}), wall <= 1.05x ideal ({wall:.3}x{}), p99 <= 1.10x latency \
                         ({p99:.3}x{}), requests = calls ({}/{}{})",
                        s.failed(),
                        beside(&wall_of),
                        beside(&p99_of),
                        s.requests_sent,
                        s.calls,
                        beside(&|b| format!("{}/{}", b.requests_sent, b.calls)),
                    ),
                )
            }
            Scenario::StreamLong => (
                s.failed() == 0 && wall <= 1.05,
                format!(
                    "0 failed ({}), wall <= 1.05x ideal ({wall:.3}x{})",
                    s.failed(),
                    beside(&wall_of)
                ),
            ),
            Scenario::Flaky => (
                s.failed() == 0 && s.per_call() <= 1.30,
                format!(
                    "0 failed ({}{}), req/call <= 1.30 ({:.3}{})",
                    s.failed(),
                    beside(&|b| b.failed().to_string()),
                    s.per_call(),
                    beside(&|b| format!("{:.3}", b.per_call())),
                ),
            ),
            Scenario::Quota => (
                s.requests_sent == s.calls as u64,
                format!(
                    "req/call = 1.00 ({:.3}{})",
                    s.per_call(),
                    beside(&|b| format!("{:.3}", b.per_call())),
                ),
            ),
            Scenario::Outage => match s.outage {
                Some((sent, during, after, after_ok)) => {
                    let r = sent as f64 / during.max(1) as f64;
                    (
                        r <= 1.2 && after_ok == after,
                        format!(
                            "req/call during outage <= 1.2 ({r:.3} = {sent}/{during}), \
                             calls after all ok ({after_ok}/{after})"
                        ),
                    )
                }
                None => (false, "no outage measured".into()),
            },
            Scenario::Clean => match &self.baseline {
                Some(b) => {
                    let r = s.rps() / b.rps();
                    (r >= 0.9, format!("rps >= 0.9x bare ({r:.3})"))
                }
                None => (false, "no bare client run".into()),
            },
            // Its rows and goal are priority.rs's own.
            Scenario::Priority => (false, "see the priority target line".into()),
        }
    }
}

type Req = http::Request<Full<Bytes>>;
type Svc = BoxCloneService<Req, http::Response<hyper::body::Incoming>, Error>;

/// Counts requests handed to the HTTP client and responses (or errors) it gave back.
#[derive(Debug, Clone, Default)]
struct Counter {
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
struct Counted<S> {
    inner: S,
    counter: Counter,
}

impl<S, R> Service<R> for Counted<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.counter.sent.fetch_add(1, Ordering::Relaxed);
        let fut = self.inner.call(req);
        let answered = self.counter.answered.clone();
        Box::pin(async move {
            let res = fut.await;
            answered.fetch_add(1, Ordering::Relaxed);
            res
        })
    }
}

/// The baseline's retry policy: 3 tries, a fixed 100 ms between them, on retryable errors.
#[derive(Debug, Clone)]
pub(crate) struct FixedRetry {
    left: u32,
}

impl<Res> tower::retry::Policy<Req, Res, Error> for FixedRetry {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, Error>) -> Option<Self::Future> {
        match result {
            Err(e) if e.is_retryable() && self.left > 0 => {
                self.left -= 1;
                Some(tokio::time::sleep(Duration::from_millis(100)))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut r = http::Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

/// The client `which` against `base` (with or without `/v1`: see [`api_base`]), counting its
/// requests in `counter`. Shared with the worker processes.
fn build(which: Which, base: &str, key: &str, counter: &Counter) -> Result<Svc, BoxError> {
    let base = api_base(base);
    Ok(match which {
        Which::Stack => {
            let client: Client<HttpConnector, ValidateBody<Full<Bytes>>> =
                Client::builder(TokioExecutor::new()).build_http();
            let client = Counted {
                inner: client,
                counter: counter.clone(),
            };
            BoxCloneService::new(
                OpenAiLayer::new()
                    .base_url(base.parse()?)
                    .auth(AuthLayer::from_key(key))
                    .layer(client),
            )
        }
        Which::Baseline | Which::Bare => {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let client = Counted {
                inner: client,
                counter: counter.clone(),
            };
            let auth = format!("Bearer {key}");
            let with_base = move |mut req: Req| {
                let uri = format!("{base}{}", req.uri());
                if let Ok(uri) = uri.parse() {
                    *req.uri_mut() = uri;
                }
                if let Ok(v) = http::HeaderValue::from_str(&auth) {
                    req.headers_mut().insert(http::header::AUTHORIZATION, v);
                }
                req
            };
            if which == Which::Bare {
                BoxCloneService::new(
                    ServiceBuilder::new()
                        .map_request(with_base)
                        .layer(ClassifyLayer::new())
                        .service(client),
                )
            } else {
                BoxCloneService::new(
                    ServiceBuilder::new()
                        .map_request(with_base)
                        .layer(tower::retry::RetryLayer::new(FixedRetry { left: 2 }))
                        .layer(ClassifyLayer::new())
                        .service(client),
                )
            }
        }
    })
}

/// A scenario's calls, through one of the clients (`--client`).
#[derive(Clone)]
pub(crate) enum Caller {
    /// A hyper-style tower service; requests go to [`PATH`] (the base URL is in the service).
    Hyper(Svc),
    /// A `ClientWithMiddleware`, posting to `url`.
    Reqwest {
        client: reqwest_middleware::ClientWithMiddleware,
        url: Arc<str>,
    },
    /// An async-openai client, sending `request` (typed, read from the scenario's JSON).
    AsyncOpenAi {
        client: async_openai::Client<async_openai::config::OpenAIConfig>,
        request: Arc<CreateChatCompletionRequest>,
    },
}

impl Caller {
    /// One call with `body` (the scenario's JSON), its answer read to the end (the JSON
    /// decoded, an event stream to its last event): `Ok`, or the failure's kind by
    /// [`ErrorKind`]'s names, whichever client failed.
    pub(crate) async fn call(self, body: &'static str) -> Result<(), String> {
        match self {
            Caller::Hyper(svc) => {
                let req = http::Request::post(PATH)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .map_err(|_| ErrorKind::Internal.to_string())?;
                one_call(svc, req).await.map_err(|k| k.to_string())
            }
            Caller::Reqwest { client, url } => {
                let res = client
                    .post(&*url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match res {
                    Ok(resp) if resp.status().is_success() => resp
                        .bytes()
                        .await
                        .map(|_| ())
                        .map_err(|_| ErrorKind::Connection.to_string()),
                    Ok(resp) => {
                        let status = resp.status();
                        let bytes = resp.bytes().await.unwrap_or_default();
                        let api = oai_resilience::parse::parse_error_body(&bytes);
                        Err(ErrorKind::from_status(status, api.as_ref()).to_string())
                    }
                    Err(reqwest_middleware::Error::Middleware(e)) => {
                        Err(match e.downcast_ref::<Error>() {
                            Some(e) => e.kind().to_string(),
                            None => e
                                .chain()
                                .find_map(|c| c.downcast_ref::<reqwest::Error>())
                                .map_or(ErrorKind::Internal, reqwest_kind)
                                .to_string(),
                        })
                    }
                    Err(reqwest_middleware::Error::Reqwest(e)) => Err(reqwest_kind(&e).to_string()),
                }
            }
            Caller::AsyncOpenAi { client, request } => {
                let request = CreateChatCompletionRequest::clone(&request);
                if request.stream == Some(true) {
                    let mut events = client
                        .chat()
                        .create_stream(request)
                        .await
                        .map_err(openai_kind)?;
                    while let Some(event) = events.next().await {
                        event.map_err(openai_kind)?;
                    }
                    Ok(())
                } else {
                    client
                        .chat()
                        .create(request)
                        .await
                        .map(|_| ())
                        .map_err(openai_kind)
                }
            }
        }
    }
}

/// The kind of a failure of reqwest to send or to read.
fn reqwest_kind(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    }
}

/// The kind of an async-openai failure, by [`ErrorKind`]'s names: an API error by its status
/// and OpenAI's code and type (what async-openai receives from the stack when it gives up),
/// `connection`/`timeout` for reqwest's, `decode` for a body that does not decode.
fn openai_kind(e: async_openai::error::OpenAIError) -> String {
    use async_openai::error::OpenAIError;
    match e {
        OpenAIError::ApiError(r) => {
            let mut api = oai_resilience::ApiError::new(r.api_error.message);
            api.error_type = r.api_error.r#type;
            api.param = r.api_error.param;
            api.code = r.api_error.code;
            ErrorKind::from_status(r.status_code, Some(&api)).to_string()
        }
        OpenAIError::Reqwest(e) => reqwest_kind(&e).to_string(),
        OpenAIError::JSONDeserialize(..) => ErrorKind::Decode.to_string(),
        OpenAIError::StreamError(_) => ErrorKind::ResponseBody.to_string(),
        OpenAIError::Boxed(e) => match e.downcast_ref::<Error>() {
            Some(e) => e.kind().to_string(),
            None => ErrorKind::Internal.to_string(),
        },
        _ => ErrorKind::Internal.to_string(),
    }
}

/// The reqwest-middleware [`Middleware`](reqwest_middleware::Middleware) that counts the
/// requests handed to the `reqwest::Client` and its answers (the innermost middleware: one
/// count per attempt).
fn counting(counter: Counter) -> impl reqwest_middleware::Middleware {
    /// Pins the closure's signature to the higher-ranked one reqwest-middleware takes.
    fn middleware<F>(f: F) -> F
    where
        F: for<'a> Fn(
                reqwest::Request,
                &'a mut http::Extensions,
                reqwest_middleware::Next<'a>,
            ) -> futures_util::future::BoxFuture<
                'a,
                reqwest_middleware::Result<reqwest::Response>,
            > + Send
            + Sync
            + 'static,
    {
        f
    }
    middleware(move |req, extensions, next| {
        let counter = counter.clone();
        Box::pin(async move {
            counter.sent.fetch_add(1, Ordering::Relaxed);
            let res = next.run(req, extensions).await;
            counter.answered.fetch_add(1, Ordering::Relaxed);
            res
        })
    })
}

/// The caller `which` through `client` against `base` (with or without `/v1`: see
/// [`api_base`]), counting its attempts in `counter` where the client lets it (all but the
/// async-openai stack, whose attempts the mock counts, or its pacer).
///
/// # Errors
///
/// If the base URL does not parse, or the scenario's JSON is not a typed chat request.
fn caller(
    client: ClientKind,
    which: Which,
    scenario: Scenario,
    base: &str,
    key: &str,
    counter: &Counter,
) -> Result<(Caller, Option<OpenAiLayer>), BoxError> {
    let base = api_base(base);
    Ok(match client {
        ClientKind::Hyper => (Caller::Hyper(build(which, &base, key, counter)?), None),
        ClientKind::Reqwest => {
            // The stack's auth layer adds the key; the other two send it as a default header.
            let http = if which == Which::Stack {
                reqwest::Client::new()
            } else {
                let mut auth = http::HeaderValue::from_str(&format!("Bearer {key}"))?;
                auth.set_sensitive(true);
                reqwest::Client::builder()
                    .default_headers(http::HeaderMap::from_iter([(
                        http::header::AUTHORIZATION,
                        auth,
                    )]))
                    .build()?
            };
            let builder = reqwest_middleware::ClientBuilder::new(http);
            let builder = match which {
                Which::Stack => builder.with(
                    OpenAiLayer::new()
                        .auth(AuthLayer::from_key(key))
                        .into_reqwest_middleware(),
                ),
                Which::Baseline => {
                    builder.with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
                        reqwest_retry::policies::ExponentialBackoff::builder()
                            .build_with_max_retries(3),
                    ))
                }
                Which::Bare => builder,
            };
            let client = builder.with(counting(counter.clone())).build();
            (
                Caller::Reqwest {
                    client,
                    url: format!("{base}{PATH}").into(),
                },
                None,
            )
        }
        ClientKind::AsyncOpenAi => {
            use async_openai::middleware::{retry::OpenAIRetryLayer, ReqwestService};
            let config = async_openai::config::OpenAIConfig::new()
                .with_api_base(format!("{base}/v1"))
                .with_api_key(key);
            let client = async_openai::Client::with_config(config);
            let send = Counted {
                inner: ReqwestService::new(reqwest::Client::new()),
                counter: counter.clone(),
            };
            let (client, layer) = match which {
                Which::Stack => {
                    let layer = OpenAiLayer::new();
                    (
                        client.with_http_service(layer.clone().into_async_openai()),
                        Some(layer),
                    )
                }
                Which::Baseline => (
                    client.with_http_service(OpenAIRetryLayer::default().layer(send)),
                    None,
                ),
                Which::Bare => (client.with_http_service(send), None),
            };
            let request = serde_json::from_str(scenario.body())?;
            (
                Caller::AsyncOpenAi {
                    client,
                    request: Arc::new(request),
                },
                layer,
            )
        }
    })
}

async fn start_mock(cfg: &Config) -> MockServer {
    let b = MockServer::builder()
        .api_key(&cfg.api_key)
        .latency(cfg.latency)
        .stream_duration(cfg.stream)
        .no_rate_limits();
    match cfg.scenario {
        Scenario::Burst | Scenario::Priority => {
            b.request_limit(RateLimit::bucket(BUCKET as u64, 20.0))
        }
        Scenario::Flaky => b.random_server_errors(0.2, 7),
        Scenario::Quota => b.quota_exhausted(true),
        Scenario::Outage => b.random_server_errors(0.0, 7),
        Scenario::Clean => b,
        // Limits far above the demand, reported in the headers as OpenAI does: the pacer sees
        // ample room and no 429 is possible.
        Scenario::Latency | Scenario::StreamLong => b
            .request_limit(RateLimit::per_minute(1_000_000))
            .token_limit(RateLimit::per_minute(1_000_000_000)),
    }
    .start()
    .await
}

/// The embedded mock, on the clients' runtime or on one of its own.
struct MockHost {
    mock: Arc<MockServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockHost {
    /// The scenario's mock ([`start_mock`]), hosted as `cfg.mock_runtime` asks.
    async fn start(cfg: &Config) -> Result<Self, BoxError> {
        let cfg = cfg.clone();
        MockHost::spawn(
            cfg.mock_runtime,
            move || async move { start_mock(&cfg).await },
        )
        .await
    }

    /// Starts the mock that `start` returns: with `own_runtime`, on a runtime of its own (one
    /// worker thread, shut down when the host is dropped), else on the current runtime.
    pub(crate) async fn spawn<F, Fut>(own_runtime: bool, start: F) -> Result<Self, BoxError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = MockServer> + Send + 'static,
    {
        if !own_runtime {
            return Ok(MockHost {
                mock: Arc::new(start().await),
                runtime: None,
            });
        }
        // One worker thread of its own: the server's work does not queue behind the client's
        // tasks on the same workers, for the stack and the baseline alike (the OS still
        // shares the cores between all threads).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("loadtest-mock")
            .enable_all()
            .build()?;
        let mock = runtime.spawn(start()).await?;
        Ok(MockHost {
            mock: Arc::new(mock),
            runtime: Some(runtime),
        })
    }
}

impl Drop for MockHost {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One call through `svc`, its answer's body read to the end: `Ok` or the error's kind (a body
/// that fails mid-read is a connection error). Shared with the worker processes.
pub(crate) async fn one_call(svc: Svc, req: Req) -> Result<(), ErrorKind> {
    match svc.oneshot(req).await {
        Ok(resp) => resp
            .into_body()
            .collect()
            .await
            .map(|_| ())
            .map_err(|_| ErrorKind::Connection),
        Err(e) => Err(e.kind()),
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Where a run's progress is read: (requests sent, answers), for the plot and the outage.
#[derive(Clone)]
struct Progress {
    counter: Counter,
    /// The mock, when the client's attempts are not counted on its side.
    mock: Option<Arc<MockServer>>,
    /// The stack's layer, when the client's attempts are not counted on its side: its
    /// pacer's granted slots stand for both figures.
    layer: Option<OpenAiLayer>,
}

impl Progress {
    fn read(&self) -> (u64, u64) {
        if let Some(m) = &self.mock {
            let c = m.counts();
            return (c.total, c.answered);
        }
        if let Some(l) = &self.layer {
            let granted = l.pace_layer().pacer().metrics().granted;
            return (granted, granted);
        }
        (
            self.counter.sent.load(Ordering::Relaxed),
            self.counter.answered.load(Ordering::Relaxed),
        )
    }
}

async fn run_one(cfg: &Config, which: Which) -> Result<Run, BoxError> {
    let (host, base) = match &cfg.base_url {
        None => {
            let host = MockHost::start(cfg).await?;
            let url = host.mock.url();
            (Some(host), url)
        }
        Some(url) => (None, url.clone()),
    };
    let mock = host.as_ref().map(|h| h.mock.clone());
    let counter = Counter::default();
    let cpu_before = process_cpu();
    let (caller, layer) = caller(
        cfg.client,
        which,
        cfg.scenario,
        &base,
        &cfg.api_key,
        &counter,
    )?;
    // The async-openai stack sends inside the adapter, out of the counter's reach: its
    // progress is the mock's (arrived, answered), or its pacer's granted slots.
    let progress = Progress {
        counter: counter.clone(),
        mock: mock.clone().filter(|_| layer.is_some()),
        layer: layer.clone(),
    };
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let start = Instant::now();
    let outage = (cfg.scenario == Scenario::Outage && mock.is_some()).then_some(cfg.outage);
    let outage_end = outage.map(|d| start + d);
    let during = Arc::new(AtomicU64::new(0));
    let switch = match (&mock, outage) {
        (Some(m), Some(d)) => {
            m.set_random_server_errors(1.0);
            let (m, during, p) = (m.clone(), during.clone(), progress.clone());
            Some(tokio::spawn(async move {
                tokio::time::sleep(d).await;
                m.set_random_server_errors(0.0);
                during.store(p.read().0, Ordering::Relaxed);
            }))
        }
        _ => None,
    };
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = cfg.sample.map(|every| {
        let (p, samples) = (progress.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let (sent, answered) = p.read();
                let s = (start.elapsed().as_secs_f64(), sent, answered);
                if let Ok(mut v) = samples.lock() {
                    v.push(s);
                }
            }
        })
    });
    let mut tasks = Vec::with_capacity(cfg.calls);
    for i in 0..cfg.calls {
        let (caller, gate) = (caller.clone(), gate.clone());
        let body = cfg.scenario.body();
        let at = outage.map(|_| start + cfg.arrival * i as u32);
        tasks.push(tokio::spawn(async move {
            if let Some(at) = at {
                tokio::time::sleep_until(at).await;
            }
            let _slot = gate.acquire_owned().await.ok();
            let began = Instant::now();
            let res = caller.call(body).await;
            (began, began.elapsed(), res)
        }));
    }
    let mut latencies = Vec::with_capacity(cfg.calls);
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    let (mut ok, mut after, mut after_ok, mut calls_during) = (0, 0, 0, 0);
    for t in tasks {
        let (began, took, res) = t.await?;
        latencies.push(took);
        let is_after = outage_end.is_some_and(|end| began >= end);
        if is_after {
            after += 1;
        } else if outage_end.is_some() {
            calls_during += 1;
        }
        match res {
            Ok(()) => {
                ok += 1;
                if is_after {
                    after_ok += 1;
                }
            }
            Err(kind) => *by_kind.entry(kind).or_default() += 1,
        }
    }
    let wall = start.elapsed();
    if let Some(s) = sampler {
        s.abort();
    }
    if let Some(s) = switch {
        s.await?;
    }
    latencies.sort();
    let mut samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
    let (sent, answered) = progress.read();
    samples.push((wall.as_secs_f64(), sent, answered));
    let requests_sent = match &mock {
        Some(m) => m.counts().total,
        None => sent,
    };
    Ok(Run {
        which,
        client: cfg.client,
        calls: cfg.calls,
        ok,
        failed_by_kind: by_kind.into_iter().collect(),
        requests_sent,
        wall,
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        outage: outage.map(|_| {
            (
                during.load(Ordering::Relaxed),
                calls_during,
                after,
                after_ok,
            )
        }),
        samples,
        cpu: process_cpu()
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before)),
    })
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux; 10 ms
/// resolution). A figure that the machine's other load disturbs much less than wall time.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux configuration in common use.
    Some(Duration::from_millis(ticks * 10))
}

/// Runs one scenario with the stack and, if configured, the baseline (the bare client for
/// `clean`), each against a fresh mock.
///
/// # Errors
///
/// If a URL or request cannot be built or a task panics.
pub(crate) async fn run(cfg: &Config) -> Result<Report, BoxError> {
    let other = if cfg.scenario == Scenario::Clean {
        Which::Bare
    } else {
        Which::Baseline
    };
    let mut stacks = Vec::new();
    let mut baselines = Vec::new();
    for round in 0..cfg.rounds.max(1) {
        // Alternate the order, so that a drift in the machine's load favours neither.
        if cfg.baseline && round % 2 == 1 {
            baselines.push(run_one(cfg, other).await?);
        }
        stacks.push(run_one(cfg, Which::Stack).await?);
        if cfg.baseline && round % 2 == 0 {
            baselines.push(run_one(cfg, other).await?);
        }
    }
    let rounds = stacks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.rps(), baselines.get(i).map(Run::rps)))
        .collect();
    let per_call = |runs: &[Run]| -> Option<f64> {
        let cpu: Option<Duration> = runs.iter().map(|r| r.cpu).sum();
        let calls: usize = runs.iter().map(|r| r.calls).sum();
        Some(cpu?.as_secs_f64() / calls.max(1) as f64)
    };
    let cpu_per_call = if baselines.is_empty() {
        None
    } else {
        per_call(&stacks).zip(per_call(&baselines))
    };
    let stack = median_by_rps(stacks).ok_or("no stack run")?;
    let baseline = median_by_rps(baselines);
    Ok(Report {
        scenario: cfg.scenario,
        concurrency: cfg.concurrency,
        latency: cfg.latency,
        stream: cfg.stream,
        minimum: cfg.minimum(),
        stack,
        baseline,
        rounds,
        cpu_per_call,
    })
}

/// The run with the median calls/s (the lower middle one for an even count).
fn median_by_rps(mut runs: Vec<Run>) -> Option<Run> {
    runs.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
    let mid = runs.len().checked_sub(1)? / 2;
    Some(runs.swap_remove(mid))
}

/// Failed calls by kind as a JSON object (kind → count).
pub(crate) fn kinds_json(kinds: &[(String, usize)]) -> serde_json::Value {
    kinds
        .iter()
        .map(|(k, n)| (k.clone(), serde_json::Value::from(*n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Failed calls by kind as a table cell: `0`, or `3 timeout, 1 server`.
pub(crate) fn kinds_cell(kinds: &[(String, usize)]) -> String {
    if kinds.is_empty() {
        return "0".to_string();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(name: &str, r: &Run, minimum: Option<Duration>) -> String {
    let failed = kinds_cell(&r.failed_by_kind);
    let ratio = r
        .over(minimum)
        .map_or("-".to_string(), |w| format!("{w:.3}x"));
    format!(
        "| {name} | {} | {} | {} | {failed} | {:.2} | {ratio} | {} | {:.3} | {:.0} | {:.0} | {:.0} |",
        r.label(),
        r.calls,
        r.ok,
        r.wall.as_secs_f64(),
        r.requests_sent,
        r.per_call(),
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.rps()
    )
}

/// The table header.
pub(crate) const HEADER: &str = "| scenario | client | calls | ok | failed by kind | wall s | wall / min | requests | req/call | p50 ms | p99 ms | calls/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The report's table rows and its target line.
pub(crate) fn table(r: &Report) -> String {
    let mut out = row(r.scenario.name(), &r.stack, r.minimum);
    if let Some(b) = &r.baseline {
        out.push('\n');
        out.push_str(&row(r.scenario.name(), b, r.minimum));
    }
    out
}

/// `target met|MISSED: ...` for the report (`burst (reqwest): target ...` for a client other
/// than hyper).
pub(crate) fn target_line(r: &Report) -> String {
    let (met, text) = r.target();
    let client = match r.stack.client {
        ClientKind::Hyper => String::new(),
        c => format!(" ({})", c.name()),
    };
    format!(
        "{}{client}: target {}: {text}",
        r.scenario.name(),
        if met { "met" } else { "MISSED" }
    )
}

/// `clean CPU per call: ...`: the process's CPU time per call over all rounds, for each
/// client, when the OS reports it.
pub(crate) fn cpu_line(r: &Report) -> Option<String> {
    let (s, b) = r.cpu_per_call?;
    Some(format!(
        "{} CPU per call (whole process: client and mock), all rounds: stack {:.0} us, {} {:.0} us; \
         {}/stack = {:.3} (the calls/s ratio where the run is CPU-bound)",
        r.scenario.name(),
        s * 1e6,
        r.baseline.as_ref().map_or("baseline", Run::label),
        b * 1e6,
        r.baseline.as_ref().map_or("baseline", Run::label),
        b / s.max(1e-12)
    ))
}

/// `clean rounds: ...`: every round's calls/s when there were several.
pub(crate) fn rounds_line(r: &Report) -> Option<String> {
    if r.rounds.len() < 2 {
        return None;
    }
    let each: Vec<String> = r
        .rounds
        .iter()
        .map(|(s, b)| match b {
            Some(b) => format!("{s:.0}/{b:.0} ({:.3})", s / b),
            None => format!("{s:.0}"),
        })
        .collect();
    Some(format!(
        "{} rounds, calls/s stack/baseline (ratio), medians in the table: {}",
        r.scenario.name(),
        each.join(", ")
    ))
}

/// Writes the burst plot: requests per second sent and answered, stack versus baseline.
pub(crate) fn plot(r: &Report, path: &str) -> Result<(), BoxError> {
    use plotters::prelude::*;
    fn rates(samples: &[(f64, u64, u64)], answered: bool) -> Vec<(f64, f64)> {
        samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].0 - w[0].0).max(1e-6);
                let (a, b) = if answered {
                    (w[0].2, w[1].2)
                } else {
                    (w[0].1, w[1].1)
                };
                (w[1].0, (b - a) as f64 / dt)
            })
            .collect()
    }
    let mut series = vec![
        (
            format!("{} sent", r.stack.label()),
            rates(&r.stack.samples, false),
            BLUE,
        ),
        (
            format!("{} answered", r.stack.label()),
            rates(&r.stack.samples, true),
            CYAN,
        ),
    ];
    if let Some(b) = &r.baseline {
        series.push((format!("{} sent", b.label()), rates(&b.samples, false), RED));
        series.push((
            format!("{} answered", b.label()),
            rates(&b.samples, true),
            MAGENTA,
        ));
    }
    let x_max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "burst: requests per second (bucket of 20, refilled 20/s; latency {} ms)",
                r.latency.as_millis()
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("requests / s")
        .draw()?;
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Parsed command line.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) calls: Option<usize>,
    pub(crate) concurrency: Option<usize>,
    /// `--latency-ms`: the mock's answer time for every scenario.
    pub(crate) latency: Option<Duration>,
    /// `--stream-ms`: how long a `stream-long` event stream lasts.
    pub(crate) stream: Option<Duration>,
    pub(crate) base_url: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) baseline: bool,
    pub(crate) json: bool,
    /// Where to write the burst plot; nothing is written without `--svg PATH`.
    pub(crate) svg: Option<String>,
    /// `--client`: the HTTP client of the stack and the baseline.
    pub(crate) client: ClientKind,
    /// `--help` or `-h`: print [`USAGE`] and exit.
    pub(crate) help: bool,
}

/// Parses the options (hand-rolled: add new ones as match arms).
pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        scenarios: Scenario::ALL.to_vec(),
        calls: None,
        concurrency: None,
        latency: None,
        stream: None,
        base_url: None,
        api_key: None,
        baseline: false,
        json: false,
        svg: None,
        client: ClientKind::Hyper,
        help: false,
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let millis = |name: &str, v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("{name}: {e}"))
        };
        match a.as_str() {
            "--help" | "-h" => out.help = true,
            "--scenario" => {
                let v = value("--scenario")?;
                out.scenarios = Scenario::parse(&v).ok_or(format!(
                    "unknown scenario {v}; expected burst, flaky, quota, outage, clean, latency, \
                     stream-long, priority or all (several as NAME,NAME)"
                ))?;
            }
            "--n" => out.calls = Some(value("--n")?.parse().map_err(|e| format!("--n: {e}"))?),
            "--concurrency" => {
                out.concurrency = Some(
                    value("--concurrency")?
                        .parse()
                        .map_err(|e| format!("--concurrency: {e}"))?,
                )
            }
            "--latency-ms" => out.latency = Some(millis("--latency-ms", value("--latency-ms")?)?),
            "--stream-ms" => out.stream = Some(millis("--stream-ms", value("--stream-ms")?)?),
            "--base-url" => out.base_url = Some(value("--base-url")?),
            "--api-key" => out.api_key = Some(value("--api-key")?),
            "--baseline" => out.baseline = true,
            "--json" => out.json = true,
            "--svg" => {
                let v = value("--svg")?;
                // `none`: no plot, as without the option.
                out.svg = (v != "none").then_some(v);
            }
            "--client" => {
                let v = value("--client")?;
                out.client = ClientKind::parse(&v).ok_or(format!(
                    "unknown client {v}; expected hyper, reqwest or async-openai"
                ))?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; expected --scenario, --n, --concurrency, \
                     --latency-ms, --stream-ms, --base-url, --api-key, --baseline, --json, --svg, \
                     --client, --processes, --store, --repeat or --help"
                ))
            }
        }
    }
    Ok(out)
}

impl Args {
    /// The configuration of one scenario under these options.
    pub(crate) fn config(&self, scenario: Scenario) -> Config {
        let mut cfg = Config::new(scenario);
        cfg.client = self.client;
        cfg.mock_runtime = true;
        if scenario == Scenario::Clean {
            cfg.rounds = 5;
        }
        if let Some(n) = self.calls {
            cfg.calls = n;
        }
        if let Some(c) = self.concurrency {
            cfg.concurrency = c;
        }
        if let Some(l) = self.latency {
            cfg.latency = l;
        }
        if let (Some(d), true) = (self.stream, scenario.streams()) {
            cfg.stream = d;
        }
        if let Some(url) = &self.base_url {
            cfg.base_url = Some(url.clone());
            cfg.baseline = self.baseline;
            cfg.api_key = self
                .api_key
                .clone()
                .or_else(|| std::env::var("OPENAI_API_KEY").ok())
                .unwrap_or_else(|| TEST_KEY.to_string());
        } else if let Some(key) = &self.api_key {
            cfg.api_key = key.clone();
        }
        cfg
    }
}

/// Prints a line for people: on stderr when stdout carries the JSON lines (`--json`), else
/// on stdout.
pub(crate) fn print_line(json: bool, s: &str) {
    if json {
        eprintln!("{s}");
    } else {
        println!("{s}");
    }
}

/// Parsed options, or on an error `loadtest: <error>` on stderr and exit status 2.
fn or_exit<T>(parsed: Result<T, String>) -> T {
    parsed.unwrap_or_else(|e| {
        eprintln!("loadtest: {e}");
        std::process::exit(2);
    })
}

/// The options that the scenarios run alone with their own parser (`stall`, `tpm`) share:
/// the calls, the calls in flight, the mock's answer time, and `--json` (one JSON object per
/// row on stdout, the lines for people on stderr).
#[derive(Debug, Clone)]
struct AloneOptions {
    calls: usize,
    concurrency: usize,
    latency: Duration,
    json: bool,
}

impl AloneOptions {
    /// Takes `arg` when it is a shared option, its value read from `rest`: `--scenario NAME`
    /// (skipped), `--json`, `--n N`, `--concurrency C` (at least 1), `--latency-ms MS`.
    /// `Ok(false)`: not a shared option, left to the scenario.
    fn take(&mut self, arg: &str, rest: &mut std::slice::Iter<'_, String>) -> Result<bool, String> {
        match arg {
            "--scenario" => {
                option_value(rest, "--scenario")?;
            }
            "--json" => self.json = true,
            "--n" => self.calls = option_number(rest, "--n")? as usize,
            "--concurrency" => {
                self.concurrency = option_number(rest, "--concurrency")?.max(1) as usize
            }
            "--latency-ms" => {
                self.latency = Duration::from_millis(option_number(rest, "--latency-ms")?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses the command line of a scenario run alone into `o`: the shared options go to the
/// [`AloneOptions`] that `base` picks out of it, every other option to `own` (which reads its
/// value from the iterator and refuses an option the scenario does not take).
fn parse_alone<O>(
    raw: &[String],
    mut o: O,
    base: fn(&mut O) -> &mut AloneOptions,
    mut own: impl FnMut(&mut O, &str, &mut std::slice::Iter<'_, String>) -> Result<(), String>,
) -> Result<O, String> {
    let mut rest = raw.iter();
    while let Some(arg) = rest.next() {
        if !base(&mut o).take(arg, &mut rest)? {
            own(&mut o, arg, &mut rest)?;
        }
    }
    Ok(o)
}

/// The value after option `name`.
pub(crate) fn option_value(
    rest: &mut std::slice::Iter<'_, String>,
    name: &str,
) -> Result<String, String> {
    rest.next()
        .cloned()
        .ok_or_else(|| format!("{name} needs a value"))
}

/// The number after option `name`.
pub(crate) fn option_number(
    rest: &mut std::slice::Iter<'_, String>,
    name: &str,
) -> Result<u64, String> {
    let v = option_value(rest, name)?;
    v.parse::<u64>().map_err(|e| format!("{name} {v}: {e}"))
}

/// Whether the command line asks for scenario `name` (`--scenario <name>`).
pub(crate) fn scenario_asked(raw: &[String], name: &str) -> bool {
    raw.windows(2).any(|w| w[0] == "--scenario" && w[1] == name)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--worker") {
        return loadtest_procs::worker_main().await;
    }
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return Ok(());
    }
    if brownout::asked(&raw) {
        return brownout::main(&raw).await;
    }
    if stall::requested(&raw) {
        return stall::main(&raw).await;
    }
    if tpm::requested(&raw) {
        return tpm::main(&raw).await;
    }
    let parsed =
        loadtest_procs::split_args(raw).and_then(|(multi, raw)| Ok((multi, parse_args(raw)?)));
    let (multi, args) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadtest: {e}\n(loadtest --help lists the options)");
            std::process::exit(2);
        }
    };
    if args.scenarios.contains(&Scenario::Priority)
        && (multi.is_some() || args.client != ClientKind::Hyper || args.base_url.is_some())
    {
        eprintln!(
            "loadtest: the priority scenario runs the hyper client against the embedded mock, \
             in one process (no --client, --base-url, --processes or --store)"
        );
        std::process::exit(2);
    }
    if let Some(multi) = multi {
        if args.client != ClientKind::Hyper {
            eprintln!(
                "loadtest: --processes and --store run the hyper client only (not --client {})",
                args.client.name()
            );
            std::process::exit(2);
        }
        return loadtest_procs::main_multi(&args, &multi).await;
    }
    let say = |s: &str| print_line(args.json, s);
    say(HEADER);
    let mut targets = Vec::new();
    for &scenario in &args.scenarios {
        if scenario == Scenario::Priority {
            let rows = priority::run(&args.config(scenario)).await?;
            say(&priority::table(&rows));
            if args.json {
                for r in &rows {
                    println!("{}", r.json());
                }
            }
            targets.push(priority::target_line(&rows));
            continue;
        }
        let report = run(&args.config(scenario)).await?;
        say(&table(&report));
        if args.json {
            println!("{}", report.json());
        }
        if let Some((sent, during, after, after_ok)) = report.stack.outage {
            targets.push(format!(
                "outage (stack): {sent} requests for {during} calls started during the outage; \
                 {after_ok}/{after} calls started after it ok"
            ));
        }
        if let Some((sent, during, after, after_ok)) =
            report.baseline.as_ref().and_then(|b| b.outage)
        {
            targets.push(format!(
                "outage (baseline): {sent} requests for {during} calls started during the \
                 outage; {after_ok}/{after} calls started after it ok"
            ));
        }
        targets.push(target_line(&report));
        targets.extend(rounds_line(&report));
        targets.extend(cpu_line(&report).filter(|_| scenario == Scenario::Clean));
        if scenario == Scenario::Burst {
            if let Some(path) = &args.svg {
                plot(&report, path)?;
                targets.push(format!("burst plot written to {path}"));
            }
        }
    }
    if args.svg.is_some() && !args.scenarios.contains(&Scenario::Burst) {
        targets.push("no burst run: no plot written".into());
    }
    for t in targets {
        say(&t);
    }
    Ok(())
}
