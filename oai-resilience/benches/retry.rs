//! The happy path of the retry stack: what `RetryLayer` + `ClassifyLayer` add to a call that
//! succeeds at once, next to the same service bare and under `tower::retry` with a no-op
//! policy, in the same run.
//!
//! Each iteration makes 1000 calls (`ready().await` + `call().await`) on a current-thread
//! runtime; criterion reports the time per iteration, so divide by 1000 for one call.
//!
//! Run: `cargo bench -p oai-resilience --bench retry -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{ready, Ready};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::retry::{RetryConfig, RetryLayer};
use oai_resilience::ClassifyLayer;
use tower::retry::RetryLayer as TowerRetryLayer;
use tower::{service_fn, Layer, Service};

mod common;
use common::{Bench, Body};

/// A tower retry policy that never retries and keeps no copy of the request.
#[derive(Clone, Copy)]
struct Noop;

impl<Req, Res, E> tower::retry::Policy<Req, Res, E> for Noop {
    type Future = Ready<()>;
    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }
    fn clone_request(&mut self, _req: &Req) -> Option<Req> {
        None
    }
}

/// A tower retry policy that never retries but keeps a copy of the request, as any policy
/// that might retry must.
#[derive(Clone, Copy)]
struct NoopCloning;

impl<Res, E> tower::retry::Policy<Request<Body>, Res, E> for NoopCloning {
    type Future = Ready<()>;
    fn retry(
        &mut self,
        _req: &mut Request<Body>,
        _result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        None
    }
    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        Some(req.clone())
    }
}

fn upstream() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    service_fn(|_req: Request<Body>| {
        ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"{\"ok\":true}"),
        ))))
    })
}

fn request() -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"gpt-4o-mini\"}",
        )))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = common::runtime();
    let mut b = Bench::new(c, &rt, request);
    let classify = || ClassifyLayer::new().layer(upstream());
    b.run("bare", upstream());
    b.run(
        "tower_retry_noop",
        TowerRetryLayer::new(Noop).layer(upstream()),
    );
    b.run("classify", classify());
    b.run(
        "tower_retry_noop+classify",
        TowerRetryLayer::new(Noop).layer(classify()),
    );
    b.run(
        "tower_retry_noop_cloning+classify",
        TowerRetryLayer::new(NoopCloning).layer(classify()),
    );
    // The full stack with the default config (budget, deadline, retry-count header on), then
    // its breakdown: without the replay copy (one attempt only), without the header.
    for (name, config) in [
        ("oai_retry+classify", RetryConfig::new()),
        (
            "oai_retry_no_replay_copy+classify",
            RetryConfig::new().max_attempts(1),
        ),
        (
            "oai_retry_no_header+classify",
            RetryConfig::new().retry_count_header(None),
        ),
    ] {
        b.run(name, RetryLayer::with_config(config).layer(classify()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
