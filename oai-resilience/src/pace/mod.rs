//! Adaptive client-side pacing: wait locally for the rate limit instead of collecting 429s.
//!
//! OpenAI's advice for a 429 is to add delays between requests. Retrying blindly does not
//! work: failed requests count against the limit too, and a burst of clients that all back off
//! and come back together keeps hitting it. [`PaceLayer`] keeps the state of each limit (a
//! [`PaceKey`]: base URL + a hash of the key + model) in one [`Pacer`] shared by every clone of
//! the stack, and makes each request wait for a slot before it goes out:
//!
//! - **It learns from headers.** `x-ratelimit-limit-*` is the bucket's capacity, `remaining`
//!   what is left now, `reset` the time until it is full again; the refill rate is
//!   (limit − remaining) / reset, which holds for a minute bucket (1,000 RPM refills 16.7/s)
//!   and for a small bucket with a fast refill alike. A snapshot is as old as the request
//!   that carried it (the server counts a request when it arrives, and answers a model
//!   latency later): the bucket has refilled since, and the requests sent since are not in
//!   it yet. Once answers report room, every waiting call that the remaining budget covers is
//!   admitted at once, less a small [headroom](PacerConfig::headroom) for other clients of
//!   the same key.
//! - **It estimates tokens** from the body (prompt text at ~4 characters per token, plus
//!   `max_tokens`/`max_completion_tokens` × `n`, see [`CostEstimator`]) and corrects the
//!   estimate with the headers' `remaining-tokens`; with a
//!   [`UsageLayer`](crate::usage::UsageLayer) below, with the `usage` each answer reports
//!   instead: the call's charge is settled with the true count, and the prompt and
//!   completion ratios it teaches (per key, so per model) correct the next estimates.
//! - **A 429 pauses the whole key** until the server's hint, not only the request that got it.
//!   A 429 that the headers do not explain (they showed room: OpenAI may enforce a per-minute
//!   limit per second; or there are no headers at all) switches on an adaptive rate:
//!   multiplicative decrease on a 429, additive increase on success ([`AimdConfig`]).
//! - **A cold key is not held back.** Until its first answer nothing is known of a key, and
//!   the pacer invents no limit: the callers' first wave goes out at once (a model call
//!   takes seconds; holding a burst behind one probe would cost every cold key that much).
//!   On a low limit that wave costs a few fast 429s, whose hints and headers the pacer then
//!   follows. [`PacerConfig::cold_window`] caps a cold key's requests in flight when asked
//!   (`Some(1)`: one probe first); [`StaticLimits`] (RPM, TPM) make a key known from the
//!   start. The pacer limits rates, not concurrency: a cap on requests in flight is tower's
//!   `ConcurrencyLimitLayer`, stacked where wanted.
//! - **Waiting is fair** (first come, first served), cancellable (dropping the future gives
//!   the place back), bounded by [`PacerConfig::max_wait`] and by a [`CallDeadline`] request
//!   extension, and visible: `tracing` events and [`Pacer::metrics`] (queue length, waits,
//!   total wait time). A call whose wait surely ends past its bound (the pause, or the refill
//!   the calls ahead of it need, already lies beyond it) fails at once instead of waiting.
//! - **Priority lanes**: a [`Priority`] request extension puts a call in a lane; while the
//!   key's buckets are scarce, higher lanes are admitted first (an interactive call does not
//!   wait behind queued batch work), and [`PacerConfig::lane_shares`] keeps a lane from being
//!   starved. Without it every call is in [`Priority::NORMAL`]: first come, first served.
//!   Through a shared [`PacingStore`] (Redis) lanes hold across processes by a reserve:
//!   [`PacerConfig::lane_reserves`] keeps requests of the shared bucket for higher lanes.
//!
//! A request that cannot get a slot in time fails with [`ErrorKind::RateLimited`],
//! no status, and a detail that starts with "paced locally" ([`is_paced_locally`]); nothing
//! was sent.
//!
//! Pace sits under the retry layer (every attempt waits for a slot) and above classify (it
//! reads the [`RateLimitSnapshot`](crate::RateLimitSnapshot) that classify attaches, and the
//! typed 429s).
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::{classify::ClassifyLayer, pace::PaceLayer};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), oai_resilience::Error> {
//! // A server with a bucket of 2 requests that refills 2 per second: after one call 1 is
//! // left (full again in 500 ms), after two calls none (full again in 1 s).
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
//! let upstream = service_fn(move |_req: http::Request<Full<Bytes>>| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     let (remaining, reset) = if n == 0 { ("1", "500ms") } else { ("0", "1s") };
//!     async move {
//!         Ok::<_, std::convert::Infallible>(
//!             http::Response::builder()
//!                 .header("x-ratelimit-limit-requests", "2")
//!                 .header("x-ratelimit-remaining-requests", remaining)
//!                 .header("x-ratelimit-reset-requests", reset)
//!                 .body(Full::new(Bytes::from_static(b"{}")))
//!                 .unwrap(),
//!         )
//!     }
//! });
//! let pace = PaceLayer::new();
//! let mut svc = ServiceBuilder::new()
//!     .layer(pace.clone())
//!     .layer(ClassifyLayer::new())
//!     .service(upstream);
//! let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
//! let start = tokio::time::Instant::now();
//! for _ in 0..3 {
//!     let req = http::Request::post("https://api.openai.com/v1/chat/completions")
//!         .body(Full::new(Bytes::from(body)))
//!         .unwrap();
//!     svc.ready().await?.call(req).await?;
//! }
//! // The headers said the bucket was empty, refilled at (2 − 0) / 1 s = 2/s: the third call
//! // waited 500 ms for its slot.
//! assert!(start.elapsed() >= std::time::Duration::from_millis(500));
//! assert_eq!(pace.pacer().metrics().waits, 1);
//! # Ok(()) }
//! ```

mod bucket;
mod cost;
pub mod future;
mod key;
mod lanes;
mod layer;
mod pacer;
mod probe;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;
#[cfg(test)]
mod test_upstream;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{FailMode, RedisStore, RedisStoreConfig};
pub use cost::{Cost, CostEstimator, PaceBody};
pub use key::{KeyFn, PaceKey};
pub use lanes::Priority;
pub use layer::PaceLayer;
pub use pacer::{
    Acquire, AimdConfig, KeySnapshot, PaceMetrics, Pacer, PacerConfig, Permit, StaticLimits,
};
pub use service::Pace;
pub use store::{Admission, BucketLimits, InProcessStore, LearnedLimits, PacingStore, StoreFuture};

use crate::error::{Error, ErrorKind};

/// The call's deadline, as a request extension: the pacer never waits past it.
///
/// A layer above (the retry layer, a caller) inserts it; without it only
/// [`PacerConfig::max_wait`] bounds the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallDeadline(pub tokio::time::Instant);

/// What ends a wait for a slot: [`PacerConfig::max_wait`] or the call's [`CallDeadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitBound {
    MaxWait,
    Deadline,
}

