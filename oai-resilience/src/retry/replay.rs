//! Replaying a request: bodies that can be cloned cheaply are re-sent; others fail loudly.

use bytes::Bytes;
use http::Request;
use http_body_util::{
    combinators::BoxBody, combinators::UnsyncBoxBody, Either, Empty, Full, StreamBody,
};

/// A request body that may (or may not) be replayed for a retry.
///
/// A buffered body ([`Full`], [`Empty`], [`Bytes`], [`String`], `Vec<u8>`, `()`, static
/// slices) clones cheaply and is replayed. A streamed body ([`BoxBody`], [`UnsyncBoxBody`],
/// [`StreamBody`]) cannot be: [`try_clone_body`](ReplayBody::try_clone_body) returns `None`,
/// and the first time a retry would be needed the call fails with
/// [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable). It is never re-sent with an
/// empty body, and retrying is never silently switched off.
///
/// A custom body type implements the one method:
///
/// ```
/// use oai_resilience::retry::ReplayBody;
///
/// #[derive(Clone)]
/// struct JsonBody(bytes::Bytes);
///
/// impl ReplayBody for JsonBody {
///     fn try_clone_body(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// let body = JsonBody(bytes::Bytes::from_static(b"{}"));
/// assert_eq!(body.try_clone_body().unwrap().0, body.0);
/// ```
pub trait ReplayBody: Sized {
    /// A copy to send again, or `None` if this body cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

impl<D: Clone> ReplayBody for Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl<L: ReplayBody, R: ReplayBody> ReplayBody for Either<L, R> {
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            Either::Left(l) => l.try_clone_body().map(Either::Left),
            Either::Right(r) => r.try_clone_body().map(Either::Right),
        }
    }
}

impl<D, E> ReplayBody for BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<S> ReplayBody for StreamBody<S> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

macro_rules! clone_replay {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

clone_replay!(Bytes, String, Vec<u8>, (), &'static str, &'static [u8]);

/// A copy of `req` (method, URI, version, headers, extensions and body) for a replay, or
/// `None` if its body cannot be replayed.
pub fn clone_request<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().try_clone_body()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_bodies_replay_streams_do_not() {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("x-a", "1")
            .extension(7u8)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let copy = clone_request(&req).unwrap();
        assert_eq!(copy.method(), "POST");
        assert_eq!(copy.uri(), "/v1/chat/completions");
        assert_eq!(copy.headers()["x-a"], "1");
        assert_eq!(copy.extensions().get::<u8>(), Some(&7));
        let boxed: BoxBody<Bytes, std::io::Error> = BoxBody::default();
        assert!(clone_request(&Request::new(boxed)).is_none());
        let either: Either<Full<Bytes>, BoxBody<Bytes, std::io::Error>> =
            Either::Left(Full::default());
        assert!(either.try_clone_body().is_some());
        assert!(String::from("x").try_clone_body().is_some());
    }
}
