//! A request's cost for the limits: one request, and an estimate of its tokens.

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Either, Empty, Full};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What one request costs against the limits: one request and `tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Cost {
    /// The estimated tokens (prompt plus the completion budget).
    pub tokens: u64,
    /// The part of `tokens` that is the completion budget (`max_tokens` × `n`, or the
    /// assumed completion); the rest is the prompt. The usage a response reports corrects
    /// the two parts separately ([`crate::usage`]).
    pub completion: u64,
    /// Requests this request must leave in the key's request bucket: it is admitted only when
    /// the bucket holds `1 + reserve`. A shared [`PacingStore`](super::PacingStore) keeps
    /// room this way for calls of higher [priority lanes](super::Priority) of every process
    /// ([`PacerConfig::lane_reserves`](super::PacerConfig::lane_reserves)). A reserve at or
    /// above the bucket's capacity waits for a full bucket.
    ///
    /// # Default
    /// 0.
    pub reserve: u32,
}

impl Cost {
    /// One request estimated at `tokens` tokens, all counted as prompt.
    pub fn tokens(tokens: u64) -> Self {
        Cost {
            tokens,
            completion: 0,
            reserve: 0,
        }
    }

    /// `self` with `completion` of its tokens counted as the completion budget (at most
    /// `tokens`).
    ///
    /// ```
    /// use oai_resilience::pace::Cost;
    /// let cost = Cost::tokens(120).with_completion(100);
    /// assert_eq!((cost.tokens, cost.completion), (120, 100));
    /// assert_eq!(Cost::tokens(10).with_completion(50).completion, 10);
    /// ```
    pub fn with_completion(mut self, completion: u64) -> Self {
        self.completion = completion.min(self.tokens);
        self
    }

    /// The prompt part: `tokens − completion`.
    pub fn prompt(&self) -> u64 {
        self.tokens.saturating_sub(self.completion)
    }

    /// This cost, admitted only when it leaves `reserve` requests in the request bucket.
    ///
    /// ```
    /// use oai_resilience::pace::Cost;
    ///
    /// let cost = Cost::tokens(300).with_reserve(2);
    /// assert_eq!((cost.tokens, cost.reserve), (300, 2));
    /// ```
    pub fn with_reserve(mut self, reserve: u32) -> Self {
        self.reserve = reserve;
        self
    }
}

/// How token costs are estimated from a request body.
///
/// OpenAI counts a request against the tokens-per-minute limit when it arrives, as its prompt
/// plus `max_tokens` (or `max_completion_tokens`) times `n`. Without a tokenizer the prompt is
/// estimated at one token per four characters of text plus a few tokens per message.
///
/// Start from [`Default`] and set the fields that differ:
///
/// ```
/// use oai_resilience::pace::CostEstimator;
///
/// let mut estimator = CostEstimator::default();
/// estimator.default_completion_tokens = 1_000;
/// // An empty conversation without `max_tokens`: the assumed completion, plus a few tokens.
/// let tokens = estimator.estimate(Some(br#"{"messages":[]}"#)).tokens;
/// assert!((1_000..1_010).contains(&tokens));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
        match scan(body) {
            Some(scan) => self.estimate_scan(&scan),
            None => self.by_size(body.len()),
        }
    }

    /// The estimate of a body that is too large to parse, or not a JSON object: by its size.
    pub(crate) fn by_size(&self, len: usize) -> Cost {
        Cost::tokens(len as u64 / 4 + self.default_completion_tokens)
            .with_completion(self.default_completion_tokens)
    }

    /// The estimate from a body already scanned.
    pub(crate) fn estimate_scan(&self, scan: &BodyScan) -> Cost {
        let chars = scan.text.iter().map(|t| t.chars).sum::<u64>();
        let messages = scan.text[0].items;
        let prompt = chars.div_ceil(4) + 4 * messages + 3;
        let completion = scan
            .completion
            .iter()
            .find_map(|c| *c)
            .unwrap_or(self.default_completion_tokens);
        let n = scan.n.unwrap_or(1).clamp(1, 128);
        let completion = completion.saturating_mul(n);
        Cost::tokens(prompt.saturating_add(completion)).with_completion(completion)
    }
}

/// The `model` field of a JSON body, if any.
pub(crate) fn model_of(body: &[u8]) -> Option<String> {
    scan(body)?.model()
}

