//! The proxy service: [`Gateway`].
//!
//! Each request, in order:
//!
//! 1. `GET /healthz`, `GET /readyz` and `GET /metrics` (unless `--metrics-listen` moves it) are
//!    answered by the gateway;
//! 2. a method the OpenAI API does not use gets 405, a path outside the route allowlist (or
//!    not in normal form) 404 ([`routes`]);
//! 3. the caller is authenticated ([`access`]): with access keys configured, the request must
//!    carry `Authorization: Bearer <access key>`, which is replaced by the server's key; without
//!    access keys, the request must carry the caller's own key, which is forwarded (checked
//!    locally by the stack) — the server's key is never used then;
//! 4. the body: a JSON body (or one without a content type) is read whole, up to
//!    `--max-body-bytes` within `--body-read-timeout` (a declared `Content-Length` over the
//!    limit gets 413 at once, before any byte is read), so that it can be validated and
//!    replayed by retries; its bytes count against `--max-buffered-bytes` across all
//!    connections ([`BodyBudget`]), and a body that would pass it gets 503 at once; any other body (multipart uploads, audio, files: [`streams_body`])
//!    is streamed to the upstream as it arrives, up to `--max-upload-bytes`, each chunk within
//!    `--body-read-timeout` of the previous one and at `--min-upload-rate` on average once
//!    `--body-read-timeout` has passed, and is never retried;
//! 5. the request goes through the stack (validation, key checks, retries, pacing,
//!    classification, the stream watchdog) with hop-by-hop headers, headers named in
//!    `Connection:`, `cookie`, `host`, `content-length` and `accept-encoding` removed; with
//!    `--fallback-upstream`, the stack is the library's
//!    [`Fallback`](oai_resilience::fallback::Fallback) over one such stack per upstream, the
//!    primary first, and the answer names the route that served it in [`ROUTE_HEADER`];
//! 6. the upstream's response is streamed back chunk by chunk (hop-by-hop headers and
//!    `set-cookie` removed; an event stream that stalls or fails mid-way ends with an SSE
//!    `error` event), or the stack's error is mapped to OpenAI's error JSON by
//!    [`oai_resilience::respond::error_response`].
//!
//! Every answer the gateway makes itself (401, 404, 405, 408, 413, 503) has OpenAI's error shape
//! and `x-should-retry: false`; every request is logged once (method, path, status, upstream
//! status, attempts, latency, request id, access-key name), never with a key, and counted in
//! [`Metrics`].

pub mod access;
mod body;
mod buffer;
pub mod routes;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body;
use oai_resilience::auth::{AuthLayer, Credentials, KeyHeader, KeyRules, KeySource};
use oai_resilience::breaker::{BreakerKey, CircuitBreakerLayer};
use oai_resilience::fallback::{Route, ServedBy};
use oai_resilience::observe::MetricsObserver;
use oai_resilience::pace::{PaceLayer, PacerConfig, Priority, RedisStore};
use oai_resilience::retry::TokenBudget;
use oai_resilience::watchdog::WatchdogLayer;
use oai_resilience::RetryConfig;
use oai_resilience::{respond, BoxError, Error, ErrorKind, OpenAiLayer, RetryLayer, ValidateLayer};
use serde_json::json;
use tower::ServiceExt;

use crate::config::{Config, ConfigError, UpstreamAuth, DEFAULT_KEY_ENV};
use crate::metrics::{MeteredBudget, Metrics};
use crate::upstream::{AttemptLog, BodyError, ObservedBody, RequestBody, Stack};
use access::AccessKeys;
use body::{
    UploadBody, UploadFault, UploadPace, FAULT_CLIENT, FAULT_TIMEOUT, FAULT_TOO_LARGE,
    FAULT_TOO_SLOW,
};
use routes::{Refusal, Routes};

pub use buffer::BodyBudget;

pub use oai_resilience::respond::{ATTEMPTS_HEADER, HINT_HEADER};

/// The response body: the upstream's body streamed through (boxed: an event stream's ends
/// with an SSE `error` event on a stall), or the gateway's own JSON.
pub type GatewayBody = Either<UnsyncBoxBody<Bytes, BodyError>, Full<Bytes>>;

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy `keep-alive`/`proxy-connection`):
/// never forwarded either way. Headers named in `Connection:` are removed as well.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers not forwarded besides the hop-by-hop ones: `host` and `content-length`
/// (the client sets them for the new request), `accept-encoding` (error bodies must stay
/// readable for classification), `cookie` (the gateway's callers' cookies are not the
/// upstream's business), and `forwarded`/`x-forwarded-*`/`x-real-ip`, which would disclose
/// or spoof client addresses.
const REQUEST_SKIP: &[&str] = &[
    "host",
    "content-length",
    "accept-encoding",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    PRIORITY_HEADER,
];

