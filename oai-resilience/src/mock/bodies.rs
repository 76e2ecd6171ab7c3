//! The success bodies of the mock's routes, and its token estimate.

use serde_json::{json, Value};

use super::rng::SplitMix64;
use super::route::Route;

/// How many tokens the mock charges a request body to its token bucket.
///
/// `ceil(chars / 4)` of every string inside `messages` (roles included), `input` or `prompt`,
/// at least 1, plus `max_tokens`, `max_completion_tokens` or `max_output_tokens` if present.
/// A body that is not JSON costs `ceil(len / 4)`, at least 1.
///
/// ```
/// let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"12345678"}],"max_tokens":10}"#;
/// // "user" + "12345678": 12 characters, 3 tokens; plus max_tokens.
/// assert_eq!(oai_resilience::mock::estimate_tokens(body), 3 + 10);
/// ```
pub fn estimate_tokens(body: &[u8]) -> u64 {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => prompt_tokens(&v) + max_output(&v),
        Err(_) => (body.len() as u64).div_ceil(4).max(1),
    }
}

pub(crate) fn prompt_tokens(v: &Value) -> u64 {
    let mut chars = 0u64;
    for key in ["messages", "input", "prompt"] {
        if let Some(part) = v.get(key) {
            count_text(part, &mut chars, 0);
        }
    }
    chars.div_ceil(4).max(1)
}

fn max_output(v: &Value) -> u64 {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .unwrap_or(0)
}

/// Token counts that differ from the estimate: the mock reports them in `usage` and, when
/// set, charges them to its token bucket instead of [`estimate_tokens`]
/// ([`MockBuilder::true_usage`](super::MockBuilder::true_usage)).
///
/// A call's true prompt is `ceil(prompt estimate × prompt_share)` (at least 1): a tokenizer
/// that packs more than four characters into a token makes prompts shorter than their bytes
/// suggest. Its true completion is `ceil(max × completion_share)` when the body sets
/// `max_tokens` (or `max_completion_tokens`, `max_output_tokens`), else the echoed reply's
/// length: a model that stops before its budget. Shares are clamped to 0..=16 (NaN: 1).
///
/// ```
/// use oai_resilience::mock::TrueUsage;
///
/// let usage = TrueUsage::new(0.5, 0.25);
/// let body = br#"{"model":"m","messages":[{"role":"user","content":"12345678"}],"max_tokens":100}"#;
/// // Estimated 3 prompt tokens + 100: true 2 + 25.
/// assert_eq!(usage.counts(body), Some((2, 25)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrueUsage {
    prompt_share: f64,
    completion_share: f64,
}

impl TrueUsage {
    /// True prompts are `prompt_share` of the estimate, completions `completion_share` of
    /// the body's maximum.
    pub fn new(prompt_share: f64, completion_share: f64) -> Self {
        let clamp = |v: f64| if v.is_nan() { 1.0 } else { v.clamp(0.0, 16.0) };
        TrueUsage {
            prompt_share: clamp(prompt_share),
            completion_share: clamp(completion_share),
        }
    }

    /// `(prompt, completion)` true tokens of a request body; `None` if it is not JSON.
    pub fn counts(&self, body: &[u8]) -> Option<(u64, u64)> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(self.counts_of(&v))
    }

    pub(crate) fn counts_of(&self, req: &Value) -> (u64, u64) {
        let prompt = ((prompt_tokens(req) as f64 * self.prompt_share).ceil() as u64).max(1);
        let completion = match max_output(req) {
            0 => (reply_text(req).chars().count() as u64).div_ceil(4),
            max => (max as f64 * self.completion_share).ceil() as u64,
        };
        (prompt, completion)
    }
}

/// Replaces the `usage` counts of a success body built by [`success`].
pub(crate) fn set_usage(route: Route, body: &mut Value, (prompt, completion): (u64, u64)) {
    body["usage"] = match route {
        Route::ChatCompletions => json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion
        }),
        Route::Embeddings => json!({"prompt_tokens": prompt, "total_tokens": prompt}),
        Route::Responses => json!({
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion
        }),
    };
}

/// Sums the characters of every string inside `v` (bounded depth).
fn count_text(v: &Value, chars: &mut u64, depth: usize) {
    if depth > 32 {
        return;
    }
    match v {
        Value::String(s) => *chars += s.chars().count() as u64,
        Value::Array(items) => items.iter().for_each(|i| count_text(i, chars, depth + 1)),
        Value::Object(map) => map.values().for_each(|i| count_text(i, chars, depth + 1)),
        _ => {}
    }
}

/// The text the mock "generates": an echo of the last user text, so tests can see the body
/// arrived intact.
fn reply_text(v: &Value) -> String {
    let last = v
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find_map(|m| m.get("content")))
        .or_else(|| v.get("input"));
    let text = match last {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            let mut parts = Vec::new();
            collect_strings(other, &mut parts, 0);
            parts.join(" ")
        }
        None => String::new(),
    };
    let text: String = text.chars().take(200).collect();
    format!("Mock reply to: {text}")
}

