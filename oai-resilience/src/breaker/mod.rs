//! Circuit breaking: stop sending to an upstream that keeps failing, per upstream and key.
//!
//! Retries and the retry budget make one upstream's failures cheap; they cannot help when it
//! is down for minutes. [`CircuitBreakerLayer`] keeps one circuit per upstream and key
//! ([`BreakerKey`]: the URI authority and a hash of the credential, as the pacer keys its
//! state; [`CircuitBreakerLayer::key_fn`] replaces it). A circuit:
//!
//! - **closed**: calls pass, and their outcomes are counted. Failures are the kinds that mean
//!   "this upstream is unwell" ([`is_upstream_failure`]: 5xx, connection failures, timeouts);
//!   a 4xx, a rate limit or an exhausted quota is an answer from a healthy upstream (the pacer
//!   owns rate limits) and never opens it. It **opens** after `consecutive_failures` failures
//!   in a row, or when at least `min_calls` calls of the sliding `window` failed in the
//!   `failure_ratio` ([`BreakerConfig`]);
//! - **open**: calls fail at once, nothing sent, with [`ErrorKind::CircuitOpen`] whose
//!   [`Error::retry_after`] is the time left and whose [`Error::detail`] says why it opened
//!   (the [`respond`](crate::respond) mapping makes it a 503 with `retry-after`);
//! - **half-open** after `open_for`: up to `probes` calls pass at a time, the others fail at
//!   once; `probes` successes **close** it, one failure **opens** it again.
//!
//! Its state is observable: [`CircuitBreakerLayer::state`] ([`CircuitState`]),
//! [`CircuitBreakerLayer::counters`] ([`BreakerCounters`]), and `tracing` events on the
//! `oai_resilience::breaker` target (`WARN` when a circuit opens, `INFO` when it half-opens or
//! closes).
//!
//! # Where it goes: per attempt, under the retry layer
//!
//! ```text
//! caller -> ... -> Retry -+-> CircuitBreaker -> Pace -> Classify -> HTTP client -> server
//!                         +-- every attempt re-enters the breaker
//! ```
//!
//! - **Each attempt is an outcome.** Above the retry layer, the breaker would learn of a
//!   failing upstream only once per call, after all its attempts have hit it; under it, every
//!   failed attempt counts, so the circuit opens after a few attempts whichever calls made them.
//! - **A retry into an open circuit ends at once.** The circuit-open error is raised locally
//!   and nothing was sent, so the retry policy does not retry it ([`ErrorKind::CircuitOpen`] is
//!   [`is_local`](crate::ErrorKind::is_local)) and it is **not a retry-budget withdrawal**: the budget
//!   is asked only for retries the policy wants, and is told only of failures it would retry.
//!   The call returns a typed error at once, with the time until the next probe, instead of
//!   sleeping through backoffs into a circuit that stays open; a fallback route can act on it.
//! - **Above the pacer**, an open circuit refuses a call before it waits for a pacing slot,
//!   and the pacer's own local refusals (nothing sent) are ignored by the breaker.
//!
//! [`OpenAiLayer`](crate::OpenAiLayer) has this place for the breaker, switched off by default
//! ([`CircuitBreakerLayer::disabled`]; see [`crate::stack`] for why);
//! [`OpenAiLayer::breaker`](crate::OpenAiLayer::breaker) switches it on and
//! [`OpenAiLayer::without_breaker`](crate::OpenAiLayer::without_breaker) off again. A breaker
//! wrapped around a client of your own sees its raw responses: a 5xx response that reaches it
//! unclassified counts as a failure.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::breaker::{BreakerConfig, CircuitBreakerLayer, CircuitState};
//! use oai_resilience::{AuthLayer, ErrorKind, OpenAiLayer, RetryConfig, RetryLayer};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // An upstream that is down: every request gets a 503.
//! let sent = Arc::new(AtomicU32::new(0));
//! let counter = sent.clone();
//! let upstream = service_fn(move |_req: http::Request<_>| {
//!     counter.fetch_add(1, Ordering::SeqCst);
//!     async {
//!         let res = http::Response::builder().status(503).body(Full::new(Bytes::new()));
//!         Ok::<_, std::convert::Infallible>(res.unwrap())
//!     }
//! });
//! let breaker = CircuitBreakerLayer::with_config(BreakerConfig::new().consecutive_failures(3));
//! let stack = OpenAiLayer::new()
//!     .base_url("https://api.openai.com/v1".parse().unwrap())
//!     .auth(AuthLayer::from_key("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"))
//!     .retry(RetryLayer::with_config(RetryConfig::new().max_attempts(5).seed(1)))
//!     .breaker(breaker.clone())
//!     .layer(upstream);
//! let request = || {
//!     http::Request::post("/v1/embeddings")
//!         .body(Full::new(Bytes::from_static(br#"{"model":"text-embedding-3-small","input":"hi"}"#)))
//!         .unwrap()
//! };
//!
//! // Three attempts fail with 503 and open the circuit; the fourth fails at once.
//! let err = stack.clone().oneshot(request()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::CircuitOpen);
//! assert_eq!(err.attempts(), 4);
//! assert_eq!(sent.load(Ordering::SeqCst), 3);
//! let key = breaker.keys().pop().unwrap();
//! assert!(matches!(breaker.state(&key), CircuitState::Open { .. }));
//!
//! // While it is open, calls fail at once and nothing is sent.
//! let err = stack.oneshot(request()).await.unwrap_err();
//! assert_eq!((err.kind(), err.attempts()), (ErrorKind::CircuitOpen, 1));
//! assert!(err.retry_after().unwrap() <= std::time::Duration::from_secs(5));
//! assert_eq!(sent.load(Ordering::SeqCst), 3);
//! # }
//! ```
//!
//! By hand, with the breaker above the pacer:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::breaker::CircuitBreakerLayer;
//! use oai_resilience::{ClassifyLayer, PaceLayer, RetryLayer};
//! use tower::{service_fn, ServiceBuilder};
//!
//! let client = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//! });
//! let breaker = CircuitBreakerLayer::new();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .layer(breaker.clone())
//!     .layer(PaceLayer::new())
//!     .layer(ClassifyLayer::new())
//!     .service(client);
//! # let _ = svc;
//! ```
//!
//! [`ErrorKind::CircuitOpen`]: crate::ErrorKind::CircuitOpen
//! [`Error::retry_after`]: crate::Error::retry_after
//! [`Error::detail`]: crate::Error::detail

mod circuit;
mod key;
mod service;

pub use circuit::{
    is_upstream_failure, BreakerConfig, BreakerCounters, BreakerSettings, CircuitState,
    DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_FAILURE_RATIO, DEFAULT_MIN_CALLS, DEFAULT_OPEN_FOR,
    DEFAULT_PROBES, DEFAULT_WINDOW,
};
pub use key::{BreakerKey, KeyFn};
pub use service::{future, CircuitBreaker, CircuitBreakerLayer};
