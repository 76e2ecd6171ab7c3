//! One layer that stacks every middleware of this crate in the right order.
//!
//! One call through the default stack, outermost first:
//!
//! ```text
//! caller -> BaseUrl -> Validate -> Auth -> Retry -+-> CircuitBreaker -> Pace -> Classify -> HTTP client -> server
//!                                                 +-- every attempt re-enters the breaker and Pace
//! ```
//!
//! Why this order:
//! - **Validate** and **Auth** are local and deterministic, so they run once, before any
//!   attempt: a bad body or a bad key costs zero round trips and no request from the rate limit.
//! - **Retry** wraps **Pace**, so every attempt (the first and each retry) waits for a slot at
//!   the learned rate instead of going out to collect a 429.
//! - **Classify** sits under both, so the pacer and the retry policy see typed [`Error`]s
//!   (a quota 429 is not a rate limit) rather than raw responses.
//! - **CircuitBreaker** (off by default; [`OpenAiLayer::breaker`] switches it on) sits under
//!   Retry and above Pace ([`crate::breaker`]): every attempt is an outcome, so a failing
//!   upstream (5xx, connection failures, timeouts) opens its circuit after a few attempts
//!   whichever calls made them; an attempt into an open circuit fails at once with
//!   [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen), before it waits for a pacing
//!   slot, and nothing is sent. That error is local, so the retry policy does not retry it and
//!   the retry budget is neither asked nor told: an open circuit is not a budget withdrawal.
//!   The breaker ignores the pacer's own refusals (nothing sent) and counts 4xx, rate limits
//!   and quota 429s as answers of a healthy upstream. It is off by default because with one
//!   upstream it trades failures for requests: the calls that meet an open circuit fail until
//!   a probe succeeds, up to the open period after the upstream recovered (the `outage` load
//!   scenario: 5 of the 100 calls after a 5xx outage failed with the default 5 s period,
//!   where retry and budget alone served all 100). Switch it on in front of
//!   [fallback routes](crate::fallback), where an open circuit sends the call to the next
//!   route at once, or where shedding load matters more than each call.
//! - **BaseUrl** gives relative request URIs (`/v1/chat/completions`) the configured base, so
//!   the auth layer knows the target host and the pacer keys by it.
//!
//! # Base URL
//!
//! Request paths are the API's full paths (`/v1/chat/completions`). The base URL is written
//! as OpenAI's SDKs and `OPENAI_BASE_URL` write it, with `/v1` (`https://api.openai.com/v1`,
//! `http://localhost:8000/v1` for a compatible server), or without it: both send
//! `/v1/chat/completions`, never `/v1/v1/…`. A path before `/v1` is kept as a prefix
//! (`https://example.com/openai/v1` sends `/openai/v1/chat/completions`). Without
//! [`OpenAiLayer::base_url`], `OPENAI_BASE_URL` is read; see [`BaseUrlLayer`] for what is a
//! valid base.
//!
//! [`OpenAiLayer`] encodes this order; each piece keeps its own configuration. Users who stack
//! the layers by hand with [`tower::ServiceBuilder`] should keep the same order.
//!
//! # The inner client's body type
//!
//! The stack takes `http::Request<B>` (usually `B = Full<Bytes>`, which retries can replay)
//! and hands the inner client `http::Request<`[`ClientBody`]`<B>>`, that is
//! [`ValidateBody`]`<B>`: the bytes the validation layer buffered, or the untouched `B` for
//! a route it does not check. So build the client for that body, not for `B`: with
//! hyper-util, `build_http::<ClientBody>()` (or let inference pick it), not
//! `build_http::<Full<Bytes>>()`, which `rustc` reports as an `E0599 … trait bounds were not
//! satisfied` on `oneshot` or `ready`. [`OpenAiLayer::service_for`] checks the client when the
//! stack is built and names the body the client must take.
//!
//! The whole stack is an [`OpenAiService`]`<C>` for a client `C`; with hyper-util over
//! plain HTTP, the type to store in a struct is
//! `OpenAiService<Client<HttpConnector, ClientBody>>`:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use oai_resilience::stack::{ClientBody, OpenAiLayer, OpenAiService};
//! use oai_resilience::AuthLayer;
//!
//! /// The common stack: `OpenAiLayer` over a hyper-util HTTP/1 client, for `Full<Bytes>`
//! /// request bodies (use an HTTPS connector, such as hyper-rustls', for the real API).
//! type HyperStack = OpenAiService<Client<HttpConnector, ClientBody<Full<Bytes>>>>;
//!
//! struct App {
//!     openai: HyperStack,
//! }
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<ClientBody>();
//! let app = App {
//!     openai: OpenAiLayer::new()
//!         .base_url("http://127.0.0.1:8080/v1".parse().unwrap())
//!         .auth(AuthLayer::from_key("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"))
//!         .service_for::<Full<Bytes>, _>(client),
//! };
//! # let _ = app.openai;
//! ```
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::stack::OpenAiLayer;
//! use oai_resilience::{AuthLayer, RetryConfig, RetryLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Any `Service<http::Request<_>>` that returns an `http::Response` will do; in production it
//! // is a hyper-util client, here a stand-in that answers at once.
//! let upstream = service_fn(|req: http::Request<_>| async move {
//!     assert_eq!(
//!         req.uri().to_string(),
//!         "https://api.openai.com/v1/chat/completions"
//!     );
//!     let body = Full::new(Bytes::from_static(b"{\"object\":\"chat.completion\"}"));
//!     Ok::<_, std::convert::Infallible>(http::Response::new(body))
//! });
//!
//! let stack = OpenAiLayer::new()
//!     .base_url("https://api.openai.com/v1".parse().unwrap())
//!     .auth(AuthLayer::from_key("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"))
//!     .retry(RetryLayer::with_config(RetryConfig::new().max_attempts(4)))
//!     .layer(upstream);
//!
//! let req = http::Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(
//!         br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
//!     )))
//!     .unwrap();
//! let res = stack.oneshot(req).await.unwrap();
//! assert!(res.status().is_success());
//!
//! // A request without `messages` never leaves the process.
//! let bad = http::Request::post("/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o-mini"}"#)))
//!     .unwrap();
//! # let upstream = service_fn(|_req: http::Request<_>| async move {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//! # });
//! # let stack = OpenAiLayer::new()
//! #     .auth(AuthLayer::from_key("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"))
//! #     .layer(upstream);
//! let err = stack.oneshot(bad).await.unwrap_err();
//! assert_eq!(err.param(), Some("messages"));
//! # }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{Auth, AuthLayer};
use crate::breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::classify::{Classify, ClassifyLayer};
use crate::error::Error;
use crate::observe::{Observer, SharedObserver};
use crate::pace::{Pace, PaceBody, PaceLayer};
use crate::retry::{ReplayBody, Retry, RetryLayer};
use crate::validate::{Validate, ValidateBody, ValidateLayer};

