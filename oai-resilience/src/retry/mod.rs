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
//! (a delay that would cross it is not slept), and a [`TokenBudget`] shared by all clones, so
//! that during an outage the stack sends at most about 1.2× the requests it was asked for.
//!
//! The pieces:
//! - [`RetryConfig`]: every knob, with the defaults in its docs;
//! - [`Policy`] / [`OpenAiPolicy`]: "retry after D" or "stop" per attempt;
//! - [`Retrier`]: the decision core that every retry loop of the project drives;
//! - [`call`]: the loop for closures (used by `#[openai_call]`), with [`RetryableError`].
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
mod replay;
mod retrier;
mod service;
mod tower_policy;

pub use backoff::{Backoff, HintJitter, Jitter, RandomSource, SplitMix, DEFAULT_BASE, DEFAULT_CAP};
pub use budget::{Budget, TokenBudget};
pub use config::{
    RetryConfig, SharedBudget, DEFAULT_DEADLINE, DEFAULT_HINT_CEILING, DEFAULT_MAX_ATTEMPTS,
    RETRY_COUNT_HEADER,
};
pub use layer::RetryLayer;
pub use policy::{is_idempotent, server_hint, Attempt, Decision, OpenAiPolicy, Policy, ServerHint};
pub use replay::{clone_request, ReplayBody};
pub use retrier::{call, Retrier, RetryableError};
pub use service::Retry;
pub use tower_policy::TowerPolicy;
