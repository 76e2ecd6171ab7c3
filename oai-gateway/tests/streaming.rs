//! Item 3 of issue #20: `stream: true` answers pass through chunk by chunk, unbuffered, under
//! the stream watchdog. Against a scripted loopback upstream that sends an answer in chunks
//! with pauses, and can stall; on tokio's paused clock (the pauses and the timeouts are
//! virtual, the bytes go over real loopback sockets).

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_resilience::RetryConfig;
use support::{accept_each, config_for, post_with_key, read_message, start_with_gateway};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One step of a scripted answer.
#[derive(Clone)]
enum Step {
    /// Write these bytes as one chunk (chunked transfer encoding).
    Chunk(&'static str),
    /// Wait (virtual time).
    Wait(Duration),
    /// Never send anything more, keep the connection open.
    Stall,
}

/// A loopback upstream that answers each request with the next script: a 200 head with
/// `content-type` (`text/event-stream`), then the steps. Counts requests and chunks sent.
#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    chunks_sent: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(scripts: Vec<Vec<Step>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scripts = Arc::new(Mutex::new(VecDeque::from(scripts)));
        let requests = Arc::new(AtomicUsize::new(0));
        let chunks_sent = Arc::new(AtomicUsize::new(0));
        let (reqs, sent) = (requests.clone(), chunks_sent.clone());
        accept_each(listener, move |mut stream| {
            let (scripts, reqs, sent) = (scripts.clone(), reqs.clone(), sent.clone());
            async move {
                // Read the request head and its content-length body.
                if read_message(&mut stream, true).await.is_none() {
                    return;
                }
                reqs.fetch_add(1, Ordering::SeqCst);
                let script = scripts.lock().unwrap().pop_front().unwrap_or_default();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
                                transfer-encoding: chunked\r\nx-request-id: req_stream\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for step in script {
                    match step {
                        Step::Chunk(text) => {
                            let framed = format!("{:x}\r\n{text}\r\n", text.len());
                            if stream.write_all(framed.as_bytes()).await.is_err() {
                                return;
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Step::Wait(d) => tokio::time::sleep(d).await,
                        Step::Stall => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
                let _ = stream.shutdown().await;
            }
        });
        Scripted {
            addr,
            requests,
            chunks_sent,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

const STREAM_CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;

/// Chunks as openai-python reads them: `data: {json}\n\n` events, then `data: [DONE]`.
const OPENAI_CHUNKS: &[&str] = &[
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n",
];

async fn gateway(upstream: &Scripted, extra: &[&str]) -> (SocketAddr, oai_gateway::Gateway) {
    let mut c = config_for(&upstream.url(), extra, &[]);
    c.retry = RetryConfig::new().seed(11);
    start_with_gateway(&c).await
}

/// A script that sends each of `chunks` with a `pause` after it, or before it when
/// `pause_first`.
fn paced(chunks: &[&'static str], pause: Duration, pause_first: bool) -> Vec<Step> {
    let mut script = Vec::new();
    for chunk in chunks {
        if pause_first {
            script.push(Step::Wait(pause));
        }
        script.push(Step::Chunk(chunk));
        if !pause_first {
            script.push(Step::Wait(pause));
        }
    }
    script
}

/// Posts a streaming chat request; returns the response with its body unread.
async fn post_stream(addr: SocketAddr) -> http::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = post_with_key(
        addr,
        "/v1/chat/completions",
        "application/json",
        STREAM_CHAT,
    );
    client.request(req).await.unwrap()
}

/// Reads the whole body, with each frame's arrival time.
async fn frames(res: http::Response<hyper::body::Incoming>) -> Vec<(Instant, Bytes)> {
    let mut body = res.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the body ended with an error").into_data() {
            out.push((Instant::now(), data));
        }
    }
    out
}

/// Asserts that `gateway`'s rendered metrics contain each of `lines`.
fn assert_metrics(gateway: &oai_gateway::Gateway, lines: &[&str]) {
    let metrics = gateway.metrics().render();
    for line in lines {
        assert!(metrics.contains(line), "{metrics}");
    }
}

fn joined(frames: &[(Instant, Bytes)]) -> String {
    frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_openai_python_shaped_stream_passes_through_whole_and_chunk_by_chunk() {
    let script = paced(OPENAI_CHUNKS, Duration::from_secs(1), false);
    let upstream = Scripted::start(vec![script]).await;
    let (gw, _) = gateway(&upstream, &[]).await;
    let res = post_stream(gw).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(res.headers()["x-request-id"], "req_stream");

    // The first event reaches the client while the upstream has sent only it: no buffering.
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, OPENAI_CHUNKS[0]);
    assert_eq!(upstream.chunks_sent.load(Ordering::SeqCst), 1);
    let start = Instant::now();
    let rest = frames(http::Response::new(body)).await;
    let mut all = String::from_utf8_lossy(&first).into_owned();
    all.push_str(&joined(&rest));
    assert_eq!(all, OPENAI_CHUNKS.concat());
    assert!(all.ends_with("data: [DONE]\n\n"));
    // Each later event arrived about a second after the one before, as it was sent.
    assert_eq!(rest.len(), OPENAI_CHUNKS.len() - 1, "one frame per chunk");
    for (i, (at, _)) in rest.iter().enumerate() {
        let offset = at.duration_since(start).as_secs_f64();
        assert!(
            (offset - (i + 1) as f64).abs() < 0.2,
            "event {} at {offset:.3} s",
            i + 1
        );
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_raw_sse_stream_passes_through_byte_for_byte() {
    // Named events, ids, retry, comments, CRLF line ends, multi-line data, an event split
    // across chunks, and a chunk holding two events.
    let chunks: &[&'static str] = &[
        ": keep-alive\n\n",
        "event: message\r\nid: 1\r\nretry: 1000\r\ndata: first line\r\ndata: second line\r\n\r\n",
        "event: response.output_text.delta\ndata: {\"delta\":\"a",
        "b\"}\n\n",
        "data: x\n\ndata: y\n\n",
        "data: {\"type\":\"response.completed\"}\n\n",
    ];
    let script = paced(chunks, Duration::from_millis(300), false);
    let upstream = Scripted::start(vec![script]).await;
    let (gw, _) = gateway(&upstream, &[]).await;
    let res = post_stream(gw).await;
    assert_eq!(res.status(), 200);
    let got = frames(res).await;
    assert_eq!(joined(&got), chunks.concat());
}

#[tokio::test(start_paused = true)]
async fn a_stream_stalled_mid_way_ends_with_an_error_event_within_the_idle_timeout() {
    let script = vec![
        Step::Chunk(OPENAI_CHUNKS[0]),
        Step::Wait(Duration::from_secs(1)),
        // Cut mid-event: the error event must start on a line of its own.
        Step::Chunk("data: {\"id\":\"chatcmpl-1\",\"obj"),
        Step::Stall,
    ];
    let upstream = Scripted::start(vec![script]).await;
    let (gw, gateway) = gateway(&upstream, &["--stream-idle-timeout", "5s"]).await;
    let res = post_stream(gw).await;
    assert_eq!(res.status(), 200);
    let got = frames(res).await;
    let text = joined(&got);
    assert!(text.starts_with(OPENAI_CHUNKS[0]), "{text}");
    let (last_at, last) = got.last().unwrap();
    let last = String::from_utf8_lossy(last);
    let event = last
        .rsplit("\n\n")
        .find(|e| e.starts_with("event: error"))
        .unwrap_or_else(|| panic!("no error event in {last:?}"));
    let data = event.strip_prefix("event: error\ndata: ").unwrap();
    let json: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(json["error"]["code"], "timeout", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream idle for 5 s"),
        "{json}"
    );
    assert!(text.ends_with("\n\n"));
    // The error came 5 s after the last chunk (the cut event, sent at 1 s), not later.
    assert_eq!(
        got.len(),
        3,
        "the first event, the cut one, the error event"
    );
    assert_eq!(&got[1].1[..], b"data: {\"id\":\"chatcmpl-1\",\"obj");
    let waited = last_at.duration_since(got[1].0);
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5500),
        "{waited:?}"
    );
    // Not retried: part of the answer had reached the client.
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    assert_metrics(
        &gateway,
        &[
            "oai_gateway_stream_stalls_total{bound=\"idle\"} 1",
            "oai_gateway_streams_in_flight 0",
            "oai_gateway_streams_total 1",
        ],
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_before_the_first_byte_is_retried() {
    let stalled = vec![Step::Stall];
    let whole: Vec<Step> = OPENAI_CHUNKS.iter().map(|c| Step::Chunk(c)).collect();
    let upstream = Scripted::start(vec![stalled, whole]).await;
    let (gw, gateway) = gateway(&upstream, &["--stream-first-byte-timeout", "3s"]).await;
    let started = Instant::now();
    let res = post_stream(gw).await;
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() >= Duration::from_secs(3));
    let got = frames(res).await;
    assert_eq!(joined(&got), OPENAI_CHUNKS.concat());
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
    assert_metrics(
        &gateway,
        &[
            "oai_gateway_stream_stalls_total{bound=\"first_byte\"} 1",
            "oai_gateway_retries_total 1",
        ],
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_stream_within_the_idle_timeout_is_never_cut() {
    let script = paced(OPENAI_CHUNKS, Duration::from_secs(4), true);
    let upstream = Scripted::start(vec![script]).await;
    let (gw, _) = gateway(
        &upstream,
        &[
            "--stream-idle-timeout",
            "5s",
            "--stream-first-byte-timeout",
            "5s",
        ],
    )
    .await;
    let res = post_stream(gw).await;
    let got = frames(res).await;
    assert_eq!(joined(&got), OPENAI_CHUNKS.concat());
}
