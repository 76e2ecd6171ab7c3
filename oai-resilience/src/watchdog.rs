//! Stalled streams: a watchdog on the time to the first body frame and on the idle time
//! between frames.
//!
//! A streamed answer (`"stream": true`) can stop half-way and never end: the connection stays
//! open, no frame arrives, and a caller that reads the body waits forever. The watchdog bounds
//! two waits and, when one of them is exceeded, ends the body with a typed error instead of
//! hanging:
//!
//! - **first byte**: from the moment the body is first asked for a frame (for the [`Watchdog`]
//!   service: as soon as the response's head arrived) to its first frame, 60 s by default
//!   ([`DEFAULT_FIRST_BYTE`]). The error says "no first byte within 60 s".
//! - **idle**: from the moment the caller asks for the next frame to that frame, 30 s by
//!   default ([`DEFAULT_IDLE`]). The error says "stream idle for 30 s". The clock runs only
//!   while the caller waits, so a caller that is slow to read is never cut.
//!
//! Either bound is disabled with `None`. Both errors are [`ErrorKind::Timeout`] with the
//! sentence as their [`Error::detail`] and a [`Stall`] as their source, which [`Stall::of`]
//! reads back. Any frame counts (an SSE keep-alive comment too): a slow stream that keeps
//! sending within the idle bound is never cut. Dropping the body after the error closes the
//! upstream connection (hyper does so for a body dropped before its end).
//!
//! There are two ways to use it:
//!
//! - [`WatchdogLayer`] / [`Watchdog`]: a tower middleware whose responses carry a
//!   [`WatchdogBody`]. Its response future waits for the **first frame** before it returns the
//!   response, so a stall before the first byte is an *error of the call* (of the attempt,
//!   under a retry layer), while a stall after it is an error of the body.
//! - [`WatchdogBody`] alone: wrap any [`http_body::Body`], as a proxy does with the upstream's
//!   body after it has already sent the head to its client. [`SseErrorBody`] then turns the
//!   stall into an OpenAI-shaped SSE `error` event ([`sse_error_event`]) and ends the stream,
//!   so the client's SDK raises an API error instead of waiting.
//!
//! # With retries
//!
//! A call is retried only if nothing was handed to the caller yet. Put the watchdog *under*
//! the retry layer, next to the client (`Retry -> [Pace ->] Classify -> Watchdog -> client`):
//!
//! - a stall **before the first byte** fails the attempt with [`ErrorKind::Timeout`]: the
//!   response never reached the caller, so the retry layer sees the error and sends the
//!   request again. Because the default policy does not retry a timed-out POST (it may have
//!   run), the first-byte error carries the verdict `should_retry = true` (read by
//!   [`Error::is_retryable`] and the default policy, as the server's `x-should-retry` would
//!   be): the upstream may have begun generating, so the retry can cost tokens twice. Turn
//!   it off with [`WatchdogLayer::retry_first_byte`]`(false)` to leave the decision to the
//!   policy's timeout rule (idempotent methods, or `retry_post_timeouts`);
//! - a stall **after the first byte** ends the body with the error, after the response was
//!   returned: the retry layer is done with the call by then and never sees it, so the call
//!   is not retried (the caller already holds part of the answer).
//!
//! ```
//! use bytes::Bytes;
//! use futures_util::StreamExt;
//! use http_body_util::{BodyExt, Full};
//! use oai_resilience::retry::{RetryConfig, RetryLayer};
//! use oai_resilience::watchdog::{Stall, WatchdogLayer};
//! use oai_resilience::{ClassifyLayer, ErrorKind};
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // An upstream whose body sends one event and then stalls forever.
//! let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     let frames = futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(
//!         Bytes::from_static(b"data: {}\n\n"),
//!     ))])
//!     .chain(futures_util::stream::pending());
//!     Ok::<_, Infallible>(http::Response::new(http_body_util::StreamBody::new(frames)))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::with_config(RetryConfig::new().seed(1)))
//!     .layer(ClassifyLayer::new())
//!     .layer(WatchdogLayer::new().idle(Duration::from_secs(5)))
//!     .service(upstream);
//! let res = svc.oneshot(http::Request::new(Full::new(Bytes::new()))).await.unwrap();
//! let mut body = res.into_body();
//! let first = body.frame().await.unwrap().unwrap();
//! assert_eq!(first.into_data().unwrap(), "data: {}\n\n");
//! let err = body.frame().await.unwrap().unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Timeout);
//! assert_eq!(err.detail(), Some("stream idle for 5 s"));
//! assert_eq!(Stall::of(&err), Some(Stall::Idle(Duration::from_secs(5))));
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{fmt_secs, BoxError, Error, ErrorKind};

/// The default bound on the time to the first body frame: 60 s.
pub const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(60);
/// The default bound on the idle time between body frames: 30 s.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

