//! [`AuthLayer`] and its service [`Auth`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::Request;
use pin_project_lite::pin_project;
use secrecy::zeroize::Zeroize;
use tower_service::Service;

use crate::error::{AuthCause, BoxError, Error, ErrorKind, Violation};
use crate::observe::{Observer, SharedObserver};

use super::check::{check_key_for_host, malformed, KeyRules};
use super::key::{ApiKey, Credentials};
use super::source::{
    provider_error, FetchMode, KeyProvider, KeySource, ProviderFuture, Resolution,
};

/// The `OpenAI-Organization` request header.
pub const OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
/// The `OpenAI-Project` request header.
pub const OPENAI_PROJECT: HeaderName = HeaderName::from_static("openai-project");

/// Which header carries the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>`, as OpenAI expects.
    Bearer,
    /// `<name>: <key>`, the bare key in a named header (Azure OpenAI's `api-key`).
    Named(HeaderName),
}

impl KeyHeader {
    /// Azure OpenAI's `api-key` header.
    pub fn azure() -> Self {
        KeyHeader::Named(HeaderName::from_static("api-key"))
    }

    fn name(&self) -> &HeaderName {
        match self {
            KeyHeader::Bearer => &AUTHORIZATION,
            KeyHeader::Named(n) => n,
        }
    }
}

#[derive(Debug)]
pub(super) struct Config {
    pub(super) source: Option<KeySource>,
    pub(super) rules: KeyRules,
    pub(super) header: KeyHeader,
    pub(super) observer: Option<SharedObserver>,
}

/// Adds and checks API keys before anything is sent. See the [module docs](super).
///
/// For each request:
/// - with the key header already set: the key in it is checked (and the header marked
///   sensitive); the source is not asked and no organization or project header is added;
///   another scheme than `Bearer` (`Basic …`) is passed on unjudged;
/// - otherwise: the source gives the [`Credentials`], the key is checked, and the key header
///   (marked sensitive) plus `OpenAI-Organization` / `OpenAI-Project` (unless already set)
///   are added.
///
/// A failed check ends the call with the error; the inner service is not called. The inner
/// service must be `Clone` (a provider's answer is awaited before the call, so the ready
/// service moves into the response future and a clone takes its place).
///
/// # Default
///
/// [`KeyRules::openai`] and the `Authorization: Bearer` header ([`KeyHeader::Bearer`]).
///
/// `Debug` shows the source kind and, for a static key, only its masked form.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    config: Arc<Config>,
}

impl AuthLayer {
    /// A layer that takes keys from `source`, with [`KeyRules::openai`] and the `Bearer`
    /// header.
    pub fn new(source: impl Into<KeySource>) -> Self {
        AuthLayer::build(Some(source.into()))
    }

    /// A layer with a fixed key.
    pub fn from_key(key: impl Into<ApiKey>) -> Self {
        AuthLayer::new(KeySource::from_key(key))
    }

    /// A layer that reads `OPENAI_API_KEY`, `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID` from the
    /// process environment on each request. Use [`AuthLayer::new`] with an
    /// [`EnvSource`](super::EnvSource) to read other variables or a fake environment.
    pub fn from_env() -> Self {
        AuthLayer::new(KeySource::from_env())
    }

    /// A layer that asks `provider` for the key on each request.
    pub fn from_provider(provider: impl KeyProvider) -> Self {
        AuthLayer::new(KeySource::provider(provider))
    }

    /// A layer without a key source: it only checks the key header that each request already
    /// carries, and fails requests without one with [`ErrorKind::MissingApiKey`].
    pub fn check_only() -> Self {
        AuthLayer::build(None)
    }

