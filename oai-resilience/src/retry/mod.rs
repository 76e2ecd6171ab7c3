//! Retries with jitter, server hints, a shared budget and an overall deadline.
//!
//! A failed call to the OpenAI API is worth repeating only when the failure is transient: a
//! rate limit (a 429 that is *not* an exhausted quota), 408, 409, a server error, a connection
//! that failed before any response. Everything else (a bad request, a bad key, an exhausted
//! quota, a request larger than the limit) fails the same way every time, so it is returned at
//! once. The server's `x-should-retry` header, when present, wins over the status.
//!
//! How long to wait:
//! - the server's hint when it gave one, by precedence `retry-after-ms`, `retry-after`, (for a
//!   429) `x-ratelimit-reset-*`, then "try again in …" in the message, plus a small
//!   [`HintJitter`] so that clients with the same hint do not return in the same instant;
//!   a hint above the ceiling (120 s by default) ends the call at once, with the hint in the
//!   error, instead of sleeping for hours;
//! - otherwise exponential [`Backoff`] with full [`Jitter`] by default.
//!
//! What bounds it: a maximum number of attempts, an overall deadline over attempts and delays
//! (a delay that would cross it is not slept), and a [`TokenBudget`] shared by all clones:
//! retry throttling that lets retries through while most attempts succeed (20 % random
//! failures cost about 1.25 requests per call) and stops them when most fail (an outage
//! receives at most 10 retries in all, on top of the calls themselves).
//!
//! # The layer
//!
//! [`RetryLayer`] builds [`Retry`] services over a *classified* service (one whose error is
//! [`Error`](crate::Error), such as [`Classify`](crate::Classify)), so the policy sees typed
//! errors, not raw responses. It follows the tower contract: the inner service is cloned and
//! its `poll_ready` is driven before every attempt; clones of the service share the budget and
//! the random source, never in-flight requests; dropping the response future at any moment
//! (mid attempt, mid backoff) stops everything, since nothing is spawned.
//!
//! A retry re-sends the same request: bodies that clone cheaply ([`ReplayBody`]: `Full<Bytes>`,
//! `Bytes`, `String`, …) are replayed; a streamed body fails with
//! [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable) the first time a retry would
//! be needed. Each attempt carries its retry count in `x-stainless-retry-count` (0, 1, 2, …),
//! as the official SDKs send it.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::retry::{RetryConfig, RetryLayer};
//! use oai_resilience::{ClassifyLayer, Error};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Error> {
//! // An upstream that fails twice with 503, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let upstream = service_fn(move |_req: http::Request<Full<Bytes>>| {
//!     let status = if counter.fetch_add(1, Ordering::SeqCst) < 2 { 503 } else { 200 };
//!     async move {
//!         Ok::<_, std::convert::Infallible>(
//!             http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
//!         )
//!     }
//! });
//! let mut svc = ServiceBuilder::new()
//!     .layer(RetryLayer::with_config(RetryConfig::new().seed(7)))
//!     .layer(ClassifyLayer::new())
//!     .service(upstream);
//! let req = http::Request::post("/v1/chat/completions").body(Full::new(Bytes::from("{}"))).unwrap();
//! let res = svc.ready().await?.call(req).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(()) }
//! ```
//!
//! # Observability
//!
//! Every retry emits an `INFO` event on the `oai_resilience::retry` target with `attempt`,
//! `status`, `kind`, `request_id`, `delay_ms` and `delay_source` (backoff or which server
//! hint); a stop emits a `DEBUG` event with its reason. The final error carries a
//! [`RetryContext`](crate::RetryContext) ([`Error::retry_context`](crate::Error::retry_context)):
//! the attempts, the elapsed time, the [`StopReason`](crate::StopReason) and each attempt's
//! [`AttemptOutcome`](crate::AttemptOutcome), and its `Display` ends with, for instance,
//! "after 3 attempts in 1.2 s (maximum attempts reached)".
//!
//! # Tracing spans
//!
//! Each call runs in a `DEBUG` span named `call` (target `oai_resilience::retry`), and each
//! attempt in a child span named `attempt`, so that a `tracing-opentelemetry` layer exports a
//! trace per call with one span per HTTP request. The fields use the OpenTelemetry semantic
//! conventions' names, as the [metrics](crate::observe) do, and are recorded when known:
//!
//! | span | fields |
//! |---|---|
//! | `call` | `gen_ai.operation.name` (`chat`, `text_completion`, `embeddings`; from the path), `gen_ai.request.model` (from the [`RequestModel`](crate::observe::RequestModel) extension), `server.address`, `http.request.resend_count` and `oai_resilience.attempts` at the end, `oai_resilience.request_id` (the last response's), and on failure `error.type` (the [`ErrorKind`](crate::ErrorKind)'s name), `oai_resilience.stop_reason`, `otel.status_code = "ERROR"`; `otel.name` is `"{operation} {model}"`, `otel.kind = "client"` |
//! | `attempt` | `oai_resilience.attempt` (1 for the first), `http.request.method`, `url.path`, `server.address`, `server.port`, `http.request.resend_count` (from the second attempt on), `http.response.status_code`, `error.type` and `otel.status_code = "ERROR"` on failure, `oai_resilience.request_id`; `otel.name` is the method, `otel.kind = "client"` |
//!
//! The "retrying" event (with the delay) and the "not retrying" event are emitted inside the
//! failed attempt's span, so they become that span's events; the inner service's own spans
//! and events (the pacer's wait, the HTTP client) nest under the attempt ([`call`] instruments
//! each attempt's future too; under [`TowerPolicy`] tower drives the attempts, so only the
//! spans' fields are recorded). Loops that do not see the request ([`call`],
//! `#[openai_call]`, whose `openai_call` span holds the `call` span) record no request fields.
//! The validation layer reads the model into [`RequestModel`](crate::observe::RequestModel)
//! when these spans are wanted; a request id that looks like an API key is recorded as
//! `[redacted]`. With no subscriber interested in these spans, they cost a check of each
//! callsite's cached interest: nothing is allocated or formatted.
//!
//! # One retry loop
//!
//! - [`RetryConfig`]: every knob, with the defaults in its docs;
//! - [`Policy`] / [`OpenAiPolicy`]: "retry after D" or "stop" per attempt; closures are
//!   policies too;
//! - [`Retrier`]: the decision core (policy, then the limits, then the records) that every
//!   retry loop of the project drives: the [`Retry`] response future, [`TowerPolicy`] (for
//!   plain `tower::retry::RetryLayer`) and [`call`];
//! - [`call`]: the loop for closures, used by `#[openai_call]`; user error types take part
//!   through [`RetryableError`].
//!
//! ```
//! use oai_resilience::retry::{call, RetryConfig};
//! use oai_resilience::{Error, ErrorKind, StopReason};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let config = RetryConfig::new().max_attempts(3).seed(1);
//! let err = call(&config, |_attempt| async {
//!     Err::<(), _>(Error::new(ErrorKind::ServerError))
//! })
//! .await
//! .unwrap_err();
//! assert_eq!(err.attempts(), 3);
//! assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
//! # }
//! ```
mod backoff;
mod budget;
mod config;
pub mod future;
mod layer;
mod policy;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod replay;
mod retrier;
mod service;
mod span;
mod tower_policy;

pub use backoff::{Backoff, HintJitter, Jitter, RandomSource, SplitMix, DEFAULT_BASE, DEFAULT_CAP};
pub use budget::{Budget, RetryBudget, TokenBudget};
pub use config::{
    RetryConfig, RetrySettings, SharedBudget, DEFAULT_DEADLINE, DEFAULT_HINT_CEILING,
    DEFAULT_MAX_ATTEMPTS, FOR_DURATION_MAX_ATTEMPTS, RETRY_COUNT_HEADER,
};
pub use layer::RetryLayer;
pub use policy::{is_idempotent, server_hint, Attempt, Decision, OpenAiPolicy, Policy, ServerHint};
pub use replay::{clone_request, ReplayBody};
pub use retrier::{call, call_with, Retrier, RetryableError};
pub use service::Retry;
pub(crate) use span::enabled as spans_enabled;
pub use tower_policy::TowerPolicy;
