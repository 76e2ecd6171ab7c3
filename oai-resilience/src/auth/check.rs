//! Local key checks: plain functions, no tower, no I/O.

use std::borrow::Cow;
use std::fmt;

use crate::error::{AuthCause, Error, ErrorKind};

/// Which characters a key may contain (after the universal checks for whitespace, quotes and
/// non-ASCII have passed).
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum KeyCharset {
    /// OpenAI's keys: ASCII letters, digits, `-` and `_`.
    OpenAi,
    /// Any printable ASCII character except whitespace and quotes (JWTs, base64 with `+/=`,
    /// dotted tokens of OpenAI-compatible services).
    PrintableAscii,
    /// A custom predicate on each character.
    Custom(fn(char) -> bool),
}

impl KeyCharset {
    fn allows(self, c: char) -> bool {
        match self {
            KeyCharset::OpenAi => c.is_ascii_alphanumeric() || c == '-' || c == '_',
            KeyCharset::PrintableAscii => c.is_ascii_graphic(),
            KeyCharset::Custom(f) => f(c),
        }
    }
}

impl fmt::Debug for KeyCharset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyCharset::OpenAi => f.write_str("OpenAi"),
            KeyCharset::PrintableAscii => f.write_str("PrintableAscii"),
            KeyCharset::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// When the shape rules (prefix, charset, minimum length) apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShapeScope {
    /// Always, whatever the target.
    Always,
    /// Only when the target is OpenAI's API (`api.openai.com`, any `*.openai.com`), or not
    /// known (the default base URL is OpenAI's). Keys for other hosts (a local server, an
    /// OpenAI-compatible service, a mock) get only the universal checks.
    OpenAiHosts,
    /// Never: only the universal checks.
    Never,
}

/// The rules [`check_key`] applies.
///
/// The universal checks always run: the key is not empty, has no whitespace or line break in or
/// around it, is not wrapped in quotes, has only ASCII characters, does not start with a second
/// `Bearer `, and (unless turned off with [`KeyRules::placeholders`]) is not a documentation
/// placeholder. The *shape* rules (accepted prefixes, charset, minimum length) run as
/// [`ShapeScope`] says.
///
/// # Default
///
/// [`KeyRules::openai`]: prefix `sk-`, charset [`KeyCharset::OpenAi`], at least 32 characters,
/// known prefixes of other vendors rejected, shape checked for OpenAI hosts only, placeholders
/// rejected.
///
/// ```
/// use oai_resilience::auth::{check_key, KeyCharset, KeyRules, ShapeScope};
///
/// // A service whose keys look like `tok.AbC123…` with dots.
/// let rules = KeyRules::openai()
///     .prefixes(["tok."])
///     .charset(KeyCharset::PrintableAscii)
///     .min_len(16)
///     .scope(ShapeScope::Always);
/// assert!(check_key("tok.0123456789abcdef", &rules).is_ok());
/// assert!(check_key("sk-0123456789abcdef", &rules).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct KeyRules {
    prefixes: Vec<Cow<'static, str>>,
    foreign: bool,
    charset: KeyCharset,
    min_len: usize,
    placeholders: bool,
    scope: ShapeScope,
}

/// Prefixes of other vendors' keys, which OpenAI never accepts, and whose they are.
const FOREIGN_PREFIXES: &[(&str, &str)] = &[
    ("sk-ant-", "an Anthropic"),
    ("sk-or-", "an OpenRouter"),
    ("gsk_", "a Groq"),
    ("xai-", "an xAI"),
    ("AIza", "a Google"),
    ("hf_", "a Hugging Face"),
    ("pplx-", "a Perplexity"),
    ("r8_", "a Replicate"),
];

/// The quote characters a copied key is often wrapped in (straight and typographic).
const QUOTES: &[char] = &[
    '"', '\'', '`', '\u{201C}', '\u{201D}', '\u{2018}', '\u{2019}',
];

impl KeyRules {
    /// OpenAI's key shape. See [`KeyRules`]' `# Default`.
    pub fn openai() -> Self {
        KeyRules {
            prefixes: vec![Cow::Borrowed("sk-")],
            foreign: true,
            charset: KeyCharset::OpenAi,
            min_len: 32,
            placeholders: true,
            scope: ShapeScope::OpenAiHosts,
        }
    }

