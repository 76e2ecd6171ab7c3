//! The request handler: one decision per request under a lock, then latency, then the answer.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use serde_json::Value;
use tokio::time::Instant;

use super::bodies;
use super::config::Config;
use super::counts::{MockCounts, RecordedRequest};
use super::limit::{go_duration, LimitView, Limiter};
use super::response::{
    default_error_body, error_body, incorrect_key, mask_key, quota_body, retry_headers,
    AuthFailure, MockResponse,
};
use super::rng::SplitMix64;
use super::route::Route;
use super::sse;

/// At most this many requests are kept for [`super::MockServer::requests`] (the newest).
pub(crate) const MAX_RECORDED: usize = 10_000;

pub(crate) struct Shared {
    state: Mutex<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Short on purpose: the request log can hold thousands of entries.
        let s = self.lock();
        f.debug_struct("Shared")
            .field("config", &s.config)
            .field("counts", &s.counts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    config: Config,
    requests: Option<Limiter>,
    tokens: Option<Limiter>,
    scripts: HashMap<Route, VecDeque<MockResponse>>,
    fault_rng: SplitMix64,
    id_rng: SplitMix64,
    /// Draws which streams stall ([`super::MockBuilder::stall_streams`]).
    stall_rng: SplitMix64,
    counts: MockCounts,
    log: VecDeque<RecordedRequest>,
}

/// What the server decided for one request.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    delay: Duration,
    cause: Cause,
    disconnect: bool,
    content_type: &'static str,
}

/// The "error" of a scripted disconnection: hyper closes the connection without answering.
#[derive(Debug)]
pub(crate) struct Disconnect;

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock: scripted disconnection")
    }
}

impl std::error::Error for Disconnect {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Ok,
    Scripted,
    NotFound,
    Unauthorized,
    Quota,
    RandomFailure,
    BadRequest,
    RateLimited,
}

impl Shared {
    pub(crate) fn new(mut config: Config, id_seed: u64) -> Self {
        let now = Instant::now();
        let mut scripts: HashMap<Route, VecDeque<MockResponse>> = HashMap::new();
        for (route, r) in config.scripts.drain(..) {
            scripts.entry(route).or_default().push_back(r);
        }
        let fault_seed = config.random_failures.map_or(0, |(_, seed)| seed);
        let stall_seed = config.stall.map_or(0, |s| s.seed);
        Shared {
            state: Mutex::new(State {
                requests: config.requests.as_ref().map(|c| Limiter::new(c, now)),
                tokens: config.tokens.as_ref().map(|c| Limiter::new(c, now)),
                config,
                scripts,
                fault_rng: SplitMix64::new(fault_seed),
                id_rng: SplitMix64::new(id_seed),
                stall_rng: SplitMix64::new(stall_seed),
                counts: MockCounts::default(),
                log: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters for a test server: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn counts(&self) -> MockCounts {
        self.lock().counts.clone()
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().log.iter().cloned().collect()
    }

    pub(crate) fn push_script(
        &self,
        route: Route,
        responses: impl IntoIterator<Item = MockResponse>,
    ) {
        self.lock()
            .scripts
            .entry(route)
            .or_default()
            .extend(responses);
    }

    pub(crate) fn set_quota_exhausted(&self, exhausted: bool) {
        self.lock().config.quota_exhausted = exhausted;
    }

    pub(crate) fn set_random_server_errors(&self, probability: f64) {
        let mut s = self.lock();
        let seed = s.config.random_failures.map_or(0, |(_, seed)| seed);
        s.config.random_failures = Some((probability.clamp(0.0, 1.0), seed));
    }

    pub(crate) fn reset_counts(&self) {
        let mut s = self.lock();
        s.counts = MockCounts::default();
        s.log.clear();
    }
}

/// A whole body, or an event stream spread over time ([`super::MockBuilder::stream_duration`]).
type MockBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, Infallible>>;

const JSON: &str = "application/json";

pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    req: Request<B>,
) -> Result<Response<MockBody>, Disconnect>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let route = Route::from_path(parts.uri.path());
    let (max_bytes, latency, stream_duration) = {
        let mut s = shared.lock();
        s.counts.total += 1;
        let latency = route
            .and_then(|r| s.config.route_latency.get(&r).copied())
            .unwrap_or(s.config.latency);
        (
            s.config.max_request_bytes,
            latency,
            s.config.stream_duration,
        )
    };
    let (body, too_large) = match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => (collected.to_bytes(), false),
        Err(e) => (Bytes::new(), e.downcast_ref::<LengthLimitError>().is_some()),
    };

    let (outcome, request_id, rate_headers, stall) = {
        let mut s = shared.lock();
        let request_id = format!("req_{}", bodies::hex(&mut s.id_rng, 2));
        let (outcome, rate) = s.decide(
            route,
            &parts.method,
            &parts.headers,
            parts.uri.path(),
            &body,
            too_large,
        );
        let stream = outcome.content_type == sse::EVENT_STREAM && outcome.status.is_success();
        let stall_config = s.config.stall;
        let stall = match stall_config {
            Some(st) if stream && s.stall_rng.next_f64() < st.fraction => {
                Some((st.after_events, st.pause))
            }
            _ => None,
        };
        (outcome, request_id, rate, stall)
    };

    // The rate limiter answers before the model runs: its 429s come back without the model's
    // latency, as OpenAI's do.
    let latency = if matches!(outcome.cause, Cause::RateLimited) {
        Duration::ZERO
    } else {
        latency
    };
    let wait = latency + outcome.delay;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }

