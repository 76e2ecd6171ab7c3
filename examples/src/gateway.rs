//! An OpenAI-compatible proxy that puts the resilience stack in front of any OpenAI client.
//!
//! [`Gateway`] is a plain hyper 1 service: it takes an OpenAI-shaped request (`POST
//! /v1/chat/completions`, …), forwards it to the upstream through the stack (local key
//! checks, retries, pacing, classification), and answers with the upstream's response,
//! streamed through unchanged. When the stack fails, the [`Error`] is mapped back to
//! OpenAI's error JSON, so that an unmodified client (the official Python SDK with
//! `base_url="http://127.0.0.1:8787/v1"`) raises its usual exception:
//!
//! ```text
//! HTTP/1.1 401 Unauthorized
//! x-should-retry: false
//! x-oai-resilience-hint: remove the quotes around the key
//!
//! {"error":{"message":"Invalid API key: the API key is wrapped in quotes. Hint: remove the quotes around the key.",
//!           "type":"invalid_request_error","param":null,"code":"invalid_api_key",
//!           "hint":"remove the quotes around the key","request_id":null,"attempts":0}}
//! ```
//!
//! - The status is the upstream's when one answered, else the one OpenAI uses for the same
//!   fault (401 for a bad key, 400 for a bad parameter, 429 when the pacer gave up, 502/504
//!   for connection failures and timeouts).
//! - `message`, `type`, `param`, `code` are the upstream's when it sent them; the hint is
//!   appended to the message (what a user sees in an SDK's exception) and is also in the
//!   `hint` field and the `x-oai-resilience-hint` header. The upstream's request id is in the
//!   `request_id` field and the `x-request-id` header; the attempts made in `attempts` and
//!   `x-oai-resilience-attempts`.
//! - Every error answer carries `x-should-retry: false`: the gateway has already retried
//!   whatever could succeed, and the SDKs obey that header, so their own retries do not
//!   multiply the requests.
//!
//! The key comes from the incoming request's `Authorization` header (checked locally: a
//! placeholder, quotes or a doubled `Bearer ` never leave the gateway) or, when the request
//! has none, from the auth layer's source (`OPENAI_API_KEY` in the binary).
//!
//! Replicas of the gateway that use one key share its rate limit through Redis with
//! [`pacing_store`] (`--store redis://HOST:PORT` in the binary); by default each paces in its
//! own process.
//!
//! Why plain hyper and not axum: the gateway is one catch-all route, and hyper and
//! hyper-util are already in the dependency tree; axum would add a router and its
//! dependencies to every build for nothing the proxy uses.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use oai_resilience::stack::{BaseUrl, BaseUrlLayer, InvalidBaseUrl};
use oai_resilience::{respond, Error};
use serde_json::json;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use crate::stack::Stack;

/// The largest request body the gateway accepts: 8 MiB (larger ones get a 413).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

pub use oai_resilience::respond::{ATTEMPTS_HEADER, HINT_HEADER};

/// The response body: the upstream's body streamed through, or the gateway's own JSON.
pub type GatewayBody = Either<Incoming, Full<Bytes>>;

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), plus
/// `host` and `content-length` (the client sets them for the new request) and
/// `accept-encoding` (error bodies must stay readable for classification).
const REQUEST_SKIP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
];

/// Hop-by-hop response headers.
const RESPONSE_SKIP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The proxy service. Cheap to clone: clones share the stack's pacer and retry budget.
#[derive(Clone)]
pub struct Gateway {
    /// The upstream's base URL, without `/v1` and without a trailing `/`.
    upstream: Arc<str>,
    /// The stack under the upstream's base URL, which gives each request's path its base.
    stack: BaseUrl<Stack>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway that forwards to `upstream` through `stack`. `upstream` is a base URL as
    /// OpenAI's SDKs write it, with or without `/v1` and a trailing `/`
    /// (`http://127.0.0.1:9000/v1`, `https://api.openai.com`): the request's path, which
    /// carries `/v1` itself, is joined to it by [`BaseUrlLayer`], so `/v1/chat/completions`
    /// goes to `/v1/chat/completions` upstream either way.
    ///
    /// # Errors
    ///
    /// [`InvalidBaseUrl`] if `upstream` is not an absolute `http`/`https` URL with a host (and
    /// without credentials, a query or a fragment).
    pub fn new(upstream: &str, stack: Stack) -> Result<Self, InvalidBaseUrl> {
        let base: BaseUrlLayer = upstream.parse()?;
        let url = base.url().map_err(Clone::clone)?;
        Ok(Gateway {
            upstream: Arc::from(url),
            stack: base.layer(stack),
        })
    }

