//! [`CircuitBreakerLayer`] and [`CircuitBreaker`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::circuit::{BreakerConfig, BreakerCounters, CircuitState, Circuits, Outcome, Permit};
use super::key::{BreakerKey, KeyFn};
use crate::error::{BoxError, Error};

/// Builds [`CircuitBreaker`] services that share one set of circuits. See the
/// [module docs](super).
///
/// Clones share the circuits (and the state they report), so every clone of a stack sees the
/// same open circuits.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    circuits: Arc<Circuits>,
    key_fn: Option<KeyFn>,
    enabled: bool,
}

impl CircuitBreakerLayer {
    /// A layer with the default [`BreakerConfig`], keyed by upstream and credential hash.
    pub fn new() -> Self {
        Self::with_config(BreakerConfig::new())
    }

    /// A layer with its own circuits, configured by `config`.
    pub fn with_config(config: BreakerConfig) -> Self {
        CircuitBreakerLayer {
            circuits: Arc::new(Circuits::new(config)),
            key_fn: None,
            enabled: true,
        }
    }

    /// A layer that lets every call through and counts nothing: the breaker switched off, for
    /// a stack whose type includes it ([`OpenAiLayer::without_breaker`](crate::OpenAiLayer::without_breaker)).
    ///
    /// ```
    /// use oai_resilience::breaker::CircuitBreakerLayer;
    ///
    /// let off = CircuitBreakerLayer::disabled();
    /// assert!(!off.is_enabled());
    /// assert!(off.keys().is_empty());
    /// ```
    pub fn disabled() -> Self {
        CircuitBreakerLayer {
            enabled: false,
            ..Self::new()
        }
    }

    /// Whether the layer breaks circuits (`false` for [`disabled`](Self::disabled)).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Replaces the default key ([`BreakerKey::from_request_parts`]: URI authority and
    /// credential hash) with `f`, e.g. to share one circuit between keys of one deployment.
    pub fn key_fn(
        mut self,
        f: impl Fn(&http::Uri, &http::HeaderMap) -> BreakerKey + Send + Sync + 'static,
    ) -> Self {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        self.circuits.config()
    }

    /// The state of `key`'s circuit ([`CircuitState::Closed`] for a key never seen). An open
    /// circuit whose time is up reports [`CircuitState::HalfOpen`].
    pub fn state(&self, key: &BreakerKey) -> CircuitState {
        self.circuits.state(key)
    }

    /// What `key`'s circuit has counted, if the key has been seen (and not forgotten: idle
    /// closed circuits are dropped once there are many keys).
    pub fn counters(&self, key: &BreakerKey) -> Option<BreakerCounters> {
        self.circuits.counters(key)
    }

    /// The keys that have a circuit.
    pub fn keys(&self) -> Vec<BreakerKey> {
        self.circuits.keys()
    }

    /// The key of a request under this layer's key function.
    pub fn key_for<B>(&self, req: &Request<B>) -> BreakerKey {
        key_of(self.key_fn.as_ref(), req)
    }
}

fn key_of<B>(key_fn: Option<&KeyFn>, req: &Request<B>) -> BreakerKey {
    match key_fn {
        Some(f) => f(req.uri(), req.headers()),
        None => BreakerKey::from_request_parts(req.uri(), req.headers()),
    }
}

crate::macros::default_via_new!(CircuitBreakerLayer);

crate::macros::debug_struct!(CircuitBreakerLayer, |s| "CircuitBreakerLayer" {
    "circuits": s.circuits,
    "custom_key": s.key_fn.is_some(),
    "enabled": s.enabled,
} finish);

crate::macros::layer_impl!(CircuitBreakerLayer => CircuitBreaker, |l| {
    layer: l.clone(),
});

/// The circuit-breaker middleware: refuses calls at once while their circuit is open. See the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    layer: CircuitBreakerLayer,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` with the default configuration and its own circuits.
    pub fn new(inner: S) -> Self {
        CircuitBreakerLayer::new().layer(inner)
    }

    /// The layer this service came from: its circuits' state and counters.
    pub fn layer_ref(&self) -> &CircuitBreakerLayer {
        &self.layer
    }

    crate::macros::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CircuitBreaker<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service_error)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if !self.layer.enabled {
            return future::ResponseFuture::passed(self.inner.call(req));
        }
        let key = key_of(self.layer.key_fn.as_ref(), &req);
        match self.layer.circuits.admit(&key) {
            Ok(permit) => future::ResponseFuture::called(
                self.inner.call(req),
                Guard {
                    circuits: self.layer.circuits.clone(),
                    key,
                    permit,
                    done: false,
                },
            ),
            Err(err) => future::ResponseFuture::rejected(err),
        }
    }
}

/// Reports a call's outcome once; a call dropped before its end is reported as ignored (a
/// probe frees its slot).
pub(crate) struct Guard {
    circuits: Arc<Circuits>,
    key: BreakerKey,
    permit: Permit,
    done: bool,
}

impl Guard {
    fn finish(&mut self, outcome: Outcome, failure: Option<&dyn fmt::Display>) {
        self.done = true;
        self.circuits
            .record(&self.key, self.permit, outcome, failure);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.circuits
                .record(&self.key, self.permit, Outcome::Ignored, None);
        }
    }
}

/// The future of the [`CircuitBreaker`] service.
pub mod future {
    use super::*;

    pin_project! {
        /// The response future of [`CircuitBreaker`](super::CircuitBreaker): the refusal of an
        /// open circuit, or the inner call.
        pub struct ResponseFuture<F> {
            #[pin]
            state: State<F>,
        }
    }

    pin_project! {
        #[project = StateProj]
        enum State<F> {
            Rejected { err: Option<Error> },
            Called { #[pin] fut: F, guard: Guard },
            Passed { #[pin] fut: F },
        }
    }

    impl<F> ResponseFuture<F> {
        pub(super) fn called(fut: F, guard: Guard) -> Self {
            ResponseFuture {
                state: State::Called { fut, guard },
            }
        }

        pub(super) fn passed(fut: F) -> Self {
            ResponseFuture {
                state: State::Passed { fut },
            }
        }

        pub(super) fn rejected(err: Error) -> Self {
            ResponseFuture {
                state: State::Rejected { err: Some(err) },
            }
        }
    }

    impl<F> fmt::Debug for ResponseFuture<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let rejected = matches!(self.state, State::Rejected { .. });
            f.debug_struct("ResponseFuture")
                .field("rejected", &rejected)
                .finish_non_exhaustive()
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
        E: Into<BoxError>,
    {
        type Output = Result<Response<B>, Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project().state.project() {
                StateProj::Rejected { err } => {
                    Poll::Ready(Err(err.take().expect("polled after completion")))
                }
                StateProj::Passed { fut } => {
                    Poll::Ready(ready!(fut.poll(cx)).map_err(Error::from_service_error))
                }
                StateProj::Called { fut, guard } => {
                    let result = ready!(fut.poll(cx)).map_err(Error::from_service_error);
                    match &result {
                        Ok(res) if res.status().is_server_error() => {
                            guard.finish(Outcome::Failure, Some(&res.status().as_str()))
                        }
                        Ok(_) => guard.finish(Outcome::Success, None),
                        Err(e) => {
                            let outcome = guard.circuits.config().outcome_of_error(e);
                            guard.finish(outcome, Some(&e.status_and_kind()));
                        }
                    }
                    Poll::Ready(result)
                }
            }
        }
    }
}
