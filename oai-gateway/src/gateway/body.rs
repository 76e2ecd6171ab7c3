//! Bodies on their way through the gateway: streamed uploads to the upstream, and the
//! upstream's answers back to the client.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use oai_resilience::watchdog::{SseErrorBody, StallBounds, WatchdogBody};
use oai_resilience::BoxError;

use crate::metrics::Metrics;
use crate::upstream::{BodyError, ObservedBody};

/// Why a streamed upload stopped before its end (kept for the answer: 408 or 413).
#[derive(Debug, Clone, Default)]
pub(crate) struct UploadFault(Arc<AtomicU8>);

pub(crate) const FAULT_NONE: u8 = 0;
pub(crate) const FAULT_TIMEOUT: u8 = 1;
pub(crate) const FAULT_TOO_LARGE: u8 = 2;
pub(crate) const FAULT_CLIENT: u8 = 3;
pub(crate) const FAULT_TOO_SLOW: u8 = 4;

impl UploadFault {
    pub(crate) fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, fault: u8) {
        let _ = self
            .0
            .compare_exchange(FAULT_NONE, fault, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// How fast a streamed upload must arrive: each chunk within `idle` of the previous one (the
/// first within `idle` of the head), and, once `idle` has passed since the head, at least
/// `min_rate` bytes per second on average since the head (`0`: no minimum), so that a client
/// that trickles a byte now and then cannot hold its connection for as long as
/// `--max-upload-bytes` would take at that pace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadPace {
    pub(crate) idle: Duration,
    pub(crate) min_rate: u64,
}

/// A client's request body streamed to the upstream as it arrives, at the [`UploadPace`],
/// and at most `limit` bytes. A failure ends the body with an error (the upstream request is
/// aborted) and is recorded in the [`UploadFault`].
pub(crate) struct UploadBody<B: Body> {
    inner: WatchdogBody<B>,
    seen: u64,
    limit: u64,
    fault: UploadFault,
    pace: UploadPace,
    started: Instant,
}

impl<B: Body> UploadBody<B> {
    pub(crate) fn new(body: B, pace: UploadPace, limit: u64, fault: UploadFault) -> Self {
        let idle = pace.idle;
        UploadBody {
            inner: WatchdogBody::new(body, StallBounds::new(Some(idle), Some(idle))),
            seen: 0,
            limit,
            fault,
            pace,
            started: Instant::now(),
        }
    }

    /// Whether the upload has fallen below its minimum average rate.
    fn too_slow(&self) -> bool {
        let elapsed = self.started.elapsed();
        self.pace.min_rate > 0
            && elapsed > self.pace.idle
            && (self.seen as f64) < self.pace.min_rate as f64 * elapsed.as_secs_f64()
    }
}

impl<B> Body for UploadBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.fault.set(FAULT_TOO_LARGE);
                        return Poll::Ready(Some(Err(
                            "the upload exceeds --max-upload-bytes".into()
                        )));
                    }
                    if this.too_slow() {
                        this.fault.set(FAULT_TOO_SLOW);
                        return Poll::Ready(Some(Err(
                            "the upload is slower than --min-upload-rate".into(),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let fault = if oai_resilience::watchdog::Stall::of(&e).is_some() {
                    FAULT_TIMEOUT
                } else {
                    FAULT_CLIENT
                };
                this.fault.set(fault);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's body on its way to the client. For an event stream it counts in
/// `oai_gateway_streams_in_flight` until it ends or the client goes away.
pub(crate) struct Relay {
    inner: ObservedBody,
    metrics: Arc<Metrics>,
    stream: bool,
    ended: bool,
}

impl Relay {
    fn new(inner: ObservedBody, metrics: Arc<Metrics>, stream: bool) -> Self {
        if stream {
            metrics.stream_started();
        }
        Relay {
            inner,
            metrics,
            stream,
            ended: false,
        }
    }

    fn end(&mut self) {
        if self.stream && !self.ended {
            self.ended = true;
            self.metrics.stream_ended();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.end();
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let next = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match next {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                if let Some(err) = e.downcast_ref::<oai_resilience::Error>() {
                    if let Some(stall) = oai_resilience::watchdog::Stall::of(err) {
                        this.metrics.stall(stall.is_first_byte());
                    }
                }
                this.end();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.end();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body for the upstream's `body`: an event stream (`sse`) ends with an
/// OpenAI-shaped SSE `error` event if the upstream stalls or fails mid-stream
/// ([`SseErrorBody`]); any other body is cut (the client sees a truncated answer, which its
/// HTTP library reports) on the same failure.
pub(crate) fn relay(
    body: ObservedBody,
    metrics: Arc<Metrics>,
    sse: bool,
) -> UnsyncBoxBody<Bytes, BodyError> {
    let relay = Relay::new(body, metrics, sse);
    if sse {
        SseErrorBody::new(relay)
            .map_err(|never| match never {})
            .boxed_unsync()
    } else {
        relay.map_err(BodyError).boxed_unsync()
    }
}
