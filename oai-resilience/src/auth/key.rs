//! [`ApiKey`] and [`Credentials`]: secrets that never print themselves.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

/// Well-known key prefixes, longest first: the part of a key that [`ApiKey`]'s `Debug` and
/// `Display` may show. They name the kind of key, not the key.
const SHOWN_PREFIXES: &[&str] = &[
    "sk-svcacct-",
    "sk-admin-",
    "sk-proj-",
    "sk-ant-",
    "sk-or-",
    "sk-",
    "pplx-",
    "gsk_",
    "xai-",
    "hf_",
    "r8_",
];

/// Keys shorter than this show no trailing characters at all.
const MIN_LEN_FOR_SUFFIX: usize = 24;

/// `From<$src> for $ty` through `$ty::new`, for each `$src`.
macro_rules! from_via_new {
    ($ty:ident: $($src:ty),+) => {
        $(
            impl From<$src> for $ty {
                fn from(key: $src) -> Self {
                    $ty::new(key)
                }
            }
        )+
    };
}

/// An API key, kept in a [`secrecy::SecretString`] (zeroed on drop).
///
/// `Debug` and `Display` show at most a well-known prefix (`sk-proj-`) and the last four
/// characters, `sk-proj-…wxyz`; keys shorter than 24 characters show no trailing characters.
/// The only way to read the key is [`ApiKey::expose_secret`], which makes every use greppable.
/// Cloning is cheap (the secret is shared, not copied).
///
/// ```
/// use oai_resilience::ApiKey;
///
/// let key = ApiKey::new("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789wxyz");
/// assert_eq!(key.to_string(), "sk-proj-…wxyz");
/// assert_eq!(format!("{key:?}"), r#"ApiKey("sk-proj-…wxyz")"#);
/// assert!(key.expose_secret().starts_with("sk-proj-AbCd"));
/// ```
#[derive(Clone)]
pub struct ApiKey(Arc<SecretString>);

impl ApiKey {
    /// Wraps `key`. Nothing is checked here: see [`check_key`](super::check_key).
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(Arc::new(SecretString::from(key.into())))
    }

    /// The key itself. Call it only to put the key on the wire.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The masked form that `Debug` and `Display` print: `sk-proj-…wxyz`, `sk-…`, `…`.
    pub fn masked(&self) -> String {
        mask(self.expose_secret())
    }
}

impl ExposeSecret<str> for ApiKey {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

from_via_new!(ApiKey: String, &str);

impl From<SecretString> for ApiKey {
    fn from(key: SecretString) -> Self {
        ApiKey(Arc::new(key))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiKey").field(&self.masked()).finish()
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The masked form of `key`: a well-known prefix, `…`, and the last four characters when the
/// key is long enough and they are plain ASCII letters or digits.
pub(crate) fn mask(key: &str) -> String {
    let prefix = SHOWN_PREFIXES
        .iter()
        .find(|p| key.starts_with(**p))
        .copied()
        .unwrap_or("");
    let mut out = String::with_capacity(prefix.len() + 8);
    out.push_str(prefix);
    out.push('…');
    let len = key.chars().count();
    if len >= MIN_LEN_FOR_SUFFIX && len >= prefix.len() + 12 {
        let tail = key.get(key.len() - 4..).unwrap_or("");
        if tail.len() == 4 && tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
            out.push_str(tail);
        }
    }
    out
}

/// What a request needs to authenticate: the key and, optionally, the organization and the
/// project (sent as `OpenAI-Organization` and `OpenAI-Project`).
///
/// `Debug` masks the key like [`ApiKey`] does.
///
/// ```
/// use oai_resilience::auth::Credentials;
///
/// let creds = Credentials::new("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789wxyz")
///     .with_organization("org-123")
///     .with_project("proj_456");
/// assert_eq!(creds.organization(), Some("org-123"));
/// assert!(!format!("{creds:?}").contains("AbCd"));
/// ```
#[derive(Clone, Debug)]
pub struct Credentials {
    key: ApiKey,
    organization: Option<String>,
    project: Option<String>,
}

impl Credentials {
    /// Credentials with just a key.
    pub fn new(key: impl Into<ApiKey>) -> Self {
        Credentials {
            key: key.into(),
            organization: None,
            project: None,
        }
    }

    /// Sets the organization id (`OpenAI-Organization`).
    pub fn with_organization(mut self, org: impl Into<String>) -> Self {
        self.organization = Some(org.into());
        self
    }

    /// Sets the project id (`OpenAI-Project`).
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// The key.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// The organization id, if any.
    pub fn organization(&self) -> Option<&str> {
        self.organization.as_deref()
    }

    /// The project id, if any.
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }
}

from_via_new!(Credentials: ApiKey, String, &str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_long_keys_to_prefix_and_last_four() {
        let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789wxyz";
        assert_eq!(mask(key), "sk-proj-…wxyz");
        assert_eq!(
            mask("sk-svcacct-0123456789abcdefghij9876"),
            "sk-svcacct-…9876"
        );
        assert_eq!(mask("0123456789abcdefghijklmnop"), "…mnop");
    }

    #[test]
    fn short_or_odd_keys_show_no_suffix() {
        assert_eq!(mask(""), "…");
        assert_eq!(mask("sk-short"), "sk-…");
        assert_eq!(mask("your-api-key"), "…");
        // A trailing newline or non-ASCII tail is not shown.
        assert_eq!(mask("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012\n"), "sk-proj-…");
        assert_eq!(mask("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz01é"), "sk-proj-…");
        // A long unknown prefix is not shown either.
        assert_eq!(mask("sk-proj-0123456789ab"), "sk-proj-…");
    }

    #[test]
    fn debug_and_display_never_show_the_middle() {
        let secret = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let key = ApiKey::new(format!("sk-{secret}wxyz"));
        let creds = Credentials::new(key.clone()).with_organization("org-1");
        for text in [
            format!("{key:?}"),
            format!("{key}"),
            format!("{key:#?}"),
            format!("{creds:?}"),
            format!("{creds:#?}"),
        ] {
            assert!(!text.contains(&secret[..8]), "{text}");
            assert!(!text.contains(&secret[secret.len() - 8..]), "{text}");
        }
        assert_eq!(key.expose_secret(), format!("sk-{secret}wxyz"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// The masked form is a known prefix, `…`, and at most the last four characters.
            #[test]
            fn mask_shows_at_most_prefix_and_last_four(key in "\\PC{0,120}") {
                let m = mask(&key);
                let (prefix, rest) = m.split_once('…').unwrap();
                prop_assert!(SHOWN_PREFIXES.contains(&prefix) || prefix.is_empty());
                prop_assert!(key.starts_with(prefix));
                prop_assert!(rest.chars().count() <= 4);
                prop_assert!(key.ends_with(rest));
                if !rest.is_empty() {
                    prop_assert!(key.chars().count() >= MIN_LEN_FOR_SUFFIX);
                }
            }

            #[test]
            fn debug_never_contains_the_middle(body in "[A-Za-z0-9_-]{30,100}") {
                let key = ApiKey::new(format!("sk-proj-{body}"));
                let middle = &body[..body.len() - 4];
                let text = format!("{key:?} {key}");
                prop_assert!(!text.contains(middle));
                prop_assert!(!text.contains(&middle[middle.len() - 8..]));
            }
        }
    }
}
