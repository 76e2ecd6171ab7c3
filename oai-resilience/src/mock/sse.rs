//! Server-sent event bodies for `"stream": true`, as the API sends them.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::bodies::success;
use super::rng::SplitMix64;
use super::route::Route;

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
    usage: Option<(u64, u64)>,
) -> String {
    let mut full = success(route, req, rng, created);
    if let Some(counts) = usage {
        super::bodies::set_usage(route, &mut full, counts);
    }
    match route {
        Route::Responses => responses_stream(full, error_after),
        _ => chat_stream(full, req, error_after),
    }
}

/// `body`'s events (each ending in a blank line) as one frame each, spread evenly over
/// `over`: the first at once, the last `over` later. With `stall = Some((k, pause))`, every
/// event from the `k`-th on (0-based) goes out `pause` later.
pub(crate) fn spread(
    body: Bytes,
    over: Duration,
    stall: Option<(usize, Duration)>,
) -> UnsyncBoxBody<Bytes, Infallible> {
    let events = events(&body);
    let gaps = u32::try_from(events.len().saturating_sub(1))
        .unwrap_or(u32::MAX)
        .max(1);
    let start = Instant::now();
    let frames = futures_util::stream::iter(events.into_iter().zip(0u32..)).then(
        move |(event, i)| async move {
            let paused = match stall {
                Some((k, pause)) if i as usize >= k => pause,
                _ => Duration::ZERO,
            };
            let at = start + over.mul_f64(f64::from(i) / f64::from(gaps)) + paused;
            tokio::time::sleep_until(at).await;
            Ok(Frame::data(event))
        },
    );
    StreamBody::new(frames).boxed_unsync()
}

/// Splits an event stream after each blank line (`\n\n`); a tail without one is kept.
fn events(body: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < body.len() {
        if body[i] == b'\n' && body[i + 1] == b'\n' {
            out.push(body.slice(start..i + 2));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < body.len() {
        out.push(body.slice(start..));
    }
    out
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
    fn events_split_after_blank_lines_and_rejoin() {
        let body = Bytes::from_static(b"data: a\n\ndata: b\n\ndata: [DONE]\n\n");
        let parts = events(&body);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1], Bytes::from_static(b"data: b\n\n"));
        assert_eq!(parts.concat(), body.to_vec());
        assert_eq!(events(&Bytes::from_static(b"x\n\ny")).len(), 2);
        assert!(events(&Bytes::new()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn spread_sends_the_first_event_at_once_and_the_last_after_the_duration() {
        let body = Bytes::from_static(b"data: a\n\ndata: b\n\ndata: c\n\n");
        let mut spread = spread(body.clone(), Duration::from_secs(10), None);
        let start = Instant::now();
        let mut at = Vec::new();
        let mut all = Vec::new();
        while let Some(frame) = spread.frame().await {
            at.push(start.elapsed());
            all.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(all, body.to_vec());
        let secs = |s| Duration::from_secs(s);
        assert_eq!(at, [secs(0), secs(5), secs(10)]);
    }

    /// A chat completion to `server`, streamed or not.
    fn chat(
        server: &crate::mock::MockServer,
        stream: bool,
    ) -> http::Request<http_body_util::Full<Bytes>> {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hi"}}],"stream":{stream}}}"#
        );
        http::Request::post(server.endpoint(Route::ChatCompletions))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_duration_stretches_a_streamed_answer_only() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let server = crate::mock::MockServer::builder()
            .latency(Duration::from_secs(1))
            .stream_duration(Duration::from_secs(10))
            .start()
            .await;
        let client =
            Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
        for (stream, took) in [(true, 11), (false, 1)] {
            let req = chat(&server, stream);
            let start = Instant::now();
            let res = client.request(req).await.unwrap();
            let headers = start.elapsed();
            assert!(
                headers.as_secs() == 1 && headers.subsec_millis() < 50,
                "{headers:?}"
            );
            let text = res.into_body().collect().await.unwrap().to_bytes();
            let all = start.elapsed();
            assert!(
                all.as_secs() == took && all.subsec_millis() < 50,
                "{stream}: {all:?}"
            );
            let done = text.ends_with(b"data: [DONE]\n\n");
            assert_eq!(done, stream, "{text:?}");
        }
    }

    #[test]
    fn deltas_rejoin_to_the_text() {
        let text = "Mock reply to: a b  c";
        assert_eq!(deltas(text).concat(), text);
        assert_eq!(deltas(""), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_holds_the_events_from_the_kth_on() {
        let body = Bytes::from_static(b"data: a\n\ndata: b\n\ndata: c\n\n");
        let pause = Duration::from_secs(60);
        let mut spread = spread(body.clone(), Duration::ZERO, Some((1, pause)));
        let start = Instant::now();
        let mut at = Vec::new();
        while let Some(frame) = spread.frame().await {
            frame.unwrap();
            at.push(start.elapsed());
        }
        assert_eq!(at, [Duration::ZERO, pause, pause]);
    }

    #[tokio::test(start_paused = true)]
    async fn stall_streams_stalls_the_drawn_fraction_of_streams_only() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let client =
            Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
        for (fraction, stream, stalls) in
            [(1.0, true, true), (0.0, true, false), (1.0, false, false)]
        {
            let server = crate::mock::MockServer::builder()
                .stall_streams(fraction, 2, Duration::from_secs(60), 7)
                .start()
                .await;
            let req = chat(&server, stream);
            let start = Instant::now();
            let mut body = client.request(req).await.unwrap().into_body();
            let mut frames = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    frames.push((start.elapsed(), data));
                }
            }
            let last = frames.last().unwrap().0;
            assert_eq!(
                last >= Duration::from_secs(60),
                stalls,
                "{fraction} {stream}: {last:?}"
            );
            if stalls {
                // The first two events came at once; the third after the pause.
                let early: usize = frames
                    .iter()
                    .filter(|(t, _)| t.as_secs() < 1)
                    .map(|(_, d)| events(d).len())
                    .sum();
                assert_eq!(early, 2, "{frames:?}");
            }
        }
    }
}
