//! What the two adapters share: the request body that goes through the stack, and the
//! conversions between reqwest's request and response and `http`'s.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use reqwest::Url;

use crate::error::{BoxError, Error, ErrorKind};
use crate::pace::PaceBody;
use crate::retry::ReplayBody;
use crate::validate::ValidateBody;

/// The request body an adapter sends through the stack.
///
/// A body whose bytes reqwest holds (what `RequestBuilder::body` makes of a `String`,
/// `Vec<u8>`, `Bytes`, and what JSON bodies are) becomes [`Bytes`], taken without a copy and
/// replayed by the retry layer. A streamed body (`Body::wrap_stream`, a multipart form) is
/// sent once: the retry layer cannot replay it and says so with
/// [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable) when a retry would have
/// been needed. With async-openai, a streamed body is replayed by building the request again
/// from its `HttpRequestFactory`.
pub(crate) struct AdapterBody {
    kind: Kind,
}

enum Kind {
    /// Bytes, replayable (`None` once read).
    Bytes(Option<Bytes>),
    /// A streamed body, sent once.
    Once(reqwest::Body),
    /// A streamed body that the request factory builds again for each replay: `first` is the
    /// body of the request built for the first attempt, `None` in a replay.
    #[cfg(feature = "async-openai")]
    Factory {
        first: Option<reqwest::Body>,
        factory: async_openai::middleware::HttpRequestFactory,
    },
}

impl std::fmt::Debug for AdapterBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Bytes(b) => {
                return f
                    .debug_tuple("Bytes")
                    .field(&b.as_ref().map(Bytes::len))
                    .finish()
            }
            Kind::Once(_) => "Once",
            #[cfg(feature = "async-openai")]
            Kind::Factory { .. } => "Factory",
        };
        f.write_str(kind)
    }
}

impl AdapterBody {
    fn bytes(bytes: Bytes) -> Self {
        AdapterBody {
            kind: Kind::Bytes(Some(bytes)),
        }
    }

    /// `body` as bytes when reqwest holds its bytes, else as a body sent once (or rebuilt by
    /// `factory`).
    fn new(
        body: reqwest::Body,
        #[cfg(feature = "async-openai")] factory: Option<
            async_openai::middleware::HttpRequestFactory,
        >,
    ) -> Self {
        match take_bytes(body) {
            Ok(bytes) => AdapterBody::bytes(bytes),
            #[cfg(feature = "async-openai")]
            Err(body) => match factory {
                Some(factory) => AdapterBody {
                    kind: Kind::Factory {
                        first: Some(body),
                        factory,
                    },
                },
                None => AdapterBody {
                    kind: Kind::Once(body),
                },
            },
            #[cfg(not(feature = "async-openai"))]
            Err(body) => AdapterBody {
                kind: Kind::Once(body),
            },
        }
    }
}

/// The bytes of a body that reqwest holds as bytes, without a copy; a streamed body back.
fn take_bytes(mut body: reqwest::Body) -> Result<Bytes, reqwest::Body> {
    if body.as_bytes().is_none() {
        return Err(body);
    }
    // A body of bytes yields them whole, at once, in one frame.
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => Ok(Bytes::new()),
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(bytes) if body.is_end_stream() => Ok(bytes),
            // Not what reqwest does; keep what was read and the rest as a stream.
            Ok(_) | Err(_) => Err(body),
        },
        Poll::Ready(Some(Err(_))) | Poll::Pending => Err(body),
    }
}

impl Body for AdapterBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = match &mut self.get_mut().kind {
            Kind::Bytes(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Once(body) => body,
            #[cfg(feature = "async-openai")]
            Kind::Factory {
                first: Some(body), ..
            } => body,
            #[cfg(feature = "async-openai")]
            Kind::Factory { first: None, .. } => return Poll::Ready(None),
        };
        Pin::new(body)
            .poll_frame(cx)
            .map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Bytes(bytes) => bytes.is_none(),
            Kind::Once(body) => body.is_end_stream(),
            #[cfg(feature = "async-openai")]
            Kind::Factory { first, .. } => first.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Once(body) => body.size_hint(),
            #[cfg(feature = "async-openai")]
            Kind::Factory { first, .. } => first
                .as_ref()
                .map_or_else(SizeHint::default, Body::size_hint),
        }
    }
}

impl ReplayBody for AdapterBody {
    fn try_clone_body(&self) -> Option<Self> {
        match &self.kind {
            Kind::Bytes(bytes) => Some(AdapterBody {
                kind: Kind::Bytes(bytes.clone()),
            }),
            Kind::Once(_) => None,
            #[cfg(feature = "async-openai")]
            Kind::Factory { factory, .. } => Some(AdapterBody {
                kind: Kind::Factory {
                    first: None,
                    factory: factory.clone(),
                },
            }),
        }
    }
}

impl PaceBody for AdapterBody {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        match &self.kind {
            Kind::Bytes(bytes) => f(Some(bytes.as_deref().unwrap_or_default())),
            _ => f(None),
        }
    }
}

