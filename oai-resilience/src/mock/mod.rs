//! An embedded mock of the OpenAI API, for tests, examples and demos: no key, no network.
//!
//! [`MockServer`] is a real HTTP/1.1 server (hyper) on `127.0.0.1`, on a free port, running on
//! the current tokio runtime, as `tower-test` is for tower: every layer of this crate is tested
//! against it over loopback, and users can test their own stacks the same way. It answers
//! `POST /v1/chat/completions`, `/v1/embeddings` and `/v1/responses` (also without the `/v1`
//! prefix) with OpenAI's JSON (or, for `"stream": true`, its server-sent events) and headers
//! (`x-request-id: req_…`, `openai-processing-ms`, `openai-version`, `openai-organization`,
//! `x-ratelimit-*`), and fails on demand the way the API fails:
//!
//! | fault | configure with | answer |
//! |---|---|---|
//! | rate limits | [`MockBuilder::request_limit`], [`MockBuilder::token_limit`] with a [`RateLimit`] | 429 `rate_limit_exceeded`, `retry-after`, `retry-after-ms`, truthful `x-ratelimit-*` |
//! | exhausted quota | [`MockBuilder::quota_exhausted`], [`MockServer::set_quota_exhausted`] | 429 `insufficient_quota` |
//! | scripted sequences | [`MockBuilder::script`], [`MockServer::script`] with [`MockResponse`] | the script, then normal behaviour |
//! | random server errors | [`MockBuilder::random_server_errors`] (seeded) | 500/502/503/504 |
//! | latency | [`MockBuilder::latency`], [`MockBuilder::route_latency`], [`MockResponse::with_delay`]; [`MockBuilder::stream_duration`] for event streams | a `tokio::time::sleep`; a stream's events spread over the duration |
//! | key check | [`MockBuilder::api_key`]; causes via [`MockResponse::auth_failure`] | 401/403 with OpenAI's messages |
//! | bad bodies | always on | 400 invalid JSON, `missing_required_parameter`, `invalid_type`, `empty_array`; 413 ([`MockBuilder::max_request_bytes`]) |
//! | a dropped connection | [`MockResponse::disconnect`] in a script | the connection closes, no answer |
//! | a failing stream | [`MockResponse::stream_error_after`] in a script | 200 event stream ending in an `{"error": …}` event |
//!
//! [`MockBuilder`] lists the order in which a request meets these steps. All clocks are
//! tokio's, so buckets refill and latencies pass in virtual time
//! (`#[tokio::test(start_paused = true)]`, which needs tokio's `test-util` feature: add
//! `tokio = { version = "1", features = ["macros", "rt", "test-util"] }` to your
//! `[dev-dependencies]`). [`MockServer::counts`] tells what the server
//! received and answered ("zero requests reached the server" is
//! `assert_eq!(server.counts().total, 0)`), [`MockServer::requests`] the requests themselves.
//! The server stops when dropped, or with [`MockServer::shutdown`].
//!
//! (Other connection-level faults, such as closing mid-headers or dripping a body, are not
//! built yet; they will be further [`MockResponse`] constructors.)
//!
//! [`TEST_KEY`] is a made-up key of OpenAI's shape: give it to [`MockBuilder::api_key`] and to
//! the client, and every local key check (the auth layer's, `#[openai_call]`'s, for any
//! target) accepts it.
//!
//! Here the client sits under [`ClassifyLayer`](crate::ClassifyLayer) alone, so it is built
//! for the request body `Full<Bytes>`; under [`OpenAiLayer`](crate::OpenAiLayer) it receives
//! [`ClientBody`](crate::ClientBody)`<Full<Bytes>>` instead (see
//! [the stack's body type](crate::stack#the-inner-clients-body-type)).
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use oai_resilience::{mock::{MockResponse, MockServer, Route}, ClassifyLayer, ErrorKind};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let server = MockServer::builder()
//!     .script(Route::ChatCompletions, [MockResponse::status(503)])
//!     .start()
//!     .await;
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let mut svc = ServiceBuilder::new().layer(ClassifyLayer::new()).service(client);
//! let request = || {
//!     http::Request::post(server.endpoint(Route::ChatCompletions))
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from_static(
//!             br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#,
//!         )))
//!         .unwrap()
//! };
//!
//! // First the scripted 503 ...
//! let err = svc.ready().await.unwrap().call(request()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::ServerError);
//! assert!(err.request_id().unwrap().starts_with("req_"));
//!
//! // ... then the normal answer.
//! let res = svc.ready().await.unwrap().call(request()).await.unwrap();
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["object"], "chat.completion");
//!
//! let counts = server.counts();
//! assert_eq!((counts.total, counts.ok, counts.status(503)), (2, 1, 1));
//! # }
//! ```

mod bodies;
mod builder;
mod counts;
mod handler;
mod limit;
mod response;
mod rng;
mod sse;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use bodies::{estimate_tokens, TrueUsage};
pub use builder::{
    MockBuilder, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_REQUEST_LIMIT, DEFAULT_TOKEN_LIMIT,
};
pub use counts::{MockCounts, RecordedRequest};
pub use limit::RateLimit;
pub use response::{AuthFailure, MockResponse, ECHOED_KEY_FRAGMENT};

