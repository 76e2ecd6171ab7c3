//! The upstream side: the HTTP client (rustls with the webpki roots plus `--upstream-ca`,
//! HTTP/1.1 and HTTP/2 by ALPN, pooled connections), the stack over it, and the pacing store.
//!
//! Under the library's stack (`BaseUrl -> Validate -> Auth -> Retry -> Pace -> Classify`) the
//! gateway puts, per attempt:
//!
//! ```text
//! ... Classify -> Observe -> Watchdog -> client
//! ```
//!
//! - [`Watchdog`](oai_resilience::Watchdog) bounds the time from the response head to the
//!   first body frame (`--stream-first-byte-timeout`) and between frames
//!   (`--stream-idle-timeout`). A first-byte stall fails the attempt (nothing reached the
//!   client yet, so the retry layer may send it again); a later stall ends the body, which
//!   the gateway turns into an SSE `error` event for event streams.
//! - [`Observe`] counts each attempt for `/metrics` and the access log: its number, the
//!   status it got, its latency to the first byte, and for a 429 whether it was a rate limit
//!   or an exhausted quota (it reads the small error body and hands it on unchanged).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::fallback::{Fallback, Route, RouteBody};
use oai_resilience::pace::{RedisStore, RedisStoreConfig};
use oai_resilience::stack::ClientBody;
use oai_resilience::watchdog::{Stall, WatchdogBody, WatchdogLayer};
use oai_resilience::{BoxError, Error, OpenAiLayer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::config::ConfigError;
use crate::metrics::Metrics;

/// A request body as the gateway forwards it: buffered JSON (replayable, so retried), or a
/// streamed upload (multipart, audio, files), sent as it arrives and never retried.
pub type RequestBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, BodyError>>;

/// The error of a boxed body. A named type rather than [`BoxError`] itself: with a trait
/// object in a boxed body's type, `rustc` cannot prove the connection futures `Send` for
/// every lifetime (rust-lang/rust#102211).
#[derive(Debug)]
pub struct BodyError(pub BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The client the stack sends through.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ClientBody<RequestBody>>;

/// An upstream body as [`Observe`] hands it on: streamed through the watchdog, or (a 429's
/// error body, which it read) the bytes it read.
pub type ObservedBody = Either<WatchdogBody<Incoming>, Full<Bytes>>;

/// The full stack, type-erased so that it can be named, cloned and shared.
pub type Stack = BoxCloneSyncService<Request<RequestBody>, Response<ObservedBody>, Error>;

/// The attempts of one request, shared through a request extension with every attempt the
/// retry layer sends (replays copy the extensions): how many were sent, and the status the
/// last one got (0: none).
#[derive(Debug, Clone, Default)]
pub struct AttemptLog {
    inner: Arc<(AtomicU32, AtomicU16)>,
}

impl AttemptLog {
    /// Attempts sent so far.
    pub fn attempts(&self) -> u32 {
        self.inner.0.load(Ordering::Relaxed)
    }

    /// The status of the last attempt that got an answer.
    pub fn upstream_status(&self) -> Option<u16> {
        match self.inner.1.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }
}

/// The per-attempt observer: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The largest 429 body [`Observe`] reads to tell a quota from a rate limit.
const MAX_429_BODY: usize = 64 * 1024;

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<WatchdogBody<Incoming>>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ObservedBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ObservedBody>, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let log = req.extensions().get::<AttemptLog>().cloned();
        let number = log
            .as_ref()
            .map_or(1, |l| l.inner.0.fetch_add(1, Ordering::Relaxed) + 1);
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => {
                    let status = res.status();
                    metrics.attempt(number, Some(status.as_u16()), start.elapsed());
                    if let Some(l) = &log {
                        l.inner.1.store(status.as_u16(), Ordering::Relaxed);
                    }
                    if status != StatusCode::TOO_MANY_REQUESTS {
                        return Ok(res.map(Either::Left));
                    }
                    let (parts, body) = res.into_parts();
                    let bytes = Limited::new(body, MAX_429_BODY)
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let quota = oai_resilience::parse::parse_error_body(&bytes)
                        .is_some_and(|api| api.is_quota());
                    metrics.too_many_requests(quota);
                    Ok(Response::from_parts(parts, Either::Right(Full::new(bytes))))
                }
                Err(err) => {
                    if let Some(stall) = Stall::of(&err) {
                        metrics.stall(stall.is_first_byte());
                    }
                    metrics.attempt(number, None, start.elapsed());
                    Err(err)
                }
            }
        })
    }
}