    /// The upstream base URL, without `/v1` and without a trailing `/`.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Proxies one request. Never fails: every failure becomes an OpenAI-shaped error answer.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<oai_resilience::BoxError>,
    {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let too_big = e.is::<http_body_util::LengthLimitError>();
                let (status, message) = if too_big {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("The request body exceeds the gateway's limit of {MAX_REQUEST_BYTES} bytes."),
                    )
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("Could not read the request body: {e}"),
                    )
                };
                return openai_error(
                    status,
                    &message,
                    "invalid_request_error",
                    None,
                    None,
                    &HeaderMap::new(),
                );
            }
        };
        // Only the path and query: the stack's base URL gives them the upstream.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut out = Request::builder().method(parts.method.clone()).uri(path);
        if let Some(headers) = out.headers_mut() {
            for (name, value) in &parts.headers {
                if !REQUEST_SKIP.contains(&name.as_str()) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let out = match out.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("The request cannot be forwarded: {e}");
                return openai_error(
                    StatusCode::BAD_REQUEST,
                    &message,
                    "invalid_request_error",
                    None,
                    None,
                    &HeaderMap::new(),
                );
            }
        };
        match self.stack.clone().oneshot(out).await {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                for name in RESPONSE_SKIP {
                    parts.headers.remove(*name);
                }
                Response::from_parts(parts, Either::Left(body))
            }
            Err(err) => {
                tracing::info!(error = %err, "gateway: call failed");
                error_response(&err)
            }
        }
    }

    /// Serves the gateway on `listener` until the task is dropped (HTTP/1.1).
    ///
    /// # Errors
    ///
    /// The listener's accept error.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let gateway = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "gateway: connection ended with an error");
                }
            });
        }
    }

    /// Binds `addr` and serves in a background task; returns the bound address (useful with
    /// port 0) and the task.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn spawn(
        self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, tokio::spawn(self.serve(listener))))
    }
}

/// Maps an error of the stack to OpenAI's error JSON, with the hint, request id and attempts
/// ([`oai_resilience::respond::error_response`]).
pub fn error_response(err: &Error) -> Response<GatewayBody> {
    respond::error_response(err).map(|body| Either::Right(Full::new(body)))
}

fn openai_error(
    status: StatusCode,
    message: &str,
    error_type: &str,
    param: Option<&str>,
    code: Option<&str>,
    extra: &HeaderMap,
) -> Response<GatewayBody> {
    let body =
        json!({"error": {"message": message, "type": error_type, "param": param, "code": code}});
    let mut headers = extra.clone();
    headers.insert("x-should-retry", HeaderValue::from_static("false"));
    json_response(status, &body, headers)
}

fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    headers: HeaderMap,
) -> Response<GatewayBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The pacing store for `--store ARG`: `memory` (or `in-process`): `None`, each gateway paces
/// in its own process (the default); `redis://HOST:PORT[/DB]`: a [`RedisStore`] shared by
/// every gateway that uses the same Redis.
///
/// If Redis does not answer now, the store is returned anyway with a `tracing` warning: it
/// paces in-process until Redis answers (the store fails open), so a gateway starts while
/// its Redis is down.
///
/// # Errors
///
/// An unknown store or a URL the Redis client cannot parse. The message never contains the
/// URL (it may hold a Redis password).
///
/// [`RedisStore`]: oai_resilience::pace::RedisStore
pub async fn pacing_store(arg: &str) -> Result<Option<oai_resilience::pace::RedisStore>, String> {
    use oai_resilience::pace::{RedisStore, RedisStoreConfig};
    match arg {
        "memory" | "in-process" => Ok(None),
        url if url.starts_with("redis://") => {
            let config = RedisStoreConfig::default();
            let store = RedisStore::open(url, config.clone())
                .map_err(|e| format!("--store: not a usable Redis URL ({})", e.kind()))?;
            if let Err(e) = RedisStore::connect(url, config).await {
                tracing::warn!(
                    error = %e.kind(),
                    "Redis does not answer yet: pacing in-process until it does"
                );
            }
            Ok(Some(store))
        }
        _ => Err("--store: expected memory or redis://HOST:PORT".to_owned()),
    }
}