use builder::Config;
use handler::Shared;

/// A made-up API key of OpenAI's shape (`sk-proj-` and 36 letters and digits) for tests and
/// examples against the mock: it passes every local key check ([`KeyRules::openai`] for any
/// host, `#[openai_call]`'s `api_key`), so copying an example does not trip the placeholder or
/// length checks. It is no real key: the real API answers it with a 401.
///
/// ```
/// use oai_resilience::auth::{check_key_for_host, KeyRules};
/// use oai_resilience::mock::TEST_KEY;
///
/// assert!(check_key_for_host(TEST_KEY, &KeyRules::openai(), Some("api.openai.com")).is_ok());
/// assert!(check_key_for_host(TEST_KEY, &KeyRules::openai(), Some("127.0.0.1")).is_ok());
/// ```
///
/// [`KeyRules::openai`]: crate::auth::KeyRules::openai
pub const TEST_KEY: &str = "sk-proj-M0ckTestKey0penAiShape0123456789abcd";

/// The endpoints the mock serves.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 3] = [Route::ChatCompletions, Route::Embeddings, Route::Responses];

    /// The path, with the `/v1` prefix.
    pub fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Responses => "/v1/responses",
        }
    }

    /// The route a request path names (with or without `/v1`, ignoring a trailing `/`).
    pub fn from_path(path: &str) -> Option<Route> {
        let p = path.strip_prefix("/v1").unwrap_or(path);
        let p = p.strip_suffix('/').unwrap_or(p);
        match p {
            "/chat/completions" => Some(Route::ChatCompletions),
            "/embeddings" => Some(Route::Embeddings),
            "/responses" => Some(Route::Responses),
            _ => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// The running mock server. See the [module docs](self).
///
/// Dropping it stops the server: the accept loop and every connection are aborted.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

crate::macros::debug_struct!(MockServer, |s| "MockServer" {
    "addr": s.addr,
    "state": s.shared,
    "running": s.task.is_some(),
} finish);

static NEXT_SEED: AtomicU64 = AtomicU64::new(0x6f61_692d_6d6f_636b);

impl MockServer {
    /// Starts a server with the default configuration (see [`MockBuilder`]).
    ///
    /// # Panics
    ///
    /// If no port can be bound or no tokio runtime is running.
    pub async fn start() -> MockServer {
        MockServer::builder().start().await
    }

    /// A builder to configure faults and limits before starting.
    pub fn builder() -> MockBuilder {
        MockBuilder::default()
    }

    pub(crate) async fn spawn(config: Config) -> std::io::Result<MockServer> {
        // A deep accept queue (the kernel caps it at `somaxconn`): a load test's burst of a
        // thousand connects must not overflow it, or the kernel drops SYNs and retries them in
        // real time, which paused-time tests see as connections that hang.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let seed = config
            .seed
            .unwrap_or_else(|| NEXT_SEED.fetch_add(0x9E37_79B9, Ordering::Relaxed));
        let shared = Arc::new(Shared::new(config, seed));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        tracing::debug!(%addr, "mock OpenAI server started");
        Ok(MockServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The base URL, without `/v1`: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL of `route`: `http://127.0.0.1:PORT/v1/chat/completions`.
    pub fn endpoint(&self, route: Route) -> String {
        format!("http://{}{}", self.addr, route.path())
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the request counts.
    pub fn counts(&self) -> MockCounts {
        self.shared.counts()
    }

    /// The answered requests, oldest first (the newest 10,000 are kept).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Clears the counts and the recorded requests (the buckets and scripts stay).
    pub fn reset_counts(&self) {
        self.shared.reset_counts();
    }

    /// The answered requests to `route`, oldest first.
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        let mut all = self.shared.requests();
        all.retain(|r| r.route == Some(route));
        all
    }

    /// Appends responses to `route`'s script, as [`MockBuilder::script`] does.
    pub fn script(&self, route: Route, responses: impl IntoIterator<Item = MockResponse>) {
        self.shared.push_script(route, responses);
    }

    /// Switches the exhausted-quota fault on or off.
    pub fn set_quota_exhausted(&self, exhausted: bool) {
        self.shared.set_quota_exhausted(exhausted);
    }

    /// Sets the probability of the random-server-error fault (clamped to `0..=1`; the seed
    /// stays), e.g. `1.0` for an outage and `0.0` when it ends.
    pub fn set_random_server_errors(&self, probability: f64) {
        self.shared.set_random_server_errors(probability);
    }

    /// Stops accepting, aborts every connection, and waits until all of the server's tasks
    /// have ended. Requests in flight fail on the client side.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // The loop ends on the signal; an abort is the fallback. Either way it is done.
            let _ = task.await;
        }
        tracing::debug!(addr = %self.addr, "mock OpenAI server stopped");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the loop's future drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "mock: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| handler::handle(Arc::clone(&shared), req));
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "mock: connection ended with an error");
    }
}
