//! Turn HTTP responses into typed results: 2xx passes, everything else becomes an [`Error`].
//!
//! [`ClassifyLayer`] wraps any `Service<http::Request<B>>` whose response is an
//! `http::Response` with an [`http_body::Body`]. A success passes through untouched (its body
//! still streams), with the [`RateLimitSnapshot`] of its headers as a response extension. Any
//! other status becomes `Err(Error)`: the body is read up to a limit (64 KiB by default; the
//! rest is dropped, never read) and parsed into OpenAI's error object, request id, retry hint
//! and rate-limit snapshot. The inner service's own errors become
//! [`ErrorKind::Connection`](crate::ErrorKind::Connection) or
//! [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) errors, the original kept as `source()`.
//!
//! Classify sits under the retry layer, so the retry policy sees typed errors.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::{classify::ClassifyLayer, ErrorKind};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     let body = r#"{"error":{"message":"Missing required parameter: 'messages'.","type":"invalid_request_error","param":"messages","code":null}}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder().status(400).header("x-request-id", "req_123")
//!             .body(Full::new(Bytes::from(body))).unwrap(),
//!     )
//! });
//! let svc = ServiceBuilder::new().layer(ClassifyLayer::new()).service(upstream);
//! let err = svc.oneshot(http::Request::new(Full::new(Bytes::new()))).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidRequest);
//! assert_eq!(err.param(), Some("messages"));
//! assert_eq!(err.request_id(), Some("req_123"));
//! assert_eq!(err.hint(), "add the missing parameter `messages`");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error};
use crate::parse::RateLimitSnapshot;

/// The default limit on how much of an error body is read: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Builds [`Classify`] services. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct ClassifyLayer {
    body_limit: usize,
}

impl ClassifyLayer {
    /// A layer with the default 64 KiB body limit.
    pub fn new() -> Self {
        ClassifyLayer {
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Reads at most `limit` bytes of an error body; the rest is dropped unread.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }
}

crate::macros::default_via_new!(ClassifyLayer);

crate::macros::layer_impl!(ClassifyLayer => Classify, |l| {
    body_limit: l.body_limit,
});

/// The classify middleware. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Classify<S> {
    inner: S,
    body_limit: usize,
}

impl<S> Classify<S> {
    /// Wraps `inner` with the default body limit.
    pub fn new(inner: S) -> Self {
        ClassifyLayer::new().layer(inner)
    }

    crate::macros::inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Classify<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = future::ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service_error)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        future::ResponseFuture::new(self.inner.call(req), self.body_limit)
    }
}

/// The future of the [`Classify`] service.
pub mod future {
    use super::*;

    pin_project! {
        /// The response future of [`Classify`].
        #[derive(Debug)]
        pub struct ResponseFuture<F, B> {
            #[pin]
            state: State<F, B>,
            body_limit: usize,
        }
    }

    pin_project! {
        #[project = StateProj]
        #[derive(Debug)]
        enum State<F, B> {
            Call { #[pin] fut: F },
            Collect {
                parts: Option<http::response::Parts>,
                #[pin]
                body: B,
                buf: BytesMut,
            },
        }
    }

    impl<F, B> ResponseFuture<F, B> {
        pub(super) fn new(fut: F, body_limit: usize) -> Self {
            ResponseFuture {
                state: State::Call { fut },
                body_limit,
            }
        }
    }

    impl<F, B, E> Future for ResponseFuture<F, B>
    where
        F: Future<Output = Result<Response<B>, E>>,
        E: Into<BoxError>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        type Output = Result<Response<B>, Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            loop {
                match this.state.as_mut().project() {
                    StateProj::Call { fut } => {
                        let mut res = ready!(fut.poll(cx)).map_err(Error::from_service_error)?;
                        if res.status().is_success() {
                            let snapshot = RateLimitSnapshot::from_headers(res.headers());
                            res.extensions_mut().insert(snapshot);
                            return Poll::Ready(Ok(res));
                        }
                        let (parts, body) = res.into_parts();
                        let hint = body.size_hint().exact().unwrap_or(0) as usize;
                        this.state.set(State::Collect {
                            parts: Some(parts),
                            body,
                            buf: BytesMut::with_capacity(hint.min(*this.body_limit)),
                        });
                    }
                    StateProj::Collect {
                        parts,
                        mut body,
                        buf,
                    } => {
                        let done = loop {
                            if buf.len() >= *this.body_limit {
                                break true;
                            }
                            match ready!(body.as_mut().poll_frame(cx)) {
                                Some(Ok(frame)) => {
                                    if let Ok(mut data) = frame.into_data() {
                                        let room = *this.body_limit - buf.len();
                                        let take = data.remaining().min(room);
                                        buf.extend_from_slice(&data.copy_to_bytes(take));
                                    }
                                }
                                // A body that fails mid-way: classify what arrived.
                                Some(Err(_)) | None => break true,
                            }
                        };
                        debug_assert!(done);
                        let parts = parts.take().expect("polled after completion");
                        let err =
                            Error::from_response_parts(parts.status, &parts.headers, &buf[..]);
                        tracing::debug!(
                            status = parts.status.as_u16(),
                            kind = %err.kind(),
                            request_id = err.request_id().unwrap_or(""),
                            "classified error response"
                        );
                        return Poll::Ready(Err(err));
                    }
                }
            }
        }
    }
}