/// `layer` with the stack's observer registered on it, if the stack has one.
macro_rules! with_observer {
    ($stack:ident, $layer:ident) => {
        match &$stack.observer {
            Some(o) => $layer.observer(o.clone()),
            None => $layer,
        }
    };
}

/// The service that [`OpenAiLayer`] builds around `S`.
///
/// It takes `http::Request<B>` and calls `S` with `http::Request<`[`ClientBody`]`<B>>`; see
/// [the inner client's body type](self#the-inner-clients-body-type).
pub type OpenAiService<S> = BaseUrl<Validate<Auth<Retry<CircuitBreaker<Pace<Classify<S>>>>>>>;

/// The request body the inner client of [`OpenAiLayer`] receives when the stack is called
/// with `http::Request<B>`: the validation layer's [`ValidateBody`]`<B>`. `B` defaults to
/// `Full<Bytes>`, the body that retries can replay.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use oai_resilience::stack::ClientBody;
///
/// let client: Client<HttpConnector, ClientBody<Full<Bytes>>> =
///     Client::builder(TokioExecutor::new()).build_http::<ClientBody>();
/// # let _ = client;
/// ```
pub type ClientBody<B = http_body_util::Full<Bytes>> = ValidateBody<B>;

/// A client that can be the inner service of [`OpenAiLayer`] for requests with body `B`: a
/// `Service<http::Request<`[`ClientBody`]`<B>>>`. Implemented for every such service;
/// [`OpenAiLayer::service_for`] requires it, so a client built for another body type is
/// reported where the stack is built, with a message that names the body it must take.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the inner client of `OpenAiLayer` for request bodies `{B}`",
    label = "this client does not take `http::Request<ValidateBody<{B}>>`",
    note = "the stack hands its inner client `http::Request<oai_resilience::ValidateBody<{B}>>` (alias `oai_resilience::stack::ClientBody<{B}>`), not `http::Request<{B}>`",
    note = "with hyper-util, build the client with `build_http::<ClientBody<{B}>>()` (or `build::<_, ClientBody<{B}>>(connector)`)"
)]
pub trait InnerClient<B>: Service<Request<ClientBody<B>>> {}

