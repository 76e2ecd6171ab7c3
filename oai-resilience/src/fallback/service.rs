//! [`FallbackLayer`] and [`Fallback`].

use std::fmt;
use std::future::Future;
use std::iter::Peekable;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::policy::FallbackPolicy;
use super::route::{Route, RouteBody, ServedBy};
use crate::error::{Error, ErrorKind, RouteError};
use crate::retry::{clone_request, is_idempotent};

/// Builds a [`Fallback`] over one client: each route's layer (an
/// [`OpenAiLayer`](crate::OpenAiLayer) with its own base URL, key, auth header, pacing and
/// breaker) wraps a clone of the client. See the [module docs](super).
///
/// ```
/// use oai_resilience::fallback::{FallbackLayer, Route};
/// use oai_resilience::{AuthLayer, OpenAiLayer};
///
/// let routes = FallbackLayer::new()
///     .route(Route::new(
///         "openai",
///         OpenAiLayer::new()
///             .base_url("https://api.openai.com/v1".parse().unwrap())
///             .auth(AuthLayer::from_key("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789")),
///     ))
///     .route(Route::new(
///         "azure",
///         OpenAiLayer::new()
///             .base_url("https://example-resource.openai.azure.com/openai/v1".parse().unwrap())
///             .auth(AuthLayer::from_key("0123456789abcdef0123456789abcdef").azure()),
///     ));
/// assert_eq!(routes.route_names(), ["openai", "azure"]);
/// ```
#[derive(Debug, Clone)]
pub struct FallbackLayer<L> {
    routes: Vec<Route<L>>,
    policy: FallbackPolicy,
}

impl<L> FallbackLayer<L> {
    /// No routes yet: add them in order with [`route`](Self::route).
    pub fn new() -> Self {
        FallbackLayer {
            routes: Vec::new(),
            policy: FallbackPolicy::new(),
        }
    }

    /// Adds `route` after the others.
    pub fn route(mut self, route: Route<L>) -> Self {
        self.routes.push(route);
        self
    }

    /// Replaces the policy that decides which errors move on ([`FallbackPolicy::new`]).
    pub fn policy(mut self, policy: FallbackPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The routes' names, in order.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name()).collect()
    }

    /// The routes, in order (each route's layer: its breaker and pacer, for their state).
    pub fn routes(&self) -> &[Route<L>] {
        &self.routes
    }
}

impl<L> Default for FallbackLayer<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L, C> Layer<C> for FallbackLayer<L>
where
    L: Layer<C> + Clone,
    C: Clone,
{
    type Service = Fallback<L::Service>;

    fn layer(&self, client: C) -> Self::Service {
        Fallback::new(
            self.routes
                .iter()
                .map(|r| r.clone().map(|l| l.layer(client.clone()))),
        )
        .policy(self.policy.clone())
    }
}

/// Sends a call to its first route, and to the next one while the route's error says it
/// cannot serve the call soon ([`FallbackPolicy`]). See the [module docs](super).
///
/// Each call clones the routes' services (the tower contract for services that are called
/// more than once, as the retry layer does), so clones of the routes' stacks share their
/// state (retry budget, circuits, pacer).
pub struct Fallback<S> {
    routes: Vec<Route<S>>,
    policy: Arc<FallbackPolicy>,
}

