//! [`Retry`]: the retry middleware.

use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

use super::config::RetryConfig;
use super::future::ResponseFuture;
use super::policy::is_idempotent;
use super::replay::{clone_request, ReplayBody};
use super::retrier::Retrier;
use crate::error::Error;
use crate::observe::ResponseMeta;

/// The retry middleware, over a classified service (one whose error is [`Error`]). See the
/// [`retry` module docs](crate::retry).
///
/// Follows the tower contract: [`poll_ready`](Service::poll_ready) is forwarded; `call` takes
/// the service that was made ready and leaves a clone in its place, and the response future
/// drives that service's `poll_ready` again before every retry. Clones share the budget and the
/// random source, never in-flight requests. Dropping the response future at any point (mid
/// attempt, mid backoff) stops everything: nothing is spawned.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    config: RetryConfig,
}

impl<S> Retry<S> {
    /// Wraps `inner` with the default [`RetryConfig`].
    pub fn new(inner: S) -> Self {
        Retry::with_config(inner, RetryConfig::default())
    }

    /// Wraps `inner` with `config`.
    pub fn with_config(inner: S, config: RetryConfig) -> Self {
        Retry { inner, config }
    }

    /// The config.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    crate::macros::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Error = Error> + Clone,
    S::Response: ResponseMeta,
    B: ReplayBody,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let mut retrier = Retrier::new(&self.config, is_idempotent(req.method()));
        retrier.start_attempt_for(&req);
        if let Some(name) = self.config.settings().retry_count_header.as_ref() {
            req.headers_mut()
                .insert(name.clone(), retrier.retry_count_value());
        }
        let replay = if self.config.settings().max_attempts > 1 {
            clone_request(&req)
        } else {
            None
        };
        let fut = service.call(req);
        ResponseFuture::new(service, retrier, replay, fut)
    }
}
