//! [`ValidateLayer`]: validate the JSON body of known routes before anything is sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, Method, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::validator::{Rule, Validator};
use crate::error::{BoxError, Error, ErrorKind};
use crate::observe::{reject, Observer, RequestModel, SharedObserver};

/// The default limit on a request body that the layer buffers to validate: 32 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Builds [`Validate`] services. See the [module docs](super).
///
/// # Default
///
/// [`Validator::new`] (no base path, not strict, no custom rules) and a
/// [`DEFAULT_BODY_LIMIT`] of 32 MiB.
#[derive(Debug, Clone)]
pub struct ValidateLayer {
    validator: Arc<Validator>,
    body_limit: usize,
    observer: Option<SharedObserver>,
}

impl ValidateLayer {
    /// A layer with the default settings.
    pub fn new() -> Self {
        ValidateLayer::with_validator(Validator::new())
    }

    /// A layer that routes and checks with `validator`.
    pub fn with_validator(validator: Validator) -> Self {
        ValidateLayer {
            validator: Arc::new(validator),
            body_limit: DEFAULT_BODY_LIMIT,
            observer: None,
        }
    }

    /// Also accepts routes under `prefix`; see [`Validator::base_path`].
    pub fn base_path(mut self, prefix: impl Into<String>) -> Self {
        let v = Arc::make_mut(&mut self.validator);
        *v = std::mem::take(v).base_path(prefix);
        self
    }

    /// Rejects unknown routes; see [`Validator::strict`].
    pub fn strict(mut self, strict: bool) -> Self {
        let v = Arc::make_mut(&mut self.validator);
        *v = std::mem::take(v).strict(strict);
        self
    }

    /// Adds a user rule for a route; see [`Validator::rule`].
    pub fn rule(mut self, method: Method, path: &str, rule: impl Rule) -> Self {
        let v = Arc::make_mut(&mut self.validator);
        *v = std::mem::take(v).rule(method, path, rule);
        self
    }

    /// Buffers at most `limit` bytes of a body to validate; a larger body fails with
    /// [`ErrorKind::RequestTooLarge`] and is not sent.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Registers `observer`: it learns of each refused request
    /// ([`Observer::local_rejection`]), and each validated request carries its model as a
    /// [`RequestModel`] extension for the retry layer's events. See [`crate::observe`].
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The validator.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }
}

crate::macros::default_via_new!(ValidateLayer);

crate::macros::layer_impl!(ValidateLayer => Validate, |l| {
    validator: l.validator.clone(),
    body_limit: l.body_limit,
    observer: l.observer.clone(),
});

/// The validation middleware. See the [module docs](super).
///
/// It takes `Request<B>` for any [`Body`] `B` and calls the inner service with
/// `Request<ValidateBody<B>>`: the bytes it buffered for a validated route, or the untouched
/// body `B` for a route it does not validate (unknown routes and non-JSON content types never
/// pay for buffering). Trailers of a buffered body are dropped.
///
/// Its error is [`Error`]: [`ErrorKind::InvalidParameter`] for a body that breaks a rule (with
/// every violation), and in strict mode for an unknown route; [`ErrorKind::RequestTooLarge`]
/// for a body above the limit; [`ErrorKind::Internal`] if reading the body fails; the inner
/// service's errors through [`Error::from_service_error`].
#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
    validator: Arc<Validator>,
    body_limit: usize,
    observer: Option<SharedObserver>,
}

impl<S> Validate<S> {
    /// Wraps `inner` with the default settings.
    pub fn new(inner: S) -> Self {
        ValidateLayer::new().layer(inner)
    }

    crate::macros::inner_service_accessors!();
}

fn is_json(headers: &http::HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        // SDKs always send one; without it the body is still checked.
        None => true,
        Some(v) => v
            .to_str()
            .map(|s| {
                let mime = s.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
                    || mime.to_ascii_lowercase().ends_with("+json")
            })
            .unwrap_or(false),
    }
}

fn too_large(limit: usize) -> Error {
    Error::new(ErrorKind::RequestTooLarge).with_detail(format!(
        "the request body exceeds the validation layer's limit of {limit} bytes; nothing was sent"
    ))
}

