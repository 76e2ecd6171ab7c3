//! [`UsageLayer`] and [`Usage`]: wrap response bodies in [`UsageBody`], and optionally ask
//! streaming chat requests for their usage.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{combinators::BoxBody, combinators::UnsyncBoxBody, Either, Empty, Full};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{Scan, SseScanner, UsageBody};
use super::UsageSlot;
use crate::pace::PaceBody;
use crate::validate::ValidateBody;

/// Builds [`Usage`] services. See the [module docs](super).
///
/// # Default
///
/// Reads usage from every JSON and event-stream answer with a 2xx status; does not change
/// requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageLayer {
    include_usage: bool,
}

impl UsageLayer {
    /// A layer that reads usage and changes no request.
    pub fn new() -> Self {
        UsageLayer::default()
    }

    /// Adds `stream_options: {"include_usage": true}` to streaming chat completions requests
    /// (`"stream": true` to a path ending in `/chat/completions`) that do not ask for it, so
    /// that their usage can be read. Off by default: the caller then receives one more chunk
    /// before `[DONE]`, with empty `choices` and the `usage`, which code that reads
    /// `choices[0]` of every chunk does not expect. Other requests, and bodies that are not
    /// readable bytes or not a JSON object, are sent unchanged.
    ///
    /// ```
    /// use oai_resilience::usage::UsageLayer;
    /// let layer = UsageLayer::new().include_usage(true);
    /// # let _ = layer;
    /// ```
    pub fn include_usage(mut self, yes: bool) -> Self {
        self.include_usage = yes;
        self
    }
}

crate::macros::layer_impl!(UsageLayer => Usage, |l| {
    include_usage: l.include_usage,
});

/// The usage middleware: its responses carry a [`UsageSlot`] and a [`UsageBody`]. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct Usage<S> {
    inner: S,
    include_usage: bool,
}

impl<S> Usage<S> {
    /// Wraps `inner` with a default [`UsageLayer`].
    pub fn new(inner: S) -> Self {
        tower::Layer::layer(&UsageLayer::new(), inner)
    }

    crate::macros::inner_service_accessors!();
}

/// A request body whose bytes [`UsageLayer::include_usage`] can read and replace.
/// Implemented for the bodies the stack takes; a body that cannot be replaced is sent
/// unchanged.
pub trait UsageRequestBody: PaceBody {
    /// Replaces the body's content with `bytes`; `false` if this body cannot.
    fn replace_bytes(&mut self, bytes: Bytes) -> bool;
}

impl UsageRequestBody for Full<Bytes> {
    fn replace_bytes(&mut self, bytes: Bytes) -> bool {
        *self = Full::new(bytes);
        true
    }
}

impl UsageRequestBody for Bytes {
    fn replace_bytes(&mut self, bytes: Bytes) -> bool {
        *self = bytes;
        true
    }
}

impl UsageRequestBody for Vec<u8> {
    fn replace_bytes(&mut self, bytes: Bytes) -> bool {
        *self = bytes.to_vec();
        true
    }
}

impl UsageRequestBody for String {
    fn replace_bytes(&mut self, bytes: Bytes) -> bool {
        match String::from_utf8(bytes.to_vec()) {
            Ok(s) => {
                *self = s;
                true
            }
            Err(_) => false,
        }
    }
}

impl<B: UsageRequestBody> UsageRequestBody for ValidateBody<B> {
    fn replace_bytes(&mut self, bytes: Bytes) -> bool {
        if self.is_buffered() {
            *self = ValidateBody::buffered(bytes);
            return true;
        }
        self.passthrough_mut()
            .is_some_and(|b| b.replace_bytes(bytes))
    }
}

impl<L: UsageRequestBody, R: UsageRequestBody> UsageRequestBody for Either<L, R> {
    fn replace_bytes(&mut self, bytes: Bytes) -> bool {
        match self {
            Either::Left(l) => l.replace_bytes(bytes),
            Either::Right(r) => r.replace_bytes(bytes),
        }
    }
}

/// Bodies whose bytes are not readable: never replaced.
macro_rules! not_replaceable {
    ($($(#[$m:meta])* impl$(<$($g:ident),*>)? for $ty:ty;)*) => {
        $(impl$(<$($g),*>)? UsageRequestBody for $ty {
            fn replace_bytes(&mut self, _bytes: Bytes) -> bool {
                false
            }
        })*
    };
}

not_replaceable! {
    impl for Empty<Bytes>;
    impl<D, E> for BoxBody<D, E>;
    impl<D, E> for UnsyncBoxBody<D, E>;
    impl for ();
    impl for &'static str;
    impl for &'static [u8];
}

/// `body` with `stream_options.include_usage` set to `true`, if it is a JSON object with
/// `"stream": true` that does not set it already; `None` otherwise (also when
/// `stream_options` is there but not an object, or `include_usage` is `false`: the caller's
/// explicit choice stands).
///
/// ```
/// use oai_resilience::usage::include_usage;
///
/// let body = br#"{"model":"m","messages":[],"stream":true}"#;
/// let out = include_usage(body).unwrap();
/// let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
/// assert_eq!(v["stream_options"]["include_usage"], true);
/// assert!(include_usage(br#"{"model":"m","messages":[]}"#).is_none());
/// ```
pub fn include_usage(body: &[u8]) -> Option<Bytes> {
    use serde_json::{Map, Value};
    let mut doc: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if doc.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let options = doc
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()?;
    if options.contains_key("include_usage") {
        return None;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    serde_json::to_vec(&doc).ok().map(Bytes::from)
}

impl<S, B, ResB> Service<Request<B>> for Usage<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    B: UsageRequestBody,
{
    type Response = Response<UsageBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.include_usage && req.uri().path().ends_with("/chat/completions") {
            let body = req.body_mut();
            if let Some(new) = body.with_bytes(|b| b.and_then(include_usage)) {
                body.replace_bytes(new);
            }
        }
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`Usage`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<UsageBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(wrap(resp)))
    }
}

/// Wraps a response's body: scanned (with a [`UsageSlot`] in its extensions) if it is a
/// successful JSON or event-stream answer without a content encoding, passed through
/// otherwise.
fn wrap<B>(resp: Response<B>) -> Response<UsageBody<B>> {
    let kind = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().as_bytes());
    // A compressed body (which hyper does not decode) cannot be read as it passes.
    let encoded = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let scan = match kind {
        _ if !resp.status().is_success() || encoded => Scan::Off,
        Some(v) if starts_with_ignore_case(v, b"application/json") => Scan::Json(Vec::new()),
        Some(v) if starts_with_ignore_case(v, b"text/event-stream") => {
            Scan::Sse(SseScanner::default())
        }
        _ => Scan::Off,
    };
    let (mut parts, body) = resp.into_parts();
    let body = match scan {
        Scan::Off => UsageBody::passthrough(body),
        scan => {
            let slot = UsageSlot::default();
            parts.extensions.insert(slot.clone());
            UsageBody::scanning(body, scan, slot)
        }
    };
    Response::from_parts(parts, body)
}

/// Whether `value` starts with `prefix`, ASCII case ignored.
fn starts_with_ignore_case(value: &[u8], prefix: &[u8]) -> bool {
    value
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}