#[diagnostic::do_not_recommend]
impl<S, B> InnerClient<B> for S where S: Service<Request<ClientBody<B>>> {}

/// Stacks validation, auth, retry, circuit breaking, pacing and classification in the order
/// the [module docs](self) explain.
///
/// # Default
///
/// [`ValidateLayer::new`], [`AuthLayer::from_env`] (`OPENAI_API_KEY`, `OPENAI_ORG_ID`,
/// `OPENAI_PROJECT_ID`), [`RetryLayer::new`], no circuit breaker
/// ([`CircuitBreakerLayer::disabled`]; [`breaker`](Self::breaker) switches one on),
/// [`PaceLayer::new`] (pacing state in this
/// process; [`pacing_store`](Self::pacing_store) shares it between processes),
/// [`ClassifyLayer::new`], and the base URL in `OPENAI_BASE_URL`, with or without `/v1`, read
/// once by [`new`](Self::new) (unset or blank: none, and request URIs are used as they are; an
/// invalid value: requests with a relative URI fail, see [`base_url`](Self::base_url)).
///
/// Clones share the retry budget, the circuits and the pacer: build the layer once and clone
/// the service.
#[derive(Debug, Clone)]
pub struct OpenAiLayer {
    base_url: Option<BaseUrlLayer>,
    validate: ValidateLayer,
    auth: AuthLayer,
    retry: RetryLayer,
    breaker: CircuitBreakerLayer,
    pace: PaceLayer,
    classify: ClassifyLayer,
    observer: Option<SharedObserver>,
}

crate::macros::default_via_new!(OpenAiLayer);

impl OpenAiLayer {
    /// The default stack; see [`OpenAiLayer`]. Reads `OPENAI_BASE_URL`.
    pub fn new() -> Self {
        let env = std::env::var_os("OPENAI_BASE_URL").map(|v| v.to_string_lossy().into_owned());
        OpenAiLayer {
            base_url: base_url_from_env(env),
            validate: ValidateLayer::new(),
            auth: AuthLayer::from_env(),
            retry: RetryLayer::new(),
            breaker: CircuitBreakerLayer::disabled(),
            pace: PaceLayer::new(),
            classify: ClassifyLayer::new(),
            observer: None,
        }
    }

