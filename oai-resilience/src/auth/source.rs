//! Where keys come from: a static key, the environment, or an async provider.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{AuthCause, BoxError, Error, ErrorKind};

use super::check::malformed;
use super::key::Credentials;

/// The boxed future a [`KeyProvider`] returns.
pub type ProviderFuture = Pin<Box<dyn Future<Output = Result<Credentials, BoxError>> + Send>>;

/// Whether a provider may answer from its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FetchMode {
    /// A normal request: a cached key is fine.
    MayCache,
    /// The server rejected the last key (401): fetch a fresh one, bypassing any cache.
    Refresh,
}

/// A user-supplied, asynchronous source of keys: a secret store, a rotating key, a vault.
///
/// It is asked once per request (so it is free to cache, and to rotate between calls), with
/// [`FetchMode::Refresh`] when the server has just rejected the key it gave. Any closure
/// `Fn(FetchMode) -> impl Future<Output = Result<impl Into<Credentials>, impl Into<BoxError>>>`
/// is a provider.
///
/// A provider's error becomes an [`ErrorKind::Internal`] error with
/// [`AuthCause::KeyProvider`] and the provider's error as its `source()` (an [`Error`] the
/// provider returns passes through unchanged); nothing is sent.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use oai_resilience::auth::{FetchMode, KeySource};
/// use oai_resilience::ApiKey;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let keys = ["sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789aaaa",
///             "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789bbbb"];
/// let n = Arc::new(AtomicUsize::new(0));
/// let source = KeySource::provider(move |_mode: FetchMode| {
///     let i = n.fetch_add(1, Ordering::Relaxed);
///     async move { Ok::<_, std::io::Error>(ApiKey::new(keys[i % 2])) }
/// });
/// assert_eq!(source.resolve().await.unwrap().key().to_string(), "sk-proj-…aaaa");
/// assert_eq!(source.resolve().await.unwrap().key().to_string(), "sk-proj-…bbbb");
/// # }
/// ```
pub trait KeyProvider: Send + Sync + 'static {
    /// Fetches the credentials for one request.
    fn fetch(&self, mode: FetchMode) -> ProviderFuture;
}

impl<F, Fut, C, E> KeyProvider for F
where
    F: Fn(FetchMode) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C, E>> + Send + 'static,
    C: Into<Credentials>,
    E: Into<BoxError>,
{
    fn fetch(&self, mode: FetchMode) -> ProviderFuture {
        let fut = self(mode);
        Box::pin(async move { fut.await.map(Into::into).map_err(Into::into) })
    }
}

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Reads the key, organization and project from environment variables, through a lookup
/// function (the process environment by default, a fake one in tests).
///
/// # Default
///
/// `OPENAI_API_KEY`, `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID`, read from the process
/// environment on every [`EnvSource::read`] (so a changed variable is picked up). An empty or
/// whitespace-only organization or project variable counts as unset; surrounding whitespace
/// is trimmed from them (they are not secrets). The key is never trimmed: whitespace around it
/// is reported by the key check.
///
/// ```
/// use oai_resilience::auth::EnvSource;
/// use oai_resilience::ErrorKind;
///
/// let env = EnvSource::with_lookup(|name| match name {
///     "OPENAI_API_KEY" => Some("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".into()),
///     "OPENAI_ORG_ID" => Some("org-123".into()),
///     _ => None,
/// });
/// let creds = env.read().unwrap();
/// assert_eq!(creds.organization(), Some("org-123"));
/// assert_eq!(creds.project(), None);
///
/// let empty = EnvSource::with_lookup(|_| None);
/// assert_eq!(empty.read().unwrap_err().kind(), ErrorKind::MissingApiKey);
/// ```
#[derive(Clone)]
pub struct EnvSource {
    key_var: Cow<'static, str>,
    org_var: Cow<'static, str>,
    project_var: Cow<'static, str>,
    lookup: Arc<Lookup>,
}