    fn build(source: Option<KeySource>) -> Self {
        AuthLayer {
            config: Arc::new(Config {
                source,
                rules: KeyRules::openai(),
                header: KeyHeader::Bearer,
                observer: None,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        // Only called while building: the Arc is not shared yet, or is cloned on write.
        if Arc::get_mut(&mut self.config).is_none() {
            let c = &*self.config;
            self.config = Arc::new(Config {
                source: c.source.clone(),
                rules: c.rules.clone(),
                header: c.header.clone(),
                observer: c.observer.clone(),
            });
        }
        Arc::get_mut(&mut self.config).expect("unique after copy")
    }

    /// Sets the key rules.
    pub fn rules(mut self, rules: KeyRules) -> Self {
        self.config_mut().rules = rules;
        self
    }

    /// Sets the header that carries the key.
    pub fn header(mut self, header: KeyHeader) -> Self {
        self.config_mut().header = header;
        self
    }

    /// Azure OpenAI: the key goes in the `api-key` header and only the universal checks apply
    /// ([`KeyRules::lenient`]).
    pub fn azure(self) -> Self {
        self.header(KeyHeader::azure()).rules(KeyRules::lenient())
    }

    /// Registers `observer`: it learns of each request refused for its key
    /// ([`Observer::local_rejection`]). See [`crate::observe`].
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.config_mut().observer = Some(observer);
        self
    }

    /// The key rules.
    pub fn key_rules(&self) -> &KeyRules {
        &self.config.rules
    }

    pub(super) fn into_config(self) -> Arc<Config> {
        self.config
    }
}

crate::macros::layer_impl!(AuthLayer => Auth, |l| {
    config: l.config.clone(),
});

/// The auth middleware. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Auth<S> {
    crate::macros::inner_service_accessors!();
}

/// The host a request targets: the URI's, else the `Host` header's.
pub(super) fn target_host<B>(req: &Request<B>) -> Option<String> {
    req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// What the request already carries.
pub(super) enum Present {
    /// No key header: the layer adds one.
    Nothing,
    /// A key header that passed the checks (now marked sensitive).
    Checked,
}

/// Checks the key header that the request already has, if any, and marks it sensitive.
pub(super) fn check_present<B>(
    req: &mut Request<B>,
    config: &Config,
    host: Option<&str>,
) -> Result<Present, Error> {
    let name = config.header.name();
    let Some(value) = req.headers_mut().get_mut(name) else {
        return Ok(Present::Nothing);
    };
    value.set_sensitive(true);
    let Ok(text) = value.to_str() else {
        return Err(malformed(
            AuthCause::NonAscii,
            format!("the {name} header has bytes outside visible ASCII"),
        ));
    };
    let key = match config.header {
        KeyHeader::Named(_) => text,
        // `Bearer` alone, or an empty header: the key is empty.
        KeyHeader::Bearer
            if text.trim().is_empty() || text.trim().eq_ignore_ascii_case("bearer") =>
        {
            ""
        }
        KeyHeader::Bearer => match text.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key,
            // Another scheme (`Basic …`, a gateway's own): not ours to judge.
            Some(_) => return Ok(Present::Checked),
            None => {
                return Err(malformed(
                    AuthCause::MissingBearerScheme,
                    "the Authorization header holds a bare token without a scheme",
                ))
            }
        },
    };
    check_key_for_host(key, &config.rules, host)?;
    Ok(Present::Checked)
}

/// Checks the resolved credentials and writes them into the request's headers.
pub(super) fn apply<B>(
    req: &mut Request<B>,
    creds: &Credentials,
    config: &Config,
    host: Option<&str>,
) -> Result<(), Error> {
    let secret = creds.key().expose_secret();
    check_key_for_host(secret, &config.rules, host)?;
    let mut buf = Vec::with_capacity(secret.len() + 7);
    if config.header == KeyHeader::Bearer {
        buf.extend_from_slice(b"Bearer ");
    }
    buf.extend_from_slice(secret.as_bytes());
    let value = HeaderValue::from_bytes(&buf);
    buf.zeroize();
    let mut value = value.map_err(|_| {
        malformed(
            AuthCause::InvalidCharacters,
            "the key has characters that an HTTP header cannot carry",
        )
    })?;
    value.set_sensitive(true);
    let headers = req.headers_mut();
    headers.insert(config.header.name().clone(), value);
    for (name, id) in [
        (OPENAI_ORGANIZATION, creds.organization()),
        (OPENAI_PROJECT, creds.project()),
    ] {
        let Some(id) = id else { continue };
        if headers.contains_key(&name) {
            continue;
        }
        let value = HeaderValue::from_str(id).map_err(|_| {
            Error::new(ErrorKind::InvalidParameter).with_violations(vec![Violation::new(
                name.as_str(),
                "Invalid header value: the id has characters an HTTP header cannot carry",
            )])
        })?;
        headers.insert(name, value);
    }
    tracing::trace!(key = %creds.key(), "auth: key added to the request");
    Ok(())
}

/// The error for a request without a key header when the layer has no source.
pub(super) fn no_source(config: &Config) -> Error {
    Error::new(ErrorKind::MissingApiKey).with_detail(format!(
        "the request has no {} header and the auth layer has no key source",
        config.header.name()
    ))
}

pub(super) fn reject(err: Error) -> Error {
    tracing::debug!(
        kind = %err.kind(),
        cause = ?err.auth_cause(),
        "auth: request rejected locally; nothing sent"
    );
    err
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service_error)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &*self.config;
        let host = target_host(&req);
        let fail = |err: Error, route: &str| {
            crate::observe::reject(config.observer.as_deref(), err.kind(), Some(route));
            ResponseFuture::failed(reject(err))
        };
        match check_present(&mut req, config, host.as_deref()) {
            Err(e) => return fail(e, req.uri().path()),
            Ok(Present::Checked) => return ResponseFuture::calling(self.inner.call(req), None),
            Ok(Present::Nothing) => {}
        }
        let Some(source) = &config.source else {
            return fail(no_source(config), req.uri().path());
        };
        match source.begin(FetchMode::MayCache) {
            Resolution::Now(Err(e)) => fail(e, req.uri().path()),
            Resolution::Now(Ok(creds)) => match apply(&mut req, &creds, config, host.as_deref()) {
                Err(e) => fail(e, req.uri().path()),
                Ok(()) => ResponseFuture::calling(self.inner.call(req), Some(creds.key().clone())),
            },
            Resolution::Later(fetch) => {
                // The ready service goes into the future; this one gets a fresh clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Resolving {
                        fetch,
                        inner: Some(inner),
                        req: Some(req),
                        config: self.config.clone(),
                        host,
                    },
                    key: None,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`Auth`].
    ///
    /// A pin-project state machine rather than a boxed future: a static or environment key
    /// costs no allocation per request. Only a [`KeyProvider`]'s own future is boxed, because
    /// providers are type-erased.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
        key: Option<ApiKey>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Failed { error: Option<Error> },
        Resolving {
            fetch: ProviderFuture,
            inner: Option<S>,
            req: Option<Request<B>>,
            config: Arc<Config>,
            host: Option<String>,
        },
        Calling { #[pin] fut: S::Future },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            key: None,
        }
    }

    fn calling(fut: S::Future, key: Option<ApiKey>) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            key,
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "Failed",
            State::Resolving { .. } => "Resolving",
            State::Calling { .. } => "Calling",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("key", &self.key)
            .finish()
    }
}