/// Which bound a stalled body exceeded, and the bound: the source of the watchdog's
/// [`ErrorKind::Timeout`] errors.
///
/// ```
/// use oai_resilience::watchdog::Stall;
/// use std::time::Duration;
///
/// let stall = Stall::FirstByte(Duration::from_secs(60));
/// assert_eq!(stall.to_string(), "no first byte within 60 s");
/// let err = stall.into_error();
/// assert_eq!(err.kind(), oai_resilience::ErrorKind::Timeout);
/// assert_eq!(Stall::of(&err), Some(stall));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stall {
    /// No frame arrived within the first-byte bound.
    FirstByte(Duration),
    /// No frame arrived within the idle bound after an earlier one.
    Idle(Duration),
}

impl Stall {
    /// The bound that was exceeded.
    pub fn bound(self) -> Duration {
        match self {
            Stall::FirstByte(d) | Stall::Idle(d) => d,
        }
    }

    /// Whether the stall came before the first frame (nothing reached the caller).
    pub fn is_first_byte(self) -> bool {
        matches!(self, Stall::FirstByte(_))
    }

    /// The stall that `err` reports, if it is a watchdog error.
    pub fn of(err: &Error) -> Option<Stall> {
        std::error::Error::source(err)?
            .downcast_ref::<Stall>()
            .copied()
    }

    /// The error the watchdog reports: [`ErrorKind::Timeout`], this sentence as its detail,
    /// this stall as its source.
    pub fn into_error(self) -> Error {
        Error::new(ErrorKind::Timeout)
            .with_detail(self.to_string())
            .with_source(self)
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stall::FirstByte(d) => write!(f, "no first byte within {}", fmt_secs(*d)),
            Stall::Idle(d) => write!(f, "stream idle for {}", fmt_secs(*d)),
        }
    }
}

impl std::error::Error for Stall {}

/// The two bounds of the watchdog. `None` disables a bound.
///
/// # Default
///
/// First byte 60 s ([`DEFAULT_FIRST_BYTE`]), idle 30 s ([`DEFAULT_IDLE`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallBounds {
    /// The bound on the time to the first frame.
    pub first_byte: Option<Duration>,
    /// The bound on the time between frames.
    pub idle: Option<Duration>,
}

impl StallBounds {
    /// Bounds with the given values (`None` disables one).
    pub fn new(first_byte: Option<Duration>, idle: Option<Duration>) -> Self {
        StallBounds { first_byte, idle }
    }
}

impl Default for StallBounds {
    fn default() -> Self {
        StallBounds::new(Some(DEFAULT_FIRST_BYTE), Some(DEFAULT_IDLE))
    }
}

fn body_error(err: impl Into<BoxError>) -> Error {
    match err.into().downcast::<Error>() {
        Ok(e) => *e,
        Err(e) => Error::body(e),
    }
}

/// A body that ends with a typed [`Stall`] error when its first frame, or the next frame,
/// takes longer than its [`StallBounds`]. See the [module docs](self).
///
/// Its error is [`Error`]: the watchdog's [`ErrorKind::Timeout`], or the inner body's error
/// (an [`Error`] passes through; anything else becomes [`Error::body`]). After an error it
/// ends. The inner body is boxed, so `WatchdogBody` is `Unpin` whatever `B` is.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, StreamBody};
/// use oai_resilience::watchdog::{Stall, StallBounds, WatchdogBody};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // An upstream body that never sends anything.
/// let silent = StreamBody::new(futures_util::stream::pending::<
///     Result<http_body::Frame<Bytes>, Infallible>,
/// >());
/// let bounds = StallBounds::new(Some(Duration::from_secs(10)), None);
/// let mut body = WatchdogBody::new(silent, bounds);
/// let err = body.frame().await.unwrap().unwrap_err();
/// assert_eq!(err.to_string().split(" — ").next(), Some("timeout: no first byte within 10 s"));
/// assert!(Stall::of(&err).unwrap().is_first_byte());
/// assert!(body.frame().await.is_none()); // ended
/// # }
/// ```
pub struct WatchdogBody<B: Body> {
    inner: Pin<Box<B>>,
    bounds: StallBounds,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    started: bool,
    done: bool,
    peeked: Option<Result<Frame<B::Data>, Error>>,
}

impl<B: Body> WatchdogBody<B> {
    /// Wraps `body`. The first-byte clock starts when the body is first polled.
    pub fn new(body: B, bounds: StallBounds) -> Self {
        WatchdogBody {
            inner: Box::pin(body),
            bounds,
            timer: None,
            armed: false,
            started: false,
            done: false,
            peeked: None,
        }
    }

    /// The bounds.
    pub fn bounds(&self) -> StallBounds {
        self.bounds
    }

