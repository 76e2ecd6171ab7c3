//! # oai-resilience
//!
//! Tower layers that make calls to the OpenAI API (and OpenAI-compatible APIs) resilient.
//!
//! A call that fails meets the failures of OpenAI's troubleshooting guide: a bad parameter
//! (400), a bad key (401), missing permission (403), a rate limit or an exhausted quota (429),
//! a server error (5xx). This crate turns the guide's advice into middleware:
//!
//! - [`classify`]: responses become typed [`Error`]s with OpenAI's `type`/`code`/`param`,
//!   the request id, the rate-limit headers and an actionable [`Error::hint`].
//! - [`auth`]: API keys found, checked locally before anything is sent, injected as a
//!   sensitive header, and never printed ([`ApiKey`], [`AuthLayer`]).
//! - [`pace`]: adaptive client-side pacing at the rate limit, learned from the headers.
//! - [`retry`]: retries of what can succeed, with jitter, server hints, a shared budget and a
//!   deadline; [`retry::call`] runs the same loop for closures.
//! - [`stack`]: [`OpenAiLayer`], every layer above in the right order, in one call.
//! - [`fallback`]: an ordered list of routes (other deployments, a cheaper model), each a
//!   full stack; a call moves on when its route cannot serve it soon.
//! - [`parse`]: the lenient, total parsers behind it, usable without tower.
//! - [`validate`]: local request validation against rules generated from OpenAI's OpenAPI
//!   spec, so a missing or invalid parameter costs no round trip.
//! - [`openai_call`]: an attribute that runs an async function under the same retry policy
//!   and attaches structured context to its errors ([`call`] holds its runtime).
//! - [`usage`]: the token usage of answers, read as they pass, corrects the pacer.
//! - `mock` (feature `mock`): an embedded mock OpenAI server for tests and examples.
//! - `adapter` (features `reqwest`, `async-openai`): the stack as a reqwest-middleware
//!   middleware and as async-openai's HTTP service.
//!
//! The error model is [`Error`] / [`ErrorKind`].
//!
//! # Conventions
//!
//! - Every middleware is a `FooLayer` and its service `Foo<S>`, both at the crate root and in
//!   their module; the service's future is `module::future::ResponseFuture`.
//! - Builder methods take `self`, return `Self` and are named after what they set
//!   (`RetryConfig::max_attempts(6)`, `OpenAiLayer::pace(layer)`).
//! - Getters take `&self`, are named after what they return and never start with `get_`
//!   (`Error::kind`, `Backoff::cap`); `is_`/`has_` name a question about the value
//!   (`Error::is_retryable`). Where a builder method already has a setting's name, the setting
//!   is read back from what holds it: [`RetryConfig::settings`], `OpenAiLayer::pace_layer`,
//!   `ValidateLayer::validator`, `Pacer::config`. On a value type with getters (`Error`,
//!   `PaceKey`, `Backoff`) the builder methods are `with_*`. A middleware reaches its inner
//!   service with `get_ref`/`get_mut`/`into_inner`, as in tower.
//! - Conversions are `From`/`TryFrom` (`LearnedLimits::from(&snapshot)`).
//! - Public structs with public fields and enums that may grow are `#[non_exhaustive]`: build
//!   them with their constructors, or from `Default` and field assignment.
#![doc(test(attr(deny(warnings))))]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "reqwest", feature = "async-openai"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "reqwest", feature = "async-openai"))))]
pub mod adapter;
pub mod auth;
pub mod breaker;
pub mod call;
mod cause;
pub mod classify;
pub mod error;
pub mod fallback;
mod hash;
mod macros;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
pub mod observe;
mod overrides;
pub mod pace;
pub mod parse;
mod redact;
#[cfg(feature = "redis")]
mod redis_conn;
pub mod respond;
pub mod retry;
pub mod stack;
pub mod usage;
pub mod validate;
pub mod watchdog;

pub use auth::{
    ApiKey, Auth, AuthLayer, KeySource, RefreshOnUnauthorized, RefreshOnUnauthorizedLayer,
};
/// The runtime of the code that `#[openai_call]` generates ([`call`]'s `runtime` module),
/// under the one path the generated code names. Not a public API.
#[doc(hidden)]
pub use call::runtime as __private;

pub use oai_resilience_macros::openai_call;

pub use breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use classify::{Classify, ClassifyLayer};
pub use error::{
    AttemptOutcome, AuthCause, BoxError, CallContext, DelaySource, Error, ErrorKind, RetryContext,
    RouteError, StopReason, Violation,
};
pub use fallback::{Fallback, FallbackLayer};
pub use pace::{Pace, PaceLayer, Pacer};
pub use parse::{ApiError, RateLimitSnapshot};
pub use retry::{Retry, RetryConfig, RetryLayer};
pub use stack::{BaseUrl, BaseUrlLayer, ClientBody, OpenAiLayer, OpenAiService};
pub use usage::{Usage, UsageBody, UsageLayer};
pub use validate::{Validate, ValidateBody, ValidateLayer, Validator};
pub use watchdog::{Watchdog, WatchdogBody, WatchdogLayer};