    /// Universal checks only, for any host: for OpenAI-compatible services with other key
    /// shapes (Azure's 32-character keys, local servers' tokens).
    pub fn lenient() -> Self {
        KeyRules {
            prefixes: Vec::new(),
            foreign: false,
            charset: KeyCharset::PrintableAscii,
            min_len: 1,
            placeholders: true,
            scope: ShapeScope::Never,
        }
    }

    /// Accepts only keys with one of these prefixes (replacing the list). An empty list accepts
    /// any prefix. Also stops rejecting other vendors' known prefixes.
    pub fn prefixes<I, P>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Cow<'static, str>>,
    {
        self.prefixes = prefixes.into_iter().map(Into::into).collect();
        self.foreign = false;
        self
    }

    crate::macros::field_setters! {
        /// Sets the characters a key may contain.
        charset(charset: KeyCharset);
        /// Sets the minimum length, in characters.
        min_len(min_len: usize);
        /// Whether documentation placeholders (`sk-...`, `your-api-key`, `<OPENAI_API_KEY>`,
        /// `undefined`, …) are rejected.
        placeholders(placeholders: bool);
        /// Sets when the shape rules apply.
        scope(scope: ShapeScope);
    }

    /// Whether the shape rules apply to a request for `host` (`None`: not known).
    pub fn shape_applies_to(&self, host: Option<&str>) -> bool {
        match self.scope {
            ShapeScope::Always => true,
            ShapeScope::Never => false,
            ShapeScope::OpenAiHosts => host.is_none_or(is_openai_host),
        }
    }
}

impl Default for KeyRules {
    fn default() -> Self {
        KeyRules::openai()
    }
}

/// Whether `host` is OpenAI's API: `openai.com` or any subdomain, case-insensitive, with or
/// without a port.
pub fn is_openai_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.to_ascii_lowercase();
    host == "openai.com" || host.ends_with(".openai.com")
}

/// Checks `key` against `rules` as if the target were OpenAI's API (the shape rules apply
/// unless their scope is [`ShapeScope::Never`]).
///
/// Nothing is sent and nothing is printed: the error says what is wrong and where, never the
/// key.
///
/// # Errors
///
/// [`ErrorKind::MalformedApiKey`] with the [`AuthCause`] of the first problem found and a
/// detail such as "a line break at the end (character 52 of 52)".
///
/// ```
/// use oai_resilience::auth::{check_key, KeyRules};
/// use oai_resilience::{AuthCause, ErrorKind};
///
/// let rules = KeyRules::openai();
/// assert!(check_key("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", &rules).is_ok());
///
/// let err = check_key("sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n", &rules).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
/// assert_eq!(err.auth_cause(), Some(AuthCause::Whitespace));
/// assert!(!err.to_string().contains("AbCd"));
/// ```
pub fn check_key(key: &str, rules: &KeyRules) -> Result<(), Error> {
    check_key_for_host(key, rules, None)
}

/// Checks `key` against `rules` for a request to `host` (`None`: not known, treated as
/// OpenAI's). See [`check_key`].
///
/// # Errors
///
/// As [`check_key`].
pub fn check_key_for_host(key: &str, rules: &KeyRules, host: Option<&str>) -> Result<(), Error> {
    match find_problem(key, rules, rules.shape_applies_to(host)) {
        None => Ok(()),
        Some((cause, detail)) => Err(malformed(cause, detail)),
    }
}

pub(crate) fn malformed(cause: AuthCause, detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::MalformedApiKey)
        .with_auth_cause(cause)
        .with_detail(detail)
}