impl EnvSource {
    /// Reads the process environment. See `# Default`.
    pub fn new() -> Self {
        EnvSource::with_lookup(|name| match std::env::var(name) {
            Ok(v) => Some(v),
            // Keep a non-UTF-8 value (lossily) so the key check reports it as non-ASCII.
            Err(std::env::VarError::NotUnicode(os)) => Some(os.to_string_lossy().into_owned()),
            Err(std::env::VarError::NotPresent) => None,
        })
    }

    /// Reads variables through `lookup` instead of the process environment.
    pub fn with_lookup(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        EnvSource {
            key_var: Cow::Borrowed("OPENAI_API_KEY"),
            org_var: Cow::Borrowed("OPENAI_ORG_ID"),
            project_var: Cow::Borrowed("OPENAI_PROJECT_ID"),
            lookup: Arc::new(lookup),
        }
    }

    /// Reads the key from `name` instead of `OPENAI_API_KEY` (e.g. `AZURE_OPENAI_API_KEY`).
    pub fn key_var(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.key_var = name.into();
        self
    }

    /// Reads the organization from `name` instead of `OPENAI_ORG_ID`.
    pub fn org_var(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.org_var = name.into();
        self
    }

    /// Reads the project from `name` instead of `OPENAI_PROJECT_ID`.
    pub fn project_var(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.project_var = name.into();
        self
    }

    /// Reads the credentials now.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::MissingApiKey`] when the key variable is not set (its hint names the
    /// variable and where keys come from), [`ErrorKind::MalformedApiKey`] (cause [`AuthCause::Empty`]) when it is set but
    /// empty. The key's shape is checked later, by [`check_key`](super::check_key).
    pub fn read(&self) -> Result<Credentials, Error> {
        let key = match (self.lookup)(&self.key_var) {
            None => {
                return Err(Error::new(ErrorKind::MissingApiKey).with_detail(format!(
                    "the environment variable {} is not set",
                    self.key_var
                )))
            }
            Some(k) if k.is_empty() => {
                return Err(malformed(
                    AuthCause::Empty,
                    format!("the environment variable {} is set but empty", self.key_var),
                ))
            }
            Some(k) => k,
        };
        let mut creds = Credentials::new(key);
        if let Some(org) = self.optional(&self.org_var) {
            creds = creds.with_organization(org);
        }
        if let Some(project) = self.optional(&self.project_var) {
            creds = creds.with_project(project);
        }
        Ok(creds)
    }

    fn optional(&self, name: &str) -> Option<String> {
        let v = (self.lookup)(name)?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }
}

impl Default for EnvSource {
    fn default() -> Self {
        EnvSource::new()
    }
}

crate::macros::debug_struct!(EnvSource, |s| "EnvSource" {
    "key_var": s.key_var,
    "org_var": s.org_var,
    "project_var": s.project_var,
} finish_non_exhaustive);

#[derive(Clone)]
enum Kind {
    Static(Credentials),
    Env(EnvSource),
    Provider(Arc<dyn KeyProvider>),
}

/// Where the auth layer (or any caller, without tower) gets its credentials.
///
/// Cheap to clone. `Debug` shows the kind of source and, for a static key, the masked key.
///
/// ```
/// use oai_resilience::auth::{EnvSource, KeySource};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let fixed = KeySource::from_key("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789wxyz");
/// assert_eq!(fixed.resolve().await.unwrap().key().to_string(), "sk-proj-…wxyz");
///
/// let env = KeySource::from(EnvSource::with_lookup(|_| None));
/// assert!(env.resolve().await.is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct KeySource {
    kind: Kind,
}

/// The first step of a resolution: done now, or waiting on a provider.
pub(crate) enum Resolution {
    Now(Result<Credentials, Error>),
    Later(ProviderFuture),
}

impl KeySource {
    /// A fixed key.
    pub fn from_key(key: impl Into<super::ApiKey>) -> Self {
        KeySource::from_credentials(Credentials::new(key))
    }

