//! A request's cost for the limits: one request, and an estimate of its tokens.

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Either, Empty, Full};
use serde_json::Value;

/// What one request costs against the limits: one request and `tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// The estimated tokens (prompt plus the completion budget).
    pub tokens: u64,
}

impl Cost {
    /// One request estimated at `tokens` tokens.
    pub fn tokens(tokens: u64) -> Self {
        Cost { tokens }
    }
}

/// How token costs are estimated from a request body.
///
/// OpenAI counts a request against the tokens-per-minute limit when it arrives, as its prompt
/// plus `max_tokens` (or `max_completion_tokens`) times `n`. Without a tokenizer the prompt is
/// estimated at one token per four characters of text plus a few tokens per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostEstimator {
    /// Tokens assumed for the completion when the body sets no maximum.
    ///
    /// # Default
    /// 256.
    pub default_completion_tokens: u64,
    /// The cost of a request whose body cannot be read cheaply.
    ///
    /// # Default
    /// 1,000 tokens.
    pub default_cost: u64,
}

impl Default for CostEstimator {
    fn default() -> Self {
        CostEstimator {
            default_completion_tokens: 256,
            default_cost: 1_000,
        }
    }
}

/// Bodies larger than this are estimated by size alone, without parsing.
const PARSE_LIMIT: usize = 4 * 1024 * 1024;

impl CostEstimator {
    /// The estimated cost of a request with body `body` (`None`: not readable).
    ///
    /// ```
    /// use oai_resilience::pace::CostEstimator;
    /// let est = CostEstimator::default();
    /// let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello in four words"}],"max_tokens":100,"n":2}"#;
    /// let cost = est.estimate(Some(body));
    /// assert!(cost.tokens > 200 && cost.tokens < 230, "{cost:?}");
    /// ```
    pub fn estimate(&self, body: Option<&[u8]>) -> Cost {
        let Some(body) = body else {
            return Cost::tokens(self.default_cost);
        };
        if body.len() > PARSE_LIMIT {
            return Cost::tokens(body.len() as u64 / 4 + self.default_completion_tokens);
        }
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return Cost::tokens(body.len() as u64 / 4 + self.default_completion_tokens);
        };
        let mut chars = 0u64;
        let mut messages = 0u64;
        for field in ["messages", "prompt", "input", "instructions"] {
            if let Some(v) = obj.get(field) {
                if let (true, Value::Array(items)) = (field == "messages", v) {
                    messages += items.len() as u64;
                }
                chars += text_chars(v, 0);
            }
        }
        let prompt = chars.div_ceil(4) + 4 * messages + 3;
        let completion = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|f| obj.get(*f).and_then(Value::as_u64))
            .unwrap_or(self.default_completion_tokens);
        let n = obj
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 128);
        Cost::tokens(prompt.saturating_add(completion.saturating_mul(n)))
    }
}

/// Characters of text inside a JSON value (strings, and strings nested in arrays and objects,
/// skipping keys such as `role` and `type` that carry no prompt text). Depth-bounded.
fn text_chars(v: &Value, depth: u32) -> u64 {
    if depth > 16 {
        return 0;
    }
    match v {
        Value::String(s) => s.chars().count() as u64,
        Value::Array(items) => items.iter().map(|i| text_chars(i, depth + 1)).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "role" | "type" | "name" | "image_url"))
            .map(|(_, v)| text_chars(v, depth + 1))
            .sum(),
        _ => 0,
    }
}

/// The `model` field of a JSON body, if any.
pub(crate) fn model_of(body: &[u8]) -> Option<String> {
    if body.len() > PARSE_LIMIT {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

/// A request body whose bytes can be seen cheaply, for the key's model and the token estimate.
///
/// Implemented for [`Full<Bytes>`], [`Bytes`], [`String`], `Vec<u8>`, `&'static str` and
/// `&'static [u8]`, [`Either`] of two such bodies, and (in the stack module) the validation
/// layer's [`ValidateBody`](crate::validate::ValidateBody); [`Empty<Bytes>`], `()`,
/// [`BoxBody`] and [`UnsyncBoxBody`] have no bytes. A body type that cannot expose its
/// bytes can implement it by returning `f(None)`: the request then costs the
/// [default cost](CostEstimator::default_cost).
pub trait PaceBody {
    /// Calls `f` with the body's bytes, or with `None` if they are not available cheaply.
    /// The body must be left equivalent to what it was.
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R;
}

impl PaceBody for Full<Bytes> {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        use http_body::Body;
        use std::task::{Context, Poll, Waker};
        // `Full` yields its one frame synchronously; take it, look, and rebuild the body.
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::Pin::new(&mut *self).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let out = f(Some(&data));
                    *self = Full::new(data);
                    out
                }
                Err(_) => f(None),
            },
            // An empty `Full` has no frame: it stays empty.
            Poll::Ready(None) => f(Some(&[])),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Pending => f(None),
        }
    }
}

