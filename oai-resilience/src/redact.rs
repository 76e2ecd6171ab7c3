//! Redaction of secrets: the one module that decides what of a text or an argument is shown
//! when it may hold an API key. Its rules:
//!
//! - **text** ([`redact_secrets`]): anything that looks like an API key (an `sk-` that begins
//!   a key), the token after `Bearer `, and the masked fragment that OpenAI's 401 message
//!   echoes after `provided: ` become `[redacted]`; used on error bodies and snippets
//!   (`parse`), on violations, details, request ids and error sources (`error`);
//! - **owned text** ([`redact_string`]): the same rule on a `String`, without a copy when
//!   nothing is redacted;
//! - **argument names** ([`is_secret_name`]): an argument whose name ends in `key`,
//!   `secret`, `password`, `credentials` or `authorization`, or is `token` or ends in
//!   `_token`, is shown as `[redacted]` whatever its value;
//! - **argument values** ([`arg_text`]): the `Debug` text of any other argument, cut at a
//!   number of characters (with `…` when cut) and then redacted as text; used by the
//!   runtime of `#[openai_call]` for the call's context.
//!
//! It imports nothing of the crate. (The masked form of a key that `ApiKey` prints,
//! `sk-proj-…wxyz`, is a display form, not a redaction: it is `auth::key`'s.)

use std::borrow::Cow;
use std::fmt::{self, Debug, Write as _};

/// What a secret is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// Replaces anything that looks like an API key, or the masked fragment that OpenAI's 401
/// message echoes (`sk-abc1***…***wxyz`), with `[redacted]`.
pub fn redact_secrets(s: &str) -> Cow<'_, str> {
    if !s.contains("sk-") && !s.contains("Bearer ") && !s.contains("provided: ") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let next = [
            find_key(rest),
            find_after(rest, "Bearer "),
            find_after(rest, "provided: "),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(start) = next else {
            out.push_str(rest);
            break;
        };
        let end = start
            + rest[start..]
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*' || c == '.')
                })
                .unwrap_or(rest.len() - start);
        // Keep a trailing sentence dot out of the token.
        let mut token_end = end;
        while token_end > start && rest.as_bytes()[token_end - 1] == b'.' {
            token_end -= 1;
        }
        out.push_str(&rest[..start]);
        if token_end > start {
            out.push_str(REDACTED);
        }
        out.push_str(&rest[token_end..end]);
        rest = &rest[end..];
        if rest.is_empty() {
            break;
        }
    }
    Cow::Owned(out)
}

/// The start of the first `sk-` that begins a key. An `sk-` inside a word (`task-1`,
/// `risk-free`) is not one, unless it opens a project, service-account or admin key
/// (`sk-proj-`, `sk-svcacct-`, `sk-admin-`, `sk-None-`) or is followed by a run as long as a
/// key's (20 characters or more): redacting too much is the safe side.
fn find_key(s: &str) -> Option<usize> {
    const TYPED: [&str; 4] = ["proj-", "svcacct-", "admin-", "None-"];
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find("sk-").map(|i| i + from) {
        let in_word = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let after = &s[i + 3..];
        let run = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*'))
            .unwrap_or(after.len());
        if !in_word || run >= 20 || TYPED.iter().any(|t| after.starts_with(t)) {
            return Some(i);
        }
        from = i + 3;
    }
    None
}

fn find_after(s: &str, marker: &str) -> Option<usize> {
    s.find(marker).map(|i| i + marker.len())
}

/// [`redact_secrets`] on an owned string: the string itself when nothing is redacted.
pub(crate) fn redact_string(s: String) -> String {
    match redact_secrets(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(r) => r,
    }
}

/// Whether an argument's name says it holds a secret, so its value is never shown.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with("key")
        || n.ends_with("secret")
        || n.ends_with("password")
        || n.ends_with("credentials")
        || n == "token"
        || n.ends_with("_token")
        || n.ends_with("authorization")
}