impl<S, B> Service<Request<B>> for Validate<S>
where
    S: Service<Request<ValidateBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service_error)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let known = self
            .validator
            .route(req.method(), req.uri().path())
            .is_some();
        if !known {
            if self.validator.is_strict() {
                let err = self.validator.unknown_route(req.method(), req.uri().path());
                reject(self.observer.as_deref(), err.kind(), Some(req.uri().path()));
                return ResponseFuture::failed(err);
            }
            return ResponseFuture::call(self.inner.call(req.map(ValidateBody::passthrough)));
        }
        if !is_json(req.headers()) {
            return ResponseFuture::call(self.inner.call(req.map(ValidateBody::passthrough)));
        }
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let lower = body.size_hint().lower();
        if lower.max(declared.unwrap_or(0)) > self.body_limit as u64 {
            reject(
                self.observer.as_deref(),
                ErrorKind::RequestTooLarge,
                Some(parts.uri.path()),
            );
            return ResponseFuture::failed(too_large(self.body_limit));
        }
        let capacity = body
            .size_hint()
            .exact()
            .or(declared)
            .unwrap_or(0)
            .min(self.body_limit as u64) as usize;
        // Take the service that was driven to readiness; leave a clone for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Collect {
                body,
                parts: Some(parts),
                buf: BytesMut::with_capacity(capacity),
                inner: Some(inner),
                validator: self.validator.clone(),
                limit: self.body_limit,
                observer: self.observer.clone(),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Validate`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ValidateBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ValidateBody<B>>>,
    {
        Collect {
            #[pin]
            body: B,
            parts: Option<http::request::Parts>,
            buf: BytesMut,
            inner: Option<S>,
            validator: Arc<Validator>,
            limit: usize,
            observer: Option<SharedObserver>,
        },
        Call {
            #[pin]
            fut: S::Future,
        },
        Failed {
            err: Option<Error>,
        },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ValidateBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ValidateBody<B>>>,
{
    fn call(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Call { fut },
        }
    }

    fn failed(err: Error) -> Self {
        ResponseFuture {
            state: State::Failed { err: Some(err) },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<ValidateBody<B>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Call { fut } => {
                    return fut.poll(cx).map_err(Error::from_service_error);
                }
                StateProj::Failed { err } => {
                    let err = err.take().unwrap_or_else(|| {
                        Error::new(ErrorKind::Internal).with_detail("polled after completion")
                    });
                    return Poll::Ready(Err(err));
                }
                StateProj::Collect {
                    mut body,
                    parts,
                    buf,
                    inner,
                    validator,
                    limit,
                    observer,
                } => {
                    let frame = ready!(body.as_mut().poll_frame(cx));
                    match frame {
                        Some(Ok(frame)) => {
                            if let Ok(mut data) = frame.into_data() {
                                if buf.len() + data.remaining() > *limit {
                                    let err = too_large(*limit);
                                    if let Some(p) = parts.as_ref() {
                                        reject(observer.as_deref(), err.kind(), Some(p.uri.path()));
                                    }
                                    this.state.set(State::Failed { err: Some(err) });
                                    continue;
                                }
                                while data.has_remaining() {
                                    let chunk = data.chunk();
                                    let n = chunk.len();
                                    buf.put_slice(chunk);
                                    data.advance(n);
                                }
                            }
                        }
                        Some(Err(e)) => {
                            let err = Error::new(ErrorKind::Internal)
                                .with_detail("reading the request body failed; nothing was sent")
                                .with_source(e);
                            this.state.set(State::Failed { err: Some(err) });
                        }
                        None => {
                            let bytes = std::mem::take(buf).freeze();
                            let (Some(parts), Some(mut svc)) = (parts.take(), inner.take()) else {
                                let err = Error::new(ErrorKind::Internal)
                                    .with_detail("polled after completion");
                                this.state.set(State::Failed { err: Some(err) });
                                continue;
                            };
                            let result =
                                validator.validate(&parts.method, parts.uri.path(), &bytes);
                            match result {
                                Ok(()) => {
                                    let mut parts = parts;
                                    if observer.is_some() || crate::retry::spans_enabled() {
                                        if let Some(m) = crate::observe::model_of(&bytes) {
                                            parts.extensions.insert(RequestModel(m));
                                        }
                                    }
                                    let req =
                                        Request::from_parts(parts, ValidateBody::buffered(bytes));
                                    let fut = svc.call(req);
                                    this.state.set(State::Call { fut });
                                }
                                Err(err) => {
                                    reject(observer.as_deref(), err.kind(), Some(parts.uri.path()));
                                    this.state.set(State::Failed { err: Some(err) })
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pin_project! {
    /// The request body the inner service of [`Validate`] receives: the bytes the layer
    /// buffered and validated, or the original body of a route it passed through.
    ///
    /// Its data is [`Bytes`] and its error a [`BoxError`]. It is `Clone` when `B` is (a
    /// buffered body clones its bytes cheaply), so retries can replay it.
    #[derive(Debug, Clone)]
    pub struct ValidateBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug, Clone)]
    enum Kind<B> {
        Buffered { bytes: Option<Bytes> },
        Passthrough { #[pin] body: B },
    }
}

impl<B> ValidateBody<B> {
    /// A body of bytes (what the layer sends for a validated route).
    pub fn buffered(bytes: Bytes) -> Self {
        ValidateBody {
            kind: Kind::Buffered {
                bytes: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }

    /// The original body, passed through untouched.
    pub fn passthrough(body: B) -> Self {
        ValidateBody {
            kind: Kind::Passthrough { body },
        }
    }

    /// The buffered bytes, for a validated route (`None` for a passed-through body, and once
    /// the bytes have been read).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Buffered { bytes } => bytes.as_ref(),
            Kind::Passthrough { .. } => None,
        }
    }

    /// Whether the layer buffered (and validated) this body.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// The passed-through body, if this is one.
    pub(crate) fn passthrough_ref(&self) -> Option<&B> {
        match &self.kind {
            Kind::Passthrough { body } => Some(body),
            Kind::Buffered { .. } => None,
        }
    }

    /// The passed-through body, mutably, if this is one.
    pub(crate) fn passthrough_mut(&mut self) -> Option<&mut B> {
        match &mut self.kind {
            Kind::Passthrough { body } => Some(body),
            Kind::Buffered { .. } => None,
        }
    }

    /// The buffered bytes (`Ok`, `None` once read or when empty), or the passed-through body
    /// (`Err`). For the adapters, which send the body with another client's body type.
    #[cfg(any(feature = "reqwest", feature = "async-openai"))]
    pub(crate) fn into_buffered_or_passthrough(self) -> Result<Option<Bytes>, B> {
        match self.kind {
            Kind::Buffered { bytes } => Ok(bytes),
            Kind::Passthrough { body } => Err(body),
        }
    }
}

impl<B> Body for ValidateBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Buffered { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            KindProj::Passthrough { body } => {
                let frame = ready!(body.poll_frame(cx));
                Poll::Ready(frame.map(|f| {
                    f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                        .map_err(Into::into)
                }))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { bytes } => bytes.is_none(),
            Kind::Passthrough { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Passthrough { body } => body.size_hint(),
        }
    }
}