impl<S: Clone> Clone for Fallback<S> {
    fn clone(&self) -> Self {
        Fallback {
            routes: self.routes.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S> fmt::Debug for Fallback<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.routes.iter().map(|r| r.name()).collect();
        f.debug_struct("Fallback")
            .field("routes", &names)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S> Fallback<S> {
    /// Routes tried in the order given, with the default [`FallbackPolicy`]. Without any
    /// route, every call fails with [`ErrorKind::Internal`].
    pub fn new(routes: impl IntoIterator<Item = Route<S>>) -> Self {
        Fallback {
            routes: routes.into_iter().collect(),
            policy: Arc::new(FallbackPolicy::new()),
        }
    }

    /// Replaces the policy.
    pub fn policy(mut self, policy: FallbackPolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route<S>] {
        &self.routes
    }
}

impl<S, B, ResB> Service<Request<B>> for Fallback<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    B: RouteBody + Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = future::ResponseFuture<Response<ResB>>;

    /// Always ready: each call drives the readiness of the route it goes to.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let routes = self.routes.clone();
        let policy = self.policy.clone();
        future::ResponseFuture::new(Box::pin(run(routes, policy, req)))
    }
}

/// The call: each route in turn until one serves it or an error stays.
async fn run<S, B, ResB>(
    routes: Vec<Route<S>>,
    policy: Arc<FallbackPolicy>,
    req: Request<B>,
) -> Result<Response<ResB>, Error>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error>,
    B: RouteBody,
{
    let idempotent = is_idempotent(req.method());
    let mut failed: Vec<RouteError> = Vec::new();
    let mut pending = Some(req);
    let mut routes = routes.into_iter().enumerate().peekable();
    while let Some((index, route)) = routes.next() {
        let Some(req) = pending.take() else { break };
        let has_next = routes.peek().is_some();
        // Keep the request whole for the next route, if any; send a copy.
        let (mut send, keep) = match has_next.then(|| clone_request(&req)).flatten() {
            Some(copy) => (copy, Some(req)),
            None => (req, None),
        };
        if let Some(model) = &route.model {
            match send.body().with_model(model) {
                Some(body) => *send.body_mut() = body,
                None => {
                    let err = Error::new(ErrorKind::InvalidParameter).with_detail(format!(
                        "route {:?} sets the model {model:?}, but the request body is not a JSON object it can rewrite; nothing sent",
                        route.name()
                    ));
                    tracing::warn!(target: "oai_resilience::fallback", route = %route.name(), "route skipped: the body's model cannot be rewritten");
                    failed.push(RouteError::new(route.name.clone(), err));
                    pending = keep.or_else(|| has_next.then_some(send));
                    continue;
                }
            }
        }
        let Route { name, inner, .. } = route;
        let result = inner.oneshot(send).await;
        match result {
            Ok(mut res) => {
                if index > 0 {
                    tracing::info!(target: "oai_resilience::fallback", route = %name, index, "served by a fallback route");
                }
                res.extensions_mut()
                    .insert(ServedBy::new(name.clone(), index));
                return Ok(res);
            }
            Err(err) => {
                let moves = has_next && policy.should_fall_back(&err, idempotent);
                failed.push(RouteError::new(name.clone(), err.clone()));
                if !moves {
                    return Err(finish(err, failed));
                }
                match keep {
                    Some(req) => {
                        tracing::info!(
                            target: "oai_resilience::fallback",
                            route = %name,
                            kind = %err.kind(),
                            next = %next_name(&mut routes),
                            "route cannot serve the call: moving on"
                        );
                        pending = Some(req);
                    }
                    None => {
                        let next = next_name(&mut routes);
                        let err_next = Error::new(ErrorKind::NotReplayable).with_detail(format!(
                            "the request body cannot be replayed to route {next:?}; nothing sent"
                        ));
                        failed.push(RouteError::new(next, err_next));
                        return Err(finish(err, failed));
                    }
                }
            }
        }
    }
    match failed.last() {
        Some(last) => {
            let err = last.error.clone();
            Err(finish(err, failed))
        }
        None => {
            Err(Error::new(ErrorKind::Internal)
                .with_detail("fallback without routes: nothing sent"))
        }
    }
}

/// The name of the route that `routes` yields next (the caller knows there is one).
fn next_name<S>(routes: &mut Peekable<impl Iterator<Item = (usize, Route<S>)>>) -> Arc<str> {
    routes
        .peek()
        .map(|(_, r)| r.name.clone())
        .expect("a next route")
}

/// `err`, with the list of route errors when the call tried more than one route.
fn finish(err: Error, failed: Vec<RouteError>) -> Error {
    if failed.len() > 1 {
        err.with_routes(failed)
    } else {
        err
    }
}

/// The future of the [`Fallback`] service.
pub mod future {
    use super::*;

    /// The response future of [`Fallback`](super::Fallback): the routes tried in turn.
    pub struct ResponseFuture<R> {
        inner: BoxFuture<'static, Result<R, Error>>,
    }

    impl<R> ResponseFuture<R> {
        pub(super) fn new(inner: BoxFuture<'static, Result<R, Error>>) -> Self {
            ResponseFuture { inner }
        }
    }

    impl<R> Future for ResponseFuture<R> {
        type Output = Result<R, Error>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.inner.as_mut().poll(cx)
        }
    }

    impl<R> fmt::Debug for ResponseFuture<R> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ResponseFuture").finish_non_exhaustive()
        }
    }
}
