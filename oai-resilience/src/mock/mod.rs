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

// The rooms (no file imports `mod.rs`, which only declares and re-exports): `route.rs` the
// endpoints; `config.rs` what the builder sets; `builder.rs` the builder and the constructors;
// `server.rs` the running server; `handler.rs` one request's answer (with `bodies.rs`,
// `sse.rs`, `limit.rs`, `response.rs`, `counts.rs`, `rng.rs`).
mod bodies;
mod builder;
mod config;
mod counts;
mod handler;
mod limit;
mod response;
mod rng;
mod route;
mod server;
mod sse;

pub use bodies::{estimate_tokens, TrueUsage};
pub use builder::MockBuilder;
pub use config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_REQUEST_LIMIT, DEFAULT_TOKEN_LIMIT};
pub use counts::{MockCounts, RecordedRequest};
pub use limit::RateLimit;
pub use response::{AuthFailure, MockResponse, ECHOED_KEY_FRAGMENT};
pub use route::Route;
pub use server::MockServer;

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