    /// Registers `observer` on the retry, validation, auth and pace layers (and on those that
    /// [`retry`](Self::retry), [`validate`](Self::validate), [`auth`](Self::auth) and
    /// [`pace`](Self::pace) put in later): it sees every attempt, retry, stop, local
    /// rejection and pacing wait of the stack, and of the adapters built from this layer,
    /// and the token usage a [`UsageLayer`](crate::usage::UsageLayer) under the stack reads.
    /// See [`crate::observe`].
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.validate = self.validate.observer(observer.clone());
        self.auth = self.auth.observer(observer.clone());
        self.retry = self.retry.observer(observer.clone());
        self.pace = self.pace.observer(observer.clone());
        self.observer = Some(observer);
        self
    }

    /// Gives requests whose URI has no scheme and authority this base: `https://api.openai.com`
    /// or `https://api.openai.com/v1` (both send `/v1/chat/completions`), or a compatible
    /// server's (`http://localhost:8000/v1`). Replaces the base read from `OPENAI_BASE_URL`.
    ///
    /// A base that is not valid (see [`BaseUrlLayer`]) does not panic: every request it
    /// would apply to fails with [`ErrorKind::Internal`](crate::ErrorKind::Internal), whose
    /// [`source`](std::error::Error::source) is the [`InvalidBaseUrl`].
    /// [`try_base_url`](Self::try_base_url) gives that error at once.
    ///
    /// ```
    /// use oai_resilience::stack::OpenAiLayer;
    ///
    /// let with_v1 = OpenAiLayer::new().base_url("http://localhost:8000/v1".parse().unwrap());
    /// let without = OpenAiLayer::new().base_url("http://localhost:8000".parse().unwrap());
    /// for layer in [with_v1, without] {
    ///     let base = layer.base_url_layer().unwrap();
    ///     assert_eq!(base.url(), Ok("http://localhost:8000"));
    /// }
    /// ```
    pub fn base_url(mut self, base: Uri) -> Self {
        self.base_url = Some(BaseUrlLayer::new(base));
        self
    }

    /// [`base_url`](Self::base_url) from a string, checked now.
    ///
    /// # Errors
    ///
    /// [`InvalidBaseUrl`] if `base` is not a valid base (see [`BaseUrlLayer`]).
    ///
    /// ```
    /// use oai_resilience::stack::OpenAiLayer;
    ///
    /// # fn main() -> Result<(), oai_resilience::stack::InvalidBaseUrl> {
    /// let layer = OpenAiLayer::new().try_base_url("https://api.openai.com/v1")?;
    /// assert_eq!(
    ///     layer.base_url_layer().unwrap().url(),
    ///     Ok("https://api.openai.com")
    /// );
    /// let err = OpenAiLayer::new()
    ///     .try_base_url("api.openai.com/v1")
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("invalid base URL"));
    /// # Ok(()) }
    /// ```
    pub fn try_base_url(mut self, base: &str) -> Result<Self, InvalidBaseUrl> {
        self.base_url = Some(base.parse()?);
        Ok(self)
    }

    /// The base URL layer: the one [`base_url`](Self::base_url) set, else the one read from
    /// `OPENAI_BASE_URL`, if any.
    pub fn base_url_layer(&self) -> Option<&BaseUrlLayer> {
        self.base_url.as_ref()
    }

    /// Replaces the validation layer.
    pub fn validate(mut self, layer: ValidateLayer) -> Self {
        self.validate = with_observer!(self, layer);
        self
    }

    /// Replaces the auth layer (the key source and the key rules).
    pub fn auth(mut self, layer: AuthLayer) -> Self {
        self.auth = with_observer!(self, layer);
        self
    }

    /// Replaces the retry layer (policy, backoff, budget, deadline).
    pub fn retry(mut self, layer: RetryLayer) -> Self {
        self.retry = with_observer!(self, layer);
        self
    }

    /// Switches a circuit breaker on, or replaces it (its configuration and its circuits); see
    /// [`crate::breaker`] and the [module docs](self) for when it helps. Clones of one [`CircuitBreakerLayer`] share their circuits, so
    /// stacks built with clones of it see the same open circuits.
    ///
    /// ```
    /// use oai_resilience::breaker::{BreakerConfig, CircuitBreakerLayer};
    /// use oai_resilience::stack::OpenAiLayer;
    /// use std::time::Duration;
    ///
    /// let breaker = CircuitBreakerLayer::with_config(
    ///     BreakerConfig::new().consecutive_failures(3).open_for(Duration::from_secs(1)),
    /// );
    /// let layer = OpenAiLayer::new().breaker(breaker);
    /// let settings = layer.breaker_layer().config().settings();
    /// assert_eq!(settings.consecutive_failures, Some(3));
    /// ```
    pub fn breaker(mut self, layer: CircuitBreakerLayer) -> Self {
        self.breaker = layer;
        self
    }

    /// Switches the circuit breaker off (the default): every attempt goes to the pacer and the
    /// upstream, however often the upstream failed (the stack's type stays [`OpenAiService`]).
    ///
    /// ```
    /// use oai_resilience::breaker::CircuitBreakerLayer;
    /// use oai_resilience::stack::OpenAiLayer;
    ///
    /// assert!(!OpenAiLayer::new().breaker_layer().is_enabled());
    /// let on = OpenAiLayer::new().breaker(CircuitBreakerLayer::new());
    /// assert!(on.breaker_layer().is_enabled());
    /// assert!(!on.without_breaker().breaker_layer().is_enabled());
    /// ```
    pub fn without_breaker(self) -> Self {
        self.breaker(CircuitBreakerLayer::disabled())
    }

    /// The circuit breaker, for its circuits' state and counters.
    pub fn breaker_layer(&self) -> &CircuitBreakerLayer {
        &self.breaker
    }

    /// Replaces the pacing layer.
    pub fn pace(mut self, layer: PaceLayer) -> Self {
        self.pace = with_observer!(self, layer);
        self
    }

    /// Paces through `store` instead of the pace layer's in-process pacer: several processes
    /// (a fleet of workers, replicas of a gateway) that use one key share its rate limit
    /// through the store (a `RedisStore` with the `redis` feature). The pace layer keeps its
    /// keying and its configuration; see [`PaceLayer::pacing_store`] for what pacing through a
    /// store does and does not do. Call it after [`pace`](Self::pace), which replaces the
    /// whole pacing layer.
    ///
    /// ```
    /// use oai_resilience::pace::InProcessStore;
    /// use oai_resilience::stack::OpenAiLayer;
    ///
    /// let layer = OpenAiLayer::new().pacing_store(InProcessStore::new());
    /// assert!(layer.pace_layer().store().is_some());
    /// ```
    pub fn pacing_store(mut self, store: impl crate::pace::PacingStore) -> Self {
        self.pace = self.pace.pacing_store(store);
        self
    }

    /// Replaces the classify layer (the error-body limit).
    pub fn classify(mut self, layer: ClassifyLayer) -> Self {
        self.classify = layer;
        self
    }

    /// The pacing layer, for its shared [`Pacer`](crate::Pacer)'s metrics.
    pub fn pace_layer(&self) -> &PaceLayer {
        &self.pace
    }

    /// The retry layer, for its configuration and shared budget.
    pub fn retry_layer(&self) -> &RetryLayer {
        &self.retry
    }

    /// [`layer`](Layer::layer) for a client that is checked now: `client` must take
    /// `http::Request<`[`ClientBody`]`<B>>`, the body the stack hands it when it is called
    /// with `http::Request<B>`. A client built for `B` itself fails to compile here, with a
    /// message that names [`ValidateBody`] (through `layer`, the same mistake surfaces later
    /// as an `E0599` on `oneshot` that names no bound).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use hyper_util::client::legacy::Client;
    /// use hyper_util::rt::TokioExecutor;
    /// use oai_resilience::stack::{ClientBody, OpenAiLayer};
    ///
    /// let client = Client::builder(TokioExecutor::new()).build_http::<ClientBody>();
    /// let stack = OpenAiLayer::new().service_for::<Full<Bytes>, _>(client);
    /// # let _ = stack;
    /// ```
    pub fn service_for<B, C>(&self, client: C) -> OpenAiService<C>
    where
        C: InnerClient<B>,
    {
        self.layer(client)
    }
}