impl PaceBody for Bytes {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(Some(self))
    }
}

impl PaceBody for String {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(Some(self.as_bytes()))
    }
}

impl PaceBody for Vec<u8> {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(Some(self))
    }
}

impl PaceBody for &'static str {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(Some(self.as_bytes()))
    }
}

impl PaceBody for &'static [u8] {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(Some(self))
    }
}

impl PaceBody for Empty<Bytes> {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(None)
    }
}

impl<L: PaceBody, R: PaceBody> PaceBody for Either<L, R> {
    fn with_bytes<T>(&mut self, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
        match self {
            Either::Left(l) => l.with_bytes(f),
            Either::Right(r) => r.with_bytes(f),
        }
    }
}

impl<D, E> PaceBody for BoxBody<D, E> {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(None)
    }
}

impl<D, E> PaceBody for UnsyncBoxBody<D, E> {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(None)
    }
}

impl PaceBody for () {
    fn with_bytes<R>(&mut self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn estimate_counts_prompt_completion_and_n() {
        let est = CostEstimator::default();
        let text = "x".repeat(400);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}],"max_completion_tokens":50,"n":3}}"#
        );
        // 400 chars = 100 tokens, + 4 for the message, + 3, + 50 × 3.
        assert_eq!(
            est.estimate(Some(body.as_bytes())).tokens,
            100 + 4 + 3 + 150
        );
        // Parts arrays count their text; no maximum means the default completion budget.
        let body =
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"}]}]}"#;
        assert_eq!(est.estimate(Some(body)).tokens, 2 + 4 + 3 + 256);
        // Legacy prompt as a list of strings.
        let body = br#"{"prompt":["abcd","efgh"],"max_tokens":10}"#;
        assert_eq!(est.estimate(Some(body)).tokens, 2 + 3 + 10);
    }

    #[test]
    fn unreadable_or_non_json_bodies_fall_back() {
        let est = CostEstimator {
            default_completion_tokens: 10,
            default_cost: 777,
        };
        assert_eq!(est.estimate(None).tokens, 777);
        assert_eq!(est.estimate(Some(b"not json at all!")).tokens, 4 + 10);
        assert_eq!(est.estimate(Some(b"[1,2]")).tokens, 1 + 10);
        // Absurd n is clamped, huge numbers saturate instead of overflowing.
        let body = br#"{"max_tokens":18446744073709551615,"n":1000000}"#;
        assert_eq!(est.estimate(Some(body)).tokens, u64::MAX);
    }

    #[test]
    fn model_is_read_leniently() {
        assert_eq!(
            model_of(br#"{"model":"gpt-4o","x":1}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(model_of(br#"{"x":1}"#), None);
        assert_eq!(model_of(b"garbage"), None);
        assert_eq!(model_of(br#"{"model":5}"#), None);
    }

    #[tokio::test]
    async fn full_body_is_left_intact() {
        let mut body = Full::new(Bytes::from_static(b"{\"model\":\"m\"}"));
        let seen = body.with_bytes(|b| b.map(<[u8]>::to_vec));
        assert_eq!(seen.as_deref(), Some(&b"{\"model\":\"m\"}"[..]));
        let again = body.collect().await.unwrap().to_bytes();
        assert_eq!(&again[..], b"{\"model\":\"m\"}");
        let mut empty = Full::new(Bytes::new());
        assert_eq!(empty.with_bytes(|b| b.map(<[u8]>::len)), Some(0));
        let mut s = String::from("abc");
        assert_eq!(s.with_bytes(|b| b.map(<[u8]>::len)), Some(3));
        assert!(().with_bytes(|b| b.is_none()));
    }
}
