//! The pace layer's overhead per call when no limit binds: classify over an instant fake
//! (the baseline) against pace + classify over the same fake, and the pacer's
//! acquire + on_response alone.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http_body_util::Full;
use oai_resilience::pace::{Cost, PaceKey, PaceLayer, Pacer};
use oai_resilience::{ClassifyLayer, RateLimitSnapshot};
use tokio::runtime::Runtime;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello there"}],"max_tokens":16}"#;
const BATCH: usize = 100;

fn request() -> http::Request<Full<Bytes>> {
    http::Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-proj-BENCHbenchBENCHbench0000")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

fn upstream(
    _req: http::Request<Full<Bytes>>,
) -> std::future::Ready<Result<http::Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(http::Response::builder()
        .header("x-ratelimit-limit-requests", "1000000")
        .header("x-ratelimit-remaining-requests", "999999")
        .header("x-ratelimit-reset-requests", "1s")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()))
}

/// Benchmarks `name` in `group`: a service from `make` (one per criterion sample), each
/// iteration making `BATCH` calls of it.
fn calls<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    make: impl Fn() -> S,
) where
    S: Service<http::Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        let mut svc = make();
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    svc.ready().await.unwrap().call(request()).await.unwrap();
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
    let mut group = c.benchmark_group("100 calls");
    calls(&mut group, &rt, "classify (baseline)", || {
        ServiceBuilder::new()
            .layer(ClassifyLayer::new())
            .service(service_fn(upstream))
    });
    calls(&mut group, &rt, "pace + classify", || {
        ServiceBuilder::new()
            .layer(PaceLayer::new())
            .layer(ClassifyLayer::new())
            .service(service_fn(upstream))
    });
    group.bench_function("pacer acquire + on_response", |b| {
        let pacer = Pacer::default();
        let key = PaceKey::new("api.openai.com").with_model("gpt-4o-mini");
        let mut snap = RateLimitSnapshot::default();
        snap.limit_requests = Some(1_000_000);
        snap.remaining_requests = Some(999_999);
        snap.reset_requests = Some(std::time::Duration::from_secs(1));
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    let p = pacer.acquire(&key, Cost::tokens(20), None).await.unwrap();
                    p.on_response(Some(&snap));
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
