//! The server's configuration, as [`MockBuilder`](super::MockBuilder) sets it and the handler
//! reads it.

use std::collections::HashMap;
use std::time::Duration;

use super::bodies::TrueUsage;
use super::limit::RateLimit;
use super::response::MockResponse;
use super::route::Route;

/// The default request limit: 10,000 requests per minute.
pub const DEFAULT_REQUEST_LIMIT: u64 = 10_000;
/// The default token limit: 2,000,000 tokens per minute.
pub const DEFAULT_TOKEN_LIMIT: u64 = 2_000_000;
/// The default largest request body: 8 MiB; larger bodies get a 413.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) api_key: Option<String>,
    pub(crate) organization: String,
    pub(crate) requests: Option<RateLimit>,
    pub(crate) tokens: Option<RateLimit>,
    pub(crate) quota_exhausted: bool,
    pub(crate) scripts: Vec<(Route, MockResponse)>,
    /// (probability, seed)
    pub(crate) random_failures: Option<(f64, u64)>,
    pub(crate) latency: Duration,
    pub(crate) route_latency: HashMap<Route, Duration>,
    pub(crate) stream_duration: Duration,
    pub(crate) max_request_bytes: usize,
    pub(crate) seed: Option<u64>,
    pub(crate) charge_rejected: bool,
    pub(crate) true_usage: Option<TrueUsage>,
    pub(crate) stall: Option<Stall>,
}

/// [`MockBuilder::stall_streams`]: which event streams stop, where, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stall {
    pub(crate) fraction: f64,
    pub(crate) after_events: usize,
    pub(crate) pause: Duration,
    pub(crate) seed: u64,
}

crate::macros::debug_struct!(Config, |s| "Config" {
    "api_key": s.api_key.as_ref().map(|_| "[redacted]"),
    "organization": s.organization,
    "requests": s.requests,
    "tokens": s.tokens,
    "quota_exhausted": s.quota_exhausted,
    "scripts": s.scripts.len(),
    "random_failures": s.random_failures,
    "latency": s.latency,
    "route_latency": s.route_latency,
    "stream_duration": s.stream_duration,
    "max_request_bytes": s.max_request_bytes,
    "seed": s.seed,
    "charge_rejected": s.charge_rejected,
    "true_usage": s.true_usage,
    "stall": s.stall,
} finish);

impl Default for Config {
    fn default() -> Self {
        Config {
            api_key: None,
            organization: "org-mock".to_owned(),
            requests: Some(RateLimit::per_minute(DEFAULT_REQUEST_LIMIT)),
            tokens: Some(RateLimit::per_minute(DEFAULT_TOKEN_LIMIT)),
            quota_exhausted: false,
            scripts: Vec::new(),
            random_failures: None,
            latency: Duration::ZERO,
            route_latency: HashMap::new(),
            stream_duration: Duration::ZERO,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            seed: None,
            charge_rejected: false,
            true_usage: None,
            stall: None,
        }
    }
}