/// What one pass over a JSON request body finds: the model (for the pacing key) and the
/// facts of the token estimate. Reading these with `serde_json::Value` built a tree of maps
/// and strings for every attempt, and the key read the body a second time; this visitor reads
/// the body once and allocates only the model's name.
#[derive(Debug, Default)]
pub(crate) struct BodyScan {
    model: Option<String>,
    /// The model field was not a string or null, or appeared twice: no model.
    model_invalid: bool,
    model_seen: bool,
    /// `messages`, `prompt`, `input`, `instructions`.
    text: [Text; 4],
    /// `max_completion_tokens`, `max_tokens`, `max_output_tokens`, by precedence.
    completion: [Option<u64>; 3],
    n: Option<u64>,
}

impl BodyScan {
    /// The model, if the body named exactly one (a string).
    pub(crate) fn model(self) -> Option<String> {
        if self.model_invalid {
            None
        } else {
            self.model
        }
    }
}

/// Characters of prompt text in one field, and its length when it is an array.
#[derive(Debug, Default, Clone, Copy)]
struct Text {
    chars: u64,
    items: u64,
}

/// Scans a JSON object body; `None` if it is larger than the parse limit, not JSON or not an
/// object. A repeated field counts as its last occurrence, as in `serde_json::Value`.
pub(crate) fn scan(body: &[u8]) -> Option<BodyScan> {
    if body.len() > PARSE_LIMIT {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let scan = de::Deserializer::deserialize_any(&mut de, TopVisitor).ok()?;
    de.end().ok()?;
    Some(scan)
}

enum Field {
    Model,
    Text(usize),
    Completion(usize),
    N,
    Other,
}

/// A seed that reads a string and maps it to `$value` with `$map` (`$v` names the string).
macro_rules! str_seed {
    ($seed:ident -> $value:ty, $expecting:literal, |$v:ident| $map:expr) => {
        impl<'de> DeserializeSeed<'de> for $seed {
            type Value = $value;
            fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.deserialize_str(self)
            }
        }

        impl Visitor<'_> for $seed {
            type Value = $value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($expecting)
            }
            fn visit_str<E: de::Error>(self, $v: &str) -> Result<$value, E> {
                Ok($map)
            }
        }
    };
}

struct FieldSeed;

str_seed!(FieldSeed -> Field, "a field name", |v| match v {
    "model" => Field::Model,
    "messages" => Field::Text(0),
    "prompt" => Field::Text(1),
    "input" => Field::Text(2),
    "instructions" => Field::Text(3),
    "max_completion_tokens" => Field::Completion(0),
    "max_tokens" => Field::Completion(1),
    "max_output_tokens" => Field::Completion(2),
    "n" => Field::N,
    _ => Field::Other,
});

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = BodyScan;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyScan, A::Error> {
        let mut scan = BodyScan::default();
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            match field {
                Field::Model => {
                    let m = map.next_value_seed(ModelSeed)?;
                    scan.model_invalid |= scan.model_seen || m.is_err();
                    scan.model_seen = true;
                    scan.model = m.ok().flatten();
                }
                Field::Text(i) => {
                    let (chars, items) = map.next_value_seed(TextSeed { depth: 0 })?;
                    scan.text[i] = Text {
                        chars,
                        items: items.unwrap_or(0),
                    };
                }
                Field::Completion(i) => scan.completion[i] = map.next_value_seed(U64Seed)?,
                Field::N => scan.n = map.next_value_seed(U64Seed)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(scan)
    }
}

/// A model: `Ok(Some)` for a string, `Ok(None)` for null, `Err(())` for anything else.
struct ModelSeed;

