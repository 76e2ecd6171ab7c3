//! The vocabulary both checkers speak: a scalar as the parser reports it, the facts the
//! cross-field rules read (top-level values and chat messages, kept without allocating on the
//! common path), the number rules that need the literal (`integral`, `int64_read`), and the
//! questions both ask of a node (`accepts`, `ambiguous_for`, `plain_string`).
//!
//! The accept pass (`accept.rs`) and the full report (`report.rs`) import this module and
//! never each other, so a rule they share is written once.

use std::fmt;

use super::keys::{same, FACT_KEYS};
use super::schema::*;

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
}

pub(crate) fn accepts(types: Types, got: Types) -> bool {
    types == T_ANY || types & got != 0
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
pub(crate) fn ambiguous_computed(node: &Node, got: Types) -> bool {
    if got == T_OBJECT && node.discriminator.is_some() {
        return false;
    }
    node.alternatives
        .iter()
        .filter(|a| accepts(a.types, got))
        .nth(1)
        .is_some()
}

/// Whether an object of the union `node` must have its discriminator `disc`: every
/// alternative that takes an object requires it (a missing one is then a violation).
pub(crate) fn disc_required(node: &Node, disc: &str) -> bool {
    node.alternatives
        .iter()
        .filter(|a| accepts(a.types, T_OBJECT))
        .all(|a| a.required.contains(&disc))
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn integral_decimals_count_as_integers() {
        assert_ne!(Scalar::F64(2.0).type_bits() & T_INTEGER, 0);
        assert_eq!(Scalar::F64(2.5).type_bits() & T_INTEGER, 0);
        assert_eq!(Scalar::F64(f64::INFINITY).type_bits() & T_INTEGER, 0);
    }
}