/// A `fmt::Write` that keeps the first `max` characters and notes that more came.
struct Truncating {
    out: String,
    chars: usize,
    max: usize,
    cut: bool,
}

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.chars == self.max {
                self.cut = true;
                // Stop formatting: the rest would be thrown away.
                return Err(fmt::Error);
            }
            self.out.push(c);
            self.chars += 1;
        }
        Ok(())
    }
}

/// How an argument named `name` is shown: `[redacted]` for a secret's name, else its `Debug`
/// text cut at `max` characters (`…` when cut), redacted.
pub(crate) fn arg_text<T: Debug + ?Sized>(name: &str, value: &T, max: usize) -> String {
    if is_secret_name(name) {
        return REDACTED.to_owned();
    }
    let mut w = Truncating {
        out: String::new(),
        chars: 0,
        max,
        cut: false,
    };
    let _ = write!(w, "{value:?}");
    let mut text = redact_string(w.out);
    if w.cut {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_echoed_keys() {
        let m = "Incorrect API key provided: sk-abc12***************************************wxyz. You can find your API key at https://platform.openai.com/account/api-keys.";
        let r = redact_secrets(m);
        assert!(!r.contains("abc12"), "{r}");
        assert!(!r.contains("wxyz"), "{r}");
        assert!(
            r.starts_with("Incorrect API key provided: [redacted]. You can find"),
            "{r}"
        );
        assert_eq!(redact_secrets("no secrets here"), "no secrets here");
        let r = redact_secrets("Authorization: Bearer sk-proj-AAAA1234");
        assert!(!r.contains("AAAA1234"), "{r}");
    }

    // Regression: `sk-` inside a word was taken for a key (`task-1` → `ta[redacted]`).
    #[test]
    fn sk_inside_a_word_is_not_a_key() {
        for s in [
            "task-1 failed",
            "a risk-free retry",
            "desk-top",
            "tasks: task-queue",
        ] {
            assert_eq!(redact_secrets(s), s);
        }
        // ...but a key glued to a word is still redacted.
        let glued = "keysk-proj-abcdefgh12345678 end";
        assert_eq!(redact_secrets(glued), "key[redacted] end");
        let long = "xsk-abcdefghijklmnopqrstuvwxyz0123 end";
        assert_eq!(redact_secrets(long), "x[redacted] end");
        // And a key after a task id in the same message.
        let both = "task-7: key sk-abc12***wxyz refused";
        assert_eq!(redact_secrets(both), "task-7: key [redacted] refused");
    }

    #[test]
    fn owned_text_is_redacted_and_kept_without_a_copy_when_clean() {
        let clean = String::from("no secrets here");
        let at = clean.as_ptr();
        let kept = redact_string(clean);
        assert_eq!(kept, "no secrets here");
        assert_eq!(kept.as_ptr(), at);
        assert_eq!(
            redact_string("Invalid value: 'sk-proj-abcdefgh12345678'.".to_owned()),
            "Invalid value: '[redacted]'."
        );
    }

    #[test]
    fn secret_names_are_known_by_their_ending() {
        for name in [
            "api_key",
            "key",
            "openAiKey",
            "client_secret",
            "password",
            "credentials",
            "token",
            "access_token",
            "Authorization",
            "proxy_authorization",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "text",
            "keys",
            "tokens",
            "max_tokens",
            "monkey_business",
            "body",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn arguments_are_cut_redacted_or_hidden() {
        assert_eq!(
            arg_text("api_key", "sk-proj-abcdefgh12345678", 256),
            REDACTED
        );
        assert_eq!(arg_text("text", "hello", 256), "\"hello\"");
        assert_eq!(
            arg_text("header", "Bearer sk-proj-abcdefgh12345678", 256),
            "\"Bearer [redacted]\""
        );
        let long = "x".repeat(300);
        let shown = arg_text("text", &long, 256);
        assert_eq!(shown.chars().count(), 257, "{shown}");
        assert!(shown.ends_with('…'));
        // Exactly `max` characters: whole, no ellipsis.
        assert_eq!(
            arg_text("n", &"y".repeat(8), 10),
            format!("\"{}\"", "y".repeat(8))
        );
    }
}
