//! The full stack (`OpenAiLayer` over a hyper-util client) against hostile servers: a raw TCP
//! server in this file for connection-level faults, the mock for protocol-level ones.
//!
//! For each fault: the typed error the stack returns, bounded memory (bytes the server managed
//! to push, against the classify limit) and bounded time (the retry deadline, in virtual time).
#![cfg(feature = "mock")]

use crate::scripted;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use oai_resilience::classify::{classify_sse_event, DEFAULT_BODY_LIMIT};
use oai_resilience::mock::MockResponse;
use oai_resilience::stack::{OpenAiLayer, OpenAiService};
use oai_resilience::validate::ValidateBody;
use oai_resilience::{AuthLayer, Error, ErrorKind, RetryConfig, RetryLayer, StopReason};
use scripted::scripted;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const KEY: &str = "sk-proj-HostileTestKey0123456789abcdefghijklmnopqr";
use test_support::CHAT;

type Http = Client<HttpConnector, ValidateBody<Full<Bytes>>>;

fn stack(url: &str, retry: RetryConfig) -> OpenAiService<Http> {
    let client = test_support::http_client();
    OpenAiLayer::new()
        .base_url(url.parse().unwrap())
        .auth(AuthLayer::from_key(KEY))
        .retry(RetryLayer::with_config(retry.seed(3)))
        .layer(client)
}

fn chat() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// The response [`stack`] answers a [`chat`] request with.
type Reply = <OpenAiService<Http> as Service<http::Request<Full<Bytes>>>>::Response;

/// Sends one [`chat`] request through a fresh [`stack`] for `url` with `retry`.
async fn call(url: &str, retry: RetryConfig) -> Result<Reply, Error> {
    stack(url, retry).oneshot(chat()).await
}

/// What the raw server saw: connections accepted and bytes it managed to write.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    bytes_written: AtomicU64,
}

/// A raw HTTP/1.1 server on 127.0.0.1:0: reads each request (head and `content-length` body),
/// then hands the socket to `answer`. Serves at most `max_conns` connections, then stops.
async fn raw_server<F, Fut>(
    max_conns: u64,
    answer: F,
) -> (String, Arc<Seen>, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream, Arc<Seen>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..max_conns {
            let Ok((mut sock, _)) = listener.accept().await else {
                break;
            };
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            if read_request(&mut sock).await.is_none() {
                continue;
            }
            conns.spawn(answer(sock, seen2.clone()));
        }
        while conns.join_next().await.is_some() {}
    });
    (url, seen, task)
}

/// Reads one request head and its `content-length` body (at most 1 MiB in all).
async fn read_request(sock: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 1 << 20 {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(());
            }
        }
    }
    None
}

/// A [`raw_server`] that writes `bytes` on each connection and closes it.
async fn answer_once(
    max_conns: u64,
    bytes: impl Into<Bytes>,
) -> (String, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let bytes = bytes.into();
    raw_server(max_conns, move |mut sock, seen| {
        let bytes = bytes.clone();
        async move {
            send(&mut sock, &seen, &bytes).await;
        }
    })
    .await
}

/// Sends one [`chat`] request, with at most `attempts` attempts, to an [`answer_once`] server
/// that writes `bytes`; checks that the call fails with `kind` and returns the error and what
/// the server saw.
async fn fails_against(
    max_conns: u64,
    bytes: impl Into<Bytes>,
    attempts: u32,
    kind: ErrorKind,
) -> (Error, Arc<Seen>) {
    let (url, seen, server) = answer_once(max_conns, bytes).await;
    let err = call(&url, RetryConfig::new().max_attempts(attempts))
        .await
        .unwrap_err();
    server.abort();
    assert_eq!(err.kind(), kind, "{err:?}");
    (err, seen)
}

