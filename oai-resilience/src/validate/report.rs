//! The full report: one pass over a JSON body, driven by the generated tables, that writes
//! every violation with its path and the API's message. It runs when the accept pass
//! (`accept.rs`) did not accept the body, and on a `serde_json::Value`; the two share
//! `vocab.rs` and never import each other.
//!
//! [`NodeSeed`] is a serde [`DeserializeSeed`]: it walks the body as the parser produces it and
//! never builds a `serde_json::Value` for the whole body. Subtrees the tables do not describe
//! are skipped with [`IgnoredAny`] (no allocation). A value is buffered as a `Value` only where
//! the schema cannot be chosen while streaming: the keys before a discriminator (`role`
//! usually comes first, so this is rare) and alternatives of the same JSON type that have no
//! discriminator (for example the array forms of embeddings `input`).
//!
//! The same seed runs over a `&serde_json::Value`, which is how `check_value` works.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::keys::same;
use super::schema::*;
use super::vocab::*;
use crate::error::Violation;

/// One step of a parameter path.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(&'static str),
    Owned(Box<str>),
    Index(usize),
}

/// The state of one validation pass.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub(crate) path: Vec<Seg>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) deprecated: Vec<String>,
    pub(crate) facts: Facts,
    pub(crate) track_messages: bool,
    /// The input is a `serde_json` deserializer over bytes, so subtrees can be borrowed as
    /// `&RawValue` (false while a buffered `Value` is checked).
    pub(crate) raw: bool,
    /// > 0 while an alternative is tried: facts and deprecations are not recorded.
    trial: u32,
}

impl Scalar<'_> {
    /// "a string", "an integer", … as the API words the type it got.
    fn got(&self) -> &'static str {
        match *self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::I64(_) | Scalar::U64(_) => "an integer",
            Scalar::F64(_) => "a decimal",
            Scalar::Str(_) => "a string",
        }
    }
}

/// "a string", "one of a string or an array", … for the expected types.
fn expected(types: Types) -> String {
    let names: Vec<&str> = [
        (T_STRING, "a string"),
        (T_NUMBER, "a decimal"),
        (T_INTEGER, "an integer"),
        (T_BOOLEAN, "a boolean"),
        (T_ARRAY, "an array"),
        (T_OBJECT, "an object"),
    ]
    .iter()
    .filter(|(bit, _)| types & bit != 0)
    .filter(|(bit, _)| !(*bit == T_INTEGER && types & T_NUMBER != 0))
    .map(|(_, name)| *name)
    .collect();
    match names.as_slice() {
        [] => "a value".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("one of {} or {}", init.join(", "), last),
    }
}

/// "'a', 'b', and 'c'", the API's way of listing supported values.
pub(crate) fn list_values(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {}", init.join(", "), last),
    }
}

impl Ctx {
    pub(crate) fn new(track_messages: bool) -> Self {
        let mut ctx = Ctx {
            track_messages,
            ..Ctx::default()
        };
        ctx.path.reserve(16);
        ctx
    }