impl<S> Layer<S> for OpenAiLayer {
    type Service = OpenAiService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.classify.layer(inner);
        let inner = self.pace.layer(inner);
        let inner = self.breaker.layer(inner);
        let inner = self.retry.layer(inner);
        let inner = self.auth.layer(inner);
        let inner = self.validate.layer(inner);
        BaseUrl {
            inner,
            base: self.base_url.clone(),
        }
    }
}

impl<B: ReplayBody> ReplayBody for ValidateBody<B> {
    fn try_clone_body(&self) -> Option<Self> {
        match self.as_bytes() {
            Some(bytes) => Some(ValidateBody::buffered(bytes.clone())),
            None if self.is_buffered() => Some(ValidateBody::buffered(Bytes::new())),
            None => self
                .passthrough_ref()
                .and_then(B::try_clone_body)
                .map(ValidateBody::passthrough),
        }
    }
}

impl<B: PaceBody> PaceBody for ValidateBody<B> {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        if self.is_buffered() {
            return f(self.as_bytes().map(|b| &b[..]));
        }
        match self.passthrough_mut() {
            Some(body) => body.with_bytes(f),
            None => f(None),
        }
    }
}

/// The host of the base URL `text` (checked as [`BaseUrlLayer`] checks it), without its port:
/// the host the auth layer checks a key for when requests go through that base.
pub(crate) fn host_of_base(text: &str) -> Result<String, InvalidBaseUrl> {
    Base::parse(text).map(|b| b.authority.host().to_owned())
}

/// The base URL in `OPENAI_BASE_URL` (its value `value`): none when it is unset or blank.
fn base_url_from_env(value: Option<String>) -> Option<BaseUrlLayer> {
    let value = value?;
    if value.trim().is_empty() {
        return None;
    }
    let base = Base::parse(&value).map_err(|mut e| {
        e.reason
            .push_str(" (the base URL was read from OPENAI_BASE_URL)");
        e
    });
    Some(BaseUrlLayer {
        base: base.map(Arc::new),
    })
}