/// What the attempts of a call take from the call's `reqwest::Request` that `http::Request`
/// has no field for: its URL and its per-request timeout.
///
/// An attempt whose URI the stack left as it was (reqwest's URLs are absolute, so the base
/// URL layer leaves them) is sent to this URL, without formatting the URI and parsing it
/// again as a `Url` (what `reqwest::Request::try_from(http::Request)` does, about a third of
/// what the adapter added to a call); the URL it would parse is this one.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The request's URL; also the URL of an error response made for the call.
    pub(crate) url: Url,
    timeout: Option<Duration>,
}

/// The URI given to reqwest's conversion in place of an attempt's whose URL is the call's
/// (which then replaces the URL parsed from it): absolute, and short to parse.
const PLACEHOLDER_URI: &str = "a://b";

/// The URL of a response that is not the call's (a redirect was followed), which
/// `http::Response` has no field for.
#[derive(Debug, Clone)]
struct ResponseUrl(Url);

/// `req` as the request the stack takes, and what its attempts take from it. With
/// async-openai, `factory` rebuilds a streamed body.
pub(crate) fn request_into_http(
    req: reqwest::Request,
    #[cfg(feature = "async-openai")] factory: Option<async_openai::middleware::HttpRequestFactory>,
) -> Result<(http::Request<AdapterBody>, Origin), reqwest::Error> {
    let origin = Origin {
        url: req.url().clone(),
        timeout: req.timeout().copied(),
    };
    // The conversion moves the method, the headers and reqwest's extensions (its
    // per-request settings), and parses the URI from the URL.
    let req: http::Request<reqwest::Body> = req.try_into()?;
    let (parts, body) = req.into_parts();
    #[cfg(feature = "async-openai")]
    let body = AdapterBody::new(body, factory);
    #[cfg(not(feature = "async-openai"))]
    let body = AdapterBody::new(body);
    Ok((http::Request::from_parts(parts, body), origin))
}

/// Whether `uri` is the URI that `url` was converted to: formatted, it is `url`'s text (so
/// `Url::parse` of it would give `url` back).
fn is_uri_of(uri: &http::Uri, url: &Url) -> bool {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    // `Uri`'s `Display`: scheme, "://", authority, path, "?" query.
    let rest = url
        .as_str()
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .and_then(|r| r.strip_prefix(authority.as_str()))
        .and_then(|r| r.strip_prefix(uri.path()));
    match (rest, uri.query()) {
        (Some(rest), Some(query)) => rest.strip_prefix('?') == Some(query),
        (Some(rest), None) => rest.is_empty(),
        (None, _) => false,
    }
}

/// The request an attempt sends: the stack's method, URL and headers with the body the
/// validation layer buffered, the bytes, the streamed body, or (a replay of a streamed
/// body, with async-openai) the body of a request built again from the factory, whose
/// `content-type` (a multipart boundary) and `content-length` it takes too; the call's URL
/// when the stack left the URI as it was, and its timeout.
pub(crate) async fn request_from_http(
    req: http::Request<ValidateBody<AdapterBody>>,
    origin: &Origin,
) -> Result<reqwest::Request, Error> {
    let (mut parts, body) = req.into_parts();
    let body = match body.into_buffered_or_passthrough() {
        Ok(bytes) => reqwest::Body::from(bytes.unwrap_or_default()),
        Err(body) => match body.kind {
            Kind::Bytes(bytes) => reqwest::Body::from(bytes.unwrap_or_default()),
            Kind::Once(body) => body,
            #[cfg(feature = "async-openai")]
            Kind::Factory {
                first: Some(body), ..
            } => body,
            #[cfg(feature = "async-openai")]
            Kind::Factory {
                first: None,
                factory,
            } => {
                let mut fresh = factory.build().await.map_err(|e| {
                    Error::new(ErrorKind::Internal)
                        .with_detail("the request could not be built again for a retry")
                        .with_source(e)
                })?;
                for name in [http::header::CONTENT_TYPE, http::header::CONTENT_LENGTH] {
                    match fresh.headers_mut().remove(&name) {
                        Some(value) => parts.headers.insert(name, value),
                        None => parts.headers.remove(name),
                    };
                }
                fresh.body_mut().take().unwrap_or_default()
            }
        },
    };
    let url = is_uri_of(&parts.uri, &origin.url).then(|| origin.url.clone());
    let mut req = match url {
        // Nothing that only the conversion can carry: the request as it is built.
        Some(url) if parts.extensions.is_empty() => {
            let mut req = reqwest::Request::new(parts.method, url);
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers;
            *req.body_mut() = Some(body);
            req
        }
        // reqwest's extensions (a per-request timeout, for one) reach a `reqwest::Request`
        // only through the conversion, which parses the URI: give it one that is short to
        // parse, then the URL.
        Some(url) => {
            parts.uri = http::Uri::from_static(PLACEHOLDER_URI);
            let mut req = convert(http::Request::from_parts(parts, body))?;
            *req.url_mut() = url;
            req
        }
        None => convert(http::Request::from_parts(parts, body))?,
    };
    if let Some(t) = origin.timeout {
        *req.timeout_mut() = Some(t);
    }
    Ok(req)
}