/// The request header that puts a call in a priority lane of its key's pacing queue
/// ([`Priority::parse`]: `low`/`batch`, `normal`, `high`/`interactive`, or 0-255); the
/// gateway reads it and does not forward it.
pub const PRIORITY_HEADER: &str = "x-priority";

/// The response header that names the upstream route that served a call (or, for an error,
/// the last route tried): [`PRIMARY_ROUTE`] for `--upstream`, `fallback-N` for the Nth
/// `--fallback-upstream`.
pub const ROUTE_HEADER: &str = "x-oai-gateway-route";

/// The name of the `--upstream` route in [`ROUTE_HEADER`], the access log and `/metrics`.
pub const PRIMARY_ROUTE: &str = "primary";

/// The upload routes: a `POST` there without a content type is streamed too.
pub const UPLOAD_ROUTES: &[&str] = &[
    "/v1/audio",
    "/v1/files",
    "/v1/uploads",
    "/v1/images/edits",
    "/v1/images/variations",
];

/// Whether a request's body is streamed to the upstream rather than read whole: a `POST`
/// whose content type is not JSON (`multipart/form-data`, `application/octet-stream`,
/// `audio/*`, …), or a `POST` to an [upload route](UPLOAD_ROUTES) without a content type.
/// Streamed bodies are not validated and not retried; JSON bodies are both.
pub fn streams_body(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if method != Method::POST {
        return false;
    }
    match headers.get(header::CONTENT_TYPE) {
        Some(v) => {
            let mime = v
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !(mime == "application/json" || mime.ends_with("+json"))
        }
        None => UPLOAD_ROUTES.iter().any(|p| routes::under(path, p)),
    }
}

/// Who pays for a request.
enum Caller<'a> {
    /// Presented access key `name`: the server's key is used.
    Access(&'a str),
    /// Brings their own OpenAI key (no access keys configured).
    OwnKey,
}

/// What the access log and the metrics say about one request.
#[derive(Default)]
struct Outcome<'g> {
    /// The allowlist prefix (or the gateway's endpoint) the request matched; `-` if none.
    route: &'g str,
    /// The access key's name.
    who: Option<String>,
    /// The error kind, or the reason of a local refusal; `None` for a success.
    error: Option<String>,
    /// The request's attempts upstream.
    attempts: AttemptLog,
    /// The upstream route that served the call (or the last one tried); `None`: not sent.
    served_by: Option<Cow<'static, str>>,
}

struct Inner {
    stack: Stack,
    upstream: String,
    upstream_host: Option<(String, u16)>,
    upstream_header: Option<HeaderName>,
    /// Every route's named key header (`api-key`): removed from requests that present an
    /// access key.
    key_headers: Vec<HeaderName>,
    access: AccessKeys,
    routes: Routes,
    max_body_bytes: usize,
    body_budget: BodyBudget,
    max_upload_bytes: u64,
    body_read_timeout: Duration,
    min_upload_rate: u64,
    metrics_on_main: bool,
    metrics: Arc<Metrics>,
    store: Option<RedisStore>,
    draining: AtomicBool,
}

