//! The checker: one pass over a JSON body, driven by the generated tables.
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

use super::schema::*;
use crate::error::Violation;

/// One step of a parameter path.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(&'static str),
    Owned(Box<str>),
    Index(usize),
}

/// A short string kept inline (facts must not allocate on the common path): up to 15 bytes,
/// zero-padded, and the length in the last byte.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short {
    buf: [u8; 16],
}

pub(crate) const EMPTY: Short = Short { buf: [0; 16] };

impl Short {
    pub(crate) fn new(s: &str) -> Option<Short> {
        Short::from_bytes(s.as_bytes())
    }

    /// From the bytes of a string (the accept path's, UTF-8 once its body passes the check).
    ///
    /// Built as two words read from `s` (overlapping reads, no copy into a buffer written in
    /// pieces): a copy through such a buffer was read back by wider loads than the stores
    /// that wrote it, which stalled store-to-load forwarding on every role a chat message
    /// recorded.
    #[inline]
    pub(crate) fn from_bytes(s: &[u8]) -> Option<Short> {
        let n = s.len();
        let word = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
        let (lo, hi) = match n {
            0..=3 => (s.iter().rev().fold(0u64, |w, &c| w << 8 | u64::from(c)), 0),
            4..=7 => {
                let half = |at: usize| {
                    u64::from(u32::from_le_bytes(
                        s[at..at + 4].try_into().unwrap_or([0; 4]),
                    ))
                };
                // The two halves overlap on equal bytes: or-ing them is exact.
                (half(0) | half(n - 4) << ((n - 4) * 8), 0)
            }
            8 => (word(0), 0),
            9..=15 => (word(0), word(n - 8) >> ((16 - n) * 8)),
            _ => return None,
        };
        let hi = hi | (n as u64) << 56;
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&lo.to_le_bytes());
        buf[8..].copy_from_slice(&hi.to_le_bytes());
        Some(Short { buf })
    }

    fn len(&self) -> usize {
        usize::from(self.buf[15])
    }

    /// The bytes (comparisons need no UTF-8 check).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len()]
    }

    pub(crate) fn as_str(&self) -> &str {
        // Built from a whole `&str`, so always valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl fmt::Debug for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A top-level value, as the cross-field rules need it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fact {
    Null,
    Bool(bool),
    Num(f64),
    Str(Short),
    LongStr,
    Array(usize),
    Object(usize),
}

impl Fact {
    /// What a top-level scalar is recorded as.
    pub(crate) fn of(s: &Scalar<'_>) -> Fact {
        match *s {
            Scalar::Null => Fact::Null,
            Scalar::Bool(b) => Fact::Bool(b),
            Scalar::Str(v) => Short::new(v).map_or(Fact::LongStr, Fact::Str),
            n => Fact::Num(n.as_f64().unwrap_or(f64::NAN)),
        }
    }
}

/// What the cross-field rules need from one chat message.
#[derive(Debug, Default, Clone)]
pub(crate) struct MsgFact {
    pub(crate) index: usize,
    pub(crate) role: Option<Short>,
    pub(crate) tool_calls: usize,
    pub(crate) tool_call_ids: Vec<Box<str>>,
    pub(crate) tool_call_id: Option<Box<str>>,
}

impl MsgFact {
    /// Whether the message-order rule reads more of this message than its place: a `tool`
    /// message, or an assistant message with tool calls.
    fn opens_or_answers(&self) -> bool {
        match self.role.as_ref().map(Short::as_bytes) {
            Some(b"tool") => true,
            Some(b"assistant") => self.tool_calls > 0,
            _ => false,
        }
    }
}

/// The top-level parameters the cross-field rules read (`cross.rs`): only these are recorded.
pub(crate) const FACT_KEYS: [&str; 11] = [
    "top_logprobs",
    "logprobs",
    "audio",
    "stream_options",
    "stream",
    "best_of",
    "n",
    "previous_response_id",
    "conversation",
    "background",
    "output_format",
];