    /// Whether a frame has arrived (the first-byte bound no longer applies).
    pub fn has_started(&self) -> bool {
        self.started
    }
}

// Nothing in a `WatchdogBody` is ever pinned in place: the inner body and the timer are boxed,
// the kept frame is moved out by value.
impl<B: Body> Unpin for WatchdogBody<B> {}

impl<B> WatchdogBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Polls for the first frame and keeps it for the next `poll_frame`; returns the stall
    /// error if the first-byte bound passes first. A body error is kept too.
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.peeked.is_some() || self.done {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.poll_next(cx)) {
            Some(Err(e)) if Stall::of(&e).is_some() => Poll::Ready(Err(e)),
            Some(r) => {
                self.peeked = Some(r);
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(r) = self.peeked.take() {
            if r.is_err() {
                self.done = true;
            }
            return Poll::Ready(Some(r));
        }
        let bound = if self.started {
            self.bounds.idle
        } else {
            self.bounds.first_byte
        };
        if let (false, Some(bound)) = (self.armed, bound) {
            let at = Instant::now() + bound;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                self.started = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(body_error(e))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let (true, Some(bound), Some(timer)) = (self.armed, bound, self.timer.as_mut())
                else {
                    return Poll::Pending;
                };
                ready!(timer.as_mut().poll(cx));
                self.done = true;
                let stall = if self.started {
                    Stall::Idle(bound)
                } else {
                    Stall::FirstByte(bound)
                };
                tracing::debug!(target: "oai_resilience::watchdog", %stall, "stalled body ended");
                Poll::Ready(Some(Err(stall.into_error())))
            }
        }
    }
}

impl<B> Body for WatchdogBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.peeked.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        let inner = self.inner.size_hint();
        match &self.peeked {
            None => inner,
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(n));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(n));
                }
                hint
            }
            Some(Err(_)) => SizeHint::default(),
        }
    }
}

crate::macros::debug_struct!(impl<B: Body> WatchdogBody<B>, |s| "WatchdogBody" {
    "bounds": s.bounds,
    "started": s.started,
    "done": s.done,
} finish_non_exhaustive);

/// Builds [`Watchdog`] services. See the [module docs](self).
///
/// # Default
///
/// First byte 60 s, idle 30 s, first-byte stalls retryable.
#[derive(Debug, Clone, Copy)]
pub struct WatchdogLayer {
    bounds: StallBounds,
    retry_first_byte: bool,
}

impl WatchdogLayer {
    /// A layer with the default bounds (first byte 60 s, idle 30 s).
    pub fn new() -> Self {
        WatchdogLayer {
            bounds: StallBounds::default(),
            retry_first_byte: true,
        }
    }

    /// Sets the bound on the time to the first frame (`None` disables it; the response is then
    /// returned as soon as its head arrives).
    pub fn first_byte(mut self, bound: impl Into<Option<Duration>>) -> Self {
        self.bounds.first_byte = bound.into();
        self
    }

    /// Sets the bound on the idle time between frames (`None` disables it).
    pub fn idle(mut self, bound: impl Into<Option<Duration>>) -> Self {
        self.bounds.idle = bound.into();
        self
    }

    /// Whether a first-byte stall carries the verdict `should_retry = true`, so that the
    /// retry layer above sends the request again (default `true`). See
    /// [the module docs](self#with-retries).
    pub fn retry_first_byte(mut self, yes: bool) -> Self {
        self.retry_first_byte = yes;
        self
    }

    /// The bounds.
    pub fn bounds(&self) -> StallBounds {
        self.bounds
    }
}

crate::macros::default_via_new!(WatchdogLayer);

crate::macros::layer_impl!(WatchdogLayer => Watchdog, |l| {
    layer: *l,
});

/// The watchdog middleware: its responses' bodies are [`WatchdogBody`]s, and its response
/// future waits (within the first-byte bound) for the first frame. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Watchdog<S> {
    inner: S,
    layer: WatchdogLayer,
}

impl<S> Watchdog<S> {
    /// Wraps `inner` with the default bounds.
    pub fn new(inner: S) -> Self {
        WatchdogLayer::new().layer(inner)
    }

    crate::macros::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Watchdog<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<WatchdogBody<ResB>>;
    type Error = Error;
    type Future = future::ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service_error)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        future::ResponseFuture {
            fut: self.inner.call(req),
            pending: None,
            layer: self.layer,
        }
    }
}

/// The future of the [`Watchdog`] service.
pub mod future {
    use super::*;

    pin_project! {
        /// The response future of [`Watchdog`](super::Watchdog): the inner call, then the
        /// wait for the first frame.
        pub struct ResponseFuture<F, B: Body> {
            #[pin]
            pub(super) fut: F,
            pub(super) pending: Option<(http::response::Parts, WatchdogBody<B>)>,
            pub(super) layer: WatchdogLayer,
        }
    }