/// Classifies one server-sent event payload of a 200 stream: `Some(Error)` when the payload is
/// OpenAI's `{"error": {…}}` object, `None` for anything else (a delta, `[DONE]`, garbage).
///
/// [`ClassifyLayer`] passes a 200 through with its body still streaming, so an error the server
/// sends *inside* the stream is invisible to the status check and to the retry layer. Feed each
/// event's `data:` payload (without the `data: ` prefix) to this function. The error's kind
/// follows the object's `type`/`code` (`server_error` is [`ErrorKind::ServerError`],
/// `rate_limit_exceeded` is [`ErrorKind::RateLimited`], `insufficient_quota` is
/// [`ErrorKind::QuotaExceeded`], `invalid_request_error` is [`ErrorKind::InvalidRequest`]);
/// it carries no status and `should_retry` is `false`: the response was already accepted and
/// part of it consumed, so the stack never retries it on its own. Retrying is the caller's call.
///
/// ```
/// use oai_resilience::{classify::classify_sse_event, ErrorKind};
///
/// let data = br#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#;
/// let err = classify_sse_event(data).unwrap();
/// assert_eq!(err.kind(), ErrorKind::ServerError);
/// assert!(!err.is_retryable());
/// assert!(classify_sse_event(br#"{"choices":[]}"#).is_none());
/// assert!(classify_sse_event(b"[DONE]").is_none());
/// ```
///
/// [`ErrorKind::ServerError`]: crate::ErrorKind::ServerError
/// [`ErrorKind::RateLimited`]: crate::ErrorKind::RateLimited
/// [`ErrorKind::QuotaExceeded`]: crate::ErrorKind::QuotaExceeded
/// [`ErrorKind::InvalidRequest`]: crate::ErrorKind::InvalidRequest
pub fn classify_sse_event(data: &[u8]) -> Option<Error> {
    use crate::ErrorKind;
    let data = data.trim_ascii();
    if !data.starts_with(b"{") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    value.as_object()?.get("error")?;
    let api = crate::parse::parse_error_body(data)?;
    let is = |s: &str| api.error_type.as_deref() == Some(s) || api.code.as_deref() == Some(s);
    let kind = if api.is_quota() {
        ErrorKind::QuotaExceeded
    } else if is("rate_limit_exceeded") || is("requests") || is("tokens") {
        ErrorKind::RateLimited
    } else if is("invalid_request_error") {
        ErrorKind::InvalidRequest
    } else {
        ErrorKind::ServerError
    };
    tracing::debug!(kind = %kind, "classified an error event inside a 200 stream");
    Some(
        Error::new(kind)
            .with_should_retry(false)
            .with_detail("error event inside a 200 event stream; not retried automatically")
            .with_api_error(api),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::{service_fn, ServiceExt};

    #[tokio::test]
    async fn success_passes_with_snapshot() {
        let svc = Classify::new(service_fn(|_req: Request<()>| async {
            Ok::<_, std::io::Error>(
                Response::builder()
                    .header("x-ratelimit-remaining-requests", "7")
                    .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                    .unwrap(),
            )
        }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            res.extensions()
                .get::<RateLimitSnapshot>()
                .unwrap()
                .remaining_requests,
            Some(7)
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"ok\":true}");
    }

    #[tokio::test]
    async fn oversized_error_body_is_cut_at_limit() {
        // An endless body: the layer must stop at the limit, not read forever.
        let frames = futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(&[b'x'; 1024])))
        });
        let svc =
            ClassifyLayer::new()
                .body_limit(4096)
                .layer(service_fn(move |_req: Request<()>| {
                    let body = StreamBody::new(frames.clone());
                    async move {
                        Ok::<_, std::io::Error>(Response::builder().status(502).body(body).unwrap())
                    }
                }));
        let err = svc.oneshot(Request::new(())).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::ServerError);
        assert!(err.detail().unwrap().starts_with("xxxx"));
    }

    #[tokio::test]
    async fn inner_errors_are_connection_errors() {
        let svc = Classify::new(service_fn(|_req: Request<()>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        }));
        let err = svc.oneshot(Request::new(())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn failing_body_still_classifies() {
        let svc = Classify::new(service_fn(move |_req: Request<()>| {
            let body = StreamBody::new(futures_util::stream::iter(vec![
                Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
                Err(std::io::Error::other("reset")),
            ]));
            async move { Ok::<_, std::io::Error>(Response::builder().status(503).body(body).unwrap()) }
        }));
        let err = svc.oneshot(Request::new(())).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServerError);
        assert_eq!(err.detail(), Some("partial"));
    }
}
