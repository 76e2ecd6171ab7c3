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
//! - [`parse`]: the lenient, total parsers behind it, usable without tower.
//! - [`validate`]: local request validation against rules generated from OpenAI's OpenAPI
//!   spec, so a missing or invalid parameter costs no round trip.
//! - [`openai_call`]: an attribute that runs an async function under the same retry policy
//!   and attaches structured context to its errors ([`call`] holds its runtime).
//! - `mock` (feature `mock`): an embedded mock OpenAI server for tests and examples.
//! - `adapter` (features `reqwest`, `async-openai`): the stack as a reqwest-middleware
//!   middleware and as async-openai's HTTP service.
//!
//! The error model is [`Error`] / [`ErrorKind`].
#![doc(test(attr(deny(warnings))))]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "reqwest", feature = "async-openai"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "reqwest", feature = "async-openai"))))]
pub mod adapter;
pub mod auth;
pub mod call;
pub mod classify;
pub mod error;
mod hash;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
pub mod pace;
pub mod parse;
pub mod respond;
pub mod retry;
pub mod stack;
pub mod validate;

pub use auth::{ApiKey, AuthLayer, KeySource};
#[doc(hidden)]
pub mod __private;

pub use oai_resilience_macros::openai_call;

pub use classify::{Classify, ClassifyLayer};
pub use error::{
    AttemptOutcome, AuthCause, BoxError, CallContext, DelaySource, Error, ErrorKind, RetryContext,
    StopReason, Violation,
};
pub use pace::{Pace, PaceLayer, Pacer};
pub use parse::{ApiError, RateLimitSnapshot};
pub use retry::{Retry, RetryConfig, RetryLayer};
pub use stack::{OpenAiLayer, OpenAiService};
pub use validate::{ValidateLayer, Validator};
