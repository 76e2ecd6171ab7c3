//! The proxy service: [`Gateway`].
//!
//! Each request, in order:
//!
//! 1. `GET /healthz` and `GET /readyz` are answered by the gateway;
//! 2. a method the OpenAI API does not use gets 405, a path outside the route allowlist (or
//!    not in normal form) 404 ([`routes`]);
//! 3. the caller is authenticated ([`access`]): with access keys configured, the request must
//!    carry `Authorization: Bearer <access key>`, which is replaced by the server's key; without
//!    access keys, the request must carry the caller's own key, which is forwarded (checked
//!    locally by the stack) — the server's key is never used then;
//! 4. a declared `Content-Length` over `--max-body-bytes` gets 413 at once, before any byte of
//!    the body is read; the body is then read up to the limit within `--body-read-timeout`;
//! 5. the request goes through the stack (validation, key checks, retries, pacing,
//!    classification) with hop-by-hop headers, headers named in `Connection:`, `cookie`,
//!    `host`, `content-length` and `accept-encoding` removed;
//! 6. the upstream's response is streamed back (hop-by-hop headers and `set-cookie` removed),
//!    or the stack's error is mapped to OpenAI's error JSON by
//!    [`oai_resilience::respond::error_response`].
//!
//! Every answer the gateway makes itself (401, 404, 405, 408, 413) has OpenAI's error shape
//! and `x-should-retry: false`; every request is logged once (method, path, status, latency,
//! access-key name), never with a key.

pub mod access;
pub mod routes;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Incoming};
use oai_resilience::auth::{AuthLayer, KeyHeader, KeyRules, KeySource};
use oai_resilience::pace::RedisStore;
use oai_resilience::{respond, Error, OpenAiLayer, RetryLayer};
use serde_json::json;
use tower::ServiceExt;

use crate::config::{Config, ConfigError, UpstreamAuth};
use crate::upstream::Stack;
use access::AccessKeys;
use routes::{Refusal, Routes};

pub use oai_resilience::respond::{ATTEMPTS_HEADER, HINT_HEADER};

/// The response body: the upstream's body streamed through, or the gateway's own JSON.
pub type GatewayBody = Either<Incoming, Full<Bytes>>;

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
];

/// Who pays for a request.
enum Caller<'a> {
    /// Presented access key `name`: the server's key is used.
    Access(&'a str),
    /// Brings their own OpenAI key (no access keys configured).
    OwnKey,
}

struct Inner {
    stack: Stack,
    upstream: String,
    upstream_host: Option<(String, u16)>,
    upstream_header: Option<HeaderName>,
    access: AccessKeys,
    routes: Routes,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    store: Option<RedisStore>,
    draining: AtomicBool,
}