/// When a wait that starts at `start` must end, and what ends it: the sooner of `max_wait`
/// after `start` and the call's `deadline`. On a tie the deadline ends it (it is the caller's
/// own bound, and the one a caller can act on). `None`: no bound at all.
///
/// Both pacing paths use it: the in-process [`Pacer`] and the wait on a [`PacingStore`].
pub(crate) fn wait_limit(
    start: tokio::time::Instant,
    max_wait: Option<std::time::Duration>,
    deadline: Option<tokio::time::Instant>,
) -> Option<(tokio::time::Instant, WaitBound)> {
    let max_wait = max_wait.map(|w| start + w);
    match (deadline, max_wait) {
        (Some(d), Some(m)) if d <= m => Some((d, WaitBound::Deadline)),
        (Some(d), None) => Some((d, WaitBound::Deadline)),
        (_, m) => m.map(|m| (m, WaitBound::MaxWait)),
    }
}

/// Whether `err` was raised by the pacer (no slot in time; nothing was sent), as opposed to a
/// 429 from the server.
pub fn is_paced_locally(err: &Error) -> bool {
    err.kind() == ErrorKind::RateLimited
        && err.status().is_none()
        && err
            .detail()
            .is_some_and(|d| d.starts_with(pacer::PACED_LOCALLY))
}
