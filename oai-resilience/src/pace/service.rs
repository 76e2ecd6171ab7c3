//! [`Pace`]: the service that waits for a slot, then calls, then reports the outcome.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::{Error, ErrorKind};
use crate::parse::RateLimitSnapshot;

use super::cost::{scan, PaceBody};
use super::key::PaceKey;
use super::layer::{Keying, PaceLayer};
use super::pacer::{Acquire, Pacer, Permit};
use super::{is_paced_locally, CallDeadline};

/// The pacing middleware. See the [module docs](super).
///
/// It needs `S: Clone` (it calls a clone once the slot comes, so it holds no readiness while
/// it waits) and a body that implements [`PaceBody`].
#[derive(Clone)]
pub struct Pace<S> {
    pub(crate) inner: S,
    pub(crate) pacer: Pacer,
    pub(crate) keying: Arc<Keying>,
}

impl<S: fmt::Debug> fmt::Debug for Pace<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pace")
            .field("inner", &self.inner)
            .field("pacer", &self.pacer)
            .finish()
    }
}

impl<S> Pace<S> {
    /// Wraps `inner` with a default [`PaceLayer`].
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&PaceLayer::new(), inner)
    }

    /// The shared pacer.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

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

impl<S, B, ResB> Service<Request<B>> for Pace<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error> + Clone,
    B: PaceBody,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    /// Always ready: the wait for a slot and for the inner service happens in the future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, mut body) = req.into_parts();
        let keying = &*self.keying;
        let (key, cost) = body.with_bytes(|bytes| match (&keying.key_fn, bytes) {
            (Some(f), _) => (
                f(&parts.uri, &parts.headers, bytes),
                keying.estimator.estimate(bytes),
            ),
            // One pass over the body for both the model and the token estimate.
            (None, Some(b)) => {
                let (model, cost) = match scan(b) {
                    Some(scan) => {
                        let cost = keying.estimator.estimate_scan(&scan);
                        (scan.model().filter(|_| keying.per_model), cost)
                    }
                    None => (None, keying.estimator.by_size(b.len())),
                };
                let key = PaceKey::from_parts_with_model(&parts.uri, &parts.headers, model);
                (key, cost)
            }
            (None, None) => (
                PaceKey::from_parts_with_model(&parts.uri, &parts.headers, None),
                keying.estimator.estimate(None),
            ),
        });
        let req = Request::from_parts(parts, body);
        let deadline = req.extensions().get::<CallDeadline>().map(|d| d.0);
        let acquire = self.pacer.acquire(&key, cost, deadline);
        ResponseFuture {
            state: State::Waiting {
                acquire,
                svc: Some(self.inner.clone()),
                req: Some(req),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Pace`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Readying { .. } => "readying",
            State::Calling { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        Waiting { acquire: Acquire, svc: Option<S>, req: Option<Request<B>> },
        Readying { svc: S, req: Option<Request<B>>, permit: Option<Permit> },
        Calling { #[pin] fut: F, permit: Option<Permit> },
        Done,
    }
}

fn internal(what: &str) -> Error {
    Error::new(ErrorKind::Internal).with_detail(format!("pace: {what}"))
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { acquire, svc, req } => {
                    let res = ready!(Pin::new(acquire).poll(cx));
                    let (svc, req) = (svc.take(), req.take());
                    let next = match (res, svc) {
                        (Ok(permit), Some(svc)) => State::Readying {
                            svc,
                            req,
                            permit: Some(permit),
                        },
                        (Err(e), _) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                        (Ok(_), None) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(internal("service missing")));
                        }
                    };
                    this.state.set(next);
                }
                StateProj::Readying { svc, req, permit } => {
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        if let Some(p) = permit.take() {
                            p.on_error(e.rate_limit());
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Err(e));
                    }
                    let Some(req) = req.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(internal("request missing")));
                    };
                    let fut = svc.call(req);
                    let permit = permit.take();
                    this.state.set(State::Calling { fut, permit });
                }
                StateProj::Calling { fut, permit } => {
                    let res = ready!(fut.poll(cx));
                    if let Some(permit) = permit.take() {
                        report(permit, &res);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(res);
                }
                StateProj::Done => {
                    return Poll::Ready(Err(internal("response future polled after completion")))
                }
            }
        }
    }
}

/// Tells the pacer how the call went.
fn report<B>(permit: Permit, res: &Result<Response<B>, Error>) {
    match res {
        Ok(r) => {
            let snap = r
                .extensions()
                .get::<RateLimitSnapshot>()
                .copied()
                .unwrap_or_else(|| RateLimitSnapshot::from_headers(r.headers()));
            permit.on_response(Some(&snap).filter(|s| !s.is_empty()));
        }
        Err(e) if e.kind() == ErrorKind::RateLimited && !is_paced_locally(e) => {
            permit.on_rate_limited(e.retry_after(), e.rate_limit());
        }
        Err(e) => permit.on_error(e.rate_limit()),
    }
}
