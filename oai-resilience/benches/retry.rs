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
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use oai_resilience::retry::{RetryConfig, RetryLayer};
use oai_resilience::{ClassifyLayer, Error};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

type Body = Full<Bytes>;
const CALLS: usize = 1000;

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

fn run<S, E>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = E> + Clone,
    E: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter(|| {
            let mut svc = svc.clone();
            rt.block_on(async {
                for _ in 0..CALLS {
                    let res = svc.ready().await.unwrap().call(request()).await.unwrap();
                    black_box(res);
                }
            })
        })
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    run(c, &rt, "bare", upstream());
    run(
        c,
        &rt,
        "tower_retry_noop",
        ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(Noop))
            .service(upstream()),
    );
    run(
        c,
        &rt,
        "classify",
        ServiceBuilder::new()
            .layer(ClassifyLayer::new())
            .service(upstream()),
    );
    run(
        c,
        &rt,
        "tower_retry_noop+classify",
        ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(Noop))
            .layer(ClassifyLayer::new())
            .service(upstream()),
    );
    run(
        c,
        &rt,
        "tower_retry_noop_cloning+classify",
        ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(NoopCloning))
            .layer(ClassifyLayer::new())
            .service(upstream()),
    );
    // The full stack with the default config: budget, deadline, retry-count header on.
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(RetryConfig::new()))
        .layer(ClassifyLayer::new())
        .service(upstream());
    run::<_, Error>(c, &rt, "oai_retry+classify", svc);
    // Breakdown: without the replay copy (one attempt only), without the header.
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(RetryConfig::new().max_attempts(1)))
        .layer(ClassifyLayer::new())
        .service(upstream());
    run::<_, Error>(c, &rt, "oai_retry_no_replay_copy+classify", svc);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::with_config(
            RetryConfig::new().retry_count_header(None),
        ))
        .layer(ClassifyLayer::new())
        .service(upstream());
    run::<_, Error>(c, &rt, "oai_retry_no_header+classify", svc);
}

criterion_group!(benches, bench);
criterion_main!(benches);