/// For each key length, the indexes in `FACT_KEYS` of the keys that long (bits).
const FACTS_BY_LEN: [u16; 32] = {
    let mut table = [0u16; 32];
    let mut i = 0;
    while i < FACT_KEYS.len() {
        table[FACT_KEYS[i].len()] |= 1 << i;
        i += 1;
    }
    table
};

/// Facts gathered during the pass for the cross-field rules. Nothing here allocates for a
/// body without tool calls: top-level facts sit in a fixed array, and of the chat messages
/// only those the message-order rule reads are kept (see [`Facts::start_message`]).
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// The first value of each of `FACT_KEYS`.
    top: [Option<Fact>; FACT_KEYS.len()],
    pub(crate) modalities_audio: bool,
    /// Finished messages that open or answer tool calls, in order.
    kept: Vec<MsgFact>,
    /// The message being read.
    current: Option<MsgFact>,
}

impl Facts {
    /// The index of `key` in `FACT_KEYS`: compared only with the keys of its length.
    #[inline(always)]
    fn slot(key: &str) -> Option<usize> {
        let mut candidates = *FACTS_BY_LEN.get(key.len())?;
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            if same(FACT_KEYS[i], key) {
                return Some(i);
            }
            candidates &= candidates - 1;
        }
        None
    }

    /// Records a top-level value (the first of a duplicated key wins, as the rules read it).
    #[inline(always)]
    pub(crate) fn record(&mut self, key: &str, fact: impl FnOnce() -> Fact) {
        if let Some(i) = Self::slot(key) {
            if self.top[i].is_none() {
                self.top[i] = Some(fact());
            }
        }
    }

    // Inlined, so that the rules' constant keys are looked up at compile time.
    #[inline(always)]
    pub(crate) fn get(&self, key: &str) -> Option<&Fact> {
        self.top[Self::slot(key)?].as_ref()
    }

    /// Present and not null.
    #[inline(always)]
    pub(crate) fn is_set(&self, key: &str) -> bool {
        !matches!(self.get(key), None | Some(Fact::Null))
    }

    /// A chat message starts at `index`. The previous one is kept only if the message-order
    /// rule reads more of it than its place: a message that is neither a `tool` message nor
    /// an assistant message with tool calls only closes what precedes it, which the gap in
    /// the kept indexes says as well.
    pub(crate) fn start_message(&mut self, index: usize) {
        match &mut self.current {
            // The usual case, a message the rule does not read: reused in place.
            Some(done) if !done.opens_or_answers() => {
                done.index = index;
                done.role = None;
                done.tool_calls = 0;
                done.tool_call_ids.clear();
                done.tool_call_id = None;
            }
            current => {
                let next = MsgFact {
                    index,
                    ..MsgFact::default()
                };
                if let Some(done) = current.replace(next) {
                    self.kept.push(done);
                }
            }
        }
    }

    /// The message being read.
    pub(crate) fn message(&mut self) -> Option<&mut MsgFact> {
        self.current.as_mut()
    }

    /// The messages the order rule reads, in order (the one read last included).
    pub(crate) fn messages(&self) -> impl Iterator<Item = &MsgFact> {
        self.kept.iter().chain(&self.current)
    }
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

/// Whether a finite `f` has no fractional part (`f.fract() == 0.0`, which is a call into the
/// software `trunc` on the baseline x86-64 target): below 2^52 in magnitude an `f64` is
/// integral iff it survives a round trip through `i64`; from 2^52 on every finite one is.
#[inline]
pub(crate) fn integral(f: f64) -> bool {
    if f.abs() < 4_503_599_627_370_496.0 {
        (f as i64) as f64 == f
    } else {
        f.is_finite()
    }
}

/// -2^63 (`i64::MIN`) as an `f64`.
const I64_MIN_F64: f64 = -9_223_372_036_854_775_808.0;

/// The `f64` just below -2^63 (2048 below it).
const BELOW_I64_MIN_F64: f64 = -9_223_372_036_854_777_856.0;

