//! One layer that stacks every middleware of this crate in the right order.
//!
//! One call through the default stack, outermost first:
//!
//! ```text
//! caller -> BaseUrl -> Validate -> Auth -> Retry -+-> Pace -> Classify -> HTTP client -> server
//!                                                 +-- every attempt re-enters Pace
//! ```
//!
//! Why this order:
//! - **Validate** and **Auth** are local and deterministic, so they run once, before any
//!   attempt: a bad body or a bad key costs zero round trips and no request from the rate limit.
//! - **Retry** wraps **Pace**, so every attempt (the first and each retry) waits for a slot at
//!   the learned rate instead of going out to collect a 429.
//! - **Classify** sits under both, so the pacer and the retry policy see typed [`Error`]s
//!   (a quota 429 is not a rate limit) rather than raw responses.
//! - **BaseUrl** gives relative request URIs (`/v1/chat/completions`) the configured base, so
//!   the auth layer knows the target host and the pacer keys by it.
//!
//! [`OpenAiLayer`] encodes this order; each piece keeps its own configuration. Users who stack
//! the layers by hand with [`tower::ServiceBuilder`] should keep the same order.
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
//!     assert_eq!(req.uri().host(), Some("api.openai.com"));
//!     let body = Full::new(Bytes::from_static(b"{\"object\":\"chat.completion\"}"));
//!     Ok::<_, std::convert::Infallible>(http::Response::new(body))
//! });
//!
//! let stack = OpenAiLayer::new()
//!     .base_url("https://api.openai.com".parse().unwrap())
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

use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{Auth, AuthLayer};
use crate::classify::{Classify, ClassifyLayer};
use crate::error::Error;
use crate::pace::{Pace, PaceBody, PaceLayer};
use crate::retry::{ReplayBody, Retry, RetryLayer};
use crate::validate::{Validate, ValidateBody, ValidateLayer};

/// The service that [`OpenAiLayer`] builds around `S`.
pub type OpenAiService<S> = BaseUrl<Validate<Auth<Retry<Pace<Classify<S>>>>>>;

/// Stacks validation, auth, retry, pacing and classification in the order the
/// [module docs](self) explain.
///
/// # Default
///
/// [`ValidateLayer::new`], [`AuthLayer::from_env`] (`OPENAI_API_KEY`, `OPENAI_ORG_ID`,
/// `OPENAI_PROJECT_ID`), [`RetryLayer::new`], [`PaceLayer::new`] (pacing state in this
/// process; [`pacing_store`](Self::pacing_store) shares it between processes),
/// [`ClassifyLayer::new`], and no base URL (request URIs are used as they are).
///
/// Clones share the retry budget and the pacer: build the layer once and clone the service.
#[derive(Debug, Clone)]
pub struct OpenAiLayer {
    base_url: Option<BaseUrlLayer>,
    validate: ValidateLayer,
    auth: AuthLayer,
    retry: RetryLayer,
    pace: PaceLayer,
    classify: ClassifyLayer,
}

impl Default for OpenAiLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenAiLayer {
    /// The default stack; see [`OpenAiLayer`].
    pub fn new() -> Self {
        OpenAiLayer {
            base_url: None,
            validate: ValidateLayer::new(),
            auth: AuthLayer::from_env(),
            retry: RetryLayer::new(),
            pace: PaceLayer::new(),
            classify: ClassifyLayer::new(),
        }
    }

    /// Gives requests whose URI has no scheme and authority this base (scheme, host, port, and
    /// a path prefix such as `/openai` for a compatible service).
    pub fn base_url(mut self, base: Uri) -> Self {
        self.base_url = Some(BaseUrlLayer::new(base));
        self
    }

    /// Replaces the validation layer.
    pub fn validate(mut self, layer: ValidateLayer) -> Self {
        self.validate = layer;
        self
    }

    /// Replaces the auth layer (the key source and the key rules).
    pub fn auth(mut self, layer: AuthLayer) -> Self {
        self.auth = layer;
        self
    }

    /// Replaces the retry layer (policy, backoff, budget, deadline).
    pub fn retry(mut self, layer: RetryLayer) -> Self {
        self.retry = layer;
        self
    }

    /// Replaces the pacing layer.
    pub fn pace(mut self, layer: PaceLayer) -> Self {
        self.pace = layer;
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
}

impl<S> Layer<S> for OpenAiLayer {
    type Service = OpenAiService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.classify.layer(inner);
        let inner = self.pace.layer(inner);
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

/// Gives relative request URIs a base URL. Built by [`OpenAiLayer::base_url`].
#[derive(Debug, Clone)]
pub struct BaseUrlLayer {
    scheme: Scheme,
    authority: Authority,
    prefix: String,
}

impl BaseUrlLayer {
    /// A layer for `base` (`https://api.openai.com`, `http://127.0.0.1:8080/openai`). A base
    /// without scheme defaults to `https`; one without authority leaves URIs unchanged.
    pub fn new(base: Uri) -> Self {
        let parts = base.into_parts();
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        BaseUrlLayer {
            scheme: parts.scheme.unwrap_or(Scheme::HTTPS),
            authority: parts
                .authority
                .unwrap_or_else(|| Authority::from_static("api.openai.com")),
            prefix,
        }
    }

    fn apply<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        if req.uri().authority().is_some() {
            return Ok(());
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let joined = format!("{}{}", self.prefix, path);
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
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

impl<S> Layer<S> for BaseUrlLayer {
    type Service = BaseUrl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BaseUrl {
            inner,
            base: Some(self.clone()),
        }
    }
}

/// The service of [`BaseUrlLayer`] (outermost in [`OpenAiService`]).
#[derive(Debug, Clone)]
pub struct BaseUrl<S> {
    inner: S,
    base: Option<BaseUrlLayer>,
}

impl<S> BaseUrl<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
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

    #[test]
    fn base_url_defaults_to_https_openai() {
        let layer = BaseUrlLayer::new(Uri::from_static("/"));
        let mut req = Request::get("/v1/models").body(()).unwrap();
        layer.apply(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "https://api.openai.com/v1/models");
    }
}
