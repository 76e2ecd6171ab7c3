//! What the breaker keys its circuits by: the upstream and the credential.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Uri};

/// A function from a request's URI and headers to its [`BreakerKey`].
pub type KeyFn = Arc<dyn Fn(&Uri, &HeaderMap) -> BreakerKey + Send + Sync>;

/// The scope of one circuit: the upstream (the URI authority, or any name) and a hash of the
/// credential.
///
/// One circuit per upstream *and* key, as for the pacer ([`PaceKey`](crate::pace::PaceKey)):
/// a deployment that fails for one project's key may serve another's. The credential is kept
/// only as its 64-bit FNV-1a hash (the pacer's), which `Display` shows shortened.
///
/// ```
/// use oai_resilience::breaker::BreakerKey;
///
/// let key = BreakerKey::new("api.openai.com").with_credential(b"Bearer sk-test");
/// assert!(!key.to_string().contains("sk-test"));
/// assert!(key.to_string().starts_with("api.openai.com/key:"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BreakerKey {
    base: Arc<str>,
    credential: Option<u64>,
}

impl BreakerKey {
    /// A key for the upstream (or scope name) `base`, with no credential.
    pub fn new(base: impl AsRef<str>) -> Self {
        BreakerKey {
            base: Arc::from(base.as_ref()),
            credential: None,
        }
    }

    /// Adds a credential, kept only as its 64-bit FNV-1a hash.
    pub fn with_credential(mut self, credential: &[u8]) -> Self {
        self.credential = Some(crate::hash::fnv1a(credential));
        self
    }

    /// The upstream or scope name.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The hash of the credential, if one was given.
    pub fn credential_hash(&self) -> Option<u64> {
        self.credential
    }

    /// The default key of a request: the URI authority and the hash of the `Authorization`
    /// header (or, without one, of Azure OpenAI's `api-key` header).
    ///
    /// ```
    /// use oai_resilience::breaker::BreakerKey;
    ///
    /// let uri: http::Uri = "https://api.openai.com/v1/chat/completions".parse().unwrap();
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("authorization", "Bearer sk-a".parse().unwrap());
    /// let a = BreakerKey::from_request_parts(&uri, &headers);
    /// assert_eq!(a.base(), "api.openai.com");
    /// headers.insert("authorization", "Bearer sk-b".parse().unwrap());
    /// assert_ne!(a, BreakerKey::from_request_parts(&uri, &headers));
    /// ```
    pub fn from_request_parts(uri: &Uri, headers: &HeaderMap) -> Self {
        let base = uri.authority().map(|a| a.as_str()).unwrap_or("");
        let key = BreakerKey::new(base);
        match headers
            .get(http::header::AUTHORIZATION)
            .or_else(|| headers.get("api-key"))
        {
            Some(v) => key.with_credential(v.as_bytes()),
            None => key,
        }
    }
}

impl fmt::Display for BreakerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        if let Some(h) = self.credential {
            write!(f, "/key:{:08x}", h >> 32)?;
        }
        Ok(())
    }
}

impl fmt::Debug for BreakerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BreakerKey({self})")
    }
}