fn find_problem(key: &str, rules: &KeyRules, shape: bool) -> Option<(AuthCause, String)> {
    // Fast path, one pass: only letters, digits, `-` and `_` (so no whitespace, quotes,
    // non-ASCII, control characters or brackets). What remains to check is cheap.
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return find_problem_in_plain(key, rules, shape);
    }
    let len = key.chars().count();
    if key.is_empty() {
        return Some((AuthCause::Empty, "the key is an empty string".into()));
    }
    if key.trim().is_empty() {
        return Some((
            AuthCause::Empty,
            format!("the key is only whitespace ({len} characters)"),
        ));
    }
    if rules.placeholders {
        if let Some(why) = placeholder(key) {
            return Some((AuthCause::Placeholder, why.into()));
        }
    }
    let unquoted = key.trim_matches(|c: char| c.is_whitespace() || QUOTES.contains(&c));
    if has_bearer_prefix(unquoted) {
        return Some((
            AuthCause::DoubledBearer,
            "the key itself begins with the `Bearer` scheme, so the header would carry it twice"
                .into(),
        ));
    }
    if let Some(detail) = quoted(key) {
        return Some((AuthCause::Quoted, detail));
    }
    if let Some(detail) = whitespace(key, len) {
        return Some((AuthCause::Whitespace, detail));
    }
    if let Some((i, c)) = key.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        return Some((
            AuthCause::NonAscii,
            format!(
                "a non-ASCII character U+{:04X} at character {} of {len}",
                c as u32,
                i + 1
            ),
        ));
    }
    if let Some((i, c)) = key.chars().enumerate().find(|(_, c)| c.is_ascii_control()) {
        return Some((
            AuthCause::InvalidCharacters,
            format!(
                "a control character {:?} at character {} of {len}",
                c,
                i + 1
            ),
        ));
    }
    if !shape {
        return None;
    }
    shape_problem(key, len, rules)
}

/// The checks left for a key made only of letters, digits, `-` and `_`: a placeholder word
/// or pattern, the `Bearer` word, then the shape.
fn find_problem_in_plain(key: &str, rules: &KeyRules, shape: bool) -> Option<(AuthCause, String)> {
    if rules.placeholders {
        if let Some(why) = placeholder(key) {
            return Some((AuthCause::Placeholder, why.into()));
        }
    }
    if has_bearer_prefix(key) {
        return Some((
            AuthCause::DoubledBearer,
            "the key itself begins with the `Bearer` scheme, so the header would carry it twice"
                .into(),
        ));
    }
    if !shape {
        return None;
    }
    shape_problem(key, key.len(), rules)
}

/// The shape rules: another vendor's prefix, an accepted prefix, the charset, the length.
fn shape_problem(key: &str, len: usize, rules: &KeyRules) -> Option<(AuthCause, String)> {
    if rules.foreign {
        if let Some((_, whose)) = FOREIGN_PREFIXES.iter().find(|(p, _)| key.starts_with(p)) {
            return Some((
                AuthCause::WrongPrefix,
                format!("the key's prefix is that of {whose} key, not of an OpenAI key"),
            ));
        }
    }
    if !rules.prefixes.is_empty() && !rules.prefixes.iter().any(|p| key.starts_with(&**p)) {
        // Details are redacted of anything that looks like a key, `sk-` included: name the
        // prefixes only when none looks like one.
        let detail = if rules.prefixes.iter().any(|p| p.contains("sk-")) {
            "the key does not start with an accepted prefix (OpenAI's keys start with sk and a dash)"
                .to_owned()
        } else {
            let list: Vec<String> = rules.prefixes.iter().map(|p| format!("`{p}`")).collect();
            format!("the key does not start with {}", list.join(" or "))
        };
        return Some((AuthCause::WrongPrefix, detail));
    }
    if let Some((i, c)) = key
        .chars()
        .enumerate()
        .find(|(_, c)| !rules.charset.allows(*c))
    {
        return Some((
            AuthCause::InvalidCharacters,
            format!(
                "the character {:?} at character {} of {len} is not allowed in a key",
                c,
                i + 1
            ),
        ));
    }
    if len < rules.min_len {
        return Some((
            AuthCause::TooShort,
            format!(
                "the key has {len} characters; keys have at least {}",
                rules.min_len
            ),
        ));
    }
    None
}

fn has_bearer_prefix(s: &str) -> bool {
    match (s.get(..6), s.get(6..)) {
        (Some(head), Some(rest)) => {
            head.eq_ignore_ascii_case("bearer")
                && (rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c == ':'))
        }
        _ => false,
    }
}