fn completed() -> Error {
    Error::new(ErrorKind::Internal)
        .with_detail("auth::future::ResponseFuture polled after completion")
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(completed)));
                }
                StateProj::Resolving {
                    fetch,
                    inner,
                    req,
                    config,
                    host,
                } => {
                    let result = ready!(fetch.as_mut().poll(cx));
                    let (Some(mut svc), Some(mut req)) = (inner.take(), req.take()) else {
                        return Poll::Ready(Err(completed()));
                    };
                    let applied = result.map_err(provider_error).and_then(|creds| {
                        apply(&mut req, &creds, config, host.as_deref()).map(|()| creds)
                    });
                    match applied {
                        Err(e) => {
                            crate::observe::reject(
                                config.observer.as_deref(),
                                e.kind(),
                                Some(req.uri().path()),
                            );
                            this.state.set(State::Failed { error: None });
                            return Poll::Ready(Err(reject(e)));
                        }
                        Ok(creds) => {
                            *this.key = Some(creds.key().clone());
                            let fut = svc.call(req);
                            this.state.set(State::Calling { fut });
                        }
                    }
                }
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx));
                    return Poll::Ready(result.map_err(|e| {
                        server_error(Error::from_service_error(e), this.key.as_ref())
                    }));
                }
            }
        }
    }
}