    /// Fixed credentials (key, organization, project).
    pub fn from_credentials(creds: Credentials) -> Self {
        KeySource {
            kind: Kind::Static(creds),
        }
    }

    /// The process environment: `OPENAI_API_KEY`, `OPENAI_ORG_ID`, `OPENAI_PROJECT_ID`.
    pub fn from_env() -> Self {
        EnvSource::new().into()
    }

    /// An async provider, asked on every request. See [`KeyProvider`].
    pub fn provider(provider: impl KeyProvider) -> Self {
        KeySource {
            kind: Kind::Provider(Arc::new(provider)),
        }
    }

    /// Whether this source is a provider (whose resolution is asynchronous).
    pub fn is_provider(&self) -> bool {
        matches!(self.kind, Kind::Provider(_))
    }

    /// Whether [`KeySource::refresh`] can give another key than [`KeySource::resolve`]: true
    /// for a provider and the environment, false for a fixed key.
    pub fn can_refresh(&self) -> bool {
        !matches!(self.kind, Kind::Static(_))
    }

    /// Resolves the credentials for one request; a provider may answer from its cache.
    ///
    /// Does not check the key's shape: see [`check_key`](super::check_key).
    ///
    /// # Errors
    ///
    /// A missing environment key ([`ErrorKind::MissingApiKey`]), an empty one
    /// ([`ErrorKind::MalformedApiKey`]), or a provider failure ([`ErrorKind::Internal`] with
    /// [`AuthCause::KeyProvider`]).
    pub async fn resolve(&self) -> Result<Credentials, Error> {
        self.resolve_with(FetchMode::MayCache).await
    }

    /// Resolves fresh credentials: a provider is asked with [`FetchMode::Refresh`]; the
    /// environment is read again; a static key is the same key.
    ///
    /// # Errors
    ///
    /// As [`KeySource::resolve`].
    pub async fn refresh(&self) -> Result<Credentials, Error> {
        self.resolve_with(FetchMode::Refresh).await
    }

    async fn resolve_with(&self, mode: FetchMode) -> Result<Credentials, Error> {
        match self.begin(mode) {
            Resolution::Now(r) => r,
            Resolution::Later(fut) => fut.await.map_err(provider_error),
        }
    }

    pub(crate) fn begin(&self, mode: FetchMode) -> Resolution {
        match &self.kind {
            Kind::Static(creds) => Resolution::Now(Ok(creds.clone())),
            Kind::Env(env) => Resolution::Now(env.read()),
            Kind::Provider(p) => Resolution::Later(p.fetch(mode)),
        }
    }
}

/// Turns a provider's error into the crate's error; an [`Error`] passes through.
pub(crate) fn provider_error(err: BoxError) -> Error {
    match err.downcast::<Error>() {
        Ok(e) => *e,
        Err(e) => Error::new(ErrorKind::Internal)
            .with_auth_cause(AuthCause::KeyProvider)
            .with_source(e),
    }
}

impl From<EnvSource> for KeySource {
    fn from(env: EnvSource) -> Self {
        KeySource {
            kind: Kind::Env(env),
        }
    }
}

impl From<Credentials> for KeySource {
    fn from(creds: Credentials) -> Self {
        KeySource::from_credentials(creds)
    }
}

