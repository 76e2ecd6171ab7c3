//! The default stack, assembled from the crate's layers, shared by the examples and the demo.
//!
//! Outermost first: `Validate -> Auth -> Retry -> Pace -> Classify -> hyper-util client`.
//! The order is the one the crate's docs explain: the local checks (parameters, key) run once
//! per call and cost no round trip, every attempt waits for a pacing slot, and the retry
//! policy sees typed errors.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oai_resilience::validate::{ValidateBody, ValidateLayer};
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
            .layer(ValidateLayer::new())
            .map_request(unwrap_validated)
            .layer(self.auth.clone())
            .layer(RetryLayer::with_config(self.retry.clone()))
            .layer(self.pace.clone())
            .layer(ClassifyLayer::new())
            .map_request(count_attempt)
            .service(client);
        BoxCloneSyncService::new(svc)
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
        C::Error: Into<oai_resilience::BoxError>,
        C::Future: Send + 'static,
    {
        let svc = ServiceBuilder::new()
            .layer(self.pace.clone())
            .layer(ClassifyLayer::new())
            .map_request(count_attempt)
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
fn count_attempt(req: Request<Body>) -> Request<Body> {
    if let Some(counter) = req.extensions().get::<AttemptCounter>() {
        counter.0.fetch_add(1, Ordering::SeqCst);
    }
    req
}

/// The validation layer hands on a [`ValidateBody`]; the layers below take the buffered
/// [`Full`] body that they can replay and inspect. (A bridge until the crate's one-call
/// builder joins the layers itself.)
fn unwrap_validated(req: Request<ValidateBody<Body>>) -> Request<Body> {
    req.map(|body| match body.as_bytes() {
        Some(bytes) => Full::new(bytes.clone()),
        None => drain_ready(body),
    })
}

/// Reads a body whose frames are all ready at once (a passed-through [`Full`] body, or an
/// empty buffered one) without a runtime.
fn drain_ready(mut body: ValidateBody<Body>) -> Body {
    use http_body::Body as _;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = bytes::BytesMut::new();
    // `Full` yields at most one frame, then the end; the bound keeps the loop finite anyway.
    for _ in 0..1024 {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) | Poll::Pending => break,
        }
    }
    Full::new(out.freeze())
}