/// Scrubs the exact key from an error that came back (a proxy may echo it in a shape that
/// [`redact_secrets`](crate::parse::redact_secrets) does not know) and logs key rejections
/// with the masked key.
pub(super) fn server_error(err: Error, key: Option<&ApiKey>) -> Error {
    let Some(key) = key else { return err };
    if matches!(
        err.kind(),
        ErrorKind::Authentication | ErrorKind::PermissionDenied
    ) {
        tracing::debug!(
            key = %key,
            status = err.status().map(|s| s.as_u16()),
            cause = ?err.auth_cause(),
            request_id = err.request_id().unwrap_or(""),
            "auth: the server rejected the key"
        );
    }
    scrub(err, key.expose_secret())
}

fn scrub(err: Error, secret: &str) -> Error {
    if secret.len() < 8 {
        return err;
    }
    let mut err = err;
    if let Some(api) = err.api_error().filter(|a| a.message.contains(secret)) {
        let mut api = api.clone();
        api.message = api.message.replace(secret, "[redacted]");
        err = err.with_api_error(api);
    }
    if let Some(detail) = err.detail().filter(|d| d.contains(secret)) {
        let detail = detail.replace(secret, "[redacted]");
        err = err.with_detail(detail);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{EnvSource, FetchMode, ShapeScope};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tower::{service_fn, ServiceExt};
    use tower_layer::Layer;

    const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789wxyz";

    type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

    /// An inner service that records the headers of every request it gets.
    fn recorder() -> (
        Seen,
        impl Service<
                Request<()>,
                Response = http::Response<()>,
                Error = std::convert::Infallible,
                Future = impl Send,
            > + Clone,
    ) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let svc = service_fn(move |req: Request<()>| {
            s.lock().unwrap().push(req.headers().clone());
            async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
        });
        (seen, svc)
    }

    fn openai_req() -> Request<()> {
        Request::post("https://api.openai.com/v1/chat/completions")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn injects_a_sensitive_bearer_header_and_ids() {
        let (seen, inner) = recorder();
        let env = EnvSource::with_lookup(|n| match n {
            "OPENAI_API_KEY" => Some(KEY.into()),
            "OPENAI_ORG_ID" => Some("org-1".into()),
            "OPENAI_PROJECT_ID" => Some("proj_2".into()),
            _ => None,
        });
        let svc = AuthLayer::new(env).layer(inner);
        svc.oneshot(openai_req()).await.unwrap();
        let seen = seen.lock().unwrap();
        let auth = &seen[0][AUTHORIZATION];
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), format!("Bearer {KEY}"));
        assert_eq!(seen[0][OPENAI_ORGANIZATION], "org-1");
        assert_eq!(seen[0][OPENAI_PROJECT], "proj_2");
        assert!(!format!("{:?}", seen[0]).contains("AbCd"));
    }

    #[tokio::test]
    async fn ids_the_request_already_has_are_kept() {
        let (seen, inner) = recorder();
        let creds = Credentials::new(KEY).with_organization("org-layer");
        let svc = AuthLayer::new(creds).layer(inner);
        let mut req = openai_req();
        req.headers_mut()
            .insert(OPENAI_ORGANIZATION, HeaderValue::from_static("org-request"));
        svc.oneshot(req).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0][OPENAI_ORGANIZATION], "org-request");
    }

    #[tokio::test]
    async fn an_invalid_org_id_is_a_typed_error() {
        let (seen, inner) = recorder();
        let creds = Credentials::new(KEY).with_organization("org\n1");
        let err = AuthLayer::new(creds)
            .layer(inner)
            .oneshot(openai_req())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParameter);
        assert_eq!(err.param(), Some("openai-organization"));
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_present_valid_header_is_checked_and_kept() {
        let (seen, inner) = recorder();
        let asked = Arc::new(AtomicUsize::new(0));
        let a = asked.clone();
        let other = "sk-proj-ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210abcd";
        let svc = AuthLayer::from_provider(move |_m: FetchMode| {
            a.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(ApiKey::new(KEY)) }
        })
        .layer(inner);
        let mut req = openai_req();
        req.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {other}")).unwrap(),
        );
        svc.oneshot(req).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0][AUTHORIZATION].to_str().unwrap(),
            format!("Bearer {other}")
        );
        assert!(
            seen[0][AUTHORIZATION].is_sensitive(),
            "marked sensitive on the way"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 0, "the provider is not asked");
    }

    #[tokio::test]
    async fn a_present_malformed_header_is_rejected_before_sending() {
        let cases: Vec<(HeaderValue, AuthCause)> = vec![
            (
                HeaderValue::from_str(&format!("Bearer Bearer {KEY}")).unwrap(),
                AuthCause::DoubledBearer,
            ),
            (
                HeaderValue::from_str(KEY).unwrap(),
                AuthCause::MissingBearerScheme,
            ),
            (
                HeaderValue::from_bytes(format!("Bearer {KEY}\u{e9}").as_bytes()).unwrap(),
                AuthCause::NonAscii,
            ),
            (
                HeaderValue::from_static("Bearer sk-..."),
                AuthCause::Placeholder,
            ),
            (
                HeaderValue::from_str(&format!("Bearer \"{KEY}\"")).unwrap(),
                AuthCause::Quoted,
            ),
            (HeaderValue::from_static("Bearer"), AuthCause::Empty),
            (HeaderValue::from_static("Bearer "), AuthCause::Empty),
            (HeaderValue::from_static(""), AuthCause::Empty),
        ];
        for (value, cause) in cases {
            let (seen, inner) = recorder();
            let svc = AuthLayer::from_key(KEY).layer(inner);
            let mut req = openai_req();
            req.headers_mut().insert(AUTHORIZATION, value);
            let err = svc.oneshot(req).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
            assert_eq!(err.auth_cause(), Some(cause));
            assert!(seen.lock().unwrap().is_empty(), "{cause:?}: nothing sent");
        }
    }

    #[tokio::test]
    async fn another_scheme_passes_unjudged() {
        let (seen, inner) = recorder();
        let svc = AuthLayer::check_only().layer(inner);
        let mut req = openai_req();
        req.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        svc.oneshot(req).await.unwrap();
        assert!(seen.lock().unwrap()[0][AUTHORIZATION].is_sensitive());
    }

    #[tokio::test]
    async fn check_only_without_a_header_is_missing_key() {
        let (seen, inner) = recorder();
        let err = AuthLayer::check_only()
            .layer(inner)
            .oneshot(openai_req())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingApiKey);
        assert!(err.hint().contains("OPENAI_API_KEY"));
        assert!(err.hint().contains("https://platform.openai.com/api-keys"));
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn azure_uses_the_api_key_header_and_lenient_rules() {
        let (seen, inner) = recorder();
        let key = "0123456789abcdef0123456789abcdef";
        let svc = AuthLayer::from_key(key).azure().layer(inner);
        let req =
            Request::post("https://my.openai.azure.com/openai/deployments/x/chat/completions")
                .body(())
                .unwrap();
        svc.oneshot(req).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0]["api-key"], key);
        assert!(seen[0]["api-key"].is_sensitive());
        assert!(!seen[0].contains_key(AUTHORIZATION));
    }

    #[tokio::test]
    async fn shape_rules_apply_to_openai_hosts_only() {
        let odd = "local-token-123";
        let (seen, inner) = recorder();
        let svc = AuthLayer::from_key(odd).layer(inner);
        let local = Request::get("http://127.0.0.1:8080/v1/models")
            .body(())
            .unwrap();
        svc.clone().oneshot(local).await.unwrap();
        let err = svc.oneshot(openai_req()).await.unwrap_err();
        assert_eq!(err.auth_cause(), Some(AuthCause::WrongPrefix));
        assert_eq!(seen.lock().unwrap().len(), 1);

        // With the scope set to always, the local request fails too.
        let (seen, inner) = recorder();
        let svc = AuthLayer::from_key(odd)
            .rules(KeyRules::openai().scope(ShapeScope::Always))
            .layer(inner);
        let local = Request::get("http://127.0.0.1:8080/v1/models")
            .body(())
            .unwrap();
        assert!(svc.oneshot(local).await.is_err());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_host_header_names_the_target_of_a_relative_uri() {
        let (seen, inner) = recorder();
        let svc = AuthLayer::from_key("local-token-123").layer(inner);
        let req = Request::get("/v1/models")
            .header(http::header::HOST, "localhost:8000")
            .body(())
            .unwrap();
        svc.oneshot(req).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn provider_keys_rotate_and_are_checked() {
        let (seen, inner) = recorder();
        let n = Arc::new(AtomicUsize::new(0));
        let keys = [
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789aaaa",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789bbbb",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789cccc\n",
        ];
        let svc = AuthLayer::from_provider(move |_m: FetchMode| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(ApiKey::new(keys[i])) }
        })
        .layer(inner);
        svc.clone().oneshot(openai_req()).await.unwrap();
        svc.clone().oneshot(openai_req()).await.unwrap();
        let err = svc.oneshot(openai_req()).await.unwrap_err();
        assert_eq!(err.auth_cause(), Some(AuthCause::Whitespace));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[0][AUTHORIZATION].to_str().unwrap().ends_with("aaaa"));
        assert!(seen[1][AUTHORIZATION].to_str().unwrap().ends_with("bbbb"));
    }

    #[tokio::test]
    async fn a_failing_provider_is_a_typed_error_with_source() {
        let (seen, inner) = recorder();
        let svc = AuthLayer::from_provider(|_m: FetchMode| async {
            Err::<ApiKey, _>(std::io::Error::other("secret store unreachable"))
        })
        .layer(inner);
        let err = svc.oneshot(openai_req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(err.auth_cause(), Some(AuthCause::KeyProvider));
        let source = std::error::Error::source(&err).unwrap();
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_exact_key_is_scrubbed_from_errors_that_come_back() {
        // A proxy that echoes a non-`sk-` key verbatim, where pattern redaction cannot see it.
        let key = "local-token-SECRETPART-123";
        let inner = service_fn(move |_req: Request<()>| async move {
            let body = format!(r#"{{"error":{{"message":"key {key} is revoked"}}}}"#);
            Err::<http::Response<()>, _>(Error::from_response_parts(
                http::StatusCode::UNAUTHORIZED,
                &http::HeaderMap::new(),
                body.as_bytes(),
            ))
        });
        let svc = AuthLayer::from_key(key).layer(inner);
        let req = Request::get("http://127.0.0.1:1/v1/models")
            .body(())
            .unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authentication);
        assert_eq!(err.message(), Some("key [redacted] is revoked"));
        assert!(!format!("{err} {err:?}").contains("SECRETPART"));
    }

    #[tokio::test]
    async fn inner_errors_become_typed_errors() {
        let inner = service_fn(|_req: Request<()>| async {
            Err::<http::Response<()>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        });
        let err = AuthLayer::from_key(KEY)
            .layer(inner)
            .oneshot(openai_req())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
    }

    #[tokio::test]
    async fn readiness_and_clones_with_tower_test() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, http::Response<()>>();
        let mut svc =
            AuthLayer::from_provider(|_m: FetchMode| async { Ok::<_, BoxError>(ApiKey::new(KEY)) })
                .layer(mock);
        handle.allow(0);
        let mut ready = tokio_test_ready(&mut svc);
        assert!(ready.as_mut().poll(&mut noop_cx()).is_pending());
        drop(ready);
        handle.allow(1);
        svc.ready().await.unwrap();
        let fut = svc.call(openai_req());
        let respond = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert!(req.headers()[AUTHORIZATION].is_sensitive());
            send.send_response(http::Response::new(()));
        });
        fut.await.unwrap();
        respond.await.unwrap();
    }

    fn tokio_test_ready<S: Service<Request<()>>>(
        svc: &mut S,
    ) -> Pin<Box<dyn Future<Output = Result<(), S::Error>> + '_>> {
        Box::pin(std::future::poll_fn(move |cx| svc.poll_ready(cx)))
    }

    fn noop_cx() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    #[test]
    fn futures_are_send_for_send_services() {
        fn assert_send<T: Send>(_: &T) {}
        let (_, inner) = recorder();
        let mut svc = AuthLayer::from_env().layer(inner);
        let fut = svc.call(openai_req());
        assert_send(&fut);
        assert_send(&svc);
    }

    #[test]
    fn debug_of_layer_and_service_hides_the_key() {
        let layer = AuthLayer::from_key(KEY);
        let svc = layer.clone().layer(());
        for text in [
            format!("{layer:?}"),
            format!("{svc:?}"),
            format!("{layer:#?}"),
        ] {
            assert!(!text.contains("AbCdEf"), "{text}");
            assert!(text.contains("sk-proj-…wxyz"), "{text}");
        }
    }
}