impl From<super::ApiKey> for KeySource {
    fn from(key: super::ApiKey) -> Self {
        KeySource::from_key(key)
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Static(c) => f.debug_tuple("Static").field(c).finish(),
            Kind::Env(e) => f.debug_tuple("Env").field(e).finish(),
            Kind::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiKey;
    use std::collections::HashMap;

    const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789wxyz";

    fn fake_env(pairs: &[(&'static str, &'static str)]) -> EnvSource {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        EnvSource::with_lookup(move |name| map.get(name).map(|v| v.to_string()))
    }

    #[test]
    fn env_reads_key_org_and_project() {
        let env = fake_env(&[
            ("OPENAI_API_KEY", KEY),
            ("OPENAI_ORG_ID", " org-1\n"),
            ("OPENAI_PROJECT_ID", "proj_2"),
        ]);
        let c = env.read().unwrap();
        assert_eq!(c.key().expose_secret(), KEY);
        assert_eq!(c.organization(), Some("org-1"));
        assert_eq!(c.project(), Some("proj_2"));
    }

    #[test]
    fn env_missing_and_empty_key() {
        let err = fake_env(&[]).read().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingApiKey);
        assert_eq!(err.auth_cause(), None);
        assert!(
            err.to_string().contains("OPENAI_API_KEY is not set"),
            "{err}"
        );
        assert!(err.hint().contains("OPENAI_API_KEY"), "{}", err.hint());
        assert!(err.hint().contains("platform.openai.com/api-keys"));

        let err = fake_env(&[("OPENAI_API_KEY", "")]).read().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
        assert_eq!(err.auth_cause(), Some(AuthCause::Empty));
        assert!(err.to_string().contains("set but empty"), "{err}");
    }

    #[test]
    fn env_var_names_are_configurable() {
        let env = fake_env(&[("AZURE_OPENAI_API_KEY", "0123456789abcdef0123456789abcdef")])
            .key_var("AZURE_OPENAI_API_KEY");
        assert!(env.read().is_ok());
        let err = fake_env(&[]).key_var("MY_KEY").read().unwrap_err();
        assert!(err.to_string().contains("MY_KEY is not set"), "{err}");
        let env = fake_env(&[("OPENAI_API_KEY", KEY), ("ORG", "org-9"), ("PROJ", "  ")])
            .org_var("ORG")
            .project_var("PROJ");
        let c = env.read().unwrap();
        assert_eq!(c.organization(), Some("org-9"));
        assert_eq!(c.project(), None, "whitespace-only counts as unset");
    }

    #[tokio::test]
    async fn provider_errors_are_typed_with_source() {
        let source = KeySource::provider(|_m: FetchMode| async {
            Err::<ApiKey, _>(std::io::Error::other("vault sealed"))
        });
        let err = source.resolve().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(err.auth_cause(), Some(AuthCause::KeyProvider));
        let src = std::error::Error::source(&err).unwrap();
        assert_eq!(src.to_string(), "vault sealed");
        assert!(err.to_string().contains("vault sealed"), "{err}");
    }

    #[tokio::test]
    async fn provider_may_return_a_crate_error() {
        let source = KeySource::provider(|_m: FetchMode| async {
            Err::<ApiKey, _>(Error::new(ErrorKind::MissingApiKey))
        });
        assert_eq!(
            source.resolve().await.unwrap_err().kind(),
            ErrorKind::MissingApiKey
        );
    }

    #[tokio::test]
    async fn refresh_passes_the_mode() {
        let source = KeySource::provider(|m: FetchMode| async move {
            Ok::<_, std::io::Error>(match m {
                FetchMode::MayCache => ApiKey::new("cached-key-0000000000000000000000"),
                FetchMode::Refresh => ApiKey::new("fresh-key-00000000000000000000000"),
            })
        });
        let a = source.resolve().await.unwrap();
        let b = source.refresh().await.unwrap();
        assert!(a.key().expose_secret().starts_with("cached"));
        assert!(b.key().expose_secret().starts_with("fresh"));
    }

    #[test]
    fn debug_hides_keys() {
        let s = KeySource::from_key(KEY);
        let d = format!("{s:?}");
        assert!(!d.contains("AbCdEf"), "{d}");
        assert!(d.contains("sk-proj-…wxyz"), "{d}");
        let env = KeySource::from(fake_env(&[("OPENAI_API_KEY", KEY)]));
        assert!(!format!("{env:?}").contains("AbCd"));
        assert_eq!(
            format!(
                "{:?}",
                KeySource::provider(|_m: FetchMode| async { Ok::<_, BoxError>(ApiKey::new(KEY)) })
            ),
            "Provider(..)"
        );
    }
}