    if outcome.disconnect {
        let mut s = shared.lock();
        s.counts.scripted += 1;
        s.counts.disconnected += 1;
        return Err(Disconnect);
    }

    let answer = if outcome.content_type == sse::EVENT_STREAM
        && (!stream_duration.is_zero() || stall.is_some())
    {
        Either::Right(sse::spread(outcome.body.clone(), stream_duration, stall))
    } else {
        Either::Left(Full::new(outcome.body.clone()))
    };
    let mut res = Response::new(answer);
    *res.status_mut() = outcome.status;
    let processing_ms = started.elapsed().as_millis() as u64;
    {
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(outcome.content_type));
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert("x-request-id", v);
        }
        h.insert("openai-processing-ms", HeaderValue::from(processing_ms));
        h.insert("openai-version", HeaderValue::from_static("2020-10-01"));
        let org = shared.lock().config.organization.clone();
        if let Ok(v) = HeaderValue::from_str(&org) {
            h.insert("openai-organization", v);
        }
        for (name, value) in rate_headers {
            h.insert(name, value);
        }
        for (name, value) in outcome.headers {
            h.insert(name, value);
        }
    }

    // Keys never reach Debug of the recorded requests (Azure-style headers included).
    for (name, v) in parts.headers.iter_mut() {
        if name == AUTHORIZATION || name == "api-key" || name == "x-api-key" {
            v.set_sensitive(true);
        }
    }
    let mut s = shared.lock();
    let c = &mut s.counts;
    c.answered += 1;
    *c.by_status.entry(outcome.status.as_u16()).or_default() += 1;
    if let Some(r) = route {
        *c.by_route.entry(r).or_default() += 1;
    }
    match outcome.cause {
        Cause::Ok => {}
        Cause::Scripted => c.scripted += 1,
        Cause::NotFound => c.not_found += 1,
        Cause::Unauthorized => c.unauthorized += 1,
        Cause::Quota => c.quota_exceeded += 1,
        Cause::RandomFailure => c.random_failures += 1,
        Cause::BadRequest => c.bad_request += 1,
        Cause::RateLimited => c.rate_limited += 1,
    }
    if outcome.status.is_success() {
        c.ok += 1;
    }
    if s.log.len() >= MAX_RECORDED {
        s.log.pop_front();
    }
    s.log.push_back(RecordedRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        route,
        headers: parts.headers,
        body,
        status: outcome.status,
        request_id,
        received_at: started,
    });
    Ok(res)
}

type HeaderList = Vec<(HeaderName, HeaderValue)>;

impl State {
    fn decide(
        &mut self,
        route: Option<Route>,
        method: &Method,
        headers: &http::HeaderMap,
        path: &str,
        body: &[u8],
        too_large: bool,
    ) -> (Outcome, HeaderList) {
        let Some(route) = route else {
            let msg = format!("Invalid URL ({method} {path})");
            return (error(404, &msg, Cause::NotFound), Vec::new());
        };
        if method != Method::POST {
            let msg = format!("Invalid method for URL ({method} {path})");
            return (error(405, &msg, Cause::NotFound), Vec::new());
        }
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let model = parsed
            .as_ref()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("gpt-4o")
            .to_owned();

        // 1. Scripts win over everything else.
        if let Some(r) = self.scripts.get_mut(&route).and_then(VecDeque::pop_front) {
            let mut content_type = JSON;
            let body = match r.body {
                Some(b) => b,
                None if r.status.is_success() => {
                    let req = parsed.unwrap_or(Value::Null);
                    let (body, ct) = self.success_body(route, &req, r.stream_error_after);
                    content_type = ct;
                    Bytes::from(body)
                }
                None => Bytes::from(default_error_body(r.status, &model)),
            };
            return (
                Outcome {
                    status: r.status,
                    body,
                    headers: r.headers,
                    delay: r.delay,
                    cause: Cause::Scripted,
                    disconnect: r.disconnect,
                    content_type,
                },
                Vec::new(),
            );
        }

        // 2. The key check.
        if let Some(expected) = &self.config.api_key {
            let sent = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::trim);
            let failure = match sent {
                None | Some("") => Some(AuthFailure::MissingKey.response()),
                Some(v) => {
                    let key = v.strip_prefix("Bearer ").unwrap_or(v).trim();
                    if key.is_empty() {
                        Some(AuthFailure::MissingKey.response())
                    } else if key != expected.as_str() {
                        Some(incorrect_key(&mask_key(key)))
                    } else {
                        None
                    }
                }
            };
            if let Some((status, body)) = failure {
                return (outcome(status, body, Cause::Unauthorized), Vec::new());
            }
        }

