//! The stack as a [`reqwest_middleware::Middleware`] (feature `reqwest`; reqwest-middleware
//! 0.5, reqwest 0.13).
//!
//! [`OpenAiMiddleware`] runs every request of a `ClientWithMiddleware` through the layers of
//! an [`OpenAiLayer`]: the validation and auth checks once, then the retry layer's loop, each
//! attempt paced and classified. It is the same code as the tower stack, not a second
//! implementation, and the same state: clones of the middleware, and every stack or
//! middleware built from clones of the same layer, share one pacer and one retry budget.
//!
//! ```
//! use oai_resilience::adapter::reqwest::{ErrorMode, OpenAiMiddleware};
//! use oai_resilience::{AuthLayer, OpenAiLayer};
//!
//! let layer = OpenAiLayer::new().auth(AuthLayer::from_key("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"));
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(OpenAiMiddleware::new(layer.clone()))
//!     .build();
//! // Another client that answers failures as OpenAI's error responses, on the same pacer.
//! let by_status = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(layer.into_reqwest_middleware().error_mode(ErrorMode::Response))
//!     .build();
//! # let _ = (client, by_status);
//! ```
//!
//! # Where it sits in the chain
//!
//! Each attempt calls the rest of the chain (`Next::run`): the middlewares added after
//! this one, then the `reqwest::Client` of the `ClientWithMiddleware`, with its timeouts,
//! proxies and TLS. So the middlewares **after** it run once per attempt (a tracing
//! middleware there records every retry; a retry middleware there, such as
//! `reqwest-retry`'s, would multiply the attempts: do not add one), and those **before** it
//! run once per call and see its outcome. The request's `Extensions` are handed to each
//! attempt in turn and returned to the caller afterwards.
//!
//! # Failures
//!
//! When the stack gives up (a local rejection, a non-retryable answer, retries exhausted),
//! [`ErrorMode`] decides what the caller gets:
//!
//! - [`ErrorMode::Error`] (the default): `Err(reqwest_middleware::Error::Middleware(_))`
//!   carrying the [`Error`] (`anyhow::Error::downcast_ref::<oai_resilience::Error>()`), with
//!   its kind, OpenAI's code, the hint and the attempts;
//! - [`ErrorMode::Response`]: `Ok(response)` with the upstream's status and OpenAI's error
//!   body (or, for a failure without an answer, the one OpenAI would have sent, see
//!   [`respond::error_response`](crate::respond::error_response)), so code that reads the
//!   status keeps working.
//!
//! Request bodies reqwest holds as bytes (`.body(String)`, `.json(…)`) are replayed; a
//! streamed body (`Body::wrap_stream`, a multipart form) is sent once, and a failure that
//! would have needed a retry is an [`ErrorKind::NotReplayable`]
//! error with the attempt's status. Response bodies stream: a `"stream": true` chat
//! completion arrives event by event.
//!
//! A failure of a middleware after this one is not retried (it is an
//! [`ErrorKind::Internal`] error with the middleware's error as
//! its source); a failure of reqwest to send is a connection error (retried) or a timeout.

use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{self, AdapterBody};
use crate::error::{Error, ErrorKind};
use crate::stack::OpenAiLayer;
use crate::validate::ValidateBody;

/// What the caller of a `ClientWithMiddleware` gets when the stack gives up; see the
/// [module docs](self#failures).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorMode {
    /// `Err(reqwest_middleware::Error::Middleware(_))` carrying the [`Error`].
    #[default]
    Error,
    /// `Ok(response)`: the upstream's error response, or the one OpenAI would have sent.
    Response,
}

/// The stack as a [`reqwest_middleware::Middleware`]; see the [module docs](self).
///
/// Clones share the layer's pacer and retry budget.
#[derive(Debug, Clone)]
pub struct OpenAiMiddleware {
    layer: OpenAiLayer,
    mode: ErrorMode,
}

impl OpenAiMiddleware {
    /// A middleware that runs each request through `layer`'s stack, failures as errors.
    pub fn new(layer: OpenAiLayer) -> Self {
        OpenAiMiddleware {
            layer,
            mode: ErrorMode::Error,
        }
    }

