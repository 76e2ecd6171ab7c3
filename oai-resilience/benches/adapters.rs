//! What each adapter costs a call that succeeds at once, against the bare client, over
//! loopback to the embedded mock server (no rate limits, no latency), in the same run:
//!
//! - hyper-util's client, bare and under `OpenAiLayer` (what the tower stack adds today);
//! - reqwest's `Client`, bare and as a `ClientWithMiddleware` with `OpenAiMiddleware` (and
//!   without any middleware, for reqwest-middleware's own part of the difference);
//! - async-openai's `Client`, as it comes (its default executor, with its own retry layer)
//!   and with `OpenAiLayer::into_async_openai()` as its HTTP service.
//!
//! One call is a small chat completion, sent and its body read (and, for async-openai,
//! decoded), on a current-thread runtime that also runs the mock. Criterion measures each side
//! first (time per call); then the sides of each pair run in alternating rounds and the
//! ratios are taken per round, so that a slower stretch of a shared machine slows both sides
//! of a ratio. Goal: each adapter adds at most what the tower stack adds over hyper (±20 %).
//!
//! Run: `cargo bench -p oai-resilience --features mock,reqwest,async-openai --bench adapters
//! -- --warm-up-time 1 --measurement-time 3` (`RATIO_ROUNDS`, default 41, and
//! `RATIO_CALLS`, calls per side per round, default 200, change the rounds).

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
use hyper_util::rt::TokioExecutor;
use oai_resilience::adapter::reqwest::OpenAiMiddleware;
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::{AuthLayer, OpenAiLayer};
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt};

/// A made-up key of OpenAI's shape.
const KEY: &str = oai_resilience::mock::TEST_KEY;
const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#;

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

impl Clients {
    fn new(server: &MockServer) -> Self {
        let config = || {
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", server.url()))
                .with_api_key(KEY)
        };
        Clients {
            url: server.endpoint(Route::ChatCompletions),
            hyper: HyperClient::builder(TokioExecutor::new()).build_http(),
            hyper_stack: layer().layer(HyperClient::builder(TokioExecutor::new()).build_http()),
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
                let res = self
                    .reqwest
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .bearer_auth(KEY)
                    .body(CHAT)
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success());
                black_box(res.bytes().await.unwrap());
            }),
            Side::ReqwestMiddleware => Box::pin(async move {
                let res = self
                    .reqwest_mw
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .body(CHAT)
                    .send()
                    .await
                    .unwrap();
                black_box(res.bytes().await.unwrap());
            }),
            Side::ReqwestMiddlewareNone => Box::pin(async move {
                let res = self
                    .reqwest_mw_none
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .bearer_auth(KEY)
                    .body(CHAT)
                    .send()
                    .await
                    .unwrap();
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

#[derive(Debug, Clone, Copy)]
enum Side {
    Hyper,
    HyperStack,
    Reqwest,
    ReqwestMiddleware,
    ReqwestMiddlewareNone,
    AsyncOpenAi,
    AsyncOpenAiStack,
}

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

/// Time per call of `calls` calls of `side`.
fn per_call(rt: &Runtime, clients: &Clients, side: Side, calls: u32) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..calls {
            clients.call(side).await;
        }
        start.elapsed() / calls
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

    let mut c = Criterion::default().configure_from_args();
    for (_, bare, adapted) in PAIRS {
        for side in [bare, adapted] {
            let name = format!("{side:?}");
            c.bench_function(&name, |b| b.iter(|| rt.block_on(clients.call(side))));
        }
    }
    c.final_summary();

    // The ratios, in alternating rounds.
    let rounds: usize = env_or("RATIO_ROUNDS", 41);
    let calls: u32 = env_or("RATIO_CALLS", 200);
    let mut added = Vec::new();
    for (name, bare, adapted) in PAIRS.into_iter().filter(|_| rounds > 0) {
        let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        per_call(&rt, &clients, bare, calls);
        per_call(&rt, &clients, adapted, calls);
        for _ in 0..rounds {
            let x = per_call(&rt, &clients, bare, calls).as_secs_f64() * 1e6;
            let y = per_call(&rt, &clients, adapted, calls).as_secs_f64() * 1e6;
            a.push(x);
            b.push(y);
            ratios.push(y / x);
        }
        let (ma, mb) = (median(a), median(b));
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "{name}: bare {ma:.1} µs, adapted {mb:.1} µs per call; ratio median {:.3}x \
             (rounds {lo:.3}x-{hi:.3}x), adds {:.1} µs",
            median(ratios),
            mb - ma
        );
        added.push((name, mb - ma));
    }
    let Some(&(_, tower)) = added.first() else {
        return;
    };
    for (name, us) in &added[1..] {
        println!(
            "{name} adds {:.2}x what OpenAiLayer adds over hyper ({us:.1} µs vs {tower:.1} µs)",
            us / tower
        );
    }
}