/// Gives relative request URIs (`/v1/chat/completions`) a base URL; absolute ones are left
/// alone. Built by [`OpenAiLayer::base_url`], or on its own.
///
/// A valid base is an absolute `http` or `https` URL with a host and without credentials, a
/// query or a fragment. Its path, if any, is a prefix for the request paths, after one
/// trailing `/v1` and trailing slashes are dropped: the API paths carry `/v1` themselves, so
/// `https://api.openai.com`, `https://api.openai.com/` and `https://api.openai.com/v1/` all
/// send `/v1/chat/completions`, and `https://example.com/openai/v1` sends
/// `/openai/v1/chat/completions`.
///
/// ```
/// use oai_resilience::stack::BaseUrlLayer;
///
/// # fn main() -> Result<(), oai_resilience::stack::InvalidBaseUrl> {
/// let base: BaseUrlLayer = "http://localhost:8000/v1".parse()?;
/// assert_eq!(base.url(), Ok("http://localhost:8000"));
/// let base: BaseUrlLayer = "https://example.com/openai/v1/".parse()?;
/// assert_eq!(base.url(), Ok("https://example.com/openai"));
///
/// // Not a base: no scheme, another scheme, credentials, a query.
/// for bad in [
///     "localhost:8000/v1",
///     "ftp://example.com",
///     "https://user:secret@example.com/v1",
///     "https://example.com/v1?api-version=1",
/// ] {
///     let err = bad.parse::<BaseUrlLayer>().unwrap_err();
///     assert!(!err.to_string().contains("secret"), "{err}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BaseUrlLayer {
    base: Result<Arc<Base>, InvalidBaseUrl>,
}

/// A valid base.
#[derive(Debug)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    /// The path before the API's paths: empty or `/prefix`, without `/v1` and without a
    /// trailing `/`.
    prefix: String,
    /// `scheme://authority/prefix`.
    url: String,
}

impl Base {
    fn parse(text: &str) -> Result<Base, InvalidBaseUrl> {
        let text = text.trim();
        if text.contains('#') {
            return Err(InvalidBaseUrl::new(text, "a base URL has no fragment"));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e: http::uri::InvalidUri| InvalidBaseUrl::new(text, &e.to_string()))?;
        Base::from_uri(&uri, text)
    }

    /// `uri`, given as `shown` (the error shows it without credentials).
    fn from_uri(uri: &Uri, shown: &str) -> Result<Base, InvalidBaseUrl> {
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            _ => return Err(InvalidBaseUrl::new(
                shown,
                "expected an absolute http:// or https:// URL, such as https://api.openai.com/v1",
            )),
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => a.clone(),
            _ => return Err(InvalidBaseUrl::new(shown, "the URL has no host")),
        };
        if authority.as_str().contains('@') {
            return Err(InvalidBaseUrl::new(
                shown,
                "credentials in a base URL are never sent: give the API key to the auth layer",
            ));
        }
        if uri.query().is_some() {
            return Err(InvalidBaseUrl::new(shown, "a base URL has no query"));
        }
        let path = uri.path().trim_end_matches('/');
        let prefix = path
            .strip_suffix("/v1")
            .unwrap_or(path)
            .trim_end_matches('/')
            .to_owned();
        let url = format!("{scheme}://{authority}{prefix}");
        Ok(Base {
            scheme,
            authority,
            prefix,
            url,
        })
    }
}

impl BaseUrlLayer {
    /// A layer for `base` (`https://api.openai.com/v1`, `http://127.0.0.1:8080`), with or
    /// without `/v1`.
    ///
    /// An invalid base is kept as its error: every request with a relative URI then fails
    /// with [`ErrorKind::Internal`](crate::ErrorKind::Internal), whose
    /// [`source`](std::error::Error::source) is the [`InvalidBaseUrl`] (see [`url`](Self::url)).
    /// [`str::parse`] and [`TryFrom<Uri>`] give the error at once.
    pub fn new(base: Uri) -> Self {
        let shown = base.to_string();
        BaseUrlLayer {
            base: Base::from_uri(&base, &shown).map(Arc::new),
        }
    }

    /// The base requests are joined to, without `/v1` and without a trailing `/`
    /// (`https://api.openai.com`), or why the base is invalid.
    ///
    /// # Errors
    ///
    /// The [`InvalidBaseUrl`] this layer was built with.
    pub fn url(&self) -> Result<&str, &InvalidBaseUrl> {
        match &self.base {
            Ok(base) => Ok(&base.url),
            Err(e) => Err(e),
        }
    }