fn collect_strings(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 32 || out.len() > 64 {
        return;
    }
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_strings(i, out, depth + 1)),
        Value::Object(map) => {
            if let Some(t) = map.get("text").or_else(|| map.get("content")) {
                collect_strings(t, out, depth + 1);
            }
        }
        _ => {}
    }
}

pub(crate) fn success(route: Route, req: &Value, rng: &mut SplitMix64, created: u64) -> Value {
    let model = req.get("model").and_then(Value::as_str).unwrap_or("gpt-4o");
    let prompt = prompt_tokens(req);
    match route {
        Route::ChatCompletions => {
            let content = reply_text(req);
            let completion = (content.chars().count() as u64).div_ceil(4);
            json!({
                "id": format!("chatcmpl-{}", hex(rng, 1)),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion
                },
                "service_tier": "default",
                "system_fingerprint": "fp_mock"
            })
        }
        Route::Embeddings => {
            let inputs: Vec<String> = match req.get("input") {
                Some(Value::Array(items)) => items.iter().map(|i| i.to_string()).collect(),
                Some(other) => vec![other.to_string()],
                None => Vec::new(),
            };
            let dims = req
                .get("dimensions")
                .and_then(Value::as_u64)
                .unwrap_or(8)
                .clamp(1, 3072) as usize;
            let data: Vec<Value> = inputs
                .iter()
                .take(2048)
                .enumerate()
                .map(|(i, text)| {
                    json!({
                        "object": "embedding",
                        "index": i,
                        "embedding": embedding(text, dims),
                    })
                })
                .collect();
            json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt}
            })
        }
        Route::Responses => {
            let text = reply_text(req);
            let output = (text.chars().count() as u64).div_ceil(4);
            json!({
                "id": format!("resp_{}", hex(rng, 2)),
                "object": "response",
                "created_at": created,
                "status": "completed",
                "error": null,
                "incomplete_details": null,
                "model": model,
                "output": [{
                    "type": "message",
                    "id": format!("msg_{}", hex(rng, 2)),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]
                }],
                "usage": {
                    "input_tokens": prompt,
                    "output_tokens": output,
                    "total_tokens": prompt + output
                }
            })
        }
    }
}

/// A deterministic unit-ish vector derived from the input text.
fn embedding(text: &str, dims: usize) -> Vec<f64> {
    let seed = crate::hash::fnv1a(text.as_bytes());
    let mut rng = SplitMix64::new(seed);
    let raw: Vec<f64> = (0..dims).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    raw.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect()
}

/// `words` × 16 lowercase hex digits from `rng`.
pub(crate) fn hex(rng: &mut SplitMix64, words: usize) -> String {
    (0..words)
        .map(|_| format!("{:016x}", rng.next_u64()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_usage_scales_the_estimate_and_replaces_the_counts() {
        let u = TrueUsage::new(0.5, 0.1);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"abcdefghijklmnop"}],"max_tokens":95}"#;
        // "user" + 16 characters: 5 estimated, 3 true; 10 % of 95 rounds up to 10.
        assert_eq!(u.counts(body), Some((3, 10)));
        assert_eq!(u.counts(b"not json"), None);
        // NaN and out-of-range shares are clamped: a prompt is at least one token.
        assert_eq!(TrueUsage::new(f64::NAN, -1.0).counts(body), Some((5, 0)));
        assert_eq!(TrueUsage::new(0.0, 1e9).counts(body), Some((1, 95 * 16)));
        let mut chat = json!({"usage": null});
        set_usage(Route::ChatCompletions, &mut chat, (3, 10));
        assert_eq!(chat["usage"]["total_tokens"], 13);
        let mut resp = json!({});
        set_usage(Route::Responses, &mut resp, (3, 10));
        assert_eq!(
            (
                resp["usage"]["input_tokens"].clone(),
                resp["usage"]["output_tokens"].clone()
            ),
            (json!(3), json!(10))
        );
        let mut emb = json!({});
        set_usage(Route::Embeddings, &mut emb, (3, 10));
        assert_eq!(emb["usage"]["total_tokens"], 3);
    }

    #[test]
    fn estimate_counts_text_and_max_tokens() {
        assert_eq!(estimate_tokens(b"not json!"), 3);
        assert_eq!(estimate_tokens(b"{}"), 1);
        let body = br#"{"model":"m","input":["abcd","efgh"],"max_output_tokens":5}"#;
        assert_eq!(estimate_tokens(body), 2 + 5);
    }

    #[test]
    fn embeddings_are_deterministic_and_sized() {
        let mut rng = SplitMix64::new(1);
        let req = json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4});
        let v = success(Route::Embeddings, &req, &mut rng, 0);
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
        let again = success(Route::Embeddings, &req, &mut rng, 0);
        assert_eq!(v["data"], again["data"]);
    }
}