fn quoted(key: &str) -> Option<String> {
    let trimmed = key.trim();
    let first = trimmed.chars().next()?;
    let last = trimmed.chars().next_back()?;
    match (QUOTES.contains(&first), QUOTES.contains(&last)) {
        (true, true) => Some(format!("the key is wrapped in {first}…{last}")),
        (true, false) => Some(format!("the key starts with a {first} quote")),
        (false, true) => Some(format!("the key ends with a {last} quote")),
        (false, false) => trimmed
            .chars()
            .enumerate()
            .find(|(_, c)| QUOTES.contains(c))
            .map(|(i, c)| {
                format!(
                    "a {c} quote at character {} of {}",
                    i + 1,
                    key.chars().count()
                )
            }),
    }
}

fn whitespace(key: &str, len: usize) -> Option<String> {
    let (i, c) = key.chars().enumerate().find(|(_, c)| c.is_whitespace())?;
    let leading = key.chars().take_while(|c| c.is_whitespace()).count();
    let trailing = key.chars().rev().take_while(|c| c.is_whitespace()).count();
    let what = match c {
        '\n' | '\r' => "a line break",
        '\t' => "a tab",
        ' ' => "a space",
        _ => "a whitespace character",
    };
    let place = if i < leading {
        "at the start"
    } else if i >= len - trailing {
        "at the end"
    } else {
        "inside the key"
    };
    Some(format!("{what} {place} (character {} of {len})", i + 1))
}

