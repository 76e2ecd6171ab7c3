//! Validation cost against the parser's own floor, on the same bytes in the same run.
//!
//! For a ~1 KB and a ~100 KB chat-completions body:
//! - `ignored_any`: `serde_json::from_slice::<IgnoredAny>`, a syntax-only pass (the floor);
//! - `value`: `serde_json::from_slice::<Value>`, what a "parse, then check" validator pays first;
//! - `validate`: `validate::check`: the accept path (one hand-written pass over the bytes) for
//!   these valid bodies.
//!
//! `chat_1KB_invalid` shows what a body with one violation costs: the accept path stops at it
//! and the streaming checker runs to write the report.
//!
//! Goal: `validate` at most 2x `ignored_any`. Run:
//! `cargo bench -p oai-resilience --bench validate -- --warm-up-time 1 --measurement-time 3`
//!
//! Criterion times one function after the other: on a machine whose speed drifts (a shared
//! VM) the ratio drifts with it. The `validate_ratio` bench alternates the two sides in short
//! rounds and reports the median of the per-round ratios.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oai_resilience::validate::{self, Endpoint};

mod bodies;
use bodies::{chat_body, chat_body_role_first};
use serde::de::IgnoredAny;
use serde_json::{json, Value};

fn bench(c: &mut Criterion) {
    for (name, body) in [
        ("1KB", chat_body(1, 150)),
        ("1KB_role_first", chat_body_role_first()),
        ("100KB", chat_body(32, 1550)),
    ] {
        assert!(validate::check(Endpoint::ChatCompletions, &body).is_valid());
        let mut group = c.benchmark_group(format!("chat_{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("ignored_any", |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(&body)).unwrap())
        });
        group.bench_function("value", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
        });
        group.bench_function("validate", |b| {
            b.iter(|| validate::check(Endpoint::ChatCompletions, black_box(&body)))
        });
        group.finish();
        eprintln!("chat_{name}: {} bytes", body.len());
    }
}

/// The same ~1 KB body with one violation (`temperature: 3`): the accept path stops at it and
/// the streaming checker writes the report, so an invalid body pays both passes.
fn bench_invalid(c: &mut Criterion) {
    let mut body: Value = serde_json::from_slice(&chat_body(1, 150)).unwrap();
    body["temperature"] = json!(3);
    let body = serde_json::to_vec(&body).unwrap();
    assert_eq!(
        validate::check(Endpoint::ChatCompletions, &body)
            .violations()
            .len(),
        1
    );
    let mut group = c.benchmark_group("chat_1KB_invalid");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("ignored_any", |b| {
        b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(&body)).unwrap())
    });
    group.bench_function("validate", |b| {
        b.iter(|| validate::check(Endpoint::ChatCompletions, black_box(&body)))
    });
    group.finish();
}

criterion_group!(benches, bench, bench_invalid);
criterion_main!(benches);
