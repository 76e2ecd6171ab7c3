//! What the pacer keys its state by: the limit's scope.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Uri};

use super::cost::CostEstimator;

/// The scope of one set of rate limits: base URL, a hash of the credential, and the model.
///
/// OpenAI enforces limits per organization/project and per model; the key that a request
/// carries stands for the organization and project, so the default key is the URI authority,
/// a 64-bit hash of the `Authorization` header and the `model` of the JSON body. The key itself
/// is never stored: only its hash, which `Debug` and `Display` show as hex.
///
/// ```
/// use oai_resilience::pace::PaceKey;
/// let key = PaceKey::new("api.openai.com")
///     .with_credential(b"Bearer sk-test")
///     .with_model("gpt-4o-mini");
/// assert!(!key.to_string().contains("sk-test"));
/// assert_eq!(key.model(), Some("gpt-4o-mini"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PaceKey {
    base: Arc<str>,
    credential: Option<u64>,
    model: Option<Arc<str>>,
}

impl PaceKey {
    /// A key for the base URL (or any scope name) `base`, with no credential and no model.
    pub fn new(base: impl AsRef<str>) -> Self {
        PaceKey {
            base: Arc::from(base.as_ref()),
            credential: None,
            model: None,
        }
    }

    /// Adds a credential, kept only as its 64-bit FNV-1a hash.
    pub fn with_credential(mut self, credential: &[u8]) -> Self {
        self.credential = Some(crate::hash::fnv1a(credential));
        self
    }

    /// Adds a model name.
    pub fn with_model(mut self, model: impl AsRef<str>) -> Self {
        self.model = Some(Arc::from(model.as_ref()));
        self
    }

    /// The base URL or scope name.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The hash of the credential, if one was given.
    pub fn credential_hash(&self) -> Option<u64> {
        self.credential
    }

    /// The model, if one was given.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The default key of a request: the URI authority, the hash of the `Authorization`
    /// header and the `model` field of a JSON body (when `per_model` is set and the body's
    /// bytes are known).
    pub fn from_request_parts(
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        per_model: bool,
    ) -> Self {
        let model = if per_model {
            body.and_then(crate::pace::cost::model_of)
        } else {
            None
        };
        Self::from_parts_with_model(uri, headers, model)
    }

    /// [`PaceKey::from_request_parts`] with the model already read from the body.
    pub(crate) fn from_parts_with_model(
        uri: &Uri,
        headers: &HeaderMap,
        model: Option<String>,
    ) -> Self {
        let base = uri.authority().map(|a| a.as_str()).unwrap_or("");
        let mut key = PaceKey::new(base);
        if let Some(auth) = headers.get(http::header::AUTHORIZATION) {
            key = key.with_credential(auth.as_bytes());
        }
        if let Some(model) = model {
            key.model = Some(Arc::from(model));
        }
        key
    }
}

impl fmt::Display for PaceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        if let Some(h) = self.credential {
            write!(f, "/key:{:08x}", h >> 32)?;
        }
        if let Some(m) = &self.model {
            write!(f, "/{m}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PaceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaceKey({self})")
    }
}

/// A function from a request's URI, headers and body bytes (if readable) to its [`PaceKey`].
pub type KeyFn = Arc<dyn Fn(&Uri, &HeaderMap, Option<&[u8]>) -> PaceKey + Send + Sync>;

/// How a [`PaceLayer`](super::PaceLayer)'s services key their calls: a custom function, or the
/// default key (with or without the model), and the cost estimator.
pub(crate) struct Keying {
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) per_model: bool,
    pub(crate) estimator: CostEstimator,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_from_request_hashes_the_credential() {
        let uri: Uri = "https://api.openai.com/v1/chat/completions"
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer sk-proj-abcdefghijklmnop".parse().unwrap(),
        );
        let body = br#"{"model":"gpt-4o","messages":[]}"#;
        let k = PaceKey::from_request_parts(&uri, &headers, Some(body), true);
        assert_eq!(k.base(), "api.openai.com");
        assert_eq!(k.model(), Some("gpt-4o"));
        let shown = format!("{k} {k:?}");
        assert!(!shown.contains("sk-proj"), "{shown}");
        assert!(!shown.contains("abcdefgh"), "{shown}");
        // Another key, another scope; the same key, the same scope.
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer sk-proj-other".parse().unwrap(),
        );
        let k2 = PaceKey::from_request_parts(&uri, &headers, Some(body), true);
        assert_ne!(k, k2);
        let k3 = PaceKey::from_request_parts(&uri, &headers, Some(body), false);
        assert_eq!(k3.model(), None);
    }
}
