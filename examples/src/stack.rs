//! The default stack, built with the crate's one-call builder, shared by the gateway and the
//! demo.
//!
//! [`OpenAiLayer`] stacks, outermost first, `Validate -> Auth -> Retry -> Pace -> Classify`
//! over a hyper-util client: the local checks (parameters, key) run once per call and cost no
//! round trip, every attempt waits for a pacing slot, and the retry policy sees typed errors.
//! [`Layers`] keeps the pieces this crate's examples configure (the key source, the retry
//! config, the pacer, whose metrics the demo shows) and adds an attempt counter under the
//! stack, so that the demo reports measured numbers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::validate::ValidateBody;
use oai_resilience::{
    AuthLayer, BoxError, ClassifyLayer, Error, OpenAiLayer, PaceLayer, RetryConfig, RetryLayer,
};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

/// The request body every stack here takes: a buffered body, so retries can replay it.
pub type Body = Full<Bytes>;

/// The full stack, type-erased so that it can be named, cloned and shared.
pub type Stack = BoxCloneSyncService<Request<Body>, Response<Incoming>, Error>;

/// A hyper-util HTTP/1 client for `http://` upstreams (such as the mock), for any request
/// body type: under [`OpenAiLayer`] the body is the validation layer's
/// [`ValidateBody`]`<`[`Body`]`>`.
pub fn http_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// A hyper-util HTTP/1 client for `https://` (rustls, with the webpki roots) and `http://`
/// upstreams: what `demo --real` uses for `https://api.openai.com`. Needs the `real`
/// feature.
#[cfg(feature = "real")]
pub fn https_client<B>() -> Client<hyper_rustls::HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The configurable pieces of one stack. Clones of a layer share its state (the pacer, the
/// retry budget), so keep `pace` to read its [`metrics`](oai_resilience::Pacer::metrics).
#[derive(Debug, Clone)]
pub struct Layers {
    /// Key source and local key checks.
    pub auth: AuthLayer,
    /// Retry policy, budget and deadline.
    pub retry: RetryConfig,
    /// The adaptive pacer.
    pub pace: PaceLayer,
}

impl Layers {
    /// Keys from `auth`, the default retry policy and a fresh pacer.
    pub fn new(auth: AuthLayer) -> Self {
        Layers {
            auth,
            retry: RetryConfig::new(),
            pace: PaceLayer::new(),
        }
    }

    /// Sets the retry configuration.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Paces through `store` (a `RedisStore` shared with other processes) instead of the
    /// pace layer's in-process pacer; see
    /// [`PaceLayer::pacing_store`](oai_resilience::PaceLayer::pacing_store).
    pub fn pacing_store(mut self, store: impl oai_resilience::pace::PacingStore) -> Self {
        self.pace = self.pace.pacing_store(store);
        self
    }

    /// The crate's one-call builder with these pieces.
    pub fn openai_layer(&self) -> OpenAiLayer {
        OpenAiLayer::new()
            .auth(self.auth.clone())
            .retry(RetryLayer::with_config(self.retry.clone()))
            .pace(self.pace.clone())
    }

    /// The full stack over `client`, with an [`AttemptCounter`] under it.
    pub fn build<C>(&self, client: C) -> Stack
    where
        C: tower::Service<Request<ValidateBody<Body>>, Response = Response<Incoming>>
            + Clone
            + Send
            + Sync
            + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        let client = ServiceBuilder::new()
            .map_request(count_attempt::<ValidateBody<Body>>)
            .service(client);
        BoxCloneSyncService::new(tower::Layer::layer(&self.openai_layer(), client))
    }

    /// The layers under the retry loop, `Pace -> Classify`, for callers that retry
    /// themselves (an `#[openai_call]` function): the same pacer, so both share the limits.
    pub fn build_single_attempt<C>(&self, client: C) -> Stack
    where
        C: tower::Service<Request<Body>, Response = Response<Incoming>>
            + Clone
            + Send
            + Sync
            + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        let svc = ServiceBuilder::new()
            .layer(self.pace.clone())
            .layer(ClassifyLayer::new())
            .map_request(count_attempt::<Body>)
            .service(client);
        BoxCloneSyncService::new(svc)
    }
}

/// A request extension that counts the requests actually sent for one call: every attempt
/// that got past the pacer. Retries copy extensions, so all attempts of a call share it.
#[derive(Debug, Clone, Default)]
pub struct AttemptCounter(pub Arc<AtomicU32>);

impl AttemptCounter {
    /// The requests sent so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts one attempt on the request's [`AttemptCounter`], if it has one.
fn count_attempt<B>(req: Request<B>) -> Request<B> {
    if let Some(counter) = req.extensions().get::<AttemptCounter>() {
        counter.0.fetch_add(1, Ordering::SeqCst);
    }
    req
}