/// The number `text` as the range check of an int64 node must see it, given `n`, the
/// parser's reading of it.
///
/// The parser reads an integer literal below `i64::MIN` as the nearest `f64`, and for the
/// literals from -9223372036854775809 to -9223372036854776832 that is -2^63, `i64::MIN`
/// itself: the check would pass them. Such a literal (an `f64` of -2^63 from a plain integer,
/// which the parser would have read as an `i64` had it fit) is read as the `f64` below, so it
/// fails the check as the literal does. Every other reading is exact or, for decimals and
/// exponents (`-9.223372036854775808e18`), the rounded value as before. Only a parsed
/// `f64` of exactly -2^63 looks at the text.
#[inline]
pub(crate) fn int64_read<'a>(text: &[u8], n: Scalar<'a>) -> Scalar<'a> {
    match n {
        Scalar::F64(v)
            if v == I64_MIN_F64
                && text.first() == Some(&b'-')
                && text[1..].iter().all(u8::is_ascii_digit) =>
        {
            Scalar::F64(BELOW_I64_MIN_F64)
        }
        n => n,
    }
}

/// A scalar as the parser reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
}

impl Scalar<'_> {
    pub(crate) fn type_bits(&self) -> Types {
        match *self {
            Scalar::Null => T_ANY,
            Scalar::Bool(_) => T_BOOLEAN,
            Scalar::I64(_) | Scalar::U64(_) => T_INTEGER | T_NUMBER,
            Scalar::F64(f) if integral(f) => T_INTEGER | T_NUMBER,
            Scalar::F64(_) => T_NUMBER,
            Scalar::Str(_) => T_STRING,
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::I64(v) => Some(v as f64),
            Scalar::U64(v) => Some(v as f64),
            Scalar::F64(v) => Some(v),
            _ => None,
        }
    }

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

