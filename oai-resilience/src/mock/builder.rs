//! [`MockBuilder`]: the server's faults and limits, set before it starts.

use std::time::Duration;

use super::bodies::TrueUsage;
use super::config::{Config, Stall};
use super::limit::RateLimit;
use super::response::MockResponse;
use super::route::Route;
use super::server::MockServer;

/// Configures a [`MockServer`]: `MockServer::builder() … .start().await`.
///
/// # Default
///
/// No key check, organization `org-mock`, [`DEFAULT_REQUEST_LIMIT`](super::DEFAULT_REQUEST_LIMIT) requests and
/// [`DEFAULT_TOKEN_LIMIT`](super::DEFAULT_TOKEN_LIMIT) tokens per minute, no faults, no latency, bodies up to
/// [`DEFAULT_MAX_REQUEST_BYTES`](super::DEFAULT_MAX_REQUEST_BYTES).
///
/// Every request goes through these steps, in order; the first that answers wins:
///
/// 1. unknown path → 404, wrong method → 405;
/// 2. the route's script ([`MockBuilder::script`]);
/// 3. the key check ([`MockBuilder::api_key`]) → 401;
/// 4. the quota switch ([`MockBuilder::quota_exhausted`]) → 429 `insufficient_quota`;
/// 5. random server errors ([`MockBuilder::random_server_errors`]) → 500/502/503/504;
/// 6. the body: too big → 413, not a JSON object → 400, missing `model` / `messages`
///    (chat) / `input` (embeddings) → 400 `missing_required_parameter`, a `model` that is
///    not a string or `messages` that is not an array → 400 `invalid_type`, empty `messages`
///    → 400 `empty_array`;
/// 7. the request and token buckets ([`MockBuilder::request_limit`],
///    [`MockBuilder::token_limit`]) → 429 `rate_limit_exceeded`;
/// 8. success.
///
/// The latency ([`MockBuilder::latency`]) applies to every answer but the rate limiter's 429s,
/// which come back at once (the limiter decides before the model runs, as OpenAI's does).
#[derive(Debug, Clone, Default)]
pub struct MockBuilder {
    pub(crate) config: Config,
}

