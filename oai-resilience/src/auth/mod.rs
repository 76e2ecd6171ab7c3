//! API keys: found, checked locally, injected, and never printed.
//!
//! An invalid key is the second most common failure in OpenAI's troubleshooting guide, and a
//! 401 costs a round trip and says little. [`AuthLayer`] makes key problems *local, early and
//! explicit*:
//!
//! - **Sources.** A [`KeySource`] gives the [`Credentials`] for each request: a fixed key, the
//!   environment ([`EnvSource`]: `OPENAI_API_KEY`, plus `OPENAI_ORG_ID` and
//!   `OPENAI_PROJECT_ID` for the `OpenAI-Organization` and `OpenAI-Project` headers, read
//!   through an injectable lookup), or a [`KeyProvider`]: an async function asked per request
//!   (a secret store, a rotating key), free to cache.
//! - **Injection.** A request without a key header gets `Authorization: Bearer …`, marked
//!   sensitive so that `Debug` of the request shows `Sensitive`. A request that already has one
//!   is checked instead, and its header marked sensitive too.
//! - **Local checks.** Before anything is sent, [`check_key`] rejects a missing key
//!   ([`ErrorKind::MissingApiKey`](crate::ErrorKind::MissingApiKey)) and a malformed one
//!   ([`ErrorKind::MalformedApiKey`](crate::ErrorKind::MalformedApiKey)) with the precise
//!   [`AuthCause`](crate::AuthCause): empty, whitespace or a line break in or around it, quotes,
//!   non-ASCII, a doubled `Bearer `, a documentation placeholder, another vendor's prefix. The
//!   error says where the fault is ("a line break at the end (character 52 of 52)"), never
//!   what the key is. The shape rules ([`KeyRules`]) are configurable for OpenAI-compatible
//!   services, and by default apply only when the target is OpenAI's API; Azure's `api-key`
//!   header is [`KeyHeader::azure`].
//! - **Server-side failures.** 401 and 403 responses are classified by
//!   [`classify`](crate::classify) into errors that name the cause (incorrect key, not a member
//!   of an organization, IP not allowed, unsupported region, missing scope) with its hint, and
//!   the key fragment that OpenAI's 401 message echoes is redacted. The auth layer also scrubs
//!   the exact key from any error that comes back. Opt-in,
//!   [`AuthLayer::refresh_on_unauthorized`] asks the source for a fresh key once on a 401
//!   "incorrect API key" and retries once (bodies must be clonable for that).
//! - **Secrecy.** [`ApiKey`] keeps the key in a [`secrecy::SecretString`]; its `Debug` and
//!   `Display` show at most a well-known prefix and the last four characters
//!   (`sk-proj-…wxyz`). No `Debug` of a layer, service, source, error or tracing event of this
//!   module contains a key.
//!
//! In the default stack the auth layer sits outside the retry layer (validation → auth →
//! retry → pace → classify), so it runs once per call: a bad key costs zero round trips and a
//! provider is asked once per call, not once per attempt.
//!
//! The checks and the resolution work without tower: [`check_key`] is a plain function and
//! [`KeySource::resolve_checked`] an async one.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use oai_resilience::auth::{AuthLayer, EnvSource};
//! use oai_resilience::{AuthCause, ErrorKind};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let upstream = service_fn(|req: http::Request<Full<Bytes>>| async move {
//!     // The layer added the key, marked sensitive.
//!     assert!(req.headers()["authorization"].is_sensitive());
//!     assert_eq!(req.headers()["openai-organization"], "org-123");
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//! });
//!
//! // A fake environment (tests never touch the process environment).
//! let env = EnvSource::with_lookup(|name| match name {
//!     "OPENAI_API_KEY" => Some("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".into()),
//!     "OPENAI_ORG_ID" => Some("org-123".into()),
//!     _ => None,
//! });
//! let svc = ServiceBuilder::new().layer(AuthLayer::new(env)).service(upstream);
//! let req = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(Full::new(Bytes::new()))
//!     .unwrap();
//! svc.oneshot(req).await.unwrap();
//!
//! // A key pasted with its trailing newline never leaves the process.
//! let sent = Arc::new(AtomicUsize::new(0));
//! let counter = sent.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(AuthLayer::from_key("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n"))
//!     .service(service_fn(move |_req: http::Request<Full<Bytes>>| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new()))) }
//!     }));
//! let req = http::Request::new(Full::new(Bytes::new()));
//! let err = svc.oneshot(req).await.unwrap_err();
//! assert_eq!(sent.load(Ordering::SeqCst), 0);
//! assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
//! assert_eq!(err.auth_cause(), Some(AuthCause::Whitespace));
//! assert_eq!(err.detail(), Some("a line break at the end (character 45 of 45)"));
//! # }
//! ```

mod check;
mod key;
mod layer;
mod refresh;
mod source;

pub use check::{check_key, check_key_for_host, is_openai_host, KeyCharset, KeyRules, ShapeScope};
pub use key::{ApiKey, Credentials};
pub use layer::{Auth, AuthLayer, KeyHeader, OPENAI_ORGANIZATION, OPENAI_PROJECT};

/// The future of the [`Auth`] service.
pub mod future {
    pub use super::layer::ResponseFuture;
}
pub use refresh::{RefreshOnUnauthorized, RefreshOnUnauthorizedLayer};
pub use source::{EnvSource, FetchMode, KeyProvider, KeySource, ProviderFuture};

use crate::error::Error;

impl KeySource {
    /// Resolves the credentials and checks the key against `rules` (as for OpenAI's API): what
    /// a caller without tower, such as `#[openai_call]`, does before its first attempt.
    ///
    /// # Errors
    ///
    /// Those of [`KeySource::resolve`] and of [`check_key`].
    ///
    /// ```
    /// use oai_resilience::auth::{KeyRules, KeySource};
    /// use oai_resilience::ErrorKind;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = KeySource::from_key("your-api-key");
    /// let err = source.resolve_checked(&KeyRules::openai()).await.unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
    /// # }
    /// ```
    pub async fn resolve_checked(&self, rules: &KeyRules) -> Result<Credentials, Error> {
        let creds = self.resolve().await?;
        check_key(creds.key().expose_secret(), rules)?;
        Ok(creds)
    }
}