/// `reqwest::Request::try_from`, its failure as an internal error.
fn convert(req: http::Request<reqwest::Body>) -> Result<reqwest::Request, Error> {
    reqwest::Request::try_from(req).map_err(|e| {
        Error::new(ErrorKind::Internal)
            .with_detail("the request could not be converted back to a reqwest::Request")
            .with_source(e)
    })
}

/// What reqwest answered, as the response the stack passes up, with its URL when it is not
/// the call's (`origin`'s); its body still streams.
pub(crate) fn response_into_http(
    res: reqwest::Response,
    origin: &Origin,
) -> http::Response<reqwest::Body> {
    let redirected = (*res.url() != origin.url).then(|| ResponseUrl(res.url().clone()));
    let mut res = http::Response::from(res);
    if let Some(url) = redirected {
        res.extensions_mut().insert(url);
    }
    res
}

/// A response of the stack as a `reqwest::Response`, with its URL (else `url`, the call's);
/// its body still streams.
pub(crate) fn response_from_http<B: Into<reqwest::Body>>(
    mut res: http::Response<B>,
    url: Url,
) -> reqwest::Response {
    use reqwest::ResponseBuilderExt;
    let url = res
        .extensions_mut()
        .remove::<ResponseUrl>()
        .map_or(url, |u| u.0);
    // `reqwest::Response::from` reads its URL from an extension only the builder can set
    // (without it, it parses a placeholder URL).
    let carrier = http::Response::builder()
        .url(url)
        .body(())
        .map(|r| r.into_parts().0.extensions);
    if let Ok(extensions) = carrier {
        res.extensions_mut().extend(extensions);
    }
    reqwest::Response::from(res)
}

/// `err` (an error of the stack) as the response OpenAI would have sent.
pub(crate) fn error_into_response(err: &Error, url: Url) -> reqwest::Response {
    response_from_http(crate::respond::error_response(err), url)
}

/// A reqwest failure to send (no response) as an [`Error`]: a timeout, a request that could
/// not be built (not retried), or a connection failure.
pub(crate) fn transport_error(err: reqwest::Error) -> Error {
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else if err.is_builder() {
        ErrorKind::Internal
    } else {
        ErrorKind::Connection
    };
    Error::new(kind).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_taken_without_a_copy_and_replayed() {
        let bytes = Bytes::from_static(b"{\"model\":\"gpt-4o-mini\"}");
        let taken = take_bytes(reqwest::Body::from(bytes.clone())).unwrap();
        assert_eq!(taken.as_ptr(), bytes.as_ptr());
        assert!(take_bytes(reqwest::Body::from(Bytes::new()))
            .unwrap()
            .is_empty());

        #[cfg(feature = "async-openai")]
        let mut body = AdapterBody::new(reqwest::Body::from(bytes.clone()), None);
        #[cfg(not(feature = "async-openai"))]
        let mut body = AdapterBody::new(reqwest::Body::from(bytes.clone()));
        let copy = body.try_clone_body().unwrap();
        assert_eq!(copy.size_hint().exact(), Some(bytes.len() as u64));
        assert_eq!(body.with_bytes(|b| b.map(<[u8]>::len)), Some(bytes.len()));
    }

    #[test]
    fn a_streamed_body_is_not_replayable() {
        let stream = reqwest::Body::wrap(http_body_util::Full::new(Bytes::from_static(b"x")));
        let stream = take_bytes(stream).unwrap_err();
        #[cfg(feature = "async-openai")]
        let mut body = AdapterBody::new(stream, None);
        #[cfg(not(feature = "async-openai"))]
        let mut body = AdapterBody::new(stream);
        assert!(body.try_clone_body().is_none());
        assert!(body.with_bytes(|b| b.is_none()));
    }

    #[test]
    fn the_uri_of_a_url_is_recognised_and_any_other_is_not() {
        let url = Url::parse("http://127.0.0.1:8080/v1/chat/completions?a=b%20c").unwrap();
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_uri_of(&uri(url.as_str()), &url));
        for other in [
            "http://127.0.0.1:8080/v1/chat/completions",
            "http://127.0.0.1:8080/v1/chat/completions?a=b",
            "http://127.0.0.1:8080/v1/chat/completions?a=b%20cd",
            "https://127.0.0.1:8080/v1/chat/completions?a=b%20c",
            "http://127.0.0.1:8081/v1/chat/completions?a=b%20c",
            "http://127.0.0.1:8080/v1/embeddings?a=b%20c",
            "/v1/chat/completions?a=b%20c",
        ] {
            assert!(!is_uri_of(&uri(other), &url), "{other}");
        }
        // A fragment never reaches the URI: such a URL is parsed again, as before.
        let with_fragment = Url::parse("http://127.0.0.1:8080/v1/models#x").unwrap();
        assert!(!is_uri_of(
            &uri("http://127.0.0.1:8080/v1/models"),
            &with_fragment
        ));
        // The placeholder parses as a URL.
        assert!(Url::parse(&uri(PLACEHOLDER_URI).to_string()).is_ok());
    }
}
