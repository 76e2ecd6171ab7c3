//! What the mock received and how it answered.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::route::Route;

/// Request counts by outcome. See [`MockServer::counts`](super::MockServer::counts).
///
/// `total` counts requests when they arrive (before any latency); everything else counts
/// answered requests. The per-cause counters (`rate_limited`, `quota_exceeded`, …) count the
/// server's own decisions; scripted responses count in `scripted`, `by_status` and `by_route`
/// only.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockCounts {
    /// Every request that arrived, on any path.
    pub total: u64,
    /// Requests answered so far.
    pub answered: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 429s from the request or token bucket (including "Request too large").
    pub rate_limited: u64,
    /// 429 `insufficient_quota` answers of the quota switch.
    pub quota_exceeded: u64,
    /// 401s of the server's key check.
    pub unauthorized: u64,
    /// 400s and 413s of the server's body checks (invalid JSON, missing parameter, too big).
    pub bad_request: u64,
    /// 404s and 405s for unknown paths and methods.
    pub not_found: u64,
    /// 5xx of the random-failure fault.
    pub random_failures: u64,
    /// Scripted responses served (disconnections included).
    pub scripted: u64,
    /// Connections closed without an answer ([`MockResponse::disconnect`](super::MockResponse::disconnect)).
    pub disconnected: u64,
    /// Answers by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Answered requests by route (unknown paths are not here).
    pub by_route: BTreeMap<Route, u64>,
}

impl MockCounts {
    /// Answers with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Answered requests to `route`.
    pub fn route(&self, route: Route) -> u64 {
        self.by_route.get(&route).copied().unwrap_or(0)
    }

    /// Answers with a status of 500 or above.
    pub fn server_errors(&self) -> u64 {
        self.by_status.range(500..).map(|(_, n)| n).sum()
    }
}

/// One request as the mock received it, with the status it answered.
///
/// The `authorization`, `api-key` and `x-api-key` headers are marked sensitive, so `Debug`
/// does not print the key.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path, as sent (`/v1/chat/completions`).
    pub path: String,
    /// The route it matched, if any.
    pub route: Option<Route>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The request body (empty if it exceeded the size limit).
    pub body: Bytes,
    /// The status the mock answered with.
    pub status: StatusCode,
    /// The `x-request-id` the mock answered with.
    pub request_id: String,
    /// When it arrived, on the tokio clock.
    pub received_at: Instant,
}
