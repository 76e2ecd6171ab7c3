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

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oai_resilience::validate::{self, Endpoint};
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::{json, Value};

/// A chat body with `turns` user/assistant exchanges of about `chars` characters each. Built
/// with `json!`, so every object's keys are sorted (`content` before `role`): the validator's
/// worst case, as it must keep what precedes the discriminator.
fn chat_body(turns: usize, chars: usize) -> Vec<u8> {
    let sentence = "The quick brown fox jumps over the lazy dog; \"quoted\" text\nand a new line. ";
    let text = |i: usize| {
        let mut s = format!("Turn {i}: ");
        while s.len() < chars {
            s.push_str(sentence);
        }
        s.truncate(chars);
        s
    };
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    for i in 0..turns {
        messages.push(json!({"role": "user", "content": text(i)}));
        messages.push(json!({"role": "assistant", "content": text(i + 1)}));
    }
    messages.push(json!({"role": "user", "content": [
        {"type": "text", "text": "And this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
    ]}));
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": messages,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_completion_tokens": 256,
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "auto",
        "metadata": {"app": "bench"}
    });
    serde_json::to_vec(&body).unwrap()
}

/// The same ~1 KB body with `role` first in each message, as derive-based clients and the
/// official SDKs write it.
fn chat_body_role_first() -> Vec<u8> {
    #[derive(Serialize)]
    struct Msg {
        role: &'static str,
        content: Value,
    }
    #[derive(Serialize)]
    struct Body {
        model: &'static str,
        messages: Vec<Msg>,
        temperature: f64,
        top_p: f64,
        max_completion_tokens: u32,
        stream: bool,
        stream_options: Value,
        tools: Value,
        tool_choice: &'static str,
        metadata: Value,
    }
    let sorted: Value = serde_json::from_slice(&chat_body(1, 150)).unwrap();
    let messages = sorted["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Msg {
            role: match m["role"].as_str().unwrap() {
                "system" => "system",
                "user" => "user",
                _ => "assistant",
            },
            content: m["content"].clone(),
        })
        .collect();
    serde_json::to_vec(&Body {
        model: "gpt-4o-mini",
        messages,
        temperature: 0.7,
        top_p: 0.9,
        max_completion_tokens: 256,
        stream: true,
        stream_options: sorted["stream_options"].clone(),
        tools: sorted["tools"].clone(),
        tool_choice: "auto",
        metadata: sorted["metadata"].clone(),
    })
    .unwrap()
}

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