/// The proxy service. Cheap to clone: clones share the stack's pacer and retry budget.
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
        let auth = if config.access_keys.is_empty() {
            // Callers bring their own key; the server's key is never used.
            AuthLayer::check_only()
        } else {
            let creds = config.server_key.clone().ok_or_else(|| {
                ConfigError("access keys are configured but OPENAI_API_KEY is not set".into())
            })?;
            AuthLayer::new(KeySource::from_credentials(creds))
        };
        let (auth, upstream_header) = match &config.upstream_auth {
            UpstreamAuth::Bearer => (auth, None),
            UpstreamAuth::Header(name) => (
                auth.header(KeyHeader::Named(name.clone()))
                    .rules(KeyRules::lenient()),
                Some(name.clone()),
            ),
        };
        let mut layer = OpenAiLayer::new()
            .try_base_url(&config.upstream)
            .map_err(|e| ConfigError(format!("--upstream: {e}")))?
            .auth(auth)
            .retry(RetryLayer::with_config(config.retry.clone()));
        if let Some(store) = &store {
            layer = layer.pacing_store(store.clone());
        }
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
        let stack = crate::upstream::stack(&layer, client);
        Ok(Gateway {
            inner: Arc::new(Inner {
                stack,
                upstream,
                upstream_host,
                upstream_header,
                access: config.access_keys.clone(),
                routes: config.routes.clone(),
                max_body_bytes: config.max_body_bytes,
                body_read_timeout: config.body_read_timeout,
                store,
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// The upstream base URL, without `/v1` and without a trailing `/`.
    pub fn upstream(&self) -> &str {
        &self.inner.upstream
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
        B: Body<Data = Bytes>,
        B::Error: Into<oai_resilience::BoxError>,
    {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let (res, who) = self.route(req).await;
        tracing::info!(
            target: "oai_gateway::access",
            %method,
            path = %path,
            status = res.status().as_u16(),
            attempts = res.headers().get(ATTEMPTS_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-"),
            latency_ms = start.elapsed().as_secs_f64() * 1000.0,
            access_key = who.as_deref().unwrap_or("-"),
            peer = peer.map(|p| p.to_string()).unwrap_or_default(),
            "request"
        );
        res
    }

    async fn route<B>(&self, req: Request<B>) -> (Response<GatewayBody>, Option<String>)
    where
        B: Body<Data = Bytes>,
        B::Error: Into<oai_resilience::BoxError>,
    {
        let inner = &*self.inner;
        let path = req.uri().path();
        if req.method() == Method::GET && path == "/healthz" {
            return (
                json_response(StatusCode::OK, &json!({"status": "ok"})),
                None,
            );
        }
        if req.method() == Method::GET && path == "/readyz" {
            return (self.readiness().await, None);
        }
        match inner.routes.check(req.method(), path) {
            Ok(()) => {}
            Err(Refusal::Method) => {
                let mut res = local_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("Method {} is not allowed by this gateway.", req.method()),
                    "invalid_request_error",
                    None,
                    "the gateway forwards only GET, POST and DELETE, the methods of the OpenAI API",
                );
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
                return (res, None);
            }
            Err(Refusal::Route) => {
                let shown: String = path.chars().take(200).collect();
                return (
                    local_error(
                        StatusCode::NOT_FOUND,
                        &format!("Invalid URL ({} {shown})", req.method()),
                        "invalid_request_error",
                        None,
                        "this route is not forwarded by the gateway (see --allow-route and --allow-admin-routes)",
                    ),
                    None,
                );
            }
        }
        let caller = match self.authenticate(req.headers()) {
            Ok(c) => c,
            Err(res) => return (*res, None),
        };
        let who = match caller {
            Caller::Access(name) => Some(name.to_owned()),
            Caller::OwnKey => None,
        };
        (self.forward(req, &caller).await, who)
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

    async fn forward<B>(&self, req: Request<B>, caller: &Caller<'_>) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<oai_resilience::BoxError>,
    {
        let inner = &*self.inner;
        let limit = inner.max_body_bytes;
        let too_large = || {
            local_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("The request body exceeds the gateway's limit of {limit} bytes."),
                "invalid_request_error",
                None,
                "send a smaller body, or raise --max-body-bytes",
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().parse::<u64>());
        match declared {
            Some(Ok(n)) if n > limit as u64 => return too_large(),
            Some(Err(_)) => {
                return local_error(
                    StatusCode::BAD_REQUEST,
                    "The Content-Length header is not a number.",
                    "invalid_request_error",
                    None,
                    "send a valid Content-Length",
                )
            }
            _ => {}
        }
        let (parts, body) = req.into_parts();
        let read =
            tokio::time::timeout(inner.body_read_timeout, Limited::new(body, limit).collect())
                .await;
        let body = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(e)) => {
                return local_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Could not read the request body: {e}"),
                    "invalid_request_error",
                    None,
                    "send the whole body",
                )
            }
            Err(_) => {
                return local_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "The request body did not arrive within {} s.",
                        inner.body_read_timeout.as_secs_f64()
                    ),
                    "invalid_request_error",
                    None,
                    "send the body faster, or raise --body-read-timeout",
                )
            }
        };
        // Only the path and query: the stack's base URL gives them the upstream.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut out = Request::builder().method(parts.method.clone()).uri(path);
        if let Some(headers) = out.headers_mut() {
            *headers = self.request_headers(&parts.headers, caller);
        }
        let out = match out.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return local_error(
                    StatusCode::BAD_REQUEST,
                    &format!("The request cannot be forwarded: {e}"),
                    "invalid_request_error",
                    None,
                    "check the request line",
                )
            }
        };
        match inner.stack.clone().oneshot(out).await {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.remove(header::SET_COOKIE);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(err) => {
                tracing::info!(error = %err, "gateway: call failed");
                error_response(&err)
            }
        }
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
                if let Some(h) = named {
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

/// An answer the gateway makes itself, in the shape of
/// [`respond::error_body`](oai_resilience::respond::error_body): OpenAI's four fields, the
/// hint appended to the message and in `hint` and `x-oai-resilience-hint`, `attempts: 0`
/// (nothing was sent), `x-should-retry: false`.
fn local_error(
    status: StatusCode,
    message: &str,
    error_type: &str,
    code: Option<&str>,
    hint: &str,
) -> Response<GatewayBody> {
    let body = json!({"error": {
        "message": format!("{message} Hint: {hint}."),
        "type": error_type,
        "param": null,
        "code": code,
        "hint": hint,
        "request_id": null,
        "attempts": 0,
    }});
    let mut res = json_response(status, &body);
    let h = res.headers_mut();
    h.insert("x-should-retry", HeaderValue::from_static("false"));
    h.insert(ATTEMPTS_HEADER, HeaderValue::from_static("0"));
    if let Ok(v) = HeaderValue::from_str(hint) {
        h.insert(HINT_HEADER, v);
    }
    res
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<GatewayBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