    fn apply<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        if req.uri().authority().is_some() {
            return Ok(());
        }
        let base = match &self.base {
            Ok(base) => base,
            Err(e) => {
                return Err(Error::new(crate::ErrorKind::Internal)
                    .with_detail(e.to_string())
                    .with_source(e.clone()))
            }
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let joined = format!("{}{}", base.prefix, path);
        let uri = Uri::builder()
            .scheme(base.scheme.clone())
            .authority(base.authority.clone())
            .path_and_query(joined)
            .build()
            .map_err(|e| {
                Error::new(crate::ErrorKind::InvalidParameter)
                    .with_detail("the request URI cannot be joined to the base URL")
                    .with_source(e)
            })?;
        *req.uri_mut() = uri;
        Ok(())
    }
}

impl FromStr for BaseUrlLayer {
    type Err = InvalidBaseUrl;

    /// A layer for `base`, checked now.
    fn from_str(base: &str) -> Result<Self, InvalidBaseUrl> {
        Ok(BaseUrlLayer {
            base: Ok(Arc::new(Base::parse(base)?)),
        })
    }
}

impl TryFrom<Uri> for BaseUrlLayer {
    type Error = InvalidBaseUrl;

    /// A layer for `base`, checked now.
    fn try_from(base: Uri) -> Result<Self, InvalidBaseUrl> {
        let layer = BaseUrlLayer::new(base);
        match layer.base {
            Ok(_) => Ok(layer),
            Err(e) => Err(e),
        }
    }
}

/// A base URL that [`BaseUrlLayer`] cannot use: not an absolute `http` or `https` URL with a
/// host, or one with credentials, a query or a fragment.
///
/// Its message shows the URL with any credentials replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBaseUrl {
    url: String,
    reason: String,
}

impl InvalidBaseUrl {
    fn new(url: &str, reason: &str) -> Self {
        InvalidBaseUrl {
            url: without_credentials(url),
            reason: reason.to_owned(),
        }
    }

    /// The URL as given, with any credentials replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why it is not a base URL.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid base URL {:?}: {}", self.url, self.reason)
    }
}

impl std::error::Error for InvalidBaseUrl {}