pub(crate) fn accepts(types: Types, got: Types) -> bool {
    types == T_ANY || types & got != 0
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

/// Formats a number the way a person writes it: `2`, `2.5`, `-100`.
pub(crate) struct Num(pub(crate) f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            write!(f, "{}", self.0 as i64)
        } else {
            write!(f, "{}", self.0)
        }
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

/// String equality: lengths first, then whole words, the last one overlapping the one before
/// (keys and enum values are short: no byte loop, no call to `memcmp`).
#[inline(always)]
pub(crate) fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// `same` on bytes.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    fn word<const W: usize>(s: &[u8], at: usize) -> [u8; W] {
        let mut w = [0; W];
        w.copy_from_slice(&s[at..at + W]);
        w
    }
    // Within a length class, one combined comparison (no branch on the first word).
    let w2 = |s: &[u8], at| u16::from_ne_bytes(word::<2>(s, at));
    let w4 = |s: &[u8], at| u32::from_ne_bytes(word::<4>(s, at));
    let w8 = |s: &[u8], at| u64::from_ne_bytes(word::<8>(s, at));
    match n {
        0 => true,
        1 => a[0] == b[0],
        2..=3 => (w2(a, 0) ^ w2(b, 0)) | (w2(a, n - 2) ^ w2(b, n - 2)) == 0,
        4..=7 => (w4(a, 0) ^ w4(b, 0)) | (w4(a, n - 4) ^ w4(b, n - 4)) == 0,
        8..=16 => (w8(a, 0) ^ w8(b, 0)) | (w8(a, n - 8) ^ w8(b, n - 8)) == 0,
        _ => {
            let mut i = 0;
            while i + 8 < n {
                if word::<8>(a, i) != word::<8>(b, i) {
                    return false;
                }
                i += 8;
            }
            word::<8>(a, n - 8) == word::<8>(b, n - 8)
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

/// Whether values of type `got` can match several alternatives of `node` that streaming
/// cannot tell apart (no discriminator for objects). Objects and arrays read the flags the
/// tables derived at compile time.
#[inline]
pub(crate) fn ambiguous_for(node: &Node, got: Types) -> bool {
    match got {
        T_OBJECT => node.flags & F_AMBIGUOUS_OBJECT != 0,
        T_ARRAY => node.flags & F_AMBIGUOUS_ARRAY != 0,
        _ => ambiguous_computed(node, got),
    }
}

/// `ambiguous_for` from the node's alternatives.
fn ambiguous_computed(node: &Node, got: Types) -> bool {
    if got == T_OBJECT && node.discriminator.is_some() {
        return false;
    }
    node.alternatives
        .iter()
        .filter(|a| accepts(a.types, got))
        .nth(1)
        .is_some()
}

/// Strings longer than this (in JSON text, quotes included) are only type-checked when no
/// content rule applies; shorter ones are also recorded as facts.
pub(crate) const LONG_STRING: usize = 258;

/// Whether the only thing to check about a string value of `node` is that it is a string
/// (derived at compile time, `Node::derive`).
#[inline]
pub(crate) fn plain_string(node: &Node) -> bool {
    node.flags & F_PLAIN_STRING != 0
}

/// `plain_string` from the node's fields, as a reference for the derived flag.
#[cfg(test)]
pub(crate) fn plain_string_computed(node: &Node) -> bool {
    let plain = |n: &Node| {
        n.enum_values.is_empty()
            && n.min_length.is_none()
            && n.max_length.is_none()
            && n.format == Format::None
    };
    node.types & T_STRING != 0
        && plain(node)
        && node
            .alternatives
            .iter()
            .filter(|a| accepts(a.types, T_STRING))
            .all(|a| plain(a) && a.alternatives.is_empty())
}

/// The derived fields agree with the fields they come from, on every node of the tables.
#[cfg(test)]
pub(crate) mod derived_tests {
    use super::*;

    /// Every node reachable from the tables' roots, once.
    pub(crate) fn all_nodes() -> Vec<&'static Node> {
        let mut out: Vec<&'static Node> = Vec::new();
        let mut todo: Vec<&'static Node> =
            super::super::rules_gen::ROOTS.iter().map(|r| r.2).collect();
        while let Some(n) = todo.pop() {
            if out.iter().any(|m| std::ptr::eq(*m, n)) {
                continue;
            }
            out.push(n);
            todo.extend(n.items);
            todo.extend(n.properties.iter().map(|p| p.node));
            todo.extend(n.alternatives.iter().copied());
            if let Additional::Schema(m) = n.additional {
                todo.push(m);
            }
        }
        out
    }

    #[test]
    fn derived_flags_match_the_node() {
        let nodes = all_nodes();
        assert!(nodes.len() > 400, "{}", nodes.len());
        let mut plain = 0;
        for n in nodes {
            assert_eq!(plain_string(n), plain_string_computed(n), "{n:?}");
            plain += usize::from(plain_string(n));
            for got in [T_OBJECT, T_ARRAY] {
                assert_eq!(ambiguous_for(n, got), ambiguous_computed(n, got), "{n:?}");
            }
            let objects = n
                .alternatives
                .iter()
                .filter(|a| accepts(a.types, T_OBJECT))
                .count();
            assert_eq!(
                n.flags & F_DISCRIMINATED_OBJECT != 0,
                n.discriminator.is_some() && objects > 1,
                "{n:?}"
            );
        }
        assert!(plain > 10, "{plain}");
    }

    fn deprecated_inside(n: &Node) -> bool {
        n.deprecated
            || n.items.is_some_and(deprecated_inside)
            || n.properties.iter().any(|p| deprecated_inside(p.node))
            || n.alternatives.iter().any(|a| deprecated_inside(a))
            || matches!(n.additional, Additional::Schema(m) if deprecated_inside(m))
    }

    #[test]
    fn the_deprecated_inside_flag_marks_every_subtree_with_a_deprecated_node() {
        let (mut marked, mut total) = (0, 0);
        for n in all_nodes() {
            let flag = n.flags & F_DEPRECATED_INSIDE != 0;
            assert_eq!(flag, deprecated_inside(n), "{n:?}");
            marked += usize::from(flag);
            total += 1;
        }
        // The chat root (max_tokens, functions, ...) is marked; most nodes are not.
        assert!(marked > 0 && marked < total / 2, "{marked} of {total}");
    }

    #[test]
    fn the_any_string_flag_is_what_the_scalar_rule_says() {
        let strings = [
            "",
            "a",
            "auto",
            "none",
            "user",
            "low",
            "gpt-4o",
            "text",
            "x".repeat(600).leak(),
        ];
        let mut flagged = 0;
        for n in all_nodes() {
            let flag = n.flags & F_ANY_STRING_OK != 0;
            if flag {
                flagged += 1;
                for v in strings {
                    assert!(
                        super::super::accept::scalar_ok(n, &Scalar::Str(v)),
                        "{v} {n:?}"
                    );
                }
            } else if n.types & T_STRING != 0 || n.types == T_ANY {
                // Not flagged: some string breaks a rule, or the node takes no string at all.
                let broken = strings
                    .iter()
                    .any(|v| !super::super::accept::scalar_ok(n, &Scalar::Str(v)));
                let rule = !n.enum_values.is_empty()
                    || n.min_length.is_some()
                    || n.max_length.is_some()
                    || n.format != Format::None
                    || !n.alternatives.is_empty();
                assert!(broken || rule, "{n:?}");
            }
        }
        assert!(flagged > 20, "{flagged}");
    }

    #[test]
    fn the_discriminator_table_chooses_as_const_of_does() {
        let mut checked = 0;
        for n in all_nodes() {
            let Some(disc) = n.discriminator else {
                // A shape union keeps its name table there instead.
                if n.flags & F_SHAPE_UNION == 0 {
                    assert_eq!(n.disc_props, [0; DISC_ALTS]);
                }
                continue;
            };
            let mut values: Vec<&str> = n
                .alternatives
                .iter()
                .filter_map(|a| a.const_of(disc))
                .collect();
            if n.alternatives.len() <= DISC_ALTS {
                // The probed table, not the walk over the alternatives.
                assert!(n.flags & F_DISC_TABLE != 0, "{disc}: {n:?}");
            }
            values.extend(["", "nope", "x".repeat(70).leak()]);
            for v in values {
                let expected = n
                    .alternatives
                    .iter()
                    .copied()
                    .find(|a| a.const_of(disc) == Some(v));
                let got = n.alternative_for(disc, v.as_bytes());
                assert_eq!(
                    got.map(|g| g as *const Node),
                    expected.map(|e| e as *const Node),
                    "{disc}={v}"
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "{checked}");
    }

    /// Two alternatives with one constant: the first is chosen, as `const_of` in order would.
    #[test]
    fn a_repeated_discriminator_constant_chooses_the_first_alternative() {
        const fn constant(value: &'static [&'static str]) -> Node {
            Node {
                types: T_STRING,
                enum_values: value,
                ..DERIVED
            }
            .derive()
        }
        macro_rules! typed {
            ($constant:expr) => {
                Node {
                    types: T_OBJECT,
                    properties: &[Prop {
                        name: "type",
                        node: $constant,
                    }],
                    ..DERIVED
                }
                .derive()
            };
        }
        static X: Node = constant(&["x"]);
        static Y: Node = constant(&["y"]);
        static A: Node = typed!(&Y);
        static B: Node = typed!(&X);
        static C: Node = typed!(&X);
        static U: Node = Node {
            types: T_OBJECT,
            alternatives: &[&A, &B, &C],
            discriminator: Some("type"),
            ..DERIVED
        }
        .derive();
        assert!(U.flags & F_DISC_TABLE != 0);
        assert!(std::ptr::eq(U.alternative_for("type", b"x").unwrap(), &B));
        assert!(std::ptr::eq(U.alternative_for("type", b"y").unwrap(), &A));
        assert!(U.alternative_for("type", b"z").is_none());
    }

    #[test]
    fn shape_unions_are_the_object_unions_of_shape_only_alternatives() {
        let mut unions = 0;
        for n in all_nodes() {
            let objects: Vec<&Node> = n
                .alternatives
                .iter()
                .copied()
                .filter(|a| accepts(a.types, T_OBJECT))
                .collect();
            let shapes = objects.iter().all(|a| {
                a.types == T_OBJECT
                    && a.properties.is_empty()
                    && matches!(a.additional, Additional::Allowed)
                    && a.max_properties.is_none()
                    && a.key_max_length.is_none()
                    && a.alternatives.is_empty()
                    && a.discriminator.is_none()
                    && a.required.len() <= 64
            });
            // Names that fit the table: at most `SHAPE_NAMES`, none twice in one alternative,
            // alternative indexes and positions below 16.
            let mut names: Vec<&str> = Vec::new();
            let mut fits = n.alternatives.len() <= 16;
            for a in &objects {
                for (j, r) in a.required.iter().enumerate() {
                    fits &= j < 16 && a.required.iter().position(|q| q == r) == Some(j);
                    if !names.contains(r) {
                        names.push(r);
                    }
                }
            }
            fits &= names.len() <= SHAPE_NAMES;
            let expected = ambiguous_computed(n, T_OBJECT)
                && shapes
                && objects.len() <= SHAPE_ALTS
                && n.properties.is_empty()
                && fits;
            assert_eq!(n.flags & F_SHAPE_UNION != 0, expected, "{n:?}");
            unions += usize::from(expected);
            if !expected {
                continue;
            }
            // The name table: every required name found, its bit in the masks of exactly the
            // alternatives that require it; nothing else found.
            let index = |name: &str| n.shape_name(name.as_bytes());
            for name in &names {
                let d = index(name).expect(name);
                for (k, a) in objects.iter().enumerate() {
                    let need = n.disc_props[k];
                    assert_eq!(need & (1 << d) != 0, a.required.contains(name), "{name}");
                    assert_eq!(need.count_ones() as usize, a.required.len());
                }
                for probe in [
                    format!("{name}x"),
                    name[1..].to_string(),
                    name.to_uppercase(),
                ] {
                    assert_eq!(index(&probe).is_some(), names.contains(&probe.as_str()));
                }
            }
            assert_eq!(index(""), None);
            // Deciding by masks is deciding by the alternatives' required lists, for every set
            // of names an object can have.
            for present in 0u32..(1 << names.len()) {
                let has =
                    |r: &&str| present & (1 << names.iter().position(|q| q == r).unwrap()) != 0;
                let by_lists = objects.iter().any(|a| a.required.iter().all(&has));
                let seen = (0..names.len())
                    .filter(|i| present & (1 << i) != 0)
                    .map(|i| 1u8 << index(names[i]).unwrap())
                    .fold(0, |m, b| m | b);
                let by_masks = n.disc_props[..objects.len()]
                    .iter()
                    .any(|&need| need & !seen == 0);
                assert_eq!(by_masks, by_lists);
            }
        }
        // Chat content parts (user, system, developer, tool messages) at least.
        assert!(unions >= 2, "{unions}");
    }

    #[test]
    fn the_key_table_finds_every_property_and_nothing_else() {
        let mut tabled = 0;
        for n in all_nodes() {
            for (i, p) in n.properties.iter().enumerate() {
                // Names are unique, so the first match is the only one.
                assert_eq!(n.properties.iter().position(|q| q.name == p.name), Some(i));
                assert_eq!(n.find(p.name), Some(i), "{}", p.name);
                // A longer, a shorter and a reversed name: found iff a property has it.
                let changed: String = p.name.chars().rev().collect();
                for probe in [
                    format!("{}x", p.name),
                    p.name[..p.name.len() - 1].to_string(),
                    changed,
                ] {
                    let linear = n.properties.iter().position(|q| q.name == probe);
                    assert_eq!(n.find(&probe), linear, "{probe}");
                }
            }
            assert_eq!(n.find(""), None);
            tabled += usize::from(n.slots.iter().any(|s| *s != 0));
            // Required names are unique too (a slot per name).
            for (j, r) in n.required.iter().enumerate() {
                assert_eq!(n.required.iter().position(|q| q == r), Some(j));
            }
        }
        assert!(tabled > 10, "{tabled}");
    }

    #[test]
    fn required_slots_are_the_slots_of_the_required_names() {
        for n in all_nodes() {
            let mut mask = 0u64;
            for (j, r) in n.required.iter().enumerate() {
                let slot = n
                    .properties
                    .iter()
                    .position(|p| p.name == *r)
                    .unwrap_or(n.properties.len() + j);
                if slot < 64 {
                    mask |= 1 << slot;
                }
            }
            assert_eq!(n.required_slots, mask, "{n:?}");
        }
    }
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
        let all_require = node
            .alternatives
            .iter()
            .filter(|a| accepts(a.types, T_OBJECT))
            .all(|a| a.required.contains(&disc));
        if all_require {
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
    fn same_is_string_equality() {
        let base: String = (0..40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        for n in 0..=40 {
            let a = &base[..n];
            assert!(same(a, a));
            assert!(!same(a, &base[..n.saturating_sub(1)]) || n == 0);
            for at in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[at] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(a, &b), "{a} vs {b}");
            }
        }
        assert!(same("é", "é") && !same("é", "è"));
    }

    #[test]
    fn integral_agrees_with_fract() {
        let two52 = 4_503_599_627_370_496.0_f64;
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            0.7,
            2.0,
            1e15,
            1e300,
            -1e300,
            two52,
            -two52,
            two52 - 0.5,
            two52 + 1.0,
            9.3e18,
            -9.3e18,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x));
            values.push((x % 2_000_000) as f64 / 8.0 - 100_000.0);
        }
        for f in values {
            assert_eq!(integral(f), f.is_finite() && f.fract() == 0.0, "{f:e}");
        }
    }

    #[test]
    fn fact_slots_find_exactly_the_fact_keys() {
        for (i, k) in FACT_KEYS.iter().enumerate() {
            assert_eq!(Facts::slot(k), Some(i), "{k}");
        }
        // Same length and first byte as a fact key, or neither: not recorded.
        for k in [
            "",
            "tools",
            "apple",
            "stream_optionz",
            "top_logprobz",
            "m",
            "model",
            "x".repeat(40).as_str(),
        ] {
            assert_eq!(Facts::slot(k), None, "{k}");
        }
        let mut facts = Facts::default();
        facts.record("stream", || Fact::Bool(true));
        facts.record("stream", || Fact::Bool(false));
        facts.record("model", || Fact::LongStr);
        assert_eq!(
            facts.get("stream"),
            Some(&Fact::Bool(true)),
            "the first value wins"
        );
        assert_eq!(facts.get("model"), None);
    }

    #[test]
    fn facts_keep_the_messages_that_open_or_answer_tool_calls() {
        let mut facts = Facts::default();
        for (i, role, calls) in [
            (0, "user", 0),
            (1, "assistant", 2),
            (2, "tool", 0),
            (3, "assistant", 0),
            (4, "system", 0),
        ] {
            facts.start_message(i);
            let m = facts.message().unwrap();
            m.role = Short::new(role);
            m.tool_calls = calls;
        }
        // The last one read is always there; of the others, 1 and 2.
        let kept: Vec<usize> = facts.messages().map(|m| m.index).collect();
        assert_eq!(kept, [1, 2, 4]);
    }

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

    #[test]
    fn short_strings_stay_inline_and_long_ones_do_not_fit() {
        assert_eq!(Short::new("transparent").unwrap().as_str(), "transparent");
        assert_eq!(Short::new("").unwrap().as_str(), "");
        assert!(Short::new(&"x".repeat(16)).is_none());
        assert_eq!(
            Short::new(&"x".repeat(15)).unwrap().as_str(),
            "x".repeat(15)
        );
        assert_eq!(Short::new("é").unwrap().as_str(), "é");
    }

    /// Every length goes through its own word arithmetic in `from_bytes`: each must give back
    /// its bytes exactly, and equal strings equal `Short`s (the padding is all zeros).
    #[test]
    fn short_strings_round_trip_at_every_length() {
        let text = b"abcdefghijklmnopq";
        for n in 0..=17 {
            let s = &text[..n];
            match Short::from_bytes(s) {
                Some(short) => {
                    assert!(n <= 15);
                    assert_eq!(short.as_bytes(), s, "length {n}");
                    // Built from a copy at another address, then from the same bytes
                    // followed by others: equal.
                    let copy = s.to_vec();
                    assert_eq!(Short::from_bytes(&copy), Some(short), "length {n}");
                    let mut longer = s.to_vec();
                    longer.extend_from_slice(b"zzzzzzzz");
                    assert_eq!(Short::from_bytes(&longer[..n]), Some(short), "length {n}");
                    if n > 0 {
                        assert_ne!(Short::from_bytes(&s[..n - 1]), Some(short), "length {n}");
                    }
                }
                None => assert!(n > 15, "length {n}"),
            }
        }
        assert_eq!(Short::from_bytes(b""), Some(EMPTY));
    }

    #[test]
    fn int64_reads_integer_literals_below_the_range_outside_it() {
        assert_eq!(BELOW_I64_MIN_F64, f64::from_bits(I64_MIN_F64.to_bits() + 1));
        assert_eq!(I64_MIN_F64, i64::MIN as f64);
        let read = |t: &str| {
            let n: serde_json::Number = t.parse().unwrap();
            let s = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(v), _, _) => Scalar::U64(v),
                (None, Some(v), _) => Scalar::I64(v),
                (None, None, v) => Scalar::F64(v.unwrap()),
            };
            match int64_read(t.as_bytes(), s) {
                Scalar::I64(v) => v as f64,
                Scalar::U64(v) => v as f64,
                Scalar::F64(v) => v,
                other => panic!("{other:?}"),
            }
        };
        // Parsed as an `i64`: exact.
        assert_eq!(read("-9223372036854775808"), I64_MIN_F64);
        // Parsed as -2^63 from an integer literal beyond it: read below.
        for t in [
            "-9223372036854775809",
            "-9223372036854776001",
            "-9223372036854776832",
        ] {
            assert_eq!(read(t), BELOW_I64_MIN_F64, "{t}");
        }
        // Parsed below -2^63 already: unchanged.
        assert_eq!(read("-9223372036854776833"), BELOW_I64_MIN_F64);
        assert_eq!(read("-100000000000000000000"), -1e20);
        // Decimals and exponents: the rounded value, as the parser gives it.
        for t in [
            "-9223372036854775808.0",
            "-9.223372036854775809e18",
            "-9223372036854775809e0",
        ] {
            assert_eq!(read(t), I64_MIN_F64, "{t}");
        }
        assert_eq!(read("1e3"), 1000.0);
    }

    /// The int64 range is checked on the literal only where an int64 node is read directly
    /// (`NodeSeed`, `number_value`): an int64 node inside a union would be checked on the
    /// parser's rounded reading alone.
    #[test]
    fn int64_nodes_are_read_directly() {
        let nodes = derived_tests::all_nodes();
        let mut int64 = 0;
        for n in &nodes {
            if n.int64 {
                int64 += 1;
                assert!(n.alternatives.is_empty(), "{n:?}");
            }
            for alt in n.alternatives {
                assert!(!alt.int64, "{alt:?}");
            }
        }
        assert!(int64 >= 2, "{int64}");
    }

    #[test]
    fn integral_decimals_count_as_integers() {
        assert_ne!(Scalar::F64(2.0).type_bits() & T_INTEGER, 0);
        assert_eq!(Scalar::F64(2.5).type_bits() & T_INTEGER, 0);
        assert_eq!(Scalar::F64(f64::INFINITY).type_bits() & T_INTEGER, 0);
    }
}
