//! What each adapter costs a call that succeeds at once, against the bare client, over
//! loopback to the embedded mock server (no rate limits, no latency), in the same run:
//!
//! - hyper-util's client, bare and under `OpenAiLayer` (what the tower stack adds today);
//! - reqwest's `Client`, bare and as a `ClientWithMiddleware` with `OpenAiMiddleware` (and
//!   without any middleware, for reqwest-middleware's own part of the difference);
//! - async-openai's `Client`, as it comes (its default executor, with its own retry layer)
//!   and with `OpenAiLayer::into_async_openai()` as its HTTP service.
//!
//! One call is a small chat completion, the same request on both sides of a pair (the key
//! set by the caller, so the stack checks it and writes nothing), sent and its body read (and,
//! for async-openai, decoded), on a current-thread runtime that also runs the mock. Criterion
//! measures each side first (time per call); then the sides of each pair run in alternating
//! rounds and the ratios are taken per round, so that a slower stretch of a shared machine
//! slows both sides of a ratio. Each round also reads the thread's CPU time (Linux), which
//! other processes on a busy machine do not inflate; it is summed over the rounds. Goal: each
//! adapter adds at most what the tower stack adds over hyper (±20 %).
//!
//! Run: `cargo bench -p oai-resilience --features mock,reqwest,async-openai --bench adapters
//! -- --warm-up-time 1 --measurement-time 3` (`RATIO_ROUNDS`, default 41, and
//! `RATIO_CALLS`, calls per side per round, default 200, change the rounds).
//!
//! Instructions per call, which a busy machine does not change: `PROFILE_SIDE=<side>
//! PROFILE_CALLS=<n> valgrind --tool=callgrind target/release/deps/adapters-<hash>` for two
//! values of `n` (e.g. 200 and 1200); the difference of the totals divided by the difference
//! of `n` is one call, setup excluded.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use oai_resilience::adapter::reqwest::OpenAiMiddleware;
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::{AuthLayer, OpenAiLayer};
use test_support::CHAT;
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt};

/// A made-up key of OpenAI's shape.
const KEY: &str = oai_resilience::mock::TEST_KEY;

type Call<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// The clients under test, all pointed at one mock.
struct Clients {
    url: String,
    hyper: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    hyper_stack: oai_resilience::OpenAiService<
        HyperClient<
            hyper_util::client::legacy::connect::HttpConnector,
            oai_resilience::validate::ValidateBody<Full<Bytes>>,
        >,
    >,
    reqwest: reqwest::Client,
    reqwest_mw: reqwest_middleware::ClientWithMiddleware,
    reqwest_mw_none: reqwest_middleware::ClientWithMiddleware,
    openai: async_openai::Client<OpenAIConfig>,
    openai_stack: async_openai::Client<OpenAIConfig>,
}

fn layer() -> OpenAiLayer {
    OpenAiLayer::new().auth(AuthLayer::from_key(KEY))
}

/// The chat request of the reqwest sides, sent through `$client` (a `reqwest::Client` or a
/// `ClientWithMiddleware`, whose request builders have no common trait) to `$url` and awaited:
/// the same request on both sides of a pair.
macro_rules! send_chat {
    ($client:expr, $url:expr) => {
        $client
            .post($url)
            .header("content-type", "application/json")
            .bearer_auth(KEY)
            .body(CHAT)
            .send()
            .await
            .unwrap()
    };
}

impl Clients {
    fn new(server: &MockServer) -> Self {
        let config = || {
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", server.url()))
                .with_api_key(KEY)
        };
        Clients {
            url: server.endpoint(Route::ChatCompletions),
            hyper: test_support::http_client(),
            hyper_stack: layer().layer(test_support::http_client()),
            reqwest: reqwest::Client::new(),
            reqwest_mw: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(OpenAiMiddleware::new(layer()))
                .build(),
            reqwest_mw_none: reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build(),
            openai: async_openai::Client::with_config(config()),
            openai_stack: async_openai::Client::with_config(config())
                .with_http_service(layer().into_async_openai()),
        }
    }

    fn hyper_request(&self) -> http::Request<Full<Bytes>> {
        http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
            .unwrap()
    }