/// Sends one [`chat`] request with a retry `deadline` to a [`raw_server`] (up to 8 connections)
/// that writes `at_once` on each connection, then `drip` one byte a second; checks that the call
/// fails with a timeout and returns the error, how long the call took and what the server saw.
async fn times_out_against(
    at_once: &'static [u8],
    drip: Vec<u8>,
    deadline: Duration,
) -> (Error, Duration, Arc<Seen>) {
    let drip = Bytes::from(drip);
    let (url, seen, server) = raw_server(8, move |mut sock, seen| {
        let drip = drip.clone();
        async move {
            if !at_once.is_empty() && !send(&mut sock, &seen, at_once).await {
                return;
            }
            for b in drip.chunks(1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !send(&mut sock, &seen, b).await {
                    return;
                }
            }
        }
    })
    .await;
    let start = Instant::now();
    let err = call(&url, RetryConfig::new().deadline(deadline))
        .await
        .unwrap_err();
    let took = start.elapsed();
    server.abort();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    (err, took, seen)
}

/// Writes `bytes`, counting what the socket accepted; false once the peer is gone.
async fn send(sock: &mut TcpStream, seen: &Seen, bytes: &[u8]) -> bool {
    match sock.write_all(bytes).await {
        Ok(()) => {
            seen.bytes_written
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_100_mb_error_body_is_read_up_to_the_limit_only() {
    const BODY: u64 = 100 * 1024 * 1024;
    let (url, seen, server) = raw_server(1, |mut sock, seen| async move {
        let head = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: {BODY}\r\n\r\n"
        );
        if !send(&mut sock, &seen, head.as_bytes()).await {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..BODY / chunk.len() as u64 {
            if !send(&mut sock, &seen, &chunk).await {
                return;
            }
        }
    })
    .await;
    let err = call(&url, RetryConfig::new().max_attempts(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
    // The detail is a short snippet of what was read, not the body.
    assert!(err.detail().unwrap().len() <= 1024, "{:?}", err.detail());
    // Dropping the stack's future dropped the connection: the server's writes fail.
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server notices the closed connection")
        .unwrap();
    let written = seen.bytes_written.load(Ordering::SeqCst);
    // The client read at most the 64 KiB limit; the rest of what the server managed to write
    // sits in loopback socket buffers (a few MiB at most), never in the process.
    assert!(
        written < 16 * 1024 * 1024,
        "the server pushed {written} bytes of a {BODY}-byte body"
    );
    assert!(written >= DEFAULT_BODY_LIMIT as u64);
}

#[tokio::test(start_paused = true)]
async fn a_dripping_error_body_ends_at_the_deadline() {
    let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100000\r\n\r\n";
    let deadline = Duration::from_secs(20);
    let (err, took, _) = times_out_against(head, vec![b'x'; 100_000], deadline).await;
    let ctx = err.retry_context().expect("the retry context");
    assert_eq!(ctx.stop, StopReason::Deadline);
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dripping_headers_end_at_the_deadline() {
    let drip = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".repeat(1000);
    let deadline = Duration::from_secs(5);
    let (_, took, seen) = times_out_against(b"", drip, deadline).await;
    assert!(took < deadline + Duration::from_secs(2));
    // The drip got nowhere near a full head.
    assert!(seen.bytes_written.load(Ordering::SeqCst) < 10);
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_mid_headers_is_a_connection_error() {
    let bytes = &b"HTTP/1.1 200 OK\r\ncontent-ty"[..];
    let (err, seen) = fails_against(8, bytes, 3, ErrorKind::Connection).await;
    // A connection error on a POST is retried (the default policy): one connection per attempt.
    assert_eq!(err.attempts(), 3);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_mid_error_body_keeps_what_arrived() {
    let bytes = &b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5000\r\n\r\n<html>bad gat"[..];
    let (err, _) = fails_against(8, bytes, 2, ErrorKind::ServerError).await;
    assert_eq!(err.status().map(|s| s.as_u16()), Some(502));
    assert!(err.detail().unwrap().contains("bad gat"), "{err:?}");
    assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_mid_success_body_fails_the_body_not_the_call() {
    let (url, _seen, server) = answer_once(
        1,
        &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"id\":"[..],
    )
    .await;
    let res = call(&url, RetryConfig::new()).await.unwrap();
    assert_eq!(res.status(), 200);
    // The 200 is the stack's answer; the body's failure reaches whoever reads it.
    assert!(res.into_body().collect().await.is_err());
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn invalid_utf8_body_and_headers_give_a_typed_error() {
    let mut bytes = b"HTTP/1.1 500 Internal Server Error\r\nx-request-id: req_\xff\xfe\r\nretry-after: \xc3\x28\r\ncontent-length: 6\r\n\r\n".to_vec();
    bytes.extend_from_slice(b"\xff\xfe\xfd{\x80}");
    let (err, _) = fails_against(1, bytes, 1, ErrorKind::ServerError).await;
    // A request id that is not text is dropped; an unreadable retry-after is no hint.
    assert_eq!(err.request_id(), None);
    assert_eq!(err.retry_after(), None);
    assert!(err.api_error().is_none());
    // Display never panics and prints only text.
    assert!(!err.to_string().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_oversized_header_value_is_a_connection_error() {
    let mut head = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    head.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
    let (_, seen) = fails_against(4, head, 2, ErrorKind::Connection).await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_is_refused_without_sleeping() {
    let server = scripted(
        Some(KEY),
        [MockResponse::status(503).with_header("retry-after", "99999999999")],
    )
    .await;
    let start = Instant::now();
    let err = call(&server.url(), RetryConfig::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    let ctx = err.retry_context().unwrap();
    assert_eq!(ctx.stop, StopReason::HintTooLong);
    // Saturated at the parsers' ceiling rather than overflowing.
    assert_eq!(ctx.refused_hint, Some(oai_resilience::parse::MAX_DURATION));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(server.counts().total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_truncated_json_success_passes_through_for_the_caller_to_decode() {
    let server = scripted(
        Some(KEY),
        [MockResponse::ok().with_body(r#"{"id":"chatcmpl-1","choices":[{"mess"#)],
    )
    .await;
    let res = call(&server.url(), RetryConfig::new()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let decoded = serde_json::from_slice::<serde_json::Value>(&body);
    assert!(decoded.unwrap_err().is_eof());
    // Not retried: a 200 is a success as far as the stack can tell.
    assert_eq!(server.counts().total, 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_event_mid_stream_is_classified_and_not_retried() {
    let server = scripted(Some(KEY), [MockResponse::stream_error_after(2)]).await;
    let res = call(&server.url(), RetryConfig::new()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let events: Vec<_> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|data| classify_sse_event(data.as_bytes()))
        .collect();
    // The role chunk and two content deltas pass as `None`; the error event is the last.
    assert_eq!(events.len(), 4, "{text}");
    assert!(events[..3].iter().all(Option::is_none), "{text}");
    let err = events[3].as_ref().expect("the error event");
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert_eq!(err.error_type(), Some("server_error"));
    assert!(!err.is_retryable());
    assert_eq!(err.status(), None);
    // The stack made exactly one request.
    assert_eq!(server.counts().total, 1);
}

#[test]
fn sse_event_kinds_follow_the_error_object() {
    let kind = |data: &str| classify_sse_event(data.as_bytes()).map(|e| e.kind());
    assert_eq!(
        kind(
            r#" {"error":{"message":"x","type":"insufficient_quota","code":"insufficient_quota"}}"#
        ),
        Some(ErrorKind::QuotaExceeded)
    );
    assert_eq!(
        kind(r#"{"error":{"message":"x","type":"requests","code":"rate_limit_exceeded"}}"#),
        Some(ErrorKind::RateLimited)
    );
    assert_eq!(
        kind(r#"{"error":{"message":"x","type":"invalid_request_error"}}"#),
        Some(ErrorKind::InvalidRequest)
    );
    assert_eq!(
        kind(r#"{"error":{"message":"x"}}"#),
        Some(ErrorKind::ServerError)
    );
    // Not errors: deltas, the terminator, a bare object that merely has a message, garbage.
    assert_eq!(kind(r#"{"choices":[{"delta":{"content":"hi"}}]}"#), None);
    assert_eq!(kind(" [DONE]"), None);
    assert_eq!(kind(r#"{"message":"hello","code":1}"#), None);
    assert_eq!(kind("{\"error\":{\"mess\u{fffd}"), None);
    assert!(classify_sse_event(b"\xff\xfe{").is_none());
}
