//! One route: a name, an optional model, and what serves it; the body a route can rewrite; the
//! response extension that names the route.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Either, Empty, Full, StreamBody};

use crate::pace::PaceBody;
use crate::retry::ReplayBody;

/// One upstream of a [`Fallback`](super::Fallback): a name (for [`ServedBy`] and the error
/// list), an optional model that replaces the body's `model`, and `T`, the route's full
/// stack (a service in [`Fallback`](super::Fallback), a layer such as an
/// [`OpenAiLayer`](crate::OpenAiLayer) in [`FallbackLayer`](super::FallbackLayer)).
///
/// ```
/// use oai_resilience::fallback::Route;
/// use oai_resilience::OpenAiLayer;
///
/// let cheaper = Route::new("mini", OpenAiLayer::new()).model("gpt-4o-mini");
/// assert_eq!(cheaper.name(), "mini");
/// assert_eq!(cheaper.model_name(), Some("gpt-4o-mini"));
/// ```
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub(super) name: Arc<str>,
    pub(super) model: Option<Arc<str>>,
    pub(super) inner: T,
}

impl<T> Route<T> {
    /// A route named `name` through `inner`, sending the body as it is.
    pub fn new(name: impl Into<Arc<str>>, inner: T) -> Self {
        Route {
            name: name.into(),
            model: None,
            inner,
        }
    }

    /// Sends the calls with `model` as the JSON body's `model` (a declared cheaper model, or
    /// the name a deployment knows the model by). The body must be a JSON object whose bytes
    /// the route can read ([`RouteBody`]); a body that is not is never sent to this route:
    /// the route's error is [`ErrorKind::InvalidParameter`](crate::ErrorKind::InvalidParameter)
    /// (nothing sent) and the call moves on to the next route.
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model this route sends, if it replaces the body's.
    pub fn model_name(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// What serves the route.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The same route through `f(inner)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Route<U> {
        Route {
            name: self.name,
            model: self.model,
            inner: f(self.inner),
        }
    }
}

/// The response extension that names the route that served a call.
///
/// ```
/// use oai_resilience::fallback::ServedBy;
///
/// let mut res = http::Response::new(());
/// res.extensions_mut().insert(ServedBy::new("azure-eu", 1));
/// let served = res.extensions().get::<ServedBy>().unwrap();
/// assert_eq!((served.route(), served.index()), ("azure-eu", 1));
/// assert!(served.is_fallback());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedBy {
    route: Arc<str>,
    index: usize,
}

impl ServedBy {
    /// Route `route`, at `index` in the list (0: the first).
    pub fn new(route: impl Into<Arc<str>>, index: usize) -> Self {
        ServedBy {
            route: route.into(),
            index,
        }
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Its place in the list of routes (0: the first).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether a route other than the first served the call.
    pub fn is_fallback(&self) -> bool {
        self.index > 0
    }
}

/// A request body that fallback routes can send to several routes: replayable
/// ([`ReplayBody`]), and, for a route that declares a [`model`](Route::model), rewritable.
///
/// Implemented for the buffered bodies (`Full<Bytes>`, `Bytes`, `Vec<u8>`, `String`), for
/// `Empty<Bytes>` and `()` (no JSON to rewrite), and for the streamed bodies (`BoxBody`,
/// `UnsyncBoxBody`, `StreamBody`), which go to the first route only. A custom body implements
/// [`with_model`](Self::with_model), or returns `None` from it.
///
/// ```
/// use bytes::Bytes;
/// use oai_resilience::fallback::RouteBody;
///
/// let body = Bytes::from_static(br#"{"model":"gpt-4o","input":"hi"}"#);
/// let cheaper = body.with_model("gpt-4o-mini").unwrap();
/// let json: serde_json::Value = serde_json::from_slice(&cheaper).unwrap();
/// assert_eq!(json["model"], "gpt-4o-mini");
/// assert_eq!(json["input"], "hi");
/// assert!(Bytes::from_static(b"not json").with_model("gpt-4o-mini").is_none());
/// ```
pub trait RouteBody: ReplayBody {
    /// A copy of this body whose JSON object has `model` as its `model`, or `None` if the body
    /// is not a JSON object available as bytes.
    fn with_model(&self, model: &str) -> Option<Self>;
}

/// `body` (a JSON object) with `model` as its `model`.
pub(super) fn set_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).ok()?;
    object.insert("model".into(), model.into());
    serde_json::to_vec(&object).ok()
}

