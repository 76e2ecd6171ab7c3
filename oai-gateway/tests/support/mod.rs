//! Helpers shared by the gateway's tests: an in-process gateway, a raw upstream that records
//! what it receives, and a raw HTTP/1.1 client for requests an HTTP library will not send.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use oai_gateway::config::Command;
use oai_gateway::server::{self, Limits};
use oai_gateway::{Config, ConfigError, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
pub const SERVER_KEY: &str = "sk-proj-SeRvErKeYsErVeRkEy0123456789abcdef";
pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;

/// The config of `args` with a fake environment `env` (name, value), parsed as the binary
/// parses its command line, or its error.
pub fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match Config::from_args(args.iter().copied(), &lookup)? {
        Command::Run(c) => Ok(*c),
        Command::Help => panic!("{args:?}: help"),
    }
}

/// The config of `args` with a fake environment `env`, which must be valid.
pub fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
    parse(args, env).unwrap_or_else(|e| panic!("{args:?}: {e:?}"))
}

/// The config of `--upstream <upstream>` followed by `args`, with a fake environment `env`,
/// which must be valid.
pub fn config_for(upstream: &str, args: &[&str], env: &[(&str, &str)]) -> Config {
    let mut all = vec!["--upstream", upstream];
    all.extend_from_slice(args);
    config(&all, env)
}

/// Starts a [`RawUpstream`] and a gateway in front of it, configured by [`config_for`] with
/// `args` and `env`; returns the upstream and the gateway's address.
pub async fn raw_gateway(args: &[&str], env: &[(&str, &str)]) -> (RawUpstream, SocketAddr) {
    let upstream = RawUpstream::start().await;
    let gw = start(config_for(&upstream.url(), args, env)).await;
    (upstream, gw)
}

/// Starts a gateway for `config` on a free loopback port; returns its address and the
/// gateway itself (for its metrics). It serves until the test ends.
pub async fn start_with_gateway(config: &Config) -> (SocketAddr, Gateway) {
    let gw = Gateway::new(config).await.unwrap();
    (serve(gw.clone(), config).await, gw)
}

/// Starts a gateway for `config` on a free loopback port; it serves until the test ends.
pub async fn start(config: Config) -> SocketAddr {
    let gw = Gateway::new(&config).await.unwrap();
    serve(gw, &config).await
}

/// Serves `gw` with the limits of `config` on a free loopback port until the test ends.
pub async fn serve(gw: Gateway, config: &Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits::from(config);
    tokio::spawn(server::serve(listener, gw, limits, std::future::pending()));
    addr
}

/// The `authorization` value that presents `key`: `Bearer <key>`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A `method` request for `uri` with `content-type: <content_type>`, the caller key `key`
/// (`authorization: Bearer <key>`) and `body`, for an HTTP client.
pub fn authorized<B>(
    method: &str,
    uri: &str,
    content_type: &str,
    key: &str,
    body: B,
) -> http::Request<B> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .header("authorization", bearer(key))
        .body(body)
        .unwrap()
}

/// A `POST /v1/chat/completions` of [`CHAT`] with [`KEY`] to the gateway at `addr`, for an
/// HTTP client.
pub fn chat_request(addr: SocketAddr) -> http::Request<Full<Bytes>> {
    post_with_key(addr, "/v1/chat/completions", "application/json", CHAT)
}

/// A `POST path` to the gateway at `addr` with `content-type: <content_type>`, [`KEY`] and
/// `body`, for an HTTP client.
pub fn post_with_key(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &'static str,
) -> http::Request<Full<Bytes>> {
    authorized(
        "POST",
        &format!("http://{addr}{path}"),
        content_type,
        KEY,
        Full::new(Bytes::from_static(body.as_bytes())),
    )
}

/// Accepts connections on `listener` until accepting fails, and handles each with `handle`
/// in a task of its own.
pub fn accept_each<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
}

/// A keep-alive HTTP/1.1 upstream on a free loopback port that reads each request's body and
/// answers 200 with `content-type: application/json`, the headers `headers` and `body`;
/// `on_request` runs once for each request as it arrives. Returns its address.
pub async fn json_upstream(
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    on_request: impl Fn() + Clone + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    accept_each(listener, move |stream| {
        let on_request = on_request.clone();
        async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                on_request();
                async move {
                    let _ = BodyExt::collect(req.into_body()).await;
                    let mut res =
                        http::Response::builder().header("content-type", "application/json");
                    for (name, value) in headers {
                        res = res.header(*name, *value);
                    }
                    Ok::<_, Infallible>(res.body(Full::new(Bytes::from_static(body))).unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    addr
}

/// One request as the raw upstream received it: the head (request line and headers, as
/// text) and the body.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }
}

/// The value of header `name` (case-insensitive) in the message head `head`, if present.
fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A loopback upstream that records every request byte for byte and answers 200 with a small
/// JSON body (`Connection: close`).
#[derive(Clone)]
pub struct RawUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RawUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        accept_each(listener, move |mut stream| {
            let rec = rec.clone();
            async move {
                let Some((head, body)) = read_message(&mut stream, true).await else {
                    return;
                };
                rec.lock().unwrap().push(Received { head, body });
                let json = r#"{"object":"list","data":[]}"#;
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nset-cookie: __cf_bm=abc\r\n\r\n{json}",
                    json.len()
                );
                let _ = stream.write_all(res.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        RawUpstream { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 message (head, then a `content-length` body) from `stream`.
pub async fn read_message(stream: &mut TcpStream, with_body: bool) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let len = if with_body { len } else { 0 };
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// A response as the raw client read it.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// The response of `head` (status line and headers) and `body`, as [`read_message`]
    /// returns them.
    pub fn new(head: String, body: &[u8]) -> Self {
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        RawResponse {
            status,
            head,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.head, self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }
}

/// Sends `request` (raw text) to `addr` and reads one response (within 10 s).
pub async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, body) = tokio::time::timeout(
        Duration::from_secs(10),
        read_message(&mut stream, !request.starts_with("HEAD ")),
    )
    .await
    .expect("no response within 10 s")
    .expect("connection closed before a response");
    RawResponse::new(head, &body)
}

/// A request with `method`, `path`, extra header lines and `body`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (n, v) in headers {
        text.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body);
    raw(addr, &text).await
}

/// A raw `POST /v1/chat/completions` of [`CHAT`] with the caller key `key` to the gateway at
/// `addr`.
pub async fn chat_as(addr: SocketAddr, key: &str) -> RawResponse {
    chat_with(addr, key, &[]).await
}

/// A raw `POST /v1/chat/completions` of [`CHAT`] with the caller key `key` and the further
/// header lines `extra` to the gateway at `addr`.
pub async fn chat_with(addr: SocketAddr, key: &str, extra: &[(&str, &str)]) -> RawResponse {
    let auth = bearer(key);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    request(addr, "POST", "/v1/chat/completions", &headers, CHAT).await
}

/// A raw `GET path` with the caller key `key` to the gateway at `addr`.
pub async fn get_as(addr: SocketAddr, path: &str, key: &str) -> RawResponse {
    let auth = bearer(key);
    request(addr, "GET", path, &[("authorization", &auth)], "").await
}