/// The proxy service. Cheap to clone: clones share the stack's pacer, retry budget and
/// metrics.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("upstream", &self.inner.upstream)
            .field("access_keys", &self.inner.access)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway for `config`: the upstream client (TLS with the webpki roots and
    /// `--upstream-ca`), the stack over it, and the access and route rules.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: an invalid upstream URL or CA file, access keys without a server
    /// key, an unusable `--store`.
    pub async fn new(config: &Config) -> Result<Self, ConfigError> {
        config.check()?;
        let store = crate::upstream::pacing_store(&config.store).await?;
        Gateway::with_store(config, store)
    }

    /// As [`Gateway::new`], with the pacing store given (`None`: in-process) instead of built
    /// from `config.store`; tests use it to watch the store.
    ///
    /// # Errors
    ///
    /// As [`Gateway::new`].
    pub fn with_store(config: &Config, store: Option<RedisStore>) -> Result<Self, ConfigError> {
        config.check()?;
        let client = crate::upstream::client(config.upstream_ca.as_deref())?;
        // The retry budget, if the policy has one, is a `TokenBudget` the gateway keeps, so
        // that /metrics can show its balance (the primary's; each fallback has its own).
        let (retry, budget) = if config.retry.settings().budget.is_some() {
            let budget = MeteredBudget::new(TokenBudget::default());
            (config.retry.clone().budget(budget.clone()), Some(budget))
        } else {
            (config.retry.clone(), None)
        };
        let library = crate::metrics::library_metrics();
        let primary = RouteSpec {
            flag: "--upstream".to_owned(),
            upstream: &config.upstream,
            auth: &config.upstream_auth,
            key: config.server_key.as_ref(),
        };
        let layer = route_layer(config, &primary, retry, library.is_some(), store.as_ref())?;
        let mut fallbacks = Vec::with_capacity(config.fallbacks.len());
        for (i, fb) in config.fallbacks.iter().enumerate() {
            let key = fb.key.as_ref().or(if fb.key_env == DEFAULT_KEY_ENV {
                config.server_key.as_ref()
            } else {
                None
            });
            let spec = RouteSpec {
                flag: format!("--fallback-upstream number {}", i + 1),
                upstream: &fb.upstream,
                auth: &fb.auth,
                key,
            };
            let retry = if config.retry.settings().budget.is_some() {
                config.retry.clone().budget(TokenBudget::default())
            } else {
                config.retry.clone()
            };
            let layer = route_layer(config, &spec, retry, library.is_some(), store.as_ref())?;
            fallbacks.push((fb, layer));
        }
        let mut key_headers: Vec<HeaderName> = Vec::new();
        for auth in
            std::iter::once(&config.upstream_auth).chain(config.fallbacks.iter().map(|f| &f.auth))
        {
            if let UpstreamAuth::Header(h) = auth {
                if !key_headers.contains(h) {
                    key_headers.push(h.clone());
                }
            }
        }
        let upstream_header = match &config.upstream_auth {
            UpstreamAuth::Bearer => None,
            UpstreamAuth::Header(name) => Some(name.clone()),
        };
        let upstream = layer
            .base_url_layer()
            .and_then(|b| b.url().ok())
            .unwrap_or(&config.upstream)
            .to_owned();
        let upstream_host = upstream.parse::<http::Uri>().ok().and_then(|u| {
            let port = u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
                443
            } else {
                80
            });
            u.host()
                .map(|h| (h.trim_matches(['[', ']']).to_owned(), port))
        });
        let body_budget = BodyBudget::new(config.buffered_bytes_cap());
        let metrics = Arc::new(
            Metrics::new(
                layer.pace_layer().pacer().clone(),
                budget,
                body_budget.clone(),
            )
            .with_library(library),
        );
        let watchdog = WatchdogLayer::new()
            .first_byte(config.stream_first_byte_timeout)
            .idle(config.stream_idle_timeout);
        let primary_stack =
            crate::upstream::stack(&layer, client.clone(), watchdog, metrics.clone());
        let stack = if fallbacks.is_empty() {
            primary_stack
        } else {
            let mut routes = vec![Route::new(PRIMARY_ROUTE, primary_stack)];
            for (i, (fb, layer)) in fallbacks.iter().enumerate() {
                let mut stack =
                    crate::upstream::stack(layer, client.clone(), watchdog, metrics.clone());
                if let Some(model) = &fb.model {
                    stack = crate::upstream::with_model(stack, model);
                }
                routes.push(Route::new(format!("fallback-{}", i + 1), stack));
            }
            crate::upstream::fallback_stack(routes)
        };
        Ok(Gateway {
            inner: Arc::new(Inner {
                stack,
                upstream,
                upstream_host,
                upstream_header,
                key_headers,
                access: config.access_keys.clone(),
                routes: config.routes.clone(),
                max_body_bytes: config.max_body_bytes,
                body_budget,
                max_upload_bytes: config.max_upload_bytes,
                body_read_timeout: config.body_read_timeout,
                min_upload_rate: config.min_upload_rate,
                metrics_on_main: config.metrics_listen.is_none(),
                metrics,
                store,
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// The upstream base URL, without `/v1` and without a trailing `/`.
    pub fn upstream(&self) -> &str {
        &self.inner.upstream
    }

    /// The gateway's counters (what `GET /metrics` renders).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The answer to `GET /metrics`: [`Metrics::render`] as `text/plain; version=0.0.4`.
    pub fn metrics_response(&self) -> Response<GatewayBody> {
        full_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            self.inner.metrics.render(),
        )
    }

    /// Marks the gateway as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Proxies one request. Never fails: every failure becomes an OpenAI-shaped error answer.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        peer: Option<SocketAddr>,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut out = Outcome {
            route: "-",
            ..Outcome::default()
        };
        let metrics = &self.inner.metrics;
        metrics.in_flight(1);
        let res = self.route(req, &mut out).await;
        metrics.in_flight(-1);
        let status = res.status().as_u16();
        let error = out.error.as_deref().unwrap_or("none");
        let served_by = out.served_by.as_deref().unwrap_or("-");
        metrics.request(out.route, status, error, served_by);
        let attempts = out.attempts.attempts();
        tracing::info!(
            target: "oai_gateway::access",
            %method,
            path = %path,
            status,
            upstream_status = out.attempts.upstream_status().map_or_else(|| "-".to_owned(), |s| s.to_string()),
            attempts,
            latency_ms = (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            request_id = res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-"),
            access_key = out.who.as_deref().unwrap_or("-"),
            error,
            served_by,
            peer = peer.map(|p| p.to_string()).unwrap_or_default(),
            "request"
        );
        res
    }

    async fn route<'g, B>(&'g self, req: Request<B>, out: &mut Outcome<'g>) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &*self.inner;
        let path = req.uri().path();
        if req.method() == Method::GET {
            let local = match path {
                "/healthz" => Some((
                    "/healthz",
                    json_response(StatusCode::OK, &json!({"status": "ok"})),
                )),
                "/readyz" => Some(("/readyz", self.readiness().await)),
                "/metrics" if inner.metrics_on_main => Some(("/metrics", self.metrics_response())),
                _ => None,
            };
            if let Some((route, res)) = local {
                out.route = route;
                return res;
            }
        }
        let (matched, verdict) = inner.routes.resolve(req.method(), path);
        if let Some(prefix) = matched {
            out.route = prefix;
        }
        match verdict {
            Ok(()) => {}
            Err(Refusal::Method) => {
                out.error = Some("method_not_allowed".into());
                let mut res = local_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("Method {} is not allowed by this gateway.", req.method()),
                    "invalid_request_error",
                    None,
                    "the gateway forwards only GET, POST and DELETE, the methods of the OpenAI API",
                );
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
                return res;
            }
            Err(Refusal::Route) => {
                out.error = Some("route_not_allowed".into());
                let shown: String = path.chars().take(200).collect();
                return local_error(
                    StatusCode::NOT_FOUND,
                    &format!("Invalid URL ({} {shown})", req.method()),
                    "invalid_request_error",
                    None,
                    "this route is not forwarded by the gateway (see --allow-route and --allow-admin-routes)",
                );
            }
        }
        let caller = match self.authenticate(req.headers()) {
            Ok(c) => c,
            Err(res) => {
                out.error = Some("unauthenticated".into());
                return *res;
            }
        };
        if let Caller::Access(name) = caller {
            out.who = Some(name.to_owned());
        }
        self.forward(req, &caller, out).await
    }

    /// Decides who pays, before anything is read or sent.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller<'_>, Box<Response<GatewayBody>>> {
        let inner = &*self.inner;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if !inner.access.is_empty() {
            return match bearer.and_then(|t| inner.access.verify(t.as_bytes())) {
                Some(name) => Ok(Caller::Access(name)),
                None => Err(Box::new(local_error(
                    StatusCode::UNAUTHORIZED,
                    "Incorrect access key provided to the gateway.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    "send one of the gateway's access keys as `Authorization: Bearer <access key>` (the api_key of an OpenAI SDK)",
                ))),
            };
        }
        let own_key = bearer.is_some_and(|t| !t.is_empty())
            || inner
                .upstream_header
                .as_ref()
                .is_some_and(|h| headers.contains_key(h));
        if own_key {
            Ok(Caller::OwnKey)
        } else {
            Err(Box::new(local_error(
                StatusCode::UNAUTHORIZED,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                "this gateway forwards each caller's own OpenAI key: set the client's api_key",
            )))
        }
    }

    async fn forward<B>(
        &self,
        req: Request<B>,
        caller: &Caller<'_>,
        out: &mut Outcome<'_>,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &*self.inner;
        let streamed = streams_body(req.method(), req.uri().path(), req.headers());
        let (limit, flag) = if streamed {
            (inner.max_upload_bytes, "--max-upload-bytes")
        } else {
            (inner.max_body_bytes as u64, "--max-body-bytes")
        };
        let too_large = |out: &mut Outcome<'_>| {
            out.error = Some("body_too_large".into());
            local_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("The request body exceeds the gateway's limit of {limit} bytes."),
                "invalid_request_error",
                None,
                &format!("send a smaller body, or raise {flag}"),
            )
        };
        let too_slow = |out: &mut Outcome<'_>| {
            out.error = Some("body_timeout".into());
            local_error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "The request body did not arrive within {} s.",
                    inner.body_read_timeout.as_secs_f64()
                ),
                "invalid_request_error",
                None,
                "send the body faster, or raise --body-read-timeout",
            )
        };
        let bad_request = |out: &mut Outcome<'_>, msg: &str, hint: &str| {
            out.error = Some("bad_request".into());
            local_error(
                StatusCode::BAD_REQUEST,
                msg,
                "invalid_request_error",
                None,
                hint,
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().parse::<u64>());
        match declared {
            Some(Ok(n)) if n > limit => return too_large(out),
            Some(Err(_)) => {
                return bad_request(
                    out,
                    "The Content-Length header is not a number.",
                    "send a valid Content-Length",
                )
            }
            _ => {}
        }
        // Before the body is read: a call refused for its x-priority reads none of it.
        let priority = match req.headers().get(PRIORITY_HEADER) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(Priority::parse) {
                Some(p) => Some(p),
                None => {
                    return bad_request(
                        out,
                        "The x-priority header must be low, normal, high, batch, interactive or a level from 0 to 255.",
                        "send a valid x-priority, or none",
                    )
                }
            },
        };
        let (parts, body) = req.into_parts();
        let fault = UploadFault::default();
        let body: RequestBody = if streamed {
            let pace = UploadPace {
                idle: inner.body_read_timeout,
                min_rate: inner.min_upload_rate,
            };
            Either::Right(upload_body(body, pace, limit, fault.clone()))
        } else {
            let declared = declared.and_then(Result::ok);
            let read = tokio::time::timeout(
                inner.body_read_timeout,
                buffer::read_body(body, limit as usize, declared, &inner.body_budget),
            )
            .await;
            match read {
                Ok(Ok(bytes)) => Either::Left(Full::new(bytes)),
                Ok(Err(buffer::ReadError::TooLarge)) => return too_large(out),
                Ok(Err(buffer::ReadError::OverBudget)) => {
                    out.error = Some("body_budget".into());
                    let mut res = local_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "The gateway is buffering {} bytes of request bodies, its limit; try again shortly.",
                            inner.body_budget.cap()
                        ),
                        "server_error",
                        None,
                        "retry after the Retry-After delay, or raise --max-buffered-bytes",
                    );
                    // Nothing was sent and the client still holds the body: its SDK may send
                    // it again after the delay.
                    let headers = res.headers_mut();
                    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    headers.insert("retry-after-ms", HeaderValue::from_static("1000"));
                    headers.insert("x-should-retry", HeaderValue::from_static("true"));
                    return res;
                }
                Ok(Err(buffer::ReadError::Body(e))) => {
                    return bad_request(
                        out,
                        &format!("Could not read the request body: {e}"),
                        "send the whole body",
                    )
                }
                Err(_) => return too_slow(out),
            }
        };
        // Only the path and query: the stack's base URL gives them the upstream.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut builder = Request::builder().method(parts.method.clone()).uri(path);
        if let Some(headers) = builder.headers_mut() {
            *headers = self.request_headers(&parts.headers, caller);
        }
        if let Some(p) = priority {
            builder = builder.extension(p);
        }
        let request = match builder.extension(out.attempts.clone()).body(body) {
            Ok(r) => r,
            Err(e) => {
                return bad_request(
                    out,
                    &format!("The request cannot be forwarded: {e}"),
                    "check the request line",
                )
            }
        };
        // Boxed with its type written out: the compiler cannot prove the `Send` of the
        // `Oneshot` future for every lifetime otherwise (rust-lang/rust#102211).
        let call: Pin<Box<dyn Future<Output = Result<Response<ObservedBody>, Error>> + Send>> =
            Box::pin(inner.stack.clone().oneshot(request));
        let result = call.await;
        // The route that served the call, or the last one an error tried.
        let served: Cow<'static, str> = match &result {
            Ok(res) => match res.extensions().get::<ServedBy>() {
                Some(s) if s.is_fallback() => Cow::Owned(s.route().to_owned()),
                _ => Cow::Borrowed(PRIMARY_ROUTE),
            },
            // The last route the call was sent to: an entry `NotReplayable` is a route the
            // body could not be copied to (a streamed upload), where nothing was sent.
            Err(e) => e
                .routes()
                .iter()
                .rev()
                .find(|r| r.error.kind() != ErrorKind::NotReplayable)
                .map_or(Cow::Borrowed(PRIMARY_ROUTE), |r| {
                    Cow::Owned(r.route.to_string())
                }),
        };
        let mut res = 'answer: {
            match result {
                Ok(res) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    parts.headers.remove(header::SET_COOKIE);
                    let sse = parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
                    if !parts.status.is_success() {
                        out.error = Some(format!("http_{}", parts.status.as_u16()));
                    }
                    let body = body::relay(body, inner.metrics.clone(), sse);
                    Response::from_parts(parts, Either::Left(body))
                }
                Err(err) => {
                    match fault.get() {
                        FAULT_TIMEOUT => break 'answer too_slow(out),
                        FAULT_TOO_SLOW => {
                            out.error = Some("body_too_slow".into());
                            break 'answer local_error(
                                StatusCode::REQUEST_TIMEOUT,
                                &format!(
                                    "The upload arrived slower than {} bytes per second.",
                                    inner.min_upload_rate
                                ),
                                "invalid_request_error",
                                None,
                                "send the upload faster, or lower --min-upload-rate",
                            );
                        }
                        FAULT_TOO_LARGE => break 'answer too_large(out),
                        FAULT_CLIENT => {
                            break 'answer bad_request(
                                out,
                                "Could not read the request body.",
                                "send the whole body",
                            )
                        }
                        _ => {}
                    }
                    tracing::info!(error = %err, "gateway: call failed");
                    out.error = Some(err.kind().as_str().to_owned());
                    // A streamed upload that needed a retry (`NotReplayable`) is answered as
                    // the attempt that failed, with `x-should-retry: true`: the gateway could
                    // not send it again, the client, whose SDK still has the body, can.
                    error_response(&err)
                }
            }
        };
        let value = match &served {
            Cow::Borrowed(name) => Ok(HeaderValue::from_static(name)),
            Cow::Owned(name) => HeaderValue::from_str(name),
        };
        if let Ok(v) = value {
            res.headers_mut().insert(ROUTE_HEADER, v);
        }
        out.served_by = Some(served);
        res
    }

    /// The headers sent upstream for a request with `headers` from `caller`.
    fn request_headers(&self, headers: &HeaderMap, caller: &Caller<'_>) -> HeaderMap {
        let mut out = headers.clone();
        strip_hop_by_hop(&mut out);
        for name in REQUEST_SKIP {
            out.remove(*name);
        }
        let named = self.inner.upstream_header.as_ref();
        match caller {
            Caller::Access(_) => {
                // The access key must not travel on, and the server's key and its
                // organization and project are the server's: the auth layer adds them.
                out.remove(header::AUTHORIZATION);
                for h in &self.inner.key_headers {
                    out.remove(h);
                }
                out.remove("openai-organization");
                out.remove("openai-project");
            }
            Caller::OwnKey => {
                // An upstream that takes the bare key in a named header (`api-key`): a key
                // sent as `Authorization: Bearer` moves there.
                if let Some(h) = named {
                    if let Some(v) = out.remove(header::AUTHORIZATION) {
                        if !out.contains_key(h) {
                            let key = v
                                .to_str()
                                .ok()
                                .and_then(|s| s.split_once(' '))
                                .map(|(_, k)| k.trim().to_owned());
                            if let Some(Ok(mut v)) = key.map(|k| HeaderValue::from_str(&k)) {
                                v.set_sensitive(true);
                                out.insert(h.clone(), v);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    async fn readiness(&self) -> Response<GatewayBody> {
        let inner = &*self.inner;
        let not_ready = |why: &str| {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not ready", "reason": why}),
            )
        };
        if inner.draining.load(Ordering::SeqCst) {
            return not_ready("draining");
        }
        if let Some((host, port)) = &inner.upstream_host {
            let lookup = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await;
            let resolves = match lookup {
                Ok(Ok(mut addrs)) => addrs.next().is_some(),
                _ => false,
            };
            if !resolves {
                return not_ready("the upstream host does not resolve");
            }
        }
        if inner.store.as_ref().is_some_and(RedisStore::is_degraded) {
            return not_ready("Redis does not answer (pacing in-process meanwhile)");
        }
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    }
}

/// What [`route_layer`] needs to know of one upstream.
struct RouteSpec<'c> {
    /// How messages name it: `--upstream`, `--fallback-upstream number 2`.
    flag: String,
    upstream: &'c str,
    auth: &'c UpstreamAuth,
    /// Its key, for requests that presented an access key.
    key: Option<&'c Credentials>,
}

/// One route's stack: base URL, validation, auth (the route's key for access-key callers;
/// with no access keys, each caller's own key, checked), retries, a circuit breaker for the
/// upstream, pacing (its pacing key is its base URL and key).
fn route_layer(
    config: &Config,
    spec: &RouteSpec<'_>,
    retry: RetryConfig,
    observe: bool,
    store: Option<&RedisStore>,
) -> Result<OpenAiLayer, ConfigError> {
    let auth = if config.access_keys.is_empty() {
        // Callers bring their own key; the server's keys are never used.
        AuthLayer::check_only()
    } else {
        let creds = spec.key.cloned().ok_or_else(|| {
            ConfigError(format!(
                "{}: access keys are configured but the upstream's key is not set",
                spec.flag
            ))
        })?;
        AuthLayer::new(KeySource::from_credentials(creds))
    };
    let auth = match spec.auth {
        UpstreamAuth::Bearer => auth,
        UpstreamAuth::Header(name) => auth
            .header(KeyHeader::Named(name.clone()))
            .rules(KeyRules::lenient()),
    };
    let mut layer = OpenAiLayer::new();
    if observe {
        // Registered first: the layers put in below take it over.
        layer = layer.observer(Arc::new(MetricsObserver::new()));
    }
    let mut layer = layer
        .try_base_url(spec.upstream)
        .map_err(|e| ConfigError(format!("{}: {e}", spec.flag)))?
        .validate(ValidateLayer::new().body_limit(config.max_body_bytes))
        .auth(auth)
        .retry(RetryLayer::with_config(retry));
    // One circuit for the upstream, whoever calls: what opens it (5xx, connection
    // failures, timeouts) is the upstream's state, not a caller's; and a circuit per
    // caller's own key would keep state for every key seen in the breaker's window.
    layer = layer.breaker(
        CircuitBreakerLayer::new()
            .key_fn(|uri, _| BreakerKey::new(uri.authority().map_or("", |a| a.as_str()))),
    );
    let mut pacing = PacerConfig::default();
    pacing.max_wait = Some(config.max_pacing_wait);
    layer = layer.pace(PaceLayer::with_config(pacing));
    if let Some(store) = store {
        layer = layer.pacing_store(store.clone());
    }
    Ok(layer)
}

/// A streamed upload, boxed.
fn upload_body<B>(
    body: B,
    pace: UploadPace,
    limit: u64,
    fault: UploadFault,
) -> UnsyncBoxBody<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    UploadBody::new(body, pace, limit, fault)
        .map_err(BodyError)
        .boxed_unsync()
}

/// Removes the hop-by-hop headers and the headers that `Connection:` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Maps an error of the stack to OpenAI's error JSON, with the hint, request id and attempts
/// ([`oai_resilience::respond::error_response`]).
pub fn error_response(err: &Error) -> Response<GatewayBody> {
    respond::error_response(err).map(|body| Either::Right(Full::new(body)))
}

/// An answer the gateway makes itself ([`respond::local_response`]): nothing was sent.
fn local_error(
    status: StatusCode,
    message: &str,
    error_type: &str,
    code: Option<&str>,
    hint: &str,
) -> Response<GatewayBody> {
    respond::local_response(status, message, error_type, code, hint)
        .map(|body| Either::Right(Full::new(body)))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GatewayBody> {
    full_response(status, "application/json", body.to_string())
}

/// An answer of the gateway's own: `status`, `body` of `content_type`.
fn full_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<GatewayBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