    /// The chat request of the `ClientWithMiddleware` sides, sent through `client`.
    async fn send_mw(
        &self,
        client: &reqwest_middleware::ClientWithMiddleware,
    ) -> reqwest::Response {
        send_chat!(client, &self.url)
    }

    /// One call of side `side`.
    fn call(&self, side: Side) -> Call<'_> {
        match side {
            Side::Hyper => Box::pin(async move {
                let res = self.hyper.request(self.hyper_request()).await.unwrap();
                assert!(res.status().is_success());
                black_box(res.into_body().collect().await.unwrap().to_bytes());
            }),
            Side::HyperStack => Box::pin(async move {
                let res = self
                    .hyper_stack
                    .clone()
                    .oneshot(self.hyper_request())
                    .await
                    .unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes());
            }),
            Side::Reqwest => Box::pin(async move {
                let res = send_chat!(self.reqwest, &self.url);
                assert!(res.status().is_success());
                black_box(res.bytes().await.unwrap());
            }),
            // The same request as the bare side's, key included (as in the other pairs): the
            // stack checks the key and does not write it (writing it is the auth layer's
            // work, not the adapter's).
            Side::ReqwestMiddleware => Box::pin(async move {
                let res = self.send_mw(&self.reqwest_mw).await;
                black_box(res.bytes().await.unwrap());
            }),
            Side::ReqwestMiddlewareNone => Box::pin(async move {
                let res = self.send_mw(&self.reqwest_mw_none).await;
                assert!(res.status().is_success());
                black_box(res.bytes().await.unwrap());
            }),
            Side::AsyncOpenAi => Box::pin(async move {
                black_box(self.openai.chat().create(chat()).await.unwrap());
            }),
            Side::AsyncOpenAiStack => Box::pin(async move {
                black_box(self.openai_stack.chat().create(chat()).await.unwrap());
            }),
        }
    }
}

fn chat() -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessage::from("Hello").into()])
        .build()
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Hyper,
    HyperStack,
    Reqwest,
    ReqwestMiddleware,
    ReqwestMiddlewareNone,
    AsyncOpenAi,
    AsyncOpenAiStack,
}

const SIDES: [Side; 7] = [
    Side::Hyper,
    Side::HyperStack,
    Side::Reqwest,
    Side::ReqwestMiddleware,
    Side::ReqwestMiddlewareNone,
    Side::AsyncOpenAi,
    Side::AsyncOpenAiStack,
];