/// The certificates of the PEM file `path`.
///
/// # Errors
///
/// The file cannot be read, or holds no certificate or a malformed one.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError(format!("--upstream-ca: cannot read {shown}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("--upstream-ca: {shown} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "--upstream-ca: {shown} holds no CERTIFICATE block"
        )));
    }
    Ok(certs)
}

/// The upstream client: `https://` with rustls (the webpki roots, plus the certificates of
/// `ca`), HTTP/2 when the server offers it by ALPN, else HTTP/1.1; `http://` over plain
/// HTTP/1.1. Idle connections are kept for 90 s and reused.
///
/// # Errors
///
/// An unreadable CA file or a certificate rustls refuses.
pub fn client(ca: Option<&Path>) -> Result<UpstreamClient, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        for cert in read_ca(path)? {
            roots.add(cert).map_err(|e| {
                ConfigError(format!(
                    "--upstream-ca: {}: a certificate is not usable as a CA: {e}",
                    path.display()
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// The stack of `layer` over `client`, with `watchdog` and the [`Observe`] layer per
/// attempt (see the [module docs](self)), type-erased.
pub fn stack(
    layer: &OpenAiLayer,
    client: UpstreamClient,
    watchdog: WatchdogLayer,
    metrics: Arc<Metrics>,
) -> Stack {
    let observed = Observe {
        inner: watchdog.layer(client),
        metrics,
    };
    BoxCloneSyncService::new(layer.service_for::<RequestBody, _>(observed))
}

/// `stack`, sending a JSON object body with `model` as its `model` (a `--fallback-upstream`'s
/// `model=`); any other body (none, as for `GET /v1/models`; a streamed upload) goes as it
/// is. Unlike [`Route::model`], which does not send such a request to the route at all, so
/// that a `GET` that moves on to a route with a model is still served.
pub fn with_model(stack: Stack, model: &str) -> Stack {
    let model: Arc<str> = model.into();
    BoxCloneSyncService::new(stack.map_request(move |req: Request<RequestBody>| {
        req.map(|body| body.with_model(&model).unwrap_or(body))
    }))
}

/// The stack over fallback routes: each route's [`stack`], tried in order by
/// [`Fallback`]; a response carries
/// [`ServedBy`](oai_resilience::fallback::ServedBy), an error that tried more than one route
/// lists them ([`Error::routes`]).
pub fn fallback_stack(routes: Vec<Route<Stack>>) -> Stack {
    BoxCloneSyncService::new(Fallback::new(routes))
}

/// The pacing store for `--store ARG`: `memory` (or `in-process`): `None`, each gateway paces
/// in its own process (the default); `redis://HOST:PORT[/DB]` (or `rediss://`): a
/// [`RedisStore`] shared by every gateway that uses the same Redis.
///
/// If Redis does not answer now, the store is returned anyway with a `tracing` warning: it
/// paces in-process until Redis answers (the store fails open), so a gateway starts while
/// its Redis is down.
///
/// # Errors
///
/// An unknown store or a URL the Redis client cannot parse. The message never contains the
/// URL (it may hold a Redis password).
pub async fn pacing_store(arg: &str) -> Result<Option<RedisStore>, ConfigError> {
    match arg {
        "memory" | "in-process" => Ok(None),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            let config = RedisStoreConfig::default();
            let store = RedisStore::open(url, config.clone()).map_err(|e| {
                ConfigError(format!("--store: not a usable Redis URL ({})", e.kind()))
            })?;
            // The store whose connection answered is the one kept; `store` (not connected
            // yet: it connects on first use) only if Redis does not answer now.
            match RedisStore::connect(url, config).await {
                Ok(connected) => Ok(Some(connected)),
                Err(e) => {
                    tracing::warn!(
                        error = %e.kind(),
                        "Redis does not answer yet: pacing in-process until it does"
                    );
                    Ok(Some(store))
                }
            }
        }
        _ => Err(ConfigError(
            "--store: expected memory or redis://HOST:PORT".to_owned(),
        )),
    }
}