/// Why `key` is a placeholder, if it is one.
fn placeholder(key: &str) -> Option<&'static str> {
    let k = key.trim().trim_matches(QUOTES);
    if k.contains("...") || k.contains('…') {
        return Some("the key contains `...` or `…`, as documentation placeholders do");
    }
    if (k.starts_with('<') && k.ends_with('>')) || (k.starts_with('[') && k.ends_with(']')) {
        return Some("the key is a bracketed placeholder such as `<OPENAI_API_KEY>`");
    }
    if k.starts_with('$') || k.contains("${") || k.starts_with("{{") || k.starts_with('%') {
        return Some("the key is an unexpanded variable or template such as `$OPENAI_API_KEY`");
    }
    const WORDS: &[&str] = &[
        "undefined",
        "null",
        "none",
        "nil",
        "changeme",
        "placeholder",
        "todo",
        "key",
        "apikey",
        "api_key",
        "api-key",
        "openai_api_key",
        "openai-api-key",
        "sk-",
        "sk-proj-",
    ];
    // Words are short: real keys (32+ characters) skip the lower-casing entirely.
    if k.len() <= 64 {
        let lower = k.to_ascii_lowercase();
        if WORDS.contains(&lower.as_str()) {
            return Some("the key is a placeholder word, not a key");
        }
        if lower.contains("your") && lower.contains("key") {
            return Some("the key is a placeholder such as `your-api-key`");
        }
    }
    let body = ["sk-proj-", "sk-"]
        .iter()
        .find_map(|p| k.strip_prefix(p))
        .unwrap_or(k);
    if body.len() >= 3
        && body
            .chars()
            .all(|c| matches!(c, 'x' | 'X' | '*' | '.' | '-' | '_'))
    {
        return Some(
            "the key is only x's or asterisks after its prefix, as documentation placeholders are",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-wxyz";

    fn cause(key: &str) -> Option<AuthCause> {
        check_key(key, &KeyRules::openai())
            .err()
            .map(|e| e.auth_cause().unwrap())
    }

    #[test]
    fn good_keys_pass() {
        assert_eq!(cause(GOOD), None);
        assert_eq!(
            cause("sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijkl"),
            None
        );
        assert_eq!(
            cause("sk-svcacct-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
            None
        );
    }

    #[test]
    fn each_malformed_shape_has_its_cause() {
        let cases: &[(&str, AuthCause)] = &[
            ("", AuthCause::Empty),
            ("   ", AuthCause::Empty),
            ("\n", AuthCause::Empty),
            (&format!("{GOOD}\n"), AuthCause::Whitespace),
            (&format!("{GOOD}\r\n"), AuthCause::Whitespace),
            (&format!(" {GOOD}"), AuthCause::Whitespace),
            (
                "sk-proj-AbCdEfGhIjKlMnOp QrStUvWxYz0123456789",
                AuthCause::Whitespace,
            ),
            (
                "sk-proj-AbCdEfGhIjKlMnOp\tQrStUvWxYz0123456789",
                AuthCause::Whitespace,
            ),
            (&format!("\"{GOOD}\""), AuthCause::Quoted),
            (&format!("'{GOOD}'"), AuthCause::Quoted),
            (&format!("\u{201C}{GOOD}\u{201D}"), AuthCause::Quoted),
            (&format!("{GOOD}\""), AuthCause::Quoted),
            (
                "sk-proj-AbCd\u{e9}fGhIjKlMnOpQrStUvWxYz0123456789",
                AuthCause::NonAscii,
            ),
            (&format!("{GOOD}\u{200B}"), AuthCause::NonAscii),
            (&format!("Bearer {GOOD}"), AuthCause::DoubledBearer),
            (&format!("bearer {GOOD}"), AuthCause::DoubledBearer),
            (&format!("\"Bearer {GOOD}\""), AuthCause::DoubledBearer),
            ("sk-...", AuthCause::Placeholder),
            ("sk-…", AuthCause::Placeholder),
            ("your-api-key", AuthCause::Placeholder),
            ("YOUR_API_KEY", AuthCause::Placeholder),
            ("<OPENAI_API_KEY>", AuthCause::Placeholder),
            ("$OPENAI_API_KEY", AuthCause::Placeholder),
            ("${OPENAI_API_KEY}", AuthCause::Placeholder),
            ("undefined", AuthCause::Placeholder),
            ("sk-xxxxxxxxxxxxxxxx", AuthCause::Placeholder),
            ("OPENAI_API_KEY", AuthCause::Placeholder),
            (
                "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
                AuthCause::WrongPrefix,
            ),
            (
                "gsk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
                AuthCause::WrongPrefix,
            ),
            (
                "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd",
                AuthCause::WrongPrefix,
            ),
            (
                "sk-proj-AbCdEfGhIjKlMnOp+QrStUvWxYz0123456789",
                AuthCause::InvalidCharacters,
            ),
            (
                "sk-proj-AbCdEfGhIjKlMnOp\u{7}QrStUvWxYz0123456789",
                AuthCause::InvalidCharacters,
            ),
            ("sk-proj-AbCdEfGh", AuthCause::TooShort),
        ];
        for (key, want) in cases {
            assert_eq!(cause(key), Some(*want), "{key:?}");
            // Every detail reads as written: nothing in it looked like a key to redaction.
            let err = check_key(key, &KeyRules::openai()).unwrap_err();
            let detail = err.detail().unwrap();
            assert!(!detail.contains("[redacted]"), "{key:?}: {detail}");
        }
    }

    #[test]
    fn details_never_contain_the_key() {
        let secret = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let bad = [
            format!("sk-{secret}\n"),
            format!(" sk-{secret}"),
            format!("\"sk-{secret}\""),
            format!("Bearer sk-{secret}"),
            format!("sk-{secret}\u{e9}"),
            format!("sk-{secret}+"),
            format!("xx-{secret}"),
        ];
        for key in &bad {
            let err = check_key(key, &KeyRules::openai()).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(&secret[..6]), "{text}");
            assert!(!text.contains(&secret[secret.len() - 6..]), "{text}");
        }
    }

    #[test]
    fn details_say_where() {
        let err = check_key(&format!("{GOOD}\n"), &KeyRules::openai()).unwrap_err();
        let n = GOOD.len() + 1;
        assert_eq!(
            err.detail(),
            Some(format!("a line break at the end (character {n} of {n})").as_str())
        );
        let err = check_key(&format!("  {GOOD}"), &KeyRules::openai()).unwrap_err();
        assert!(err
            .detail()
            .unwrap()
            .starts_with("a space at the start (character 1"));
        let err = check_key(
            "sk-proj-AbCdEfGhIjKlMnOp QrStUvWxYz0123456789",
            &KeyRules::openai(),
        )
        .unwrap_err();
        assert_eq!(
            err.detail(),
            Some("a space inside the key (character 25 of 45)")
        );
        let err = check_key(&format!("{GOOD}\u{200B}"), &KeyRules::openai()).unwrap_err();
        assert!(err.detail().unwrap().contains("U+200B"), "{err}");
        assert!(err.hint().contains("re-copy"));
    }

    #[test]
    fn shape_rules_follow_the_host() {
        let rules = KeyRules::openai();
        let other = "tok.AbCdEfGh";
        assert_eq!(
            check_key_for_host(other, &rules, Some("api.openai.com"))
                .unwrap_err()
                .auth_cause(),
            Some(AuthCause::WrongPrefix)
        );
        assert!(check_key_for_host(other, &rules, Some("127.0.0.1")).is_ok());
        assert!(check_key_for_host(other, &rules, Some("my-llm.example.com")).is_ok());
        assert!(
            check_key(other, &rules).is_err(),
            "unknown host is OpenAI's"
        );
        // The universal checks still apply to other hosts.
        assert_eq!(
            check_key_for_host("tok.AbCd\n", &rules, Some("127.0.0.1"))
                .unwrap_err()
                .auth_cause(),
            Some(AuthCause::Whitespace)
        );
        let always = KeyRules::openai().scope(ShapeScope::Always);
        assert!(check_key_for_host(other, &always, Some("127.0.0.1")).is_err());
    }

    #[test]
    fn openai_hosts() {
        for h in [
            "api.openai.com",
            "API.OpenAI.com",
            "api.openai.com:443",
            "openai.com",
            "eu.api.openai.com.",
        ] {
            assert!(is_openai_host(h), "{h}");
        }
        for h in [
            "127.0.0.1",
            "notopenai.com",
            "openai.com.evil.example",
            "localhost:8080",
        ] {
            assert!(!is_openai_host(h), "{h}");
        }
    }

    #[test]
    fn lenient_rules_accept_other_shapes() {
        let rules = KeyRules::lenient();
        // An Azure-style 32-hex key and a dotted token.
        assert!(check_key("0123456789abcdef0123456789abcdef", &rules).is_ok());
        assert!(check_key("eyJhbGciOi.eyJzdWIi.SflKxw", &rules).is_ok());
        assert_eq!(
            check_key("0123456789abcdef\n", &rules)
                .unwrap_err()
                .auth_cause(),
            Some(AuthCause::Whitespace)
        );
        assert_eq!(
            check_key("your-api-key", &rules).unwrap_err().auth_cause(),
            Some(AuthCause::Placeholder)
        );
        assert!(check_key("your-api-key", &rules.clone().placeholders(false)).is_ok());
    }

    #[test]
    fn custom_charset() {
        let hex = KeyRules::openai()
            .prefixes(Vec::<&'static str>::new())
            .charset(KeyCharset::Custom(|c| c.is_ascii_hexdigit()))
            .min_len(32)
            .scope(ShapeScope::Always);
        assert!(check_key("0123456789abcdef0123456789abcdef", &hex).is_ok());
        assert_eq!(
            check_key("0123456789abcdef0123456789abcdeg", &hex)
                .unwrap_err()
                .auth_cause(),
            Some(AuthCause::InvalidCharacters)
        );
        assert_eq!(
            check_key("0123456789abcdef", &hex)
                .unwrap_err()
                .auth_cause(),
            Some(AuthCause::TooShort)
        );
    }

    #[test]
    fn every_error_is_malformed_and_local() {
        let err = check_key("", &KeyRules::openai()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
        assert!(err.kind().is_local());
        assert!(!err.is_retryable());
        assert!(
            err.hint().contains("platform.openai.com/api-keys"),
            "{}",
            err.hint()
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_and_never_echoes(key in "\\PC{0,80}") {
                if let Err(e) = check_key(&key, &KeyRules::openai()) {
                    prop_assert_eq!(e.kind(), ErrorKind::MalformedApiKey);
                    let text = e.to_string();
                    // A long key never appears in the message.
                    if key.trim().len() >= 12 {
                        prop_assert!(!text.contains(key.trim()));
                    }
                }
            }

            #[test]
            fn well_formed_openai_keys_pass(body in "[A-Za-z0-9_-]{40,160}") {
                let key = format!("sk-proj-{body}");
                prop_assume!(super::super::placeholder(&key).is_none());
                prop_assert!(check_key(&key, &KeyRules::openai()).is_ok());
            }
        }
    }
}
