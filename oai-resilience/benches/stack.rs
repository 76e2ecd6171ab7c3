//! What each layer of the default stack costs a call that succeeds at once: the stack built
//! up one layer at a time (classify, + pace, + retry, + auth, + validate, then
//! `OpenAiLayer` with a base URL) over an in-memory upstream that answers a canned 200 with
//! OpenAI's rate-limit headers, in the same run.
//!
//! Each iteration makes 1000 calls (`ready().await` + `call().await`) of a small chat
//! completion on a current-thread runtime; criterion reports the time per iteration, so divide
//! by 1000 for one call. The upstream's own cost (building the canned response) is the
//! `upstream` line.
//!
//! Run: `cargo bench -p oai-resilience --bench stack -- --warm-up-time 1 --measurement-time 3`
//!
//! Instructions per call, which a busy machine does not change: `PROFILE_SIDE=openai_layer`
//! (no observer) or `PROFILE_SIDE=counting_observer`, with `PROFILE_CALLS=<n>`, runs only
//! that stack for `n` calls after 50 to warm up; under `valgrind --tool=callgrind
//! target/release/deps/stack-<hash>` for two values of `n` (e.g. 1000 and 11000), the
//! difference of the totals divided by the difference of `n` is one call, setup excluded.

use std::convert::Infallible;
use std::future::{ready, Ready};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::observe::{AttemptFinished, AttemptStarted, CallSucceeded, Observer};
use oai_resilience::stack::OpenAiLayer;
use oai_resilience::{AuthLayer, ClassifyLayer, PaceLayer, RetryLayer, ValidateLayer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tower::{service_fn, Layer, Service, ServiceBuilder};

mod common;
use common::{Bench, Body};

/// A made-up key of OpenAI's shape.
const KEY: &str = "sk-proj-BenchBenchBenchBenchBench0000";
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}"#;

fn canned() -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-request-id", "req_0123456789abcdef0123456789abcdef")
        .header("x-ratelimit-limit-requests", "10000")
        .header("x-ratelimit-remaining-requests", "9999")
        .header("x-ratelimit-reset-requests", "6ms")
        .header("x-ratelimit-limit-tokens", "2000000")
        .header("x-ratelimit-remaining-tokens", "1999990")
        .header("x-ratelimit-reset-tokens", "0s")
        .body(Full::new(Bytes::from_static(b"{\"id\":\"chatcmpl-1\"}")))
        .unwrap()
}

fn upstream<B>() -> impl Service<
    Request<B>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    service_fn(|_req: Request<B>| ready(Ok::<_, Infallible>(canned())))
}

fn request() -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// An observer that counts its events (the "counting observer" of the overhead figure).
#[derive(Debug, Default)]
struct Counting(AtomicU64);

impl Observer for Counting {
    fn attempt_started(&self, _: &AttemptStarted<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn attempt_finished(&self, _: &AttemptFinished<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn call_succeeded(&self, _: &CallSucceeded<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The stack of the `openai_layer_with_base_url` lines.
fn openai_layer() -> OpenAiLayer {
    OpenAiLayer::new()
        .auth(AuthLayer::from_key(KEY))
        .base_url("https://api.openai.com".parse().unwrap())
}

/// 50 calls of a clone of `svc` to warm up, then `calls` calls of `svc`, for a profiler.
fn profile<S>(rt: &tokio::runtime::Runtime, mut svc: S, calls: usize)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    rt.block_on(common::calls(&mut svc.clone(), 50, request));
    rt.block_on(common::calls(&mut svc, calls, request));
}

/// `PROFILE_SIDE` set: runs that side only (see the module docs) and returns true.
fn profile_side(rt: &tokio::runtime::Runtime) -> bool {
    let Ok(side) = std::env::var("PROFILE_SIDE") else {
        return false;
    };
    let calls: usize = std::env::var("PROFILE_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    match side.as_str() {
        "openai_layer" => {
            profile(rt, openai_layer().layer(upstream()), calls);
        }
        // observer:begin
        "counting_observer" => {
            let counting = Arc::new(Counting::default());
            let svc = openai_layer().observer(counting.clone()).layer(upstream());
            profile(rt, svc, calls);
            assert!(counting.0.load(Ordering::Relaxed) > 0);
        }
        // observer:end
        other => panic!("PROFILE_SIDE={other}: expected openai_layer or counting_observer"),
    }
    true
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    if profile_side(&rt) {
        return;
    }
    // Each stack's layers: the layer named first in its line over the stack of the line before.
    let pace = || {
        ServiceBuilder::new()
            .layer(PaceLayer::new())
            .layer(ClassifyLayer::new())
    };
    let retry = || ServiceBuilder::new().layer(RetryLayer::new()).layer(pace());
    let auth = || {
        ServiceBuilder::new()
            .layer(AuthLayer::from_key(KEY))
            .layer(retry())
    };
    let validate = || {
        ServiceBuilder::new()
            .layer(ValidateLayer::new())
            .layer(auth())
    };
    let mut b = Bench::new(c, &rt, request);
    b.run("upstream", upstream());
    b.run("classify", ClassifyLayer::new().layer(upstream()));
    b.run("pace+classify", pace().service(upstream()));
    b.run("retry+pace+classify", retry().service(upstream()));
    b.run("auth+retry+pace+classify", auth().service(upstream()));
    b.run(
        "validate+auth+retry+pace+classify",
        validate().service(upstream()),
    );
    b.run(
        "openai_layer_with_base_url",
        openai_layer().layer(upstream()),
    );
    // The same stack with an observer that counts (`observe::Observer`), in the same run.
    // One call before criterion's (which makes none under `--list` or a filter that skips
    // this line) shows that the observer sees the calls.
    let counting = Arc::new(Counting::default());
    let observed = openai_layer().observer(counting.clone()).layer(upstream());
    rt.block_on(common::calls(&mut observed.clone(), 1, request));
    assert!(counting.0.load(Ordering::Relaxed) > 0);
    b.run("openai_layer_with_base_url+counting_observer", observed);
}

criterion_group!(benches, bench);
criterion_main!(benches);