        // 3. The quota switch.
        if self.config.quota_exhausted {
            return (
                outcome(StatusCode::TOO_MANY_REQUESTS, quota_body(), Cause::Quota),
                Vec::new(),
            );
        }

        // 4. Random server errors.
        if let Some((p, _)) = self.config.random_failures {
            if self.fault_rng.next_f64() < p {
                const STATUSES: [u16; 4] = [500, 502, 503, 504];
                let status = STATUSES[(self.fault_rng.next_u64() % 4) as usize];
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (
                    outcome(
                        status,
                        default_error_body(status, &model),
                        Cause::RandomFailure,
                    ),
                    Vec::new(),
                );
            }
        }

        // 5. The body.
        if too_large {
            let msg = format!(
                "Request body too large: the limit is {} bytes.",
                self.config.max_request_bytes
            );
            return (
                outcome(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    error_body(
                        &msg,
                        Some("invalid_request_error"),
                        None,
                        Some("request_too_large"),
                    ),
                    Cause::BadRequest,
                ),
                Vec::new(),
            );
        }
        let req =
            match parsed {
                Some(v @ Value::Object(_)) => v,
                _ => return (
                    outcome(
                        StatusCode::BAD_REQUEST,
                        error_body(
                            "We could not parse the JSON body of your request. (HINT: This likely \
                             means you aren't using your HTTP library correctly. The OpenAI API \
                             expects a JSON payload, but what was sent was not valid JSON. If you \
                             have trouble figuring out how to fix this, please contact us through \
                             our help center at help.openai.com.)",
                            Some("invalid_request_error"),
                            None,
                            None,
                        ),
                        Cause::BadRequest,
                    ),
                    Vec::new(),
                ),
            };
        let required: &[&str] = match route {
            Route::ChatCompletions => &["model", "messages"],
            Route::Embeddings => &["model", "input"],
            Route::Responses => &["model"],
        };
        if let Some(missing) = required
            .iter()
            .find(|k| req.get(**k).is_none_or(Value::is_null))
        {
            return (
                outcome(
                    StatusCode::BAD_REQUEST,
                    error_body(
                        &format!("Missing required parameter: '{missing}'."),
                        Some("invalid_request_error"),
                        Some(missing),
                        Some("missing_required_parameter"),
                    ),
                    Cause::BadRequest,
                ),
                Vec::new(),
            );
        }
        if let Some(problem) = type_problem(route, &req) {
            return (
                outcome(StatusCode::BAD_REQUEST, problem, Cause::BadRequest),
                Vec::new(),
            );
        }

