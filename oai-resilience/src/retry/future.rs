//! Future types of the retry middleware.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;
use tracing::Span;

use super::policy::Decision;
use super::replay::{clone_request, ReplayBody};
use super::retrier::Retrier;
use crate::error::{Error, ErrorKind, StopReason};
use crate::observe::ResponseMeta;

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    ///
    /// Attempt, backoff, readiness, attempt, … until a success or a stop. The overall deadline
    /// also bounds an attempt (or a wait for readiness) in flight. Dropping the future drops
    /// the attempt or the backoff timer with it.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        service: S,
        retrier: Retrier,
        // The retrier's call span, held here so that each poll enters it without a clone.
        call_span: Span,
        replay: Option<Request<B>>,
        deadline: Option<Pin<Box<Sleep>>>,
        #[pin]
        state: State<S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F },
        Waiting { #[pin] sleep: Sleep },
        Ready,
        Done,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(
        service: S,
        retrier: Retrier,
        replay: Option<Request<B>>,
        fut: S::Future,
    ) -> Self {
        ResponseFuture {
            service,
            call_span: retrier.call_span().clone(),
            retrier,
            replay,
            deadline: None,
            state: State::Called { fut },
        }
    }
}

/// Whether the overall deadline has passed; arms its timer on first use only, so a call that
/// completes without ever waiting costs no timer.
fn deadline_passed(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    retrier: &Retrier,
    cx: &mut Context<'_>,
) -> bool {
    let Some(at) = retrier.deadline_at() else {
        return false;
    };
    let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    sleep.as_mut().poll(cx).is_ready()
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Error = Error>,
    S::Response: ResponseMeta,
    B: ReplayBody,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Inside the call span: what the service does while it gets ready, and the retry
        // loop's events; the attempt in flight inside its attempt span.
        let _in_call = this.call_span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    match this.retrier.attempt_span().in_scope(|| fut.poll(cx)) {
                        Poll::Ready(Ok(res)) => {
                            if this.retrier.wants_response_meta() {
                                this.retrier.on_success_with(res.status(), res.request_id());
                            } else {
                                this.retrier.on_success();
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(res));
                        }
                        Poll::Ready(Err(err)) => {
                            match this.retrier.on_error(&err, this.replay.is_some()) {
                                Decision::Retry { delay, .. } if delay.is_zero() => {
                                    this.state.set(State::Ready);
                                }
                                Decision::Retry { delay, .. } => {
                                    this.state.set(State::Waiting {
                                        sleep: tokio::time::sleep(delay),
                                    });
                                }
                                Decision::Stop(reason) => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(this.retrier.finish(err, reason)));
                                }
                            }
                        }
                        Poll::Pending => {
                            if deadline_passed(this.deadline, this.retrier, cx) {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(this.retrier.on_deadline()));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                StateProj::Waiting { sleep } => match sleep.poll(cx) {
                    Poll::Ready(()) => this.state.set(State::Ready),
                    Poll::Pending => return Poll::Pending,
                },
                StateProj::Ready => match this.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(mut req) = this.replay.take() else {
                            // Unreachable: the retrier only retries replayable requests.
                            this.state.set(State::Done);
                            let err = Error::new(ErrorKind::Internal)
                                .with_detail("retry without a request to replay");
                            return Poll::Ready(Err(this
                                .retrier
                                .finish(err, StopReason::NotReplayable)));
                        };
                        let attempt = this.retrier.start_attempt_for(&req);
                        if attempt < this.retrier.config().settings().max_attempts {
                            *this.replay = clone_request(&req);
                        }
                        if let Some(name) =
                            this.retrier.config().settings().retry_count_header.as_ref()
                        {
                            req.headers_mut()
                                .insert(name.clone(), this.retrier.retry_count_value());
                        }
                        let fut = this.service.call(req);
                        this.state.set(State::Called { fut });
                    }
                    Poll::Ready(Err(err)) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(this
                            .retrier
                            .finish(err, StopReason::NotRetryable)));
                    }
                    Poll::Pending => {
                        if deadline_passed(this.deadline, this.retrier, cx) {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(this.retrier.on_deadline()));
                        }
                        return Poll::Pending;
                    }
                },
                StateProj::Done => {
                    return Poll::Ready(Err(Error::new(ErrorKind::Internal)
                        .with_detail("retry::ResponseFuture polled after completion")));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Ready => "ready",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.retrier.attempts())
            .field("replayable", &self.replay.is_some())
            .finish_non_exhaustive()
    }
}