impl RouteBody for Full<Bytes> {
    fn with_model(&self, model: &str) -> Option<Self> {
        let mut copy = self.clone();
        copy.with_bytes(|b| set_model(b?, model))
            .map(|v| Full::new(Bytes::from(v)))
    }
}

impl RouteBody for Bytes {
    fn with_model(&self, model: &str) -> Option<Self> {
        set_model(self, model).map(Bytes::from)
    }
}

impl RouteBody for Vec<u8> {
    fn with_model(&self, model: &str) -> Option<Self> {
        set_model(self, model)
    }
}

impl RouteBody for String {
    fn with_model(&self, model: &str) -> Option<Self> {
        set_model(self.as_bytes(), model).and_then(|v| String::from_utf8(v).ok())
    }
}

impl<L: RouteBody, R: RouteBody> RouteBody for Either<L, R> {
    fn with_model(&self, model: &str) -> Option<Self> {
        match self {
            Either::Left(l) => l.with_model(model).map(Either::Left),
            Either::Right(r) => r.with_model(model).map(Either::Right),
        }
    }
}

impl RouteBody for Empty<Bytes> {
    fn with_model(&self, _model: &str) -> Option<Self> {
        None
    }
}

impl RouteBody for () {
    fn with_model(&self, _model: &str) -> Option<Self> {
        None
    }
}

impl<D, E> RouteBody for BoxBody<D, E> {
    fn with_model(&self, _model: &str) -> Option<Self> {
        None
    }
}

impl<D, E> RouteBody for UnsyncBoxBody<D, E> {
    fn with_model(&self, _model: &str) -> Option<Self> {
        None
    }
}

impl<S> RouteBody for StreamBody<S> {
    fn with_model(&self, _model: &str) -> Option<Self> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_rewrites_through_the_side_it_holds() {
        type Body = Either<Bytes, UnsyncBoxBody<Bytes, std::convert::Infallible>>;
        let json: Body = Either::Left(Bytes::from_static(br#"{"model":"gpt-4o"}"#));
        match json.with_model("gpt-4o-mini") {
            Some(Either::Left(b)) => assert_eq!(&b[..], br#"{"model":"gpt-4o-mini"}"#),
            other => panic!("{other:?}"),
        }
        let not_json: Body = Either::Left(Bytes::from_static(b"not json"));
        assert!(not_json.with_model("gpt-4o-mini").is_none());
        let streamed: Body = Either::Right(http_body_util::BodyExt::boxed_unsync(Full::new(
            Bytes::from_static(b"{}"),
        )));
        assert!(streamed.with_model("gpt-4o-mini").is_none());
    }

    #[test]
    fn the_model_is_replaced_and_the_rest_kept() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":2}"#;
        let full = Full::new(Bytes::from_static(body));
        let out = full.with_model("gpt-4o-mini").unwrap();
        let bytes = {
            let mut out = out;
            out.with_bytes(|b| Bytes::copy_from_slice(b.unwrap()))
        };
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["model"], "gpt-4o-mini");
        assert_eq!(json["messages"][0]["content"], "hi");
        assert_eq!(json["n"], 2);
        // A body without a model gets one; what is not a JSON object gets none.
        assert!(String::from(r#"{"input":"x"}"#)
            .with_model("m")
            .is_some_and(|s| s.contains(r#""model":"m""#)));
        for bad in [&b"[1,2]"[..], b"", b"{", b"\"model\""] {
            assert!(bad.to_vec().with_model("m").is_none(), "{bad:?}");
        }
        assert!(().with_model("m").is_none());
        assert!(Empty::<Bytes>::new().with_model("m").is_none());
    }
}