        // 6. The rate limits.
        let now = Instant::now();
        let cost = match self.config.true_usage {
            Some(u) => {
                let (prompt, completion) = u.counts_of(&req);
                prompt.saturating_add(completion) as f64
            }
            None => bodies::estimate_tokens(body) as f64,
        };
        if let Some(l) = &mut self.requests {
            l.refill(now);
        }
        if let Some(l) = &mut self.tokens {
            l.refill(now);
        }
        let org = self.config.organization.clone();
        if let Some(l) = &self.tokens {
            if cost > l.capacity() + 1e-6 {
                let msg = format!(
                    "Request too large for {model} in organization {org} on tokens per min (TPM): \
                     Limit {}, Requested {}. The input or output tokens must be reduced in order \
                     to run successfully. Visit https://platform.openai.com/account/rate-limits \
                     to learn more.",
                    l.capacity() as u64,
                    cost as u64
                );
                let o = outcome(
                    StatusCode::TOO_MANY_REQUESTS,
                    error_body(&msg, Some("tokens"), None, Some("rate_limit_exceeded")),
                    Cause::RateLimited,
                );
                return (o, self.rate_headers());
            }
        }
        let request_wait = self
            .requests
            .as_ref()
            .map_or(Duration::ZERO, |l| l.wait_for(1.0));
        let token_wait = self
            .tokens
            .as_ref()
            .map_or(Duration::ZERO, |l| l.wait_for(cost));
        let limited = if !request_wait.is_zero() {
            self.requests
                .as_ref()
                .map(|l| ("requests", "RPM", "requests", l.view(), 1, request_wait))
        } else if !token_wait.is_zero() {
            self.tokens
                .as_ref()
                .map(|l| ("tokens", "TPM", "tokens", l.view(), cost as u64, token_wait))
        } else {
            None
        };
        if let Some((kind, unit, per, view, requested, wait)) = limited {
            let LimitView {
                limit, remaining, ..
            } = view;
            let msg = format!(
                "Rate limit reached for {model} in organization {org} on {per} per min ({unit}): \
                 Limit {limit}, Used {}, Requested {requested}. Please try again in {}. Visit \
                 https://platform.openai.com/account/rate-limits to learn more.",
                limit.saturating_sub(remaining),
                go_duration(wait)
            );
            let mut o = outcome(
                StatusCode::TOO_MANY_REQUESTS,
                error_body(&msg, Some(kind), None, Some("rate_limit_exceeded")),
                Cause::RateLimited,
            );
            o.headers.extend(retry_headers(wait));
            if self.config.charge_rejected {
                if let Some(l) = &mut self.requests {
                    l.take(1.0);
                }
                if let Some(l) = &mut self.tokens {
                    l.take(cost);
                }
            }
            return (o, self.rate_headers());
        }
        if let Some(l) = &mut self.requests {
            l.take(1.0);
        }
        if let Some(l) = &mut self.tokens {
            l.take(cost);
        }

        // 7. Success.
        let (body, content_type) = self.success_body(route, &req, None);
        let mut o = outcome(StatusCode::OK, body, Cause::Ok);
        o.content_type = content_type;
        (o, self.rate_headers())
    }

    /// The success body and its content type: an event stream for `"stream": true` (chat and
    /// responses) or a scripted stream error, JSON otherwise.
    fn success_body(
        &mut self,
        route: Route,
        req: &Value,
        stream_error_after: Option<usize>,
    ) -> (String, &'static str) {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let streamed = req.get("stream") == Some(&Value::Bool(true));
        let usage = self.config.true_usage.map(|u| u.counts_of(req));
        if route != Route::Embeddings && (streamed || stream_error_after.is_some()) {
            let body = sse::stream(
                route,
                req,
                &mut self.id_rng,
                created,
                stream_error_after,
                usage,
            );
            return (body, sse::EVENT_STREAM);
        }
        let mut body = bodies::success(route, req, &mut self.id_rng, created);
        if let Some(counts) = usage {
            bodies::set_usage(route, &mut body, counts);
        }
        (body.to_string(), JSON)
    }

    fn rate_headers(&self) -> HeaderList {
        let mut out = Vec::new();
        for (suffix, limiter) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            let Some(l) = limiter else { continue };
            let v = l.view();
            let pairs = [
                ("limit", v.limit.to_string()),
                ("remaining", v.remaining.to_string()),
                ("reset", go_duration(v.reset)),
            ];
            for (what, value) in pairs {
                let name = format!("x-ratelimit-{what}-{suffix}");
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    out.push((n, v));
                }
            }
        }
        out
    }
}

/// The API's 400 for a parameter of the wrong type (or an empty `messages`).
fn type_problem(route: Route, req: &Value) -> Option<String> {
    let invalid_type = |param: &str, expected: &str, got: &Value| {
        error_body(
            &format!(
                "Invalid type for '{param}': expected {expected}, but got {} instead.",
                json_kind(got)
            ),
            Some("invalid_request_error"),
            Some(param),
            Some("invalid_type"),
        )
    };
    let model = req.get("model")?;
    if !model.is_string() {
        return Some(invalid_type("model", "a string", model));
    }
    if route == Route::ChatCompletions {
        let messages = req.get("messages")?;
        match messages.as_array() {
            None => return Some(invalid_type("messages", "an array of objects", messages)),
            Some(list) if list.is_empty() => {
                return Some(error_body(
                    "Invalid 'messages': empty array. Expected an array with minimum length 1, \
                     but got an empty array instead.",
                    Some("invalid_request_error"),
                    Some("messages"),
                    Some("empty_array"),
                ))
            }
            Some(_) => {}
        }
    }
    None
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn outcome(status: StatusCode, body: String, cause: Cause) -> Outcome {
    Outcome {
        status,
        body: Bytes::from(body),
        headers: Vec::new(),
        delay: Duration::ZERO,
        cause,
        disconnect: false,
        content_type: JSON,
    }
}

fn error(status: u16, message: &str, cause: Cause) -> Outcome {
    outcome(
        StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
        error_body(message, Some("invalid_request_error"), None, None),
        cause,
    )
}
