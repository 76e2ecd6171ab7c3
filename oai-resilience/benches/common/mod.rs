//! What the `retry` and `stack` benchmarks share: the body type, the runtime, and the loop of
//! calls that each criterion iteration (and each profiling run) makes.

use bytes::Bytes;
use criterion::{black_box, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// The request and response body of the benchmarked services.
pub(crate) type Body = Full<Bytes>;

/// Calls per criterion iteration.
pub(crate) const CALLS: usize = 1000;

/// The current-thread runtime, with timers, that the calls run on.
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// `n` calls of `svc` (`ready().await` + `call().await`), each with a new `request()`; each
/// response goes to `black_box`.
pub(crate) async fn calls<S>(svc: &mut S, n: usize, request: impl Fn() -> Request<Body>)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let res = svc.ready().await.unwrap().call(request()).await.unwrap();
        black_box(res);
    }
}

/// Criterion benchmarks of services on one runtime, all called with requests from `request`.
pub(crate) struct Bench<'a, R> {
    c: &'a mut Criterion,
    rt: &'a Runtime,
    request: R,
}

impl<'a, R: Fn() -> Request<Body> + Copy> Bench<'a, R> {
    pub(crate) fn new(c: &'a mut Criterion, rt: &'a Runtime, request: R) -> Self {
        Bench { c, rt, request }
    }

    /// Benchmarks `svc` as `name`: each iteration makes [`CALLS`] calls of a clone of `svc`.
    pub(crate) fn run<S>(&mut self, name: &str, svc: S)
    where
        S: Service<Request<Body>, Response = Response<Body>> + Clone,
        S::Error: std::fmt::Debug,
    {
        let (rt, request) = (self.rt, self.request);
        self.c.bench_function(name, |b| {
            b.iter(|| {
                let mut svc = svc.clone();
                rt.block_on(calls(&mut svc, CALLS, request))
            })
        });
    }
}