const PAIRS: [(&str, Side, Side); 4] = [
    ("hyper + OpenAiLayer", Side::Hyper, Side::HyperStack),
    (
        "reqwest + OpenAiMiddleware",
        Side::Reqwest,
        Side::ReqwestMiddleware,
    ),
    (
        "reqwest + ClientWithMiddleware without a middleware (reqwest-middleware's own part)",
        Side::Reqwest,
        Side::ReqwestMiddlewareNone,
    ),
    (
        "async-openai + into_async_openai",
        Side::AsyncOpenAi,
        Side::AsyncOpenAiStack,
    ),
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The time this thread has run on a CPU (Linux: `/proc/thread-self/schedstat`), to which a
/// busy machine's other processes add nothing, unlike the wall time while they hold the core.
/// The runtime, the clients and the mock all run on this thread. The kernel brings the count
/// up to date at each scheduler tick (a few ms) while the thread runs, so only sums over many
/// rounds are meaningful.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Wall and CPU time (µs) per call of `calls` calls of `side`.
#[derive(Debug, Clone, Copy)]
struct PerCall {
    wall: f64,
    cpu: Option<f64>,
}

/// The time per call of `calls` calls of `side`.
fn per_call(rt: &Runtime, clients: &Clients, side: Side, calls: u32) -> PerCall {
    rt.block_on(async {
        let cpu = thread_cpu();
        let start = Instant::now();
        for _ in 0..calls {
            clients.call(side).await;
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(calls);
        PerCall {
            wall: us(start.elapsed()),
            cpu: cpu.zip(thread_cpu()).map(|(a, b)| us(b - a)),
        }
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(MockServer::builder().no_rate_limits().start());
    let clients = Clients::new(&server);

    // `PROFILE_SIDE=ReqwestMiddleware` (a side's name): only `PROFILE_CALLS` (default 1000)
    // calls of that side, after 50 to warm up, and nothing else; for a profiler that counts
    // instructions (`valgrind --tool=callgrind`), whose counts divided by the calls are the
    // cost of one call.
    if let Ok(name) = std::env::var("PROFILE_SIDE") {
        let side = SIDES
            .into_iter()
            .find(|s| format!("{s:?}") == name)
            .expect("PROFILE_SIDE names a side");
        per_call(&rt, &clients, side, 50);
        per_call(&rt, &clients, side, env_or("PROFILE_CALLS", 1000));
        return;
    }

    let mut c = Criterion::default().configure_from_args();
    for side in SIDES {
        let name = format!("{side:?}");
        c.bench_function(&name, |b| b.iter(|| rt.block_on(clients.call(side))));
    }
    c.final_summary();

    // The ratios, in alternating rounds.
    let rounds: usize = env_or("RATIO_ROUNDS", 41);
    let calls: u32 = env_or("RATIO_CALLS", 200);
    let mut added = Vec::new();
    for (name, bare, adapted) in PAIRS.into_iter().filter(|_| rounds > 0) {
        per_call(&rt, &clients, bare, calls);
        per_call(&rt, &clients, adapted, calls);
        let samples: Vec<(PerCall, PerCall)> = (0..rounds)
            .map(|_| {
                let x = per_call(&rt, &clients, bare, calls);
                (x, per_call(&rt, &clients, adapted, calls))
            })
            .collect();
        let wall = summary(samples.iter().map(|(x, y)| (x.wall, y.wall)));
        println!("{name}: wall: {}", wall.line());
        // CPU time: the sums over all rounds (each round's count is off by up to a tick).
        let cpu = samples
            .iter()
            .map(|(x, y)| x.cpu.zip(y.cpu))
            .try_fold((0.0, 0.0), |(a, b), xy| xy.map(|(x, y)| (a + x, b + y)))
            .map(|(a, b)| (a / rounds as f64, b / rounds as f64));
        if let Some((x, y)) = cpu {
            println!(
                "{name}: cpu:  bare {x:.1} µs, adapted {y:.1} µs per call (sums of the rounds); \
                 ratio {:.3}x, adds {:.1} µs",
                y / x,
                y - x
            );
        }
        let cpu = cpu.map(|(x, y)| y - x);
        added.push((name, wall.added, cpu));
    }
    let Some(&(_, tower, tower_cpu)) = added.first() else {
        return;
    };
    for &(name, us, cpu) in &added[1..] {
        println!(
            "{name} adds {:.2}x what OpenAiLayer adds over hyper in wall time ({us:.1} µs vs \
             {tower:.1} µs)",
            us / tower
        );
        if let Some((cpu, tower_cpu)) = cpu.zip(tower_cpu) {
            println!(
                "{name} adds {:.2}x what OpenAiLayer adds over hyper in CPU time ({cpu:.1} µs \
                 vs {tower_cpu:.1} µs)",
                cpu / tower_cpu
            );
        }
    }
}

/// The medians of a pair's rounds: each side's time per call, the ratio, and what the
/// adapted side adds.
struct Summary {
    bare: f64,
    adapted: f64,
    ratio: f64,
    lo: f64,
    hi: f64,
    added: f64,
}

impl Summary {
    fn line(&self) -> String {
        format!(
            "bare {:.1} µs, adapted {:.1} µs per call; ratio median {:.3}x (rounds \
             {:.3}x-{:.3}x), adds {:.1} µs",
            self.bare, self.adapted, self.ratio, self.lo, self.hi, self.added
        )
    }
}

fn summary(rounds: impl Iterator<Item = (f64, f64)>) -> Summary {
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for (x, y) in rounds {
        a.push(x);
        b.push(y);
        ratios.push(y / x);
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let (bare, adapted) = (median(a), median(b));
    Summary {
        bare,
        adapted,
        ratio: median(ratios),
        lo,
        hi,
        added: adapted - bare,
    }
}
