//! Server-sent event bodies for `"stream": true`, as the API sends them.

use serde_json::{json, Value};

use super::bodies::success;
use super::rng::SplitMix64;
use super::Route;

/// The content type of a streamed answer.
pub(crate) const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

/// The error event a failing stream ends with.
fn error_event() -> Value {
    json!({
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": null,
            "code": null
        }
    })
}

/// Splits `text` into word-sized deltas (each keeps its trailing space).
fn deltas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The whole event stream for `route`. With `error_after = Some(n)`, the stream stops after
/// `n` content deltas with an `{"error": …}` event and no terminator.
pub(crate) fn stream(
    route: Route,
    req: &Value,
    rng: &mut SplitMix64,
    created: u64,
    error_after: Option<usize>,
) -> String {
    let full = success(route, req, rng, created);
    match route {
        Route::Responses => responses_stream(full, error_after),
        _ => chat_stream(full, req, error_after),
    }
}

fn chat_stream(full: Value, req: &Value, error_after: Option<usize>) -> String {
    let content = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": full["id"],
            "object": "chat.completion.chunk",
            "created": full["created"],
            "model": full["model"],
            "system_fingerprint": full["system_fingerprint"],
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        })
    };
    let mut out = String::new();
    let mut push = |v: &Value| {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    push(&chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ));
    for (i, d) in deltas(&content).into_iter().enumerate() {
        if error_after == Some(i) {
            push(&error_event());
            return out;
        }
        push(&chunk(json!({"content": d}), Value::Null));
    }
    if error_after.is_some() {
        push(&error_event());
        return out;
    }
    push(&chunk(json!({}), json!("stop")));
    if req["stream_options"]["include_usage"] == json!(true) {
        let mut usage = chunk(json!({}), Value::Null);
        usage["choices"] = json!([]);
        usage["usage"] = full["usage"].clone();
        push(&usage);
    }
    out.push_str("data: [DONE]\n\n");
    out
}

fn responses_stream(full: Value, error_after: Option<usize>) -> String {
    let text = full["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let item_id = full["output"][0]["id"].clone();
    let mut seq = 0u64;
    let mut out = String::new();
    let mut push = |event: &str, mut v: Value| {
        v["type"] = json!(event);
        v["sequence_number"] = json!(seq);
        seq += 1;
        out.push_str(&format!("event: {event}\ndata: {v}\n\n"));
    };
    let mut started = full.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    push("response.created", json!({"response": started}));
    for (i, d) in deltas(&text).into_iter().enumerate() {
        if error_after == Some(i) {
            push("error", error_event()["error"].clone());
            return out;
        }
        push(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": d}),
        );
    }
    if error_after.is_some() {
        push("error", error_event()["error"].clone());
        return out;
    }
    push(
        "response.output_text.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
    );
    push("response.completed", json!({"response": full}));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_rejoin_to_the_text() {
        let text = "Mock reply to: a b  c";
        assert_eq!(deltas(text).concat(), text);
        assert_eq!(deltas(""), Vec::<String>::new());
    }
}
