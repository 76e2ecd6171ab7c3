//! Item 4 of issue #20: JSON bodies are read whole up to `--max-body-bytes`; multipart and
//! other non-JSON uploads are streamed to the upstream as they arrive (not buffered, not
//! validated), up to `--max-upload-bytes`, and never retried.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oai_gateway::gateway::streams_body;
use oai_resilience::RetryConfig;
use support::{
    accept_each, authorized, bearer, chat_as, config, config_for, raw_gateway, request, start,
    start_with_gateway, RawUpstream, KEY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A loopback upstream that counts request bytes as they arrive (head included) and answers
/// `status` once it has read the declared body.
#[derive(Clone)]
struct Counting {
    addr: SocketAddr,
    bytes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    progress: Arc<Notify>,
}

impl Counting {
    async fn start(status: u16, body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Counting {
            addr: listener.local_addr().unwrap(),
            bytes: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(AtomicUsize::new(0)),
            progress: Arc::new(Notify::new()),
        };
        let u = up.clone();
        accept_each(listener, move |mut stream| {
            let u = u.clone();
            async move {
                u.requests.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut body_seen = 0usize;
                let mut declared = None;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    u.bytes.fetch_add(n, Ordering::SeqCst);
                    u.progress.notify_waiters();
                    if declared.is_none() {
                        head.extend_from_slice(&buf[..n]);
                        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            let text = String::from_utf8_lossy(&head[..i]).to_ascii_lowercase();
                            declared = Some(
                                text.lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .expect("the upload went on with its content-length"),
                            );
                            body_seen = head.len() - (i + 4);
                        }
                    } else {
                        body_seen += n;
                    }
                    if declared.is_some_and(|d| body_seen >= d) {
                        break;
                    }
                }
                let res = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                let _ = stream.write_all(res.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

const MB: usize = 1024 * 1024;

/// A request body fed through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A multipart body of `size` bytes (the boundary lines and a file part of filler), sent in
/// 64 KiB chunks; after `pause_after` bytes it waits for `resume` before sending the rest.
fn multipart(size: usize, pause_after: usize, resume: Arc<Notify>) -> (String, ChannelBody) {
    let boundary = "----oai-gateway-test";
    let start = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\ncontent-type: application/octet-stream\r\n\r\n"
    );
    let end = format!("\r\n--{boundary}--\r\n");
    let filler = size - start.len() - end.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut sent = start.len();
        if tx.send(Bytes::from(start)).await.is_err() {
            return;
        }
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut left = filler;
        let mut paused = false;
        while left > 0 {
            if !paused && sent >= pause_after {
                paused = true;
                resume.notified().await;
            }
            let n = left.min(chunk.len());
            if tx.send(chunk.slice(..n)).await.is_err() {
                return;
            }
            left -= n;
            sent += n;
        }
        let _ = tx.send(Bytes::from(end)).await;
    });
    (
        format!("multipart/form-data; boundary={boundary}"),
        ChannelBody(rx),
    )
}

/// A `POST path` to the gateway at `gw` with [`KEY`] and a [`multipart`] body of `size`
/// bytes (declared in `content-length`) that pauses after `pause_after` bytes until `resume`.
fn upload(
    gw: SocketAddr,
    path: &str,
    size: usize,
    pause_after: usize,
    resume: Arc<Notify>,
) -> http::Request<ChannelBody> {
    let (content_type, body) = multipart(size, pause_after, resume);
    let uri = format!("http://{gw}{path}");
    let mut req = authorized("POST", &uri, &content_type, KEY, body);
    req.headers_mut().insert("content-length", size.into());
    req
}

#[tokio::test]
async fn a_20_mb_multipart_upload_is_streamed_to_the_upstream_whole() {
    let upstream = Counting::start(200, r#"{"id":"file-abc","object":"file"}"#).await;
    // The JSON limit is 1 MiB; the upload is 20 MB.
    let gw = start(config(
        &["--upstream", &upstream.url(), "--max-body-bytes", "1048576"],
        &[],
    ))
    .await;
    let size = 20 * MB;
    let resume = Arc::new(Notify::new());
    let req = upload(gw, "/v1/files", size, 10 * MB, resume.clone());
    let client = Client::builder(TokioExecutor::new()).build_http();
    let call = tokio::spawn(async move { client.request(req).await });
    // The client sends 10 MB and waits: those bytes must reach the upstream before the
    // client sends the rest. A gateway that buffered the body would wait for ever here.
    tokio::time::timeout(Duration::from_secs(30), async {
        while upstream.bytes.load(Ordering::SeqCst) < 10 * MB {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first 10 MB did not reach the upstream while the client held the rest");
    resume.notify_one();
    let res = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("no answer within 60 s")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"id":"file-abc","object":"file"}"#);
    assert!(
        upstream.bytes.load(Ordering::SeqCst) > size,
        "the whole body arrived"
    );
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_streamed_upload_is_never_retried_and_the_client_may_retry_it() {
    // 503 is retried for a JSON body; an upload cannot be sent again by the gateway.
    let upstream = Counting::start(
        503,
        r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#,
    )
    .await;
    let mut c = config(&["--upstream", &upstream.url()], &[]);
    c.retry = RetryConfig::new().seed(5);
    let gw = start(c).await;
    let resume = Arc::new(Notify::new());
    let size = 2 * MB;
    let req = upload(gw, "/v1/audio/transcriptions", size, usize::MAX, resume);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 503);
    // The gateway did not retry; the SDK, which still holds the body, may.
    assert_eq!(res.headers()["x-should-retry"], "true");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    let json: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("overloaded"));
}

#[tokio::test]
async fn an_upload_over_its_limit_is_refused_at_once_and_json_keeps_its_own() {
    let (upstream, gw) = raw_gateway(
        &["--max-upload-bytes", "1000000", "--max-body-bytes", "1000"],
        &[],
    )
    .await;
    let auth = bearer(KEY);
    // Declared above --max-upload-bytes: 413 before a byte of the body is read.
    let res = support::raw(
        gw,
        &format!(
            "POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\
             content-type: multipart/form-data; boundary=b\r\ncontent-length: 5000000\r\n\r\n--b"
        ),
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.body);
    assert!(res.body.contains("--max-upload-bytes"), "{}", res.body);
    // A 2 kB upload is under its limit though over the JSON one.
    let upload = "x".repeat(2000);
    let res = support::raw(
        gw,
        &format!(
            "POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\
             content-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n{upload}",
            upload.len()
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    // A JSON body over --max-body-bytes: 413 naming that flag.
    let json = format!(
        r#"{{"model":"gpt-4o-mini","input":"{}"}}"#,
        "y".repeat(2000)
    );
    let res = request(
        gw,
        "POST",
        "/v1/embeddings",
        &[("authorization", &auth)],
        &json,
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.body);
    assert!(res.body.contains("--max-body-bytes"), "{}", res.body);
    let received = upstream.received();
    assert_eq!(received.len(), 1, "only the 2 kB upload went upstream");
    assert_eq!(received[0].body.len(), 2000);
}

#[test]
fn which_bodies_are_streamed() {
    let h = |ct: Option<&str>| {
        let mut m = http::HeaderMap::new();
        if let Some(ct) = ct {
            m.insert("content-type", ct.parse().unwrap());
        }
        m
    };
    let post = http::Method::POST;
    let multipart = h(Some("multipart/form-data; boundary=x"));
    assert!(streams_body(&post, "/v1/files", &multipart));
    assert!(streams_body(&post, "/v1/audio/transcriptions", &multipart));
    assert!(streams_body(&post, "/v1/images/edits", &multipart));
    assert!(streams_body(
        &post,
        "/v1/uploads/upload_1/parts",
        &multipart
    ));
    assert!(streams_body(
        &post,
        "/v1/audio/speech",
        &h(Some("audio/wav"))
    ));
    // No content type: streamed on the upload routes only.
    assert!(streams_body(&post, "/v1/files", &h(None)));
    assert!(!streams_body(&post, "/v1/chat/completions", &h(None)));
    // JSON is read whole, validated and replayable, on any route.
    let json = h(Some("application/json; charset=utf-8"));
    assert!(!streams_body(&post, "/v1/chat/completions", &json));
    assert!(!streams_body(&post, "/v1/uploads", &json));
    assert!(!streams_body(&post, "/v1/audio/speech", &json));
    assert!(!streams_body(&http::Method::GET, "/v1/files", &multipart));
}

/// Opens a connection and sends the head of a chat request declaring `len` bytes, and the
/// first `sent` bytes of its body; the rest is `rest`.
async fn hold_chat_body(
    gw: SocketAddr,
    len: usize,
    sent: usize,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut body = support::CHAT.as_bytes().to_vec();
    body.resize(len, b' ');
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..sent]).await.unwrap();
    (s, body[sent..].to_vec())
}

/// Polls `done` every 10 ms, at most 5 s; whether it held.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test]
async fn json_bodies_past_the_buffered_bytes_cap_get_503_at_once_and_the_cap_comes_back() {
    let upstream = RawUpstream::start().await;
    let c = config_for(
        &upstream.url(),
        &["--max-body-bytes", "1000", "--max-buffered-bytes", "2500"],
        &[],
    );
    let (gw, gateway) = start_with_gateway(&c).await;
    let metrics = gateway.metrics();
    // Two bodies of 1,000 bytes held open: 2,000 of the 2,500 bytes taken.
    let (mut first, first_rest) = hold_chat_body(gw, 1000, 100).await;
    let (second, _) = hold_chat_body(gw, 1000, 100).await;
    assert!(eventually(|| metrics.buffered_bytes() == 2000).await);
    // A third is refused before its body is read: 503 with Retry-After, x-should-retry.
    let (mut third, _) = hold_chat_body(gw, 1000, 10).await;
    let (head, body) = tokio::time::timeout(
        Duration::from_secs(10),
        support::read_message(&mut third, true),
    )
    .await
    .expect("an answer while the body is still held")
    .expect("a response");
    let res = support::RawResponse::new(head, &body);
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(res.header("retry-after").as_deref(), Some("1"));
    assert_eq!(res.header("x-should-retry").as_deref(), Some("true"));
    assert_eq!(res.json()["error"]["type"], "server_error");
    assert!(res.body.contains("--max-buffered-bytes"), "{}", res.body);
    assert_eq!(
        metrics.buffered_bytes(),
        2000,
        "the refused body took nothing"
    );
    // A small body still fits in the 500 bytes left.
    let small = chat_as(gw, KEY).await;
    assert_eq!(small.status, 200, "{}", small.body);
    // The first completes: 200, and its bytes come back once the request is done.
    first.write_all(&first_rest).await.unwrap();
    let (head, _) = support::read_message(&mut first, true).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The second's client goes away mid-body: its bytes come back too.
    drop(second);
    assert!(
        eventually(|| metrics.buffered_bytes() == 0).await,
        "{} bytes still taken",
        metrics.buffered_bytes()
    );
    // The whole budget is there again: two more bodies of 1,000 bytes are held at once.
    let (_a, _) = hold_chat_body(gw, 1000, 100).await;
    let (_b, _) = hold_chat_body(gw, 1000, 100).await;
    assert!(eventually(|| metrics.buffered_bytes() == 2000).await);
    let text = gateway.metrics().render();
    assert!(
        text.contains("oai_gateway_body_budget_refused_total 1\n"),
        "{text}"
    );
    assert!(text.contains("oai_gateway_body_buffered_bytes_limit 2500\n"));
    assert!(text.contains(
        "oai_gateway_requests_total{route=\"/v1/chat/completions\",status=\"503\",error=\"body_budget\",served_by=\"-\"} 1\n"
    ));
    // Upstream: the small call and the first body.
    assert_eq!(upstream.received().len(), 2);
}
