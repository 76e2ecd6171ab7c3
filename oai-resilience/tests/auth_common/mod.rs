//! Helpers shared by the `auth_*` integration tests: keys, requests, and HTTP clients that
//! reach the mock server over loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A well-formed project key. Its secret part is everything between `sk-proj-` and the last
/// four characters.
pub(crate) const KEY: &str = "sk-proj-Q7vLm2XcR9tBw4ZkNp8HdJ3sFy6GaE1uVo5Ti0WqKe4M-rPb_wxyz";
/// Another well-formed key (for rotation).
pub(crate) const KEY2: &str = "sk-proj-Hn5Rz8QwLc3VmXb7Tk2Jp9Fd4Gs6Ya1Ue0Io5Pl8Kj3Mh-tNw_abcd";

pub(crate) use test_support::CHAT;

/// The part of `key` that must never be printed: all but a 8-character prefix and the last
/// four characters.
pub(crate) fn secret_part(key: &str) -> &str {
    &key[8..key.len() - 4]
}

/// Every 8-character window of the secret part of `key`: none may appear in any output.
pub(crate) fn secret_windows(key: &str) -> Vec<String> {
    let s: Vec<char> = secret_part(key).chars().collect();
    s.windows(8).map(|w| w.iter().collect()).collect()
}

/// Panics if `text` contains any 8 consecutive characters of the secret part of `key`.
#[track_caller]
pub(crate) fn assert_no_secret(text: &str, key: &str) {
    for w in secret_windows(key) {
        assert!(
            !text.contains(&w),
            "secret fragment {w:?} leaked in:\n{text}"
        );
    }
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP client.
pub(crate) fn client() -> HttpClient {
    test_support::http_client()
}

type Connecting =
    Pin<Box<dyn std::future::Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

/// A connector that sends every request, whatever its URI, to `addr` (the mock): requests
/// can name `http://api.openai.com/…` and still never leave the machine.
#[derive(Clone)]
pub(crate) struct ToLoopback(pub(crate) SocketAddr);

impl tower::Service<http::Uri> for ToLoopback {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(TokioIo::new(TcpStream::connect(addr).await?)) })
    }
}

/// A client whose connections all go to `addr`.
pub(crate) fn loopback_client(addr: SocketAddr) -> Client<ToLoopback, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(ToLoopback(addr))
}

/// A chat completion request to `url`.
pub(crate) fn chat(url: impl AsRef<str>) -> http::Request<Full<Bytes>> {
    http::Request::post(url.as_ref())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

/// The chat completions URL on OpenAI's host (reached through [`loopback_client`]).
pub(crate) const OPENAI_CHAT: &str = "http://api.openai.com/v1/chat/completions";