/// `url` with the user information of its authority (`user:password@`) replaced by `***`.
fn without_credentials(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

crate::macros::layer_impl!(BaseUrlLayer => BaseUrl, |l| {
    base: Some(l.clone()),
});

/// The service of [`BaseUrlLayer`] (outermost in [`OpenAiService`]).
#[derive(Debug, Clone)]
pub struct BaseUrl<S> {
    inner: S,
    base: Option<BaseUrlLayer>,
}

impl<S> BaseUrl<S> {
    crate::macros::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for BaseUrl<S>
where
    S: Service<Request<B>, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future =
        futures_util::future::Either<std::future::Ready<Result<S::Response, Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(base) = &self.base {
            if let Err(e) = base.apply(&mut req) {
                return futures_util::future::Either::Left(std::future::ready(Err(e)));
            }
        }
        futures_util::future::Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_joins_prefix_and_path() {
        let layer = BaseUrlLayer::new("http://127.0.0.1:8080/openai/".parse().unwrap());
        let mut req = Request::post("/v1/chat/completions?x=1").body(()).unwrap();
        layer.apply(&mut req).unwrap();
        assert_eq!(
            req.uri().to_string(),
            "http://127.0.0.1:8080/openai/v1/chat/completions?x=1"
        );
        // An absolute URI is left alone.
        let mut req = Request::post("http://example.test/v1/embeddings")
            .body(())
            .unwrap();
        layer.apply(&mut req).unwrap();
        assert_eq!(req.uri().host(), Some("example.test"));
    }

    fn joined(base: &str, path: &str) -> String {
        let layer: BaseUrlLayer = base.parse().unwrap();
        let mut req = Request::post(path).body(()).unwrap();
        layer.apply(&mut req).unwrap();
        req.uri().to_string()
    }

    #[test]
    fn base_url_with_or_without_v1_sends_the_same_path() {
        for base in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/v1/",
            " http://127.0.0.1:8080/v1\n",
        ] {
            assert_eq!(
                joined(base, "/v1/chat/completions?x=1"),
                "http://127.0.0.1:8080/v1/chat/completions?x=1",
                "{base:?}"
            );
            let layer = BaseUrlLayer::new(base.trim().parse().unwrap());
            assert_eq!(layer.url(), Ok("http://127.0.0.1:8080"), "{base:?}");
        }
        for base in [
            "https://example.com/openai",
            "https://example.com/openai/v1/",
        ] {
            assert_eq!(
                joined(base, "/v1/embeddings"),
                "https://example.com/openai/v1/embeddings"
            );
        }
        // Only one `/v1` is the API's.
        assert_eq!(
            joined("https://example.com/v1/v1", "/v1/models"),
            "https://example.com/v1/v1/models"
        );
        assert_eq!(
            joined("https://api.openai.com/v1", "/v1/models"),
            "https://api.openai.com/v1/models"
        );
    }

    #[test]
    fn invalid_base_urls_are_typed_errors() {
        let cases = [
            ("", "invalid base URL \"\": empty string"),
            ("/", "expected an absolute http:// or https:// URL"),
            ("/v1", "expected an absolute http:// or https:// URL"),
            (
                "localhost:8000",
                "expected an absolute http:// or https:// URL",
            ),
            ("api.openai.com/v1", "invalid"),
            (
                "ftp://example.com/v1",
                "expected an absolute http:// or https:// URL",
            ),
            ("not a url", "invalid"),
            (
                "https://example.com/v1?api-version=1",
                "a base URL has no query",
            ),
            ("https://example.com/v1#x", "a base URL has no fragment"),
            (
                "https://user:sk-secret@example.com/v1",
                "invalid base URL \"https://***@example.com/v1\": credentials",
            ),
        ];
        for (base, message) in cases {
            let err = base.parse::<BaseUrlLayer>().unwrap_err();
            assert!(err.to_string().contains(message), "{base:?}: {err}");
            assert!(!err.to_string().contains("secret"), "{err}");
            assert!(!format!("{err:?}").contains("secret"), "{err:?}");
            // (`Uri` drops a fragment: there is nothing to reject.)
            if let (Ok(uri), false) = (base.parse::<Uri>(), base.contains('#')) {
                assert_eq!(
                    BaseUrlLayer::try_from(uri).unwrap_err().reason(),
                    err.reason()
                );
            }
        }
    }

    #[test]
    fn an_invalid_base_fails_relative_requests_only() {
        let layer = BaseUrlLayer::new(Uri::from_static("/"));
        assert!(layer.url().is_err());
        let mut req = Request::get("/v1/models").body(()).unwrap();
        let err = layer.apply(&mut req).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Internal);
        let source = std::error::Error::source(&err).unwrap();
        let invalid = source.downcast_ref::<InvalidBaseUrl>().unwrap();
        assert_eq!(invalid.url(), "/");
        assert_eq!(req.uri(), "/v1/models");
        let mut req = Request::get("http://example.test/v1/models")
            .body(())
            .unwrap();
        layer.apply(&mut req).unwrap();
        assert_eq!(req.uri(), "http://example.test/v1/models");
    }

    #[test]
    fn openai_base_url_is_read_when_set_and_not_blank() {
        assert!(base_url_from_env(None).is_none());
        assert!(base_url_from_env(Some(String::new())).is_none());
        assert!(base_url_from_env(Some(" \n".to_owned())).is_none());
        let base = base_url_from_env(Some("http://localhost:8000/v1".to_owned())).unwrap();
        assert_eq!(base.url(), Ok("http://localhost:8000"));
        let base = base_url_from_env(Some("https://api.openai.com/v1/".to_owned())).unwrap();
        assert_eq!(base.url(), Ok("https://api.openai.com"));
        // An invalid value is kept as its error, for the requests to report.
        let base = base_url_from_env(Some("localhost:8000/v1".to_owned())).unwrap();
        let err = base.url().unwrap_err();
        assert!(err
            .to_string()
            .ends_with("(the base URL was read from OPENAI_BASE_URL)"));
        // `base_url` replaces it.
        let layer = OpenAiLayer {
            base_url: base_url_from_env(Some("localhost:8000".to_owned())),
            ..OpenAiLayer::new()
        }
        .base_url(Uri::from_static("https://api.openai.com/v1"));
        assert_eq!(
            layer.base_url_layer().unwrap().url(),
            Ok("https://api.openai.com")
        );
    }
}
