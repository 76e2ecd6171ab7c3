//! What the auth layer costs per request, against a baseline measured in the same run: the
//! same inner service called without the layer.
//!
//! `cargo bench -p oai-resilience --bench auth`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use oai_resilience::auth::{check_key, AuthLayer, EnvSource, KeyRules};
use tower::{service_fn, Layer, Service};

/// A project key of realistic length (164 characters).
fn key() -> String {
    let body: String = (0..156)
        .map(|i| {
            let c = b"AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-"[i % 38];
            c as char
        })
        .collect();
    format!("sk-proj-{body}")
}

fn request() -> http::Request<()> {
    http::Request::post("https://api.openai.com/v1/chat/completions")
        .body(())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let key = key();
    let inner = service_fn(|req: http::Request<()>| {
        black_box(req.headers().len());
        std::future::ready(Ok::<_, Infallible>(http::Response::new(())))
    });

    let mut group = c.benchmark_group("auth");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);

    let mut bare = inner;
    group.bench_function("baseline: inner service alone", |b| {
        b.iter(|| bare.call(request()).now_or_never().unwrap().unwrap())
    });

    let mut with_static = AuthLayer::from_key(key.clone()).layer(inner);
    group.bench_function("auth: static key", |b| {
        b.iter(|| with_static.call(request()).now_or_never().unwrap().unwrap())
    });

    let env_key = key.clone();
    let env =
        EnvSource::with_lookup(move |name| (name == "OPENAI_API_KEY").then(|| env_key.clone()));
    let mut with_env = AuthLayer::new(env).layer(inner);
    group.bench_function("auth: env source (fake lookup)", |b| {
        b.iter(|| with_env.call(request()).now_or_never().unwrap().unwrap())
    });

    let mut present = AuthLayer::check_only().layer(inner);
    let header = http::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    group.bench_function("auth: check a header already present", |b| {
        b.iter(|| {
            let mut req = request();
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, header.clone());
            present.call(req).now_or_never().unwrap().unwrap()
        })
    });

    let rules = KeyRules::openai();
    group.bench_function("check_key alone (164 chars)", |b| {
        b.iter(|| check_key(black_box(&key), &rules).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