impl<'de> DeserializeSeed<'de> for ModelSeed {
    type Value = Result<Option<String>, ()>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ModelSeed {
    type Value = Result<Option<String>, ()>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(Some(v.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Err(()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Err(()))
    }
}

/// A non-negative integer, or `None` for any other value (as `Value::as_u64`).
struct U64Seed;

impl<'de> DeserializeSeed<'de> for U64Seed {
    type Value = Option<u64>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for U64Seed {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(v).ok())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<u64>, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<u64>, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(None)
    }
}

/// Characters of text inside a JSON value (strings, and strings nested in arrays and objects,
/// skipping keys such as `role` and `type` that carry no prompt text), and the number of
/// items when the value is an array. Depth-bounded: below 16 levels nothing is counted.
struct TextSeed {
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = (u64, Option<u64>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.depth > 16 {
            <IgnoredAny as de::Deserialize>::deserialize(d)?;
            return Ok((0, None));
        }
        d.deserialize_any(self)
    }
}

/// Whether an object key carries no prompt text.
struct SkipKey;

str_seed!(SkipKey -> bool, "a key", |v| matches!(
    v,
    "role" | "type" | "name" | "image_url"
));

impl<'de> Visitor<'de> for TextSeed {
    type Value = (u64, Option<u64>);
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((v.chars().count() as u64, None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok((0, None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok((0, None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok((0, None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok((0, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((0, None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut chars, mut items) = (0u64, 0u64);
        let depth = self.depth + 1;
        while let Some((c, _)) = seq.next_element_seed(TextSeed { depth })? {
            chars = chars.saturating_add(c);
            items += 1;
        }
        Ok((chars, Some(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut chars = 0u64;
        let depth = self.depth + 1;
        while let Some(skip) = map.next_key_seed(SkipKey)? {
            if skip {
                map.next_value::<IgnoredAny>()?;
            } else {
                let (c, _) = map.next_value_seed(TextSeed { depth })?;
                chars = chars.saturating_add(c);
            }
        }
        Ok((chars, None))
    }
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
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The estimate as it was computed before the one-pass scan, over a `serde_json::Value`:
    /// the reference the scan must agree with.
    fn reference(est: &CostEstimator, body: &[u8]) -> (u64, Option<String>) {
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
        #[derive(serde::Deserialize)]
        struct ModelOnly {
            model: Option<String>,
        }
        let model = serde_json::from_slice::<ModelOnly>(body)
            .ok()
            .and_then(|m| m.model);
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return (body.len() as u64 / 4 + est.default_completion_tokens, model);
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
            .unwrap_or(est.default_completion_tokens);
        let n = obj
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 128);
        (prompt.saturating_add(completion.saturating_mul(n)), model)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (0u64..5000).prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-zé😀 ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(20, 200, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("role".to_string()),
                        Just("type".to_string()),
                        Just("content".to_string()),
                        Just("text".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn scan_agrees_with_the_value_reference(
            fields in proptest::collection::btree_map(
                prop_oneof![
                    Just("model".to_string()),
                    Just("messages".to_string()),
                    Just("prompt".to_string()),
                    Just("input".to_string()),
                    Just("instructions".to_string()),
                    Just("max_tokens".to_string()),
                    Just("max_completion_tokens".to_string()),
                    Just("max_output_tokens".to_string()),
                    Just("n".to_string()),
                    "[a-z_]{1,8}",
                ],
                json_value(),
                0..8,
            ),
            model in proptest::option::of("[a-z0-9.-]{1,12}"),
            garbage in proptest::option::of("[\\]{},: x]{1,3}"),
        ) {
            let est = CostEstimator::default();
            let mut obj: serde_json::Map<String, Value> = fields.into_iter().collect();
            if let Some(m) = model {
                obj.insert("model".into(), Value::String(m));
            }
            let mut body = serde_json::to_vec(&Value::Object(obj)).unwrap();
            if let Some(g) = garbage {
                body.extend_from_slice(g.as_bytes());
            }
            let (tokens, model) = reference(&est, &body);
            prop_assert_eq!(est.estimate(Some(&body)).tokens, tokens);
            prop_assert_eq!(model_of(&body), model);
        }
    }

    #[test]
    fn scan_handles_repeated_fields_like_the_reference() {
        let est = CostEstimator::default();
        for body in [
            &br#"{"model":"a","model":"b","max_tokens":5,"max_tokens":7}"#[..],
            br#"{"messages":[{"content":"aaaa"}],"messages":"bb","n":2,"n":"x"}"#,
            br#"{"model":5,"prompt":"hello"}"#,
            br#"{"model":null}"#,
            br#"[1,2]"#,
            br#"{"max_tokens":1.5,"n":-3}"#,
        ] {
            let (tokens, model) = reference(&est, body);
            assert_eq!(
                est.estimate(Some(body)).tokens,
                tokens,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(model_of(body), model, "{}", String::from_utf8_lossy(body));
        }
    }

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