    impl<F, B: Body> fmt::Debug for ResponseFuture<F, B> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ResponseFuture")
                .field("waiting_for_first_frame", &self.pending.is_some())
                .finish_non_exhaustive()
        }
    }

    impl<F, B, E> Future for ResponseFuture<F, B>
    where
        F: Future<Output = Result<Response<B>, E>>,
        E: Into<BoxError>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        type Output = Result<Response<WatchdogBody<B>>, Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            if this.pending.is_none() {
                let res = ready!(this.fut.poll(cx)).map_err(Error::from_service_error)?;
                let (parts, body) = res.into_parts();
                let body = WatchdogBody::new(body, this.layer.bounds);
                if this.layer.bounds.first_byte.is_none() || body.is_end_stream() {
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                *this.pending = Some((parts, body));
            }
            let (_, body) = this.pending.as_mut().expect("set above");
            match ready!(body.poll_peek(cx)) {
                Ok(()) => {
                    let (parts, body) = this.pending.take().expect("polled after completion");
                    Poll::Ready(Ok(Response::from_parts(parts, body)))
                }
                Err(e) => {
                    *this.pending = None;
                    Poll::Ready(Err(if this.layer.retry_first_byte {
                        e.with_should_retry(true)
                    } else {
                        e
                    }))
                }
            }
        }
    }
}

/// The OpenAI-shaped server-sent event for `err`: `event: error`, then `data:` with the JSON
/// body OpenAI would send ([`respond::error_body`](crate::respond::error_body)), then a blank
/// line. The official SDKs raise an API error when a stream carries it.
///
/// ```
/// use oai_resilience::watchdog::{sse_error_event, Stall};
/// use std::time::Duration;
///
/// let event = sse_error_event(&Stall::Idle(Duration::from_secs(30)).into_error());
/// let text = std::str::from_utf8(&event).unwrap();
/// assert!(text.starts_with("event: error\ndata: {\"error\":{"));
/// assert!(text.ends_with("}}\n\n"));
/// assert!(text.contains("stream idle for 30 s"));
/// ```
pub fn sse_error_event(err: &Error) -> Bytes {
    let json = crate::respond::error_body(err).to_string();
    let mut out = String::with_capacity(json.len() + 24);
    out.push_str("event: error\ndata: ");
    out.push_str(&json);
    out.push_str("\n\n");
    Bytes::from(out)
}

pin_project! {
    /// A server-sent event body for a proxy: passes `B`'s frames through and, when `B` fails
    /// (a [`WatchdogBody`]'s stall, or any other error), sends [`sse_error_event`] as its last
    /// frame and ends, instead of cutting the connection. If the stream stopped inside an
    /// event, a blank line first ends that event.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use oai_resilience::watchdog::{SseErrorBody, StallBounds, WatchdogBody};
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use futures_util::StreamExt;
    /// let upstream = StreamBody::new(
    ///     futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(
    ///         Bytes::from_static(b"data: {\"choices\":[]}\n\n"),
    ///     ))])
    ///     .chain(futures_util::stream::pending()),
    /// );
    /// let bounds = StallBounds::new(None, Some(Duration::from_secs(30)));
    /// let body = SseErrorBody::new(WatchdogBody::new(upstream, bounds));
    /// let all = body.collect().await.unwrap().to_bytes();
    /// let text = std::str::from_utf8(&all).unwrap();
    /// assert!(text.starts_with("data: {\"choices\":[]}\n\nevent: error\ndata: {\"error\":"));
    /// assert!(text.contains("stream idle for 30 s"));
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct SseErrorBody<B> {
        #[pin]
        inner: B,
        tail: [u8; 2],
        sent: bool,
        done: bool,
    }
}

impl<B> SseErrorBody<B> {
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        SseErrorBody {
            inner: body,
            tail: [b'\n', b'\n'],
            sent: false,
            done: false,
        }
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for SseErrorBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    match data.len() {
                        0 => {}
                        1 => *this.tail = [this.tail[1], data[0]],
                        n => *this.tail = [data[n - 2], data[n - 1]],
                    }
                    *this.sent |= !data.is_empty();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                *this.done = true;
                let err = body_error(e);
                tracing::debug!(target: "oai_resilience::watchdog", error = %err, "stream ended with an error event");
                let event = sse_error_event(&err);
                let at_boundary = !*this.sent || this.tail == b"\n\n";
                let bytes = if at_boundary {
                    event
                } else {
                    let mut v = Vec::with_capacity(event.len() + 2);
                    v.extend_from_slice(b"\n\n");
                    v.extend_from_slice(&event);
                    Bytes::from(v)
                };
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            None => {
                *this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