    /// The OpenAI-style path of the current position: `messages[1].content`.
    pub(crate) fn path_string(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => push_key(&mut s, k),
                Seg::Owned(k) => push_key(&mut s, k),
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
            }
        }
        if s.is_empty() {
            s.push_str("body");
        }
        s
    }

    fn report(&mut self, message: impl FnOnce(&str) -> String) {
        let param = self.path_string();
        let message = message(&param);
        self.violations.push(Violation::new(param, message));
    }

    fn report_type(&mut self, types: Types, got: &str) {
        let want = expected(types);
        self.report(|p| format!("Invalid type for '{p}': expected {want}, but got {got} instead."));
    }

    fn recording(&self) -> bool {
        self.trial == 0
    }

    // ----- facts -----

    fn capture_scalar(&mut self, s: &Scalar<'_>) {
        if !self.recording() {
            return;
        }
        match self.path.as_slice() {
            [Seg::Key(k)] => self.facts.record(k, || Fact::of(s)),
            [Seg::Key("modalities"), Seg::Index(_)] => {
                if matches!(s, Scalar::Str("audio")) {
                    self.facts.modalities_audio = true;
                }
            }
            _ if self.track_messages => self.capture_message_scalar(s),
            _ => {}
        }
    }

    fn capture_message_scalar(&mut self, s: &Scalar<'_>) {
        let Scalar::Str(v) = *s else { return };
        let Some(msg) = self.facts.message() else {
            return;
        };
        match self.path.as_slice() {
            [Seg::Key("messages"), Seg::Index(i), Seg::Key("role")] if *i == msg.index => {
                msg.role = Some(Short::new(v).unwrap_or(EMPTY));
            }
            [Seg::Key("messages"), Seg::Index(i), Seg::Key("tool_call_id")] if *i == msg.index => {
                msg.tool_call_id = Some(v.into());
            }
            [Seg::Key("messages"), Seg::Index(i), Seg::Key("tool_calls"), Seg::Index(_), Seg::Key("id")]
                if *i == msg.index =>
            {
                msg.tool_call_ids.push(v.into());
            }
            _ => {}
        }
    }

    /// Whether `key` is the `id` of a chat tool call (`messages[i].tool_calls[j].id`), which
    /// the depth-limited tables do not describe but the message-order rule needs.
    fn is_tool_call_id(&self, key: &str) -> bool {
        key == "id"
            && self.track_messages
            && self.recording()
            && matches!(
                self.path.as_slice(),
                [
                    Seg::Key("messages"),
                    Seg::Index(_),
                    Seg::Key("tool_calls"),
                    Seg::Index(_)
                ]
            )
    }

    fn capture_tool_call_id(&mut self, value: &Value) {
        let [_, Seg::Index(i), ..] = self.path.as_slice() else {
            return;
        };
        let i = *i;
        if let (Some(id), Some(msg)) = (value.as_str(), self.facts.message()) {
            if msg.index == i {
                msg.tool_call_ids.push(id.into());
            }
        }
    }

    fn capture_container(&mut self, fact: Fact) {
        if !self.recording() {
            return;
        }
        match self.path.as_slice() {
            [Seg::Key(k)] => self.facts.record(k, || fact),
            [Seg::Key("messages"), Seg::Index(i), Seg::Key("tool_calls")]
                if self.track_messages =>
            {
                if let (Some(msg), Fact::Array(n)) = (self.facts.message(), fact) {
                    if msg.index == *i {
                        msg.tool_calls = n;
                    }
                }
            }
            _ => {}
        }
    }

    fn capture_object_start(&mut self) {
        if !self.recording() || !self.track_messages {
            return;
        }
        if let [Seg::Key("messages"), Seg::Index(i)] = self.path.as_slice() {
            let index = *i;
            self.facts.start_message(index);
        }
    }

    // ----- scalars -----

    fn scalar(&mut self, node: &'static Node, s: Scalar<'_>) {
        self.capture_scalar(&s);
        self.scalar_in(node, s);
    }

    fn scalar_in(&mut self, node: &'static Node, s: Scalar<'_>) {
        if node.alternatives.is_empty() {
            return self.check_scalar(node, s);
        }
        if let Scalar::Null = s {
            if !node.nullable && !node.alternatives.iter().any(|a| a.nullable) {
                self.report_type(node.types, s.got());
            }
            return;
        }
        let got = s.type_bits();
        if !accepts(node.types, got) {
            return self.report_type(node.types, s.got());
        }
        let mut first = None;
        for &alt in node.alternatives {
            if !accepts(alt.types, got) {
                continue;
            }
            first.get_or_insert(alt);
            if self.trial_ok(|ctx| ctx.scalar_in(alt, s)) {
                return;
            }
        }
        if node.lenient {
            return;
        }
        match first {
            Some(alt) => self.scalar_in(alt, s),
            None => self.report_type(node.types, s.got()),
        }
    }

    fn check_scalar(&mut self, node: &'static Node, s: Scalar<'_>) {
        if let Scalar::Null = s {
            if !node.nullable && node.types != T_ANY {
                self.report_type(node.types, "null");
            }
            return;
        }
        if !accepts(node.types, s.type_bits()) {
            let got = if node.types & (T_NUMBER | T_INTEGER) == T_INTEGER
                && matches!(s, Scalar::F64(_))
            {
                "a decimal"
            } else {
                s.got()
            };
            return self.report_type(node.types, got);
        }
        match s {
            Scalar::Str(v) => self.check_str(node, v),
            Scalar::Bool(_) | Scalar::Null => {}
            n => self.check_number(node, n),
        }
    }

    fn check_number(&mut self, node: &'static Node, n: Scalar<'_>) {
        let kind = if node.types & T_NUMBER != 0 {
            "decimal"
        } else {
            "integer"
        };
        if node.int64 {
            let fits = match n {
                Scalar::U64(v) => v <= i64::MAX as u64,
                Scalar::F64(v) => {
                    (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v)
                }
                _ => true,
            };
            if !fits {
                return self.report(|p| {
                    format!(
                        "Invalid '{p}': integer out of range. Expected a 64-bit signed integer."
                    )
                });
            }
        }
        let Some(v) = n.as_f64() else { return };
        if let Some(min) = node.minimum {
            if v < min {
                return self.report(|p| {
                    format!(
                        "Invalid '{p}': {kind} below minimum value. Expected a value >= {}, but got {} instead.",
                        Num(min),
                        Num(v)
                    )
                });
            }
        }
        if let Some(max) = node.maximum {
            if v > max {
                self.report(|p| {
                    format!(
                        "Invalid '{p}': {kind} above maximum value. Expected a value <= {}, but got {} instead.",
                        Num(max),
                        Num(v)
                    )
                });
            }
        }
    }

    fn check_str(&mut self, node: &'static Node, v: &str) {
        if !node.enum_values.is_empty() && !node.enum_values.contains(&v) {
            let supported = list_values(node.enum_values);
            let shown: String = v.chars().take(64).collect();
            return self.report(|_| {
                format!("Invalid value: '{shown}'. Supported values are: {supported}.")
            });
        }
        if node.min_length.is_some() || node.max_length.is_some() {
            let len = v.chars().count();
            if let Some(min) = node.min_length {
                if len < min as usize {
                    return self.report(|p| {
                        if len == 0 {
                            format!("Invalid '{p}': empty string. Expected a string with minimum length {min}, but got an empty string instead.")
                        } else {
                            format!("Invalid '{p}': string too short. Expected a string with minimum length {min}, but got a string with length {len} instead.")
                        }
                    });
                }
            }
            if let Some(max) = node.max_length {
                if len > max as usize {
                    return self.report(|p| {
                        format!("Invalid '{p}': string too long. Expected a string with maximum length {max}, but got a string with length {len} instead.")
                    });
                }
            }
        }
        if node.format == Format::FunctionName
            && !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.report(|p| {
                format!("Invalid '{p}': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.")
            });
        }
    }

    /// Runs `f` as a trial: returns whether it found no violation, and records nothing.
    fn trial_ok(&mut self, f: impl FnOnce(&mut Ctx)) -> bool {
        self.trial += 1;
        let saved = std::mem::take(&mut self.violations);
        let depth = self.path.len();
        f(self);
        self.path.truncate(depth);
        let ok = self.violations.is_empty();
        self.violations = saved;
        self.trial -= 1;
        ok
    }

    /// Runs `f` as a trial: returns its violation count and how deep its first violation is.
    fn trial_score(&mut self, f: impl FnOnce(&mut Ctx)) -> (usize, usize) {
        self.trial += 1;
        let saved = std::mem::take(&mut self.violations);
        let depth = self.path.len();
        f(self);
        self.path.truncate(depth);
        let count = self.violations.len();
        let first_depth = self
            .violations
            .first()
            .map_or(0, |v| v.param.matches(['.', '[']).count());
        self.violations = saved;
        self.trial -= 1;
        (count, first_depth)
    }

    /// Checks a buffered value against the alternatives of `node` that accept its type.
    fn buffered_alternatives(&mut self, node: &'static Node, buf: Buf<'_>, got: Types) {
        let cands = || {
            node.alternatives
                .iter()
                .copied()
                .filter(move |a| accepts(a.types, got))
        };
        for alt in cands() {
            if self.trial_ok(|ctx| ctx.run_buf(alt, buf)) {
                // Run it for real, so facts and deprecations are recorded.
                return self.run_buf(alt, buf);
            }
        }
        if node.lenient {
            return;
        }
        // From here on the value is invalid: parse the text if it was kept unparsed.
        let parsed;
        let value = match buf {
            Buf::Value(v) => v,
            Buf::Raw(raw) => {
                // Valid JSON by construction.
                parsed = match serde_json::from_str::<Value>(raw) {
                    Ok(v) => v,
                    Err(e) => return self.text_error(&e),
                };
                &parsed
            }
        };
        // The alternative that explains the value best. OpenAI's convention
        // `{"type": "x", "x": …}` names it when the tables are too shallow to have the
        // discriminator; else fewest violations, then the deepest first violation (it matched
        // the most structure). This only chooses which violations to report.
        let named = value.get("type").and_then(Value::as_str).and_then(|t| {
            let mut named = cands().filter(|a| a.required.contains(&t));
            match (named.next(), named.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        });
        if let Some(alt) = named {
            return self.run_value(alt, value);
        }
        let best = cands().min_by_key(|&alt| {
            let (count, depth) = self.trial_score(|ctx| ctx.run_value(alt, value));
            (count, std::cmp::Reverse(depth))
        });
        match best {
            Some(alt) => self.run_value(alt, value),
            None => self.report_type(node.types, value_got(value)),
        }
    }

    /// A value kept as text that cannot be parsed again (it nests deeper than the parser's
    /// limit, which the first, non-recursive scan did not enforce).
    fn text_error(&mut self, e: &serde_json::Error) {
        self.report(|p| format!("Invalid '{p}': {e}."));
    }

    fn run_buf(&mut self, node: &'static Node, buf: Buf<'_>) {
        match buf {
            Buf::Value(v) => self.run_value(node, v),
            Buf::Raw(raw) => self.run_raw(node, raw),
        }
    }

    /// A value of a node whose alternatives cannot be told apart while streaming, borrowed
    /// unparsed: each alternative is tried on the text, without building a `Value`.
    fn ambiguous_raw(&mut self, node: &'static Node, raw: &str) {
        if raw.as_bytes().first() == Some(&b'"') && plain_string(node) {
            return self.raw_value(node, raw);
        }
        let got = match raw.as_bytes().first() {
            Some(b'{') => T_OBJECT,
            Some(b'[') => T_ARRAY,
            _ => T_ANY,
        };
        if got != T_ANY && accepts(node.types, got) && ambiguous_for(node, got) {
            return self.buffered_alternatives(node, Buf::Raw(raw), got);
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        // The text is one valid JSON value: only the nesting limit can fail.
        if let Err(e) = de.deserialize_any(NodeVisitor { node, ctx: self }) {
            self.text_error(&e);
        }
    }

    fn run_value(&mut self, node: &'static Node, value: &Value) {
        let raw = std::mem::replace(&mut self.raw, false);
        // A `&Value` deserializer cannot fail: the result carries no information.
        let _ = NodeSeed { node, ctx: self }.deserialize(value);
        self.raw = raw;
    }

    /// Checks a value from its JSON text (a borrowed `RawValue`).
    fn run_raw(&mut self, node: &'static Node, raw: &str) {
        if plain_string(node) {
            return self.raw_value(node, raw);
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        // The text is one valid JSON value: only the nesting limit can fail.
        if let Err(e) = (NodeSeed { node, ctx: self }).deserialize(&mut de) {
            self.text_error(&e);
        }
    }

    /// A value of a plain-string node, borrowed unparsed. A long string needs no more than its
    /// type (no content rule applies), so it is never unescaped or copied; anything else is
    /// checked normally from its text.
    fn raw_value(&mut self, node: &'static Node, raw: &str) {
        let bytes = raw.as_bytes();
        if bytes.first() == Some(&b'"') && bytes.len() > LONG_STRING {
            if self.recording() {
                if let [Seg::Key(k)] = self.path.as_slice() {
                    let k = *k;
                    self.facts.record(k, || Fact::LongStr);
                }
            }
            return;
        }
        if bytes.first() == Some(&b'"') && !raw.contains('\\') {
            return self.scalar(node, Scalar::Str(&raw[1..raw.len() - 1]));
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        // The text is one valid JSON value: only the nesting limit can fail.
        if let Err(e) = de.deserialize_any(NodeVisitor { node, ctx: self }) {
            self.text_error(&e);
        }
    }

    /// A value of an int64 node, borrowed unparsed: a number is read with its text
    /// ([`int64_read`]), anything else is checked normally.
    fn int64_raw(&mut self, node: &'static Node, raw: &str) {
        if matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9')) {
            // A number beyond the `f64` range (`1e400`) does not parse: the parser's error is
            // reported below, as for the other values read from their text.
            if let Ok(n) = serde_json::from_str::<serde_json::Number>(raw) {
                // The parser's own reading: `u64` for a non-negative integer, `i64` for a
                // negative one that fits, `f64` otherwise.
                let s = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(v), _, _) => Scalar::U64(v),
                    (None, Some(v), _) => Scalar::I64(v),
                    (None, None, v) => Scalar::F64(v.unwrap_or(f64::NAN)),
                };
                return self.scalar(node, int64_read(raw.as_bytes(), s));
            }
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        // The text is one valid JSON value: only the nesting limit and the `f64` range can
        // fail.
        if let Err(e) = de.deserialize_any(NodeVisitor { node, ctx: self }) {
            self.text_error(&e);
        }
    }

    fn deprecated_here(&mut self) {
        if self.recording() {
            let p = self.path_string();
            self.deprecated.push(p);
        }
    }
}

fn push_key(s: &mut String, k: &str) {
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(k);
}

fn value_got(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates one value against one node.
pub(crate) struct NodeSeed<'c> {
    pub(crate) node: &'static Node,
    pub(crate) ctx: &'c mut Ctx,
}

/// A value kept to try several alternatives on: parsed, or its JSON text.
#[derive(Clone, Copy)]
enum Buf<'a> {
    Value(&'a Value),
    Raw(&'a str),
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let node = self.node;
        if node.types == T_ANY && node.alternatives.is_empty() {
            d.deserialize_ignored_any(IgnoredAny)?;
            return Ok(());
        }
        if self.ctx.raw && plain_string(node) {
            let raw: &'de serde_json::value::RawValue = Deserialize::deserialize(d)?;
            self.ctx.raw_value(node, raw.get());
            return Ok(());
        }
        if self.ctx.raw && (ambiguous_for(node, T_OBJECT) || ambiguous_for(node, T_ARRAY)) {
            let raw: &'de serde_json::value::RawValue = Deserialize::deserialize(d)?;
            self.ctx.ambiguous_raw(node, raw.get());
            return Ok(());
        }
        if self.ctx.raw && node.int64 {
            let raw: &'de serde_json::value::RawValue = Deserialize::deserialize(d)?;
            self.ctx.int64_raw(node, raw.get());
            return Ok(());
        }
        d.deserialize_any(NodeVisitor {
            node,
            ctx: self.ctx,
        })
    }
}

struct NodeVisitor<'c> {
    node: &'static Node,
    ctx: &'c mut Ctx,
}