impl MockBuilder {
    /// Requires `Authorization: Bearer <key>`: a missing header gets OpenAI's "You didn't
    /// provide an API key" 401, another key gets "Incorrect API key provided: sk-abc1…wxyz"
    /// (`invalid_api_key`, echoing the sent key masked, as the API does). The key never
    /// appears in `Debug`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(key.into());
        self
    }

    /// The `openai-organization` header and the organization named in rate-limit messages.
    pub fn organization(mut self, org: impl Into<String>) -> Self {
        self.config.organization = org.into();
        self
    }

    /// The request limit: one token per request. 429 bodies have `type: "requests"`.
    pub fn request_limit(mut self, limit: RateLimit) -> Self {
        self.config.requests = Some(limit);
        self
    }

    /// The token limit, charged [`estimate_tokens`](super::estimate_tokens) per request. A
    /// request costing more than the bucket holds gets "Request too large … (TPM)".
    pub fn token_limit(mut self, limit: RateLimit) -> Self {
        self.config.tokens = Some(limit);
        self
    }

    /// Whether a request rejected with a 429 by the buckets still takes its request and its
    /// tokens from them (the buckets never go below empty). OpenAI's docs say failed requests
    /// count against the limit, so blind resending makes things worse; with this on, the mock
    /// behaves that way. Off by default, so that waiting exactly `retry-after-ms` succeeds.
    pub fn charge_rejected_requests(mut self, charge: bool) -> Self {
        self.config.charge_rejected = charge;
        self
    }

    /// No request or token limit (and no `x-ratelimit-*` headers).
    pub fn no_rate_limits(mut self) -> Self {
        self.config.requests = None;
        self.config.tokens = None;
        self
    }

    /// Every request (after the key check) gets a 429 `insufficient_quota`. Switchable later
    /// with [`MockServer::set_quota_exhausted`].
    pub fn quota_exhausted(mut self, exhausted: bool) -> Self {
        self.config.quota_exhausted = exhausted;
        self
    }

    /// Queues responses for `route`, consumed one per request in order before anything else;
    /// when the queue is empty the route behaves normally. Repeated calls append.
    ///
    /// `script(Route::ChatCompletions, [MockResponse::status(503), MockResponse::status(503)])`
    /// answers 503, 503, then the normal 200.
    pub fn script(
        mut self,
        route: Route,
        responses: impl IntoIterator<Item = MockResponse>,
    ) -> Self {
        self.config
            .scripts
            .extend(responses.into_iter().map(|r| (route, r)));
        self
    }

    /// Each request fails with probability `probability` (clamped to 0..=1) with a 500, 502,
    /// 503 or 504, drawn from a PRNG seeded with `seed`: the same requests in the same order
    /// fail the same way on every run.
    pub fn random_server_errors(mut self, probability: f64, seed: u64) -> Self {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.config.random_failures = Some((p, seed));
        self
    }

    /// Delays every answer by `latency` (with `tokio::time::sleep`, so paused time skips it),
    /// but the rate limiter's 429s, which come back at once.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.config.latency = latency;
        self
    }

    /// Delays the answers of `route` by `latency`, instead of the global latency.
    pub fn route_latency(mut self, route: Route, latency: Duration) -> Self {
        self.config.route_latency.insert(route, latency);
        self
    }

    /// Spreads every event stream (`"stream": true` answers) over `duration`: after the
    /// latency the headers and the first event go out at once, the other events at even
    /// intervals, the last one `duration` later (with `tokio::time`, so paused time skips it).
    /// By default the whole stream is sent at once.
    pub fn stream_duration(mut self, duration: Duration) -> Self {
        self.config.stream_duration = duration;
        self
    }

    /// The largest request body; larger ones get a 413.
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.config.max_request_bytes = max;
        self
    }

    /// Seeds the request ids and response ids, for byte-identical runs. By default each
    /// server gets its own seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Starts the server on 127.0.0.1, on a free port, on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// If no port can be bound or no tokio runtime is running; use
    /// [`MockBuilder::try_start`] to handle the error.
    pub async fn start(self) -> MockServer {
        match self.try_start().await {
            Ok(server) => server,
            Err(e) => panic!("mock OpenAI server failed to start: {e}"),
        }
    }

    /// Starts the server, returning the bind error if there is one.
    ///
    /// # Errors
    ///
    /// The I/O error of binding 127.0.0.1:0.
    pub async fn try_start(self) -> std::io::Result<MockServer> {
        MockServer::spawn(self.config).await
    }

    /// Reports true token counts that differ from the estimate ([`TrueUsage`]: prompts
    /// shorter than their characters suggest, completions shorter than `max_tokens`) in the
    /// `usage` of JSON answers and of event streams (chat with
    /// `stream_options.include_usage`, the Responses API's `response.completed`), and charges
    /// the token bucket those counts instead of [`estimate_tokens`](super::estimate_tokens):
    /// a limiter that counts the tokens a call really used. Off by default.
    pub fn true_usage(mut self, usage: TrueUsage) -> Self {
        self.config.true_usage = Some(usage);
        self
    }

    /// Stalls a `fraction` (0.0–1.0) of the successful event streams, drawn from `seed`: the
    /// headers and the first `after_events` events go out, then nothing for `pause`, then the
    /// rest of the stream (with `tokio::time`, so paused time skips it). Combines with
    /// [`stream_duration`](Self::stream_duration). A stream that never resumes in practice is
    /// a long `pause` (60 s). Off by default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use oai_resilience::mock::MockServer;
    ///
    /// // One stream in ten stops after 3 events for a minute.
    /// let server = MockServer::builder()
    ///     .stall_streams(0.1, 3, Duration::from_secs(60), 42)
    ///     .start()
    ///     .await;
    /// # drop(server);
    /// # }
    /// ```
    pub fn stall_streams(
        mut self,
        fraction: f64,
        after_events: usize,
        pause: Duration,
        seed: u64,
    ) -> Self {
        self.config.stall = Some(Stall {
            fraction: fraction.clamp(0.0, 1.0),
            after_events,
            pause,
            seed,
        });
        self
    }
}

/// The constructors that need the builder live here, beside it, so that `server.rs` does not
/// import the builder.
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
}
