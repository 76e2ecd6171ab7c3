//! The future of the [`Pace`](super::Pace) service: wait for a slot, ready the inner service,
//! call it, report the outcome (to the pacer's permit, or to the store).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::is_paced_locally;
use super::key::PaceKey;
use super::pacer::{Acquire, Permit};
use super::probe::ProbeGuard;
use super::store::{outcome, report_to_store, response_snapshot, PacingStore};
use crate::error::{Error, ErrorKind};
use crate::observe::{PacingWait, SharedObserver, TokensUsed};
use crate::usage::UsageSlot;

/// The observer of a call and the model its request names.
pub(super) type Watch = (SharedObserver, Option<Arc<str>>);

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`Pace`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, S::Future, S::Response>,
        watch: Option<Watch>,
    }
}

/// Waiting for a slot: from the in-process pacer or from a store.
pub(super) enum Admit {
    Local(Acquire),
    Shared(BoxFuture<Result<StoreSlot, Error>>),
}

/// A slot granted by a store: where to report the outcome.
pub(super) struct StoreSlot {
    pub(super) store: Arc<dyn PacingStore>,
    pub(super) key: PaceKey,
    pub(super) default_pause: std::time::Duration,
    /// Held when this request probes a cold key.
    pub(super) probe: Option<ProbeGuard>,
}

/// A granted slot.
enum Slot {
    Local(Permit),
    Shared(StoreSlot),
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// Waits on `acquire`, then calls `svc` with `req`.
    pub(super) fn new(acquire: Admit, svc: S, req: Request<B>, watch: Option<Watch>) -> Self {
        ResponseFuture {
            state: State::Waiting {
                acquire,
                svc: Some(svc),
                req: Some(req),
            },
            watch,
        }
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
            State::Reporting { .. } => "reporting",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, R> {
        Waiting { acquire: Admit, svc: Option<S>, req: Option<Request<B>> },
        Readying { svc: S, req: Option<Request<B>>, permit: Option<Slot> },
        Calling { #[pin] fut: F, permit: Option<Slot> },
        // A store-paced call's outcome on its way to the store; then the result.
        Reporting { fut: BoxFuture<()>, res: Option<Result<R, Error>> },
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
                    let res = match acquire {
                        Admit::Local(a) => ready!(Pin::new(a).poll(cx)).map(Slot::Local),
                        Admit::Shared(f) => ready!(f.as_mut().poll(cx)).map(Slot::Shared),
                    };
                    let (svc, req) = (svc.take(), req.take());
                    if let (Ok(Slot::Local(p)), Some((observer, model))) = (&res, &*this.watch) {
                        if let (Some(limit), false) = (p.held_by(), p.waited().is_zero()) {
                            observer.pacing_wait(&PacingWait {
                                waited: p.waited(),
                                limit,
                                model: model.as_deref(),
                            });
                        }
                    }
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
                        if let Some(Slot::Local(p)) = permit.take() {
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
                    let permit = permit.take();
                    if let Ok(resp) = &res {
                        if let Some(slot) = resp.extensions().get::<UsageSlot>() {
                            listen(slot, permit.as_ref(), this.watch.clone());
                        }
                    }
                    match permit {
                        Some(Slot::Local(permit)) => report(permit, &res),
                        Some(Slot::Shared(slot)) => {
                            let (snap, limited) = outcome(&res);
                            // The server answered (a response, or an error with a status):
                            // once its headers are in the store, the key is known.
                            let answered = match &res {
                                Ok(_) => true,
                                Err(e) => e.status().is_some(),
                            };
                            let fut = Box::pin(async move {
                                report_to_store(
                                    &*slot.store,
                                    &slot.key,
                                    snap,
                                    limited,
                                    slot.default_pause,
                                )
                                .await;
                                if let (true, Some(probe)) = (answered, slot.probe) {
                                    probe.answered();
                                }
                            });
                            this.state.set(State::Reporting {
                                fut,
                                res: Some(res),
                            });
                            continue;
                        }
                        None => {}
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(res);
                }
                StateProj::Reporting { fut, res } => {
                    ready!(fut.as_mut().poll(cx));
                    let res = res.take();
                    this.state.set(State::Done);
                    return Poll::Ready(res.unwrap_or_else(|| Err(internal("result missing"))));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(internal("response future polled after completion")))
                }
            }
        }
    }
}

/// Listens on a response's usage slot: the pacer settles the call's token charge (an
/// in-process permit), the observer hears of the usage.
fn listen(slot: &UsageSlot, permit: Option<&Slot>, watch: Option<Watch>) {
    let charge = match permit {
        Some(Slot::Local(p)) => Some(p.usage_charge()),
        _ => None,
    };
    if charge.is_none() && watch.is_none() {
        return;
    }
    slot.on_usage(move |usage| {
        let estimated = charge.as_ref().map(|c| c.charged());
        if let Some(charge) = charge {
            charge.settle((usage.input_tokens, usage.output_tokens));
        }
        if let Some((observer, model)) = watch {
            observer.tokens_used(&TokensUsed {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                estimated,
                model: model.as_deref(),
            });
        }
    });
}

/// Tells the pacer how the call went.
fn report<B>(permit: Permit, res: &Result<Response<B>, Error>) {
    match res {
        Ok(r) => {
            let snap = response_snapshot(r);
            permit.on_response(Some(&snap).filter(|s| !s.is_empty()));
        }
        Err(e) if e.kind() == ErrorKind::RateLimited && !is_paced_locally(e) => {
            permit.on_rate_limited(e.retry_after(), e.rate_limit());
        }
        Err(e) => permit.on_error(e.rate_limit()),
    }
}
