//! Fallback routes: an ordered list of upstreams for one logical call.
//!
//! Retries, pacing, the budget and the breaker make one upstream's failures cheap; they cannot
//! serve a call when that upstream is down for minutes or its key's quota is gone. A
//! [`Fallback`] holds **routes** ([`Route`]), each a full stack of its own: usually an
//! [`OpenAiLayer`](crate::OpenAiLayer) with its own base URL, key, auth header (Azure OpenAI's
//! `api-key`: [`AuthLayer::azure`](crate::AuthLayer::azure)), pacer (its pacing key is its
//! base URL and key) and circuit breaker. Another deployment of the same model (a second
//! region or project, Azure OpenAI) is a route; so is a declared cheaper model
//! ([`Route::model`] rewrites the body's `model`).
//!
//! A call goes to the first route. When the route's stack returns an error that says *this
//! route cannot serve the call soon* ([`FallbackPolicy`], [`moves_on`]), the same request is
//! sent, whole, to the next route; any other error is returned at once. Each route's own
//! retries run first, so the decision is taken on the route's final error:
//!
//! | the route's error | moves on | why |
//! |---|---|---|
//! | [`CircuitOpen`](crate::ErrorKind::CircuitOpen) | yes | the upstream keeps failing; nothing was sent |
//! | [`QuotaExceeded`](crate::ErrorKind::QuotaExceeded) (429 `insufficient_quota`) | yes | this key's billing; another route has its own |
//! | any error whose retries stopped on [`StopReason::Budget`](crate::StopReason::Budget) | yes | the route's budget closed: its upstream fails broadly |
//! | [`RateLimited`](crate::ErrorKind::RateLimited): the pacer's wait beyond `max_wait` ([`is_paced_locally`](crate::pace::is_paced_locally)), or a 429 the retries gave up on | yes | this route's limit; another has its own |
//! | [`ServerError`](crate::ErrorKind::ServerError), [`Connection`](crate::ErrorKind::Connection), 408, 409, after the route's retries | yes | the upstream is unwell |
//! | [`Timeout`](crate::ErrorKind::Timeout) (local) | idempotent requests only | a timed-out POST may have run; [`FallbackPolicy::fall_back_on_post_timeouts`] |
//! | 400, local validation ([`InvalidParameter`](crate::ErrorKind::InvalidParameter)), 413, 422 | never | the request itself: it fails the same everywhere |
//! | 401, 403, 404, a missing or malformed key | never | this route's configuration: a fallback would hide it |
//! | [`NotReplayable`](crate::ErrorKind::NotReplayable), [`Internal`](crate::ErrorKind::Internal), [`Decode`](crate::ErrorKind::Decode), [`ResponseBody`](crate::ErrorKind::ResponseBody), other statuses | never | a local fault, or the server answered (and may have billed) |
//!
//! What comes back:
//!
//! - a response carries [`ServedBy`] in its extensions: the route's name and place;
//! - the error of a call that tried more than one route is the last route's error, with each
//!   route's error in [`Error::routes`](crate::Error::routes) ([`RouteError`](crate::RouteError));
//!   its `Display` ends with `(routes: primary: circuit_open; backup: 429 quota_exceeded)`,
//!   route names and kinds only, no messages and no keys.
//!
//! The pacer's refusal reaches the fallback only after the route's retries: the default retry
//! policy retries it after its hint (the expected wait, up to the hint ceiling), so a route
//! whose key is paced far ahead holds the call that long before it moves on. For the call to
//! move on at once, give the route a policy that does not retry the refusal:
//! `RetryConfig::new().policy(OpenAiPolicy::new().never_retry_if(pace::is_paced_locally))`
//! (`tests/fallback.rs` does so).
//!
//! The request body must be replayable ([`ReplayBody`](crate::retry::ReplayBody), as for
//! retries; [`RouteBody`] adds the model rewrite): a body that cannot be copied goes to the
//! first route only, and if that route's error would move on, the call fails with it and the
//! next route's entry is [`NotReplayable`](crate::ErrorKind::NotReplayable).
//!
//! # Where it goes: outermost, one full stack per route
//!
//! ```text
//! caller -> Fallback -+-> route "primary": BaseUrl -> Validate -> Auth -> Retry -> CircuitBreaker -> Pace -> Classify -+-> client
//!                     +-> route "backup":  BaseUrl -> Validate -> Auth -> Retry -> CircuitBreaker -> Pace -> Classify -+
//! ```
//!
//! Above the routes, because each route's retries, pacing, breaker and key are its own: a
//! route gives up only after its own stack did what it could, and an open circuit on the
//! primary sends each call to the backup at once (no request, no wait). `OpenAiLayer` has no
//! breaker by default: switch it on for each route
//! (`.breaker(CircuitBreakerLayer::new())`), or an upstream that is down costs every call
//! its retries there before it moves on. Request URIs are
//! relative (`/v1/chat/completions`) so that each route's base URL applies. The routes share
//! the client (a connection pool), not their state.
//!
//! # Example
//!
//! Two mock servers: the primary's quota is exhausted, the backup serves the call with a
//! cheaper model.
//!
//! ```
//! # #[cfg(feature = "mock")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use oai_resilience::fallback::{FallbackLayer, Route, ServedBy};
//! use oai_resilience::mock::{MockServer, TEST_KEY};
//! use oai_resilience::stack::ClientBody;
//! use oai_resilience::{AuthLayer, OpenAiLayer};
//! use tower::{Layer, Service, ServiceExt};
//!
//! let primary = MockServer::builder().quota_exhausted(true).start().await;
//! let backup = MockServer::start().await;
//! let route = |server: &MockServer| {
//!     OpenAiLayer::new()
//!         .base_url(server.url().parse().unwrap())
//!         .auth(AuthLayer::from_key(TEST_KEY))
//! };
//! let client = Client::builder(TokioExecutor::new()).build_http::<ClientBody>();
//! let mut svc = FallbackLayer::new()
//!     .route(Route::new("primary", route(&primary)))
//!     .route(Route::new("backup", route(&backup)).model("gpt-4o-mini"))
//!     .layer(client);
//!
//! let req = http::Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(
//!         br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#,
//!     )))
//!     .unwrap();
//! let res = svc.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.extensions().get::<ServedBy>().unwrap().route(), "backup");
//! assert_eq!(primary.counts().total, 1, "a quota 429 is not retried");
//! let sent = &backup.requests()[0].body;
//! let json: serde_json::Value = serde_json::from_slice(sent).unwrap();
//! assert_eq!(json["model"], "gpt-4o-mini");
//! # }
//! # #[cfg(not(feature = "mock"))] fn main() {}
//! ```
//!
//! [`Fallback::new`] takes routes of any service (a stack built by hand, a
//! `BoxCloneService`), all of one type.

mod policy;
mod route;
mod service;

pub use policy::{moves_on, FallbackPolicy};
pub use route::{Route, RouteBody, ServedBy};
pub use service::{future, Fallback, FallbackLayer};
