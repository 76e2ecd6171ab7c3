//! The default stack, assembled from the crate's layers, shared by the examples and the demo.
//!
//! Outermost first: `Auth -> Retry -> Pace -> Classify -> hyper-util client`. (Validation
//! joins at the top once the `validate` layer is merged.) The order is the one the crate's
//! docs explain: the local checks run once per call, every attempt waits for a pacing slot,
//! and the retry policy sees typed errors.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::{AuthLayer, ClassifyLayer, Error, PaceLayer, RetryConfig, RetryLayer};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

/// The request body every stack here takes: a buffered body, so retries can replay it.
pub type Body = Full<Bytes>;

/// The plain hyper-util HTTP/1 client at the bottom of the stack.
pub type HttpClient = Client<HttpConnector, Body>;

/// The full stack, type-erased so that it can be named, cloned and shared.
pub type Stack = BoxCloneSyncService<Request<Body>, Response<Incoming>, Error>;

/// A hyper-util client for `http://` upstreams (the mock; a TLS connector is needed for
/// `https://api.openai.com`).
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The layers of one stack. Clones of a layer share its state (the pacer, the retry budget),
/// so keep the `pace` layer to read its [`metrics`](oai_resilience::Pacer::metrics).
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

    /// Builds the stack over `client` with [`ServiceBuilder`].
    pub fn build<C>(&self, client: C) -> Stack
    where
        C: tower::Service<Request<Body>, Response = Response<Incoming>>
            + Clone
            + Send
            + Sync
            + 'static,
        C::Error: Into<oai_resilience::BoxError>,
        C::Future: Send + 'static,
    {
        let svc = ServiceBuilder::new()
            .layer(self.auth.clone())
            .layer(RetryLayer::with_config(self.retry.clone()))
            .layer(self.pace.clone())
            .layer(ClassifyLayer::new())
            .service(client);
        BoxCloneSyncService::new(svc)
    }
}