/// An object key, borrowed from the input when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A value read before the discriminator, kept until the alternative is known.
enum Pre<'de> {
    Value(Value),
    Raw(&'de serde_json::value::RawValue),
}

/// The entries before a discriminator, in order; the first few without allocating.
#[derive(Default)]
struct PreBuf<'de> {
    inline: [Option<(Cow<'de, str>, Pre<'de>)>; 2],
    spill: Vec<(Cow<'de, str>, Pre<'de>)>,
}

impl<'de> PreBuf<'de> {
    fn push(&mut self, key: Cow<'de, str>, value: Pre<'de>) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some((key, value)),
            None => self.spill.push((key, value)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(Cow<'de, str>, Pre<'de>)> {
        self.inline.iter().flatten().chain(self.spill.iter())
    }

    fn into_entries(self) -> impl Iterator<Item = (Cow<'de, str>, Pre<'de>)> {
        self.inline.into_iter().flatten().chain(self.spill)
    }
}

/// The value of a discriminator: a string, or the type it has instead.
enum DiscVal<'de> {
    Str(Cow<'de, str>),
    Other(&'static str),
}

struct DiscSeed;

impl<'de> DeserializeSeed<'de> for DiscSeed {
    type Value = DiscVal<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(DiscSeed)
    }
}

impl<'de> Visitor<'de> for DiscSeed {
    type Value = DiscVal<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(DiscVal::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(DiscVal::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(DiscVal::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(DiscVal::Other("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(DiscVal::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(DiscVal::Other("a decimal"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(DiscVal::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq)?;
        Ok(DiscVal::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(DiscVal::Other("an object"))
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Per-object state: which declared properties were seen, how many keys.
struct ObjState {
    seen: u64,
    count: usize,
}

enum Entry {
    Check(&'static Node),
    Skip,
}

impl Ctx {
    /// Decides what to do with the value of `key`; pushes its path segment for `Check`.
    fn begin_entry(&mut self, node: &'static Node, st: &mut ObjState, key: &str) -> Entry {
        st.count += 1;
        if let Some(max) = node.key_max_length {
            let len = key.chars().count();
            if len > max as usize {
                self.path.push(Seg::Owned(key.into()));
                self.report(|p| format!("Invalid '{p}': key too long. Expected a key with maximum length {max}, but got a key with length {len} instead."));
                self.path.pop();
            }
        }
        if let Some(j) = node.required.iter().position(|r| same(r, key)) {
            // Required names the (depth-limited) tables give no schema for are tracked too.
            let i = node.properties.len() + j;
            if i < 64 && node.find(key).is_none() {
                st.seen |= 1 << i;
            }
        }
        if let Some(i) = node.find(key) {
            if i < 64 {
                st.seen |= 1 << i;
            }
            let prop = &node.properties[i];
            self.path.push(Seg::Key(prop.name));
            if prop.node.deprecated {
                self.deprecated_here();
            }
            return Entry::Check(prop.node);
        }
        match node.additional {
            Additional::Allowed => Entry::Skip,
            Additional::Forbidden => {
                self.path.push(Seg::Owned(key.into()));
                let shown: String = key.chars().take(64).collect();
                self.report(|_| format!("Unrecognized request argument supplied: {shown}"));
                self.path.pop();
                Entry::Skip
            }
            Additional::Schema(n) => {
                self.path.push(Seg::Owned(key.into()));
                Entry::Check(n)
            }
        }
    }

    fn end_object(&mut self, node: &'static Node, st: &ObjState) {
        for (j, &req) in node.required.iter().enumerate() {
            let i = node
                .properties
                .iter()
                .position(|p| p.name == req)
                .unwrap_or(node.properties.len() + j);
            if i < 64 && st.seen & (1 << i) == 0 {
                self.path.push(Seg::Key(req));
                self.report(|p| format!("Missing required parameter: '{p}'."));
                self.path.pop();
            }
        }
        if let Some(max) = node.max_properties {
            let n = st.count;
            if n > max as usize {
                self.report(|p| format!("Invalid '{p}': too many properties. Expected an object with at most {max} properties, but got an object with {n} properties instead."));
            }
        }
        self.capture_container(Fact::Object(st.count));
    }

    /// Checks an object against `node` (which has no alternatives left to choose), replaying
    /// `pre` (entries buffered before a discriminator) first.
    fn object<'de, A: MapAccess<'de>>(
        &mut self,
        node: &'static Node,
        mut map: A,
        pre: PreBuf<'de>,
        disc: Option<(&'static str, &str)>,
    ) -> Result<(), A::Error> {
        let mut st = ObjState { seen: 0, count: 0 };
        for (key, value) in pre.iter() {
            match self.begin_entry(node, &mut st, key) {
                Entry::Check(n) => {
                    match value {
                        Pre::Value(v) => self.run_value(n, v),
                        Pre::Raw(raw) => self.run_raw(n, raw.get()),
                    }
                    self.path.pop();
                }
                Entry::Skip if self.is_tool_call_id(key) => match value {
                    Pre::Value(v) => self.capture_tool_call_id(v),
                    Pre::Raw(raw) => {
                        if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
                            self.capture_tool_call_id(&v);
                        }
                    }
                },
                Entry::Skip => {}
            }
        }
        if let Some((key, value)) = disc {
            if let Entry::Check(n) = self.begin_entry(node, &mut st, key) {
                self.scalar(n, Scalar::Str(value));
                self.path.pop();
            }
        }
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.begin_entry(node, &mut st, &key) {
                Entry::Check(n) => {
                    let r = map.next_value_seed(NodeSeed { node: n, ctx: self });
                    self.path.pop();
                    r?;
                }
                Entry::Skip if self.is_tool_call_id(&key) => {
                    let value: Value = map.next_value()?;
                    self.capture_tool_call_id(&value);
                }
                Entry::Skip => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.end_object(node, &st);
        Ok(())
    }

    /// Objects whose alternatives a discriminator (`role`, `type`) tells apart.
    fn discriminated<'de, A: MapAccess<'de>>(
        &mut self,
        node: &'static Node,
        disc: &'static str,
        mut map: A,
    ) -> Result<(), A::Error> {
        let mut pre = PreBuf::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key != disc {
                // Borrowed unparsed when the input allows it: no allocation, no unescaping.
                let value = if self.raw {
                    Pre::Raw(map.next_value()?)
                } else {
                    Pre::Value(map.next_value()?)
                };
                pre.push(key, value);
                continue;
            }
            let value = map.next_value_seed(DiscSeed)?;
            let chosen = match &value {
                DiscVal::Str(s) => node.alternative_for(disc, s.as_bytes()),
                DiscVal::Other(_) => None,
            };
            match (chosen, value) {
                (Some(alt), DiscVal::Str(s)) => {
                    return self.object(alt, map, pre, Some((disc, &s)));
                }
                (_, value) => {
                    if !node.lenient {
                        self.path.push(Seg::Key(disc));
                        match value {
                            DiscVal::Str(s) => {
                                let supported: Vec<&str> = node
                                    .alternatives
                                    .iter()
                                    .filter_map(|a| a.const_of(disc))
                                    .collect();
                                let supported = list_values(&supported);
                                let shown: String = s.chars().take(64).collect();
                                self.report(|_| {
                                    format!("Invalid value: '{shown}'. Supported values are: {supported}.")
                                });
                            }
                            DiscVal::Other(got) => self.report_type(T_STRING, got),
                        }
                        self.path.pop();
                    }
                    return drain_map(map);
                }
            }
        }
        // No discriminator at all.
        if node.lenient {
            return Ok(());
        }
        if disc_required(node, disc) {
            self.path.push(Seg::Key(disc));
            self.report(|p| format!("Missing required parameter: '{p}'."));
            self.path.pop();
            return Ok(());
        }
        let object = Value::Object(
            pre.into_entries()
                .map(|(k, v)| {
                    let v = match v {
                        Pre::Value(v) => v,
                        // Valid JSON by construction.
                        Pre::Raw(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
                    };
                    (k.into_owned(), v)
                })
                .collect(),
        );
        self.buffered_alternatives(node, Buf::Value(&object), T_OBJECT);
        Ok(())
    }

    fn array<'de, A: SeqAccess<'de>>(
        &mut self,
        node: &'static Node,
        mut seq: A,
    ) -> Result<(), A::Error> {
        let mut len = 0usize;
        match node.items {
            Some(items) => loop {
                self.path.push(Seg::Index(len));
                let r = seq.next_element_seed(NodeSeed {
                    node: items,
                    ctx: self,
                });
                self.path.pop();
                match r? {
                    Some(()) => len += 1,
                    None => break,
                }
            },
            None => {
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    len += 1;
                }
            }
        }
        if let Some(min) = node.min_items {
            if len < min as usize {
                self.report(|p| {
                    if len == 0 {
                        format!("Invalid '{p}': empty array. Expected an array with minimum length {min}, but got an empty array instead.")
                    } else {
                        format!("Invalid '{p}': array too short. Expected an array with minimum length {min}, but got an array with length {len} instead.")
                    }
                });
            }
        }
        if let Some(max) = node.max_items {
            if len > max as usize {
                self.report(|p| format!("Invalid '{p}': array too long. Expected an array with maximum length {max}, but got an array with length {len} instead."));
            }
        }
        self.capture_container(Fact::Array(len));
        Ok(())
    }
}

impl<'de> NodeVisitor<'_> {
    fn map_in<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let NodeVisitor { node, ctx } = self;
        if !accepts(node.types, T_OBJECT) {
            ctx.report_type(node.types, "an object");
            return drain_map(map);
        }
        if node.alternatives.is_empty() {
            return ctx.object(node, map, PreBuf::default(), None);
        }
        let mut cands = node
            .alternatives
            .iter()
            .copied()
            .filter(|a| accepts(a.types, T_OBJECT));
        match (cands.next(), cands.next()) {
            (None, _) if node.lenient => drain_map(map),
            (None, _) => {
                ctx.report_type(node.types, "an object");
                drain_map(map)
            }
            (Some(only), None) => NodeVisitor { node: only, ctx }.map_in(map),
            (Some(_), Some(_)) => match node.discriminator {
                Some(disc) => ctx.discriminated(node, disc, map),
                None => {
                    let value: Value =
                        Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
                    ctx.buffered_alternatives(node, Buf::Value(&value), T_OBJECT);
                    Ok(())
                }
            },
        }
    }

    fn seq_in<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let NodeVisitor { node, ctx } = self;
        if !accepts(node.types, T_ARRAY) {
            ctx.report_type(node.types, "an array");
            return drain_seq(seq);
        }
        if node.alternatives.is_empty() {
            return ctx.array(node, seq);
        }
        let mut cands = node
            .alternatives
            .iter()
            .copied()
            .filter(|a| accepts(a.types, T_ARRAY));
        match (cands.next(), cands.next()) {
            (None, _) if node.lenient => drain_seq(seq),
            (None, _) => {
                ctx.report_type(node.types, "an array");
                drain_seq(seq)
            }
            (Some(only), None) => NodeVisitor { node: only, ctx }.seq_in(seq),
            (Some(_), Some(_)) => {
                let value: Value =
                    Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                ctx.buffered_alternatives(node, Buf::Value(&value), T_ARRAY);
                Ok(())
            }
        }
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.ctx.scalar(self.node, Scalar::Bool(v));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.ctx.scalar(self.node, Scalar::I64(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.ctx.scalar(self.node, Scalar::U64(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.ctx.scalar(self.node, Scalar::F64(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.ctx.scalar(self.node, Scalar::Str(v));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.ctx.scalar(self.node, Scalar::Null);
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.seq_in(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.ctx.capture_object_start();
        self.map_in(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_listed_the_api_way() {
        assert_eq!(list_values(&["a"]), "'a'");
        assert_eq!(list_values(&["a", "b"]), "'a' and 'b'");
        assert_eq!(list_values(&["a", "b", "c"]), "'a', 'b', and 'c'");
    }

    #[test]
    fn numbers_and_types_read_naturally() {
        assert_eq!(Num(2.0).to_string(), "2");
        assert_eq!(Num(-100.0).to_string(), "-100");
        assert_eq!(Num(0.25).to_string(), "0.25");
        assert_eq!(expected(T_NUMBER), "a decimal");
        assert_eq!(expected(T_INTEGER | T_NUMBER), "a decimal");
        assert_eq!(expected(T_STRING | T_ARRAY), "one of a string or an array");
        assert_eq!(
            expected(T_STRING | T_BOOLEAN | T_OBJECT),
            "one of a string, a boolean or an object"
        );
    }
}