    /// Sets what the caller gets when the stack gives up.
    pub fn error_mode(mut self, mode: ErrorMode) -> Self {
        self.mode = mode;
        self
    }

    /// The layer (for its pacer's metrics, its retry configuration).
    pub fn openai_layer(&self) -> &OpenAiLayer {
        &self.layer
    }
}

impl From<OpenAiLayer> for OpenAiMiddleware {
    fn from(layer: OpenAiLayer) -> Self {
        OpenAiMiddleware::new(layer)
    }
}

impl OpenAiLayer {
    /// This stack as a [`reqwest_middleware::Middleware`]:
    /// [`OpenAiMiddleware::new`]`(self)`. Build it from a clone to share the pacer and the
    /// retry budget with other stacks.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn into_reqwest_middleware(self) -> OpenAiMiddleware {
        OpenAiMiddleware::new(self)
    }
}

#[async_trait::async_trait]
impl Middleware for OpenAiMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        #[cfg(feature = "async-openai")]
        let (req, origin) = body::request_into_http(req, None)?;
        #[cfg(not(feature = "async-openai"))]
        let (req, origin) = body::request_into_http(req)?;
        let call = Call {
            origin,
            extensions: Mutex::new(std::mem::take(extensions)),
        };
        // Building the stack clones the layers' `Arc`s, as cloning a built stack would.
        let rest = NextService { next, call: &call };
        let result = self.layer.layer(rest).oneshot(req).await;
        let Call {
            origin,
            extensions: lent,
        } = call;
        *extensions = lent.into_inner().unwrap_or_else(PoisonError::into_inner);
        match (result, self.mode) {
            (Ok(res), _) => Ok(body::response_from_http(res, origin.url)),
            (Err(err), ErrorMode::Error) => Err(reqwest_middleware::Error::middleware(err)),
            (Err(err), ErrorMode::Response) => Ok(body::error_into_response(&err, origin.url)),
        }
    }
}

/// What the attempts of one call share.
struct Call {
    origin: body::Origin,
    /// The call's extensions, lent to one attempt at a time (the retry layer's attempts
    /// follow one another).
    extensions: Mutex<Extensions>,
}

/// The call's extensions, lent to an attempt: given back when the attempt ends or is
/// dropped, with what the rest of the chain did to them.
struct Lent<'a> {
    home: &'a Mutex<Extensions>,
    extensions: Extensions,
}

impl<'a> Lent<'a> {
    fn new(home: &'a Mutex<Extensions>) -> Self {
        let extensions = std::mem::take(&mut *home.lock().unwrap_or_else(PoisonError::into_inner));
        Lent { home, extensions }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        *self.home.lock().unwrap_or_else(PoisonError::into_inner) =
            std::mem::take(&mut self.extensions);
    }
}

/// The rest of the chain, for the attempts of one call: the stack's inner service.
#[derive(Clone)]
struct NextService<'a> {
    next: Next<'a>,
    call: &'a Call,
}

impl<'a> Service<http::Request<ValidateBody<AdapterBody>>> for NextService<'a> {
    type Response = http::Response<reqwest::Body>;
    type Error = Error;
    type Future = BoxFuture<'a, Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ValidateBody<AdapterBody>>) -> Self::Future {
        let next = self.next.clone();
        let call = self.call;
        Box::pin(async move {
            let req = body::request_from_http(req, &call.origin).await?;
            let mut lent = Lent::new(&call.extensions);
            match next.run(req, &mut lent.extensions).await {
                Ok(res) => Ok(body::response_into_http(res, &call.origin)),
                Err(reqwest_middleware::Error::Reqwest(e)) => Err(body::transport_error(e)),
                // A later middleware's failure: the `Error` it carries, else an internal
                // error (not retried) with the middleware's error as its source.
                Err(reqwest_middleware::Error::Middleware(e)) => Err(match e.downcast::<Error>() {
                    Ok(e) => e,
                    Err(e) => Error::new(ErrorKind::Internal)
                        .with_detail("a middleware after OpenAiMiddleware failed")
                        .with_source(e),
                }),
            }
        })
    }
}
