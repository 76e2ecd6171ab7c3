//! Helpers shared by the gateway's tests: an in-process gateway, a raw upstream that records
//! what it receives, and a raw HTTP/1.1 client for requests an HTTP library will not send.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
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

/// A `POST /v1/chat/completions` of [`CHAT`] with [`KEY`] to the gateway at `addr`, for an
/// HTTP client.
pub fn chat_request(addr: SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
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
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
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
                });
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
