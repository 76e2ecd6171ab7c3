//! The chat-completions bodies the validation benchmarks measure (`validate`, criterion, and
//! `validate_ratio`, alternating rounds), built in one place.

use serde::Serialize;
use serde_json::{json, Value};

/// A chat body with `turns` user/assistant exchanges of about `chars` characters each. Built
/// with `json!`, so every object's keys are sorted (`content` before `role`): the validator's
/// worst case, as it must keep what precedes the discriminator.
pub(crate) fn chat_body(turns: usize, chars: usize) -> Vec<u8> {
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
pub(crate) fn chat_body_role_first() -> Vec<u8> {
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
