//! Access keys: what clients present to use the server's key.
//!
//! Keys are kept only as SHA-256 digests. A presented key is hashed and compared with every
//! configured digest by a constant-time fold (no early exit, neither within a digest nor
//! across keys), so the time taken says nothing about how much of a key matched or which key
//! did. Keys are never logged or shown; names are.

use std::fmt;

use ring::digest::{digest, SHA256};

use crate::config::ConfigError;

/// The shortest access key accepted: shorter ones are guessable.
pub const MIN_ACCESS_KEY_LEN: usize = 16;

/// The configured access keys: names and SHA-256 digests.
#[derive(Clone, Default)]
pub struct AccessKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(name, _)| name))
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal in constant time: every byte is looked at whatever the others are.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl AccessKeys {
    /// Access keys from `(name, key)` pairs.
    ///
    /// # Errors
    ///
    /// An empty or duplicate name, a name with characters other than letters, digits, `-`,
    /// `_` and `.`, a key shorter than [`MIN_ACCESS_KEY_LEN`] or with whitespace or control
    /// characters, or the same key twice. Messages name the key's name, never the key.
    pub fn new(pairs: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::with_capacity(pairs.len());
        for (name, key) in pairs {
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_name {
                return Err(ConfigError(format!(
                    "access key name {name:?}: use letters, digits, '-', '_' and '.'"
                )));
            }
            if key.len() < MIN_ACCESS_KEY_LEN {
                return Err(ConfigError(format!(
                    "access key {name:?} is shorter than {MIN_ACCESS_KEY_LEN} characters"
                )));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError(format!(
                    "access key {name:?} has characters an HTTP header cannot carry"
                )));
            }
            let hash = sha256(key.as_bytes());
            if keys.iter().any(|(n, _)| *n == name) {
                return Err(ConfigError(format!(
                    "access key name {name:?} is used twice"
                )));
            }
            if let Some((other, _)) = keys.iter().find(|(_, h)| ct_eq(h, &hash)) {
                return Err(ConfigError(format!(
                    "access keys {other:?} and {name:?} are the same key"
                )));
            }
            keys.push((name, hash));
        }
        Ok(AccessKeys { keys })
    }

    /// No access keys: callers bring their own OpenAI key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The name of the key `presented` is, if it is one. Every configured digest is compared,
    /// in constant time.
    pub fn verify(&self, presented: &[u8]) -> Option<&str> {
        let hash = sha256(presented);
        let mut found = None;
        for (name, h) in &self.keys {
            if ct_eq(h, &hash) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_and_reject() {
        let keys = AccessKeys::new(vec![
            ("alice".into(), "gw-alice-0123456789abcdef".into()),
            ("bob".into(), "gw-bob-0123456789abcdef".into()),
        ])
        .unwrap();
        assert_eq!(keys.verify(b"gw-alice-0123456789abcdef"), Some("alice"));
        assert_eq!(keys.verify(b"gw-bob-0123456789abcdef"), Some("bob"));
        assert_eq!(keys.verify(b"gw-bob-0123456789abcdeF"), None);
        assert_eq!(keys.verify(b""), None);
        let dbg = format!("{keys:?}");
        assert!(dbg.contains("alice") && !dbg.contains("0123"), "{dbg}");
    }

    #[test]
    fn bad_keys_are_named_not_shown() {
        let e = AccessKeys::new(vec![("a".into(), "short".into())]).unwrap_err();
        assert!(e.0.contains("\"a\"") && !e.0.contains("short\""), "{e}");
        let same = "gw-0123456789abcdef".to_owned();
        let e = AccessKeys::new(vec![("a".into(), same.clone()), ("b".into(), same.clone())])
            .unwrap_err();
        assert!(!e.0.contains(&same), "{e}");
        assert!(AccessKeys::new(vec![("a b".into(), same)]).is_err());
    }
}
