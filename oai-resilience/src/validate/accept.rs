//! The accept pass: a hand-written single pass over the bytes that proves a body valid.
//!
//! Most bodies a client sends are valid, and for those the report carries no violation, only
//! the facts the cross-field rules read and the deprecated parameters. This pass computes
//! exactly that, without serde: a byte tokenizer (whitespace by a byte loop, strings eight
//! bytes at a time for `"`, `\` and control characters, numbers parsed only where a node
//! checks them), keys and strings borrowed from the body as bytes, the parameter path kept as
//! a chain of stack frames and turned into text only for a deprecated parameter. The body's
//! UTF-8 is checked once at the end, and only if a string or key had a byte from 0x80 on (the
//! string scan ORs the words it reads). It applies the same tables with the same semantics as
//! the streaming checker (`report.rs`), rule for rule.
//!
//! What it reads from the tables was derived at compile time (`Node::derive`): a key table per
//! node, the slots of the required names, flags (a string no rule reads, an ambiguous union, a
//! union of shape-only alternatives, a deprecated node below) and each union's discriminator
//! positions. So that no part of a body is read twice where it can be helped: a discriminator
//! that comes first lets the object go on from its value; a container before the
//! discriminator is checked at once against the node its key has in every alternative, or
//! else against the one of the alternative that the next `"disc"` in the text names (a
//! guess, reused only if right), and not read again; string values before it are remembered;
//! a union whose alternatives differ only in their required names is decided in one pass over
//! the keys; and a union trial that passed is not run again when nothing below it records a
//! fact (`may_record`). Values that can record nothing (all but a few top-level keys and a
//! chat message's `role`, `tool_call_id` and `tool_calls`: `Node::record_mask`) are read with
//! recording off, as a trial is.
//!
//! It stops at the first violation, and at anything it does not handle (a syntax error, an
//! escaped key, a lone surrogate, nesting deeper than [`MAX_DEPTH`], a subtree the streaming
//! checker would buffer as a `serde_json::Value`). Then the streaming checker runs from the
//! start and writes the report, with every violation and its exact path. A body is never
//! accepted here that the streaming checker rejects: the tests compare both on every corpus
//! body and on mutations of them.

use serde::de::{self, Deserializer as _, Visitor};

use super::keys::{same, same_bytes};
use super::schema::*;
use super::vocab::{
    accepts, ambiguous_for, int64_read, plain_string, Fact, Facts, Scalar, Short, EMPTY,
    LONG_STRING,
};

/// Deeper values (checked nodes, or nesting inside a skipped value) go to the streaming
/// checker, which knows the parser's own limit.
pub(crate) const MAX_DEPTH: u32 = 64;

/// Why the pass stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The value breaks a rule (inside a trial: that alternative does not match).
    Violation,
    /// Something this pass leaves to the streaming checker.
    Unsupported,
}

type R<T = ()> = Result<T, Stop>;

/// `Err(Stop::Unsupported)`, kept out of the hot paths' code (valid bodies never take it).
#[cold]
#[inline(never)]
fn unsupported<T>() -> R<T> {
    Err(Stop::Unsupported)
}

/// One step of a parameter path.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    /// A property the tables declare.
    Key(&'static str),
    /// A key matched by `additionalProperties` (a map entry).
    Owned(&'a str),
    Index(usize),
}

/// The path to the current value, as a chain of frames on the call stack (`None`: the body).
#[derive(Debug, Clone, Copy)]
struct Path<'p, 'a> {
    parent: Option<&'p Path<'p, 'a>>,
    seg: Seg<'a>,
    depth: u32,
}

type P<'p, 'a> = Option<&'p Path<'p, 'a>>;

fn depth(path: P<'_, '_>) -> u32 {
    path.map_or(0, |p| p.depth)
}

fn child<'p, 'a>(path: P<'p, 'a>, seg: Seg<'a>) -> Path<'p, 'a> {
    Path {
        parent: path,
        seg,
        depth: depth(path) + 1,
    }
}

/// The segments of a path of depth `N`, body first.
fn segs<'a, const N: usize>(path: P<'_, 'a>) -> Option<[Seg<'a>; N]> {
    if depth(path) as usize != N {
        return None;
    }
    let mut out = [Seg::Index(0); N];
    let mut cur = path;
    for slot in out.iter_mut().rev() {
        let p = cur?;
        *slot = p.seg;
        cur = p.parent;
    }
    Some(out)
}

/// The OpenAI-style text of a path (`messages[1].content`), as `Ctx::path_string` writes it.
fn path_string(path: P<'_, '_>) -> String {
    let mut segs = Vec::new();
    let mut cur = path;
    while let Some(p) = cur {
        segs.push(p.seg);
        cur = p.parent;
    }
    let mut s = String::new();
    for seg in segs.iter().rev() {
        match seg {
            Seg::Key(k) => push_key(&mut s, k),
            Seg::Owned(k) => push_key(&mut s, k),
            Seg::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    if s.is_empty() {
        s.push_str("body");
    }
    s
}

fn push_key(s: &mut String, k: &str) {
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(k);
}

/// Runs the accept path over `body`: `Some` (the deprecated parameters' paths) when the body
/// is UTF-8 JSON that breaks no rule of the tables, with the facts in `facts`; `None` when the
/// streaming checker must decide.
///
/// The body is read as bytes. Outside strings the grammar has only ASCII, so a byte from 0x80
/// on can only be in a string or a key, where the scan notes it; the whole body's UTF-8 is
/// checked once at the end, and only then. Until that check a key or string is bytes: what
/// the pass reads of them (equality, character counts, facts) means the same on valid UTF-8,
/// and nothing is reported from a body that fails it.
pub(crate) fn accept(endpoint: Endpoint, body: &[u8], facts: &mut Facts) -> Option<Vec<String>> {
    let track_messages = endpoint == Endpoint::ChatCompletions;
    let mut f = Fast::new(body, facts, track_messages);
    f.ws();
    f.value(endpoint.root(), None).ok()?;
    f.ws();
    if f.pos != f.b.len() || (f.high & HIGHS != 0 && std::str::from_utf8(body).is_err()) {
        return None;
    }
    Some(f.deprecated)
}

/// The first discriminator key of an object, as `find_disc` read it.
struct Disc<'a> {
    key: Text<'a>,
    /// (start, end, has escapes) of its string value.
    value: (usize, usize, bool),
    /// How many keys came before it (the first `PREFIX` of them are in `Fast::prefix`).
    before: usize,
}

/// How many string values read before a discriminator are remembered (not scanned twice).
const MEMO: usize = 8;

/// A key or string as it is in the body (UTF-8 once the body passes its check).
type Text<'a> = &'a [u8];

struct Fast<'a, 'f> {
    b: &'a [u8],
    /// The OR of the string and key bytes read: its high bits say whether any was non-ASCII.
    high: u64,
    pos: usize,
    /// False while an alternative is tried: facts and deprecations are not recorded.
    record: bool,
    track_messages: bool,
    facts: &'f mut Facts,
    deprecated: Vec<String>,
    /// (start, end, has escapes) of string values already scanned.
    memo: [(usize, usize, bool); MEMO],
    memo_len: usize,
    /// (start, end, node) of values before a discriminator already checked against `node`,
    /// the only node their key has in any alternative (see `find_disc`).
    checked: [(usize, usize, &'static Node); CHECKED],
    checked_len: usize,
    /// (key, where its value starts) of the entries before a discriminator, in order.
    prefix: [(Text<'a>, usize); PREFIX],
    prefix_len: usize,
    /// How many more bytes `guess` may search in this body.
    guess_budget: usize,
    /// The last guess: where the discriminator's value starts, the union, and the
    /// alternative that value names (read again by `discriminated` when it is the one).
    guessed: Option<(usize, &'static Node, Option<&'static Node>)>,
}

/// A searcher for `"disc"` (quotes included), for the discriminators of the tables that
/// `guess` looks ahead for; built once.
fn disc_finder(disc: &str) -> Option<&'static memchr::memmem::Finder<'static>> {
    use memchr::memmem::Finder;
    use std::sync::OnceLock;
    static ROLE: OnceLock<Finder<'static>> = OnceLock::new();
    static TYPE: OnceLock<Finder<'static>> = OnceLock::new();
    match disc {
        "role" => Some(ROLE.get_or_init(|| Finder::new(b"\"role\"").into_owned())),
        "type" => Some(TYPE.get_or_init(|| Finder::new(b"\"type\"").into_owned())),
        _ => None,
    }
}

/// How many entries before a discriminator are remembered (their keys are not read twice).
const PREFIX: usize = 4;

/// How many values read before a discriminator are remembered as checked.
const CHECKED: usize = 4;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is `"`, `\` or below 0x20 (exact for the lowest
/// such byte). Each test is "byte minus k borrows"; `x ^ '"'` and `x ^ '\'` have the high
/// bits of `x`, so one `& !x` masks out the bytes from 0x80 on for all three.
#[inline(always)]
fn special_bytes(x: u64) -> u64 {
    ((x ^ (ONES * b'"' as u64)).wrapping_sub(ONES)
        | (x ^ (ONES * b'\\' as u64)).wrapping_sub(ONES)
        | x.wrapping_sub(ONES * 0x20))
        & !x
        & HIGHS
}

/// The special bytes (`special_bytes`) of the eight bytes at `pos`, or `None` where fewer
/// than eight are left.
#[inline(always)]
fn word_hits(b: &[u8], pos: usize, high: &mut u64) -> Option<u64> {
    let chunk = <[u8; 8]>::try_from(b.get(pos..pos + 8)?).ok()?;
    let x = u64::from_le_bytes(chunk);
    // Bytes from 0x80 on are noted (one OR per word): the body's UTF-8 is checked at the end
    // only when a string or key had one.
    *high |= x;
    Some(special_bytes(x))
}

/// Skips string bytes from `pos` eight at a time: the position of the first `"`, `\` or
/// control byte, or where fewer than eight bytes are left (the caller reads on byte by byte).
#[inline(always)]
fn plain_run(b: &[u8], mut pos: usize, high: &mut u64) -> usize {
    while let Some(hits) = word_hits(b, pos, high) {
        if hits != 0 {
            // Exact for the lowest flagged byte.
            return pos + (hits.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    pos
}

/// `plain_run` for a string value, which may be long: after a first word (most keys and
/// many values end in it), sixteen bytes a turn (one branch for two words).
#[inline(always)]
fn plain_run_long(b: &[u8], mut pos: usize, high: &mut u64) -> usize {
    match word_hits(b, pos, high) {
        Some(0) => pos += 8,
        Some(hits) => return pos + (hits.trailing_zeros() / 8) as usize,
        None => return pos,
    }
    while let Some(chunk) = b.get(pos..pos + 16) {
        let Ok(chunk) = <[u8; 16]>::try_from(chunk) else {
            break;
        };
        let x = u128::from_le_bytes(chunk);
        let (lo, hi) = (x as u64, (x >> 64) as u64);
        *high |= lo | hi;
        let (a, c) = (special_bytes(lo), special_bytes(hi));
        if a | c != 0 {
            let at = if a != 0 {
                a.trailing_zeros() / 8
            } else {
                8 + c.trailing_zeros() / 8
            };
            return pos + at as usize;
        }
        pos += 16;
    }
    plain_run(b, pos, high)
}

/// The end of a key from where `plain_run` stopped short of its closing quote, byte by byte.
#[inline(never)]
fn key_tail(b: &[u8], mut pos: usize, high: &mut u64) -> R<usize> {
    loop {
        match b.get(pos) {
            Some(b'"') => return Ok(pos),
            Some(&c) if c == b'\\' || c < 0x20 => return unsupported(),
            Some(&c) => {
                *high |= u64::from(c);
                pos += 1;
            }
            None => return unsupported(),
        }
    }
}

fn hex4(b: &[u8]) -> Option<u16> {
    let mut v = 0u16;
    for &c in b.get(..4)? {
        let d = (c as char).to_digit(16)?;
        v = (v << 4) | d as u16;
    }
    Some(v)
}

/// A number exactly as the parser gives it to a visitor.
struct NumVisitor;

impl Visitor<'_> for NumVisitor {
    type Value = Scalar<'static>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
}

impl<'a, 'f> Fast<'a, 'f> {
    /// A pass over `body` from its start, recording into `facts`.
    fn new(body: &'a [u8], facts: &'f mut Facts, track_messages: bool) -> Self {
        Fast {
            b: body,
            high: 0,
            pos: 0,
            record: true,
            track_messages,
            facts,
            deprecated: Vec::new(),
            memo: [(0, 0, false); MEMO],
            memo_len: 0,
            checked: [(0, 0, &DERIVED); CHECKED],
            checked_len: 0,
            prefix: [(&[], 0); PREFIX],
            prefix_len: 0,
            guess_budget: body.len(),
            guessed: None,
        }
    }
}

impl<'a> Fast<'a, '_> {
    // ----- tokenizer -----

    /// Skips whitespace. Compact JSON has none between tokens: one comparison says so.
    #[inline(always)]
    fn ws(&mut self) {
        if self.b.get(self.pos).is_some_and(|&c| c <= b' ') {
            self.ws_run();
        }
    }

    #[inline(never)]
    fn ws_run(&mut self) {
        let b = self.b;
        let mut pos = self.pos;
        while let Some(&c) = b.get(pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                pos += 1;
            } else {
                break;
            }
        }
        self.pos = pos;
    }

    #[inline(always)]
    fn peek(&self) -> R<u8> {
        self.b.get(self.pos).copied().ok_or(Stop::Unsupported)
    }

    #[inline(always)]
    fn next(&mut self) -> R<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Ok(c)
    }

    /// Scans the rest of a string after its opening quote; returns whether it has escapes.
    fn scan_str(&mut self) -> R<bool> {
        let b = self.b;
        let mut pos = self.pos;
        let mut escaped = false;
        let mut high = 0;
        loop {
            pos = plain_run_long(b, pos, &mut high);
            let Some(&c) = b.get(pos) else {
                self.pos = pos;
                return unsupported();
            };
            pos += 1;
            match c {
                b'"' => {
                    self.pos = pos;
                    self.high |= high;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    // The one-letter escapes here; `\u` in `escape`.
                    if let Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') = b.get(pos)
                    {
                        pos += 1;
                    } else {
                        self.pos = pos;
                        self.escape()?;
                        pos = self.pos;
                    }
                }
                c if c < 0x20 => {
                    self.pos = pos;
                    return unsupported();
                }
                c => high |= u64::from(c),
            }
        }
    }

    /// One escape after its `\`. Surrogates must come in pairs (the parser rejects a lone
    /// one when it decodes the string).
    fn escape(&mut self) -> R {
        match self.next()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let rest = self.b.get(self.pos..).unwrap_or_default();
                let v = hex4(rest).ok_or(Stop::Unsupported)?;
                self.pos += 4;
                match v {
                    0xD800..=0xDBFF => {
                        let rest = self.b.get(self.pos..).unwrap_or_default();
                        if rest.get(..2) != Some(b"\\u") {
                            return unsupported();
                        }
                        match hex4(&rest[2..]) {
                            Some(0xDC00..=0xDFFF) => {
                                self.pos += 6;
                                Ok(())
                            }
                            _ => unsupported(),
                        }
                    }
                    0xDC00..=0xDFFF => unsupported(),
                    _ => Ok(()),
                }
            }
            _ => unsupported(),
        }
    }

    /// A string value at `pos`: (start, end, has escapes), quotes included; remembered
    /// strings are not scanned again.
    #[inline(always)]
    fn string(&mut self) -> R<(usize, usize, bool)> {
        let start = self.pos;
        for &(a, b, esc) in &self.memo[..self.memo_len] {
            if a == start {
                self.pos = b;
                return Ok((a, b, esc));
            }
        }
        self.pos += 1;
        let esc = self.scan_str()?;
        Ok((start, self.pos, esc))
    }

    /// An object key and its `:`; escaped keys are left to the streaming checker.
    #[inline(always)]
    fn key(&mut self) -> R<Text<'a>> {
        let b = self.b;
        if b.get(self.pos) != Some(&b'"') {
            return unsupported();
        }
        let start = self.pos + 1;
        // The first byte `plain_run` stops at must be the closing quote.
        let mut high = 0;
        let end = plain_run(b, start, &mut high);
        let end = if b.get(end) == Some(&b'"') {
            end
        } else {
            key_tail(b, end, &mut high)?
        };
        self.high |= high;
        let key = &b[start..end];
        // Compact JSON: the `:` right after the key, and the value right after it.
        if b.get(end + 1) == Some(&b':') {
            self.pos = end + 2;
        } else {
            self.pos = end + 1;
            self.ws();
            if self.next()? != b':' {
                return unsupported();
            }
        }
        self.ws();
        Ok(key)
    }

    /// After an object's entry: the next key (after a `,`), or `None` at the closing `}`.
    #[inline(always)]
    fn next_key(&mut self) -> R<Option<Text<'a>>> {
        self.ws();
        match self.next()? {
            b',' => {
                self.ws();
                Ok(Some(self.key()?))
            }
            b'}' => Ok(None),
            _ => unsupported(),
        }
    }

    /// A number's extent, by the JSON grammar.
    fn number(&mut self) -> R<(usize, usize)> {
        let start = self.pos;
        if self.peek()? == b'-' {
            self.pos += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return unsupported(),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.some_digits()?;
        }
        if matches!(self.b.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Ok((start, self.pos))
    }

    fn digits(&mut self) {
        while self.b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> R {
        if !self.peek()?.is_ascii_digit() {
            return unsupported();
        }
        self.digits();
        Ok(())
    }

    fn literal(&mut self, text: &[u8]) -> R {
        if self.b.get(self.pos..self.pos + text.len()) == Some(text) {
            self.pos += text.len();
            Ok(())
        } else {
            Err(Stop::Unsupported)
        }
    }

    /// Skips one value (syntax only, as the parser skips an ignored value), without
    /// recursion: the open containers are bits of a stack word.
    fn skip_value(&mut self) -> R {
        // Bit i: the container at depth i+1 is an object.
        let mut stack: u128 = 0;
        let mut depth = 0u32;
        loop {
            // A value.
            match self.peek()? {
                // Only a value of the object being read can be a remembered string.
                b'"' if depth == 0 => {
                    self.string()?;
                }
                b'"' => {
                    self.pos += 1;
                    self.scan_str()?;
                }
                b'{' => {
                    self.pos += 1;
                    self.ws();
                    if self.peek()? == b'}' {
                        self.pos += 1;
                    } else {
                        if depth >= 127 {
                            return unsupported();
                        }
                        stack |= 1 << depth;
                        depth += 1;
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.pos += 1;
                    self.ws();
                    if self.peek()? == b']' {
                        self.pos += 1;
                    } else {
                        if depth >= 127 {
                            return unsupported();
                        }
                        stack &= !(1 << depth);
                        depth += 1;
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                _ => return unsupported(),
            }
            // After a value: close containers until one continues.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let in_object = stack & (1 << (depth - 1)) != 0;
                self.ws();
                match self.next()? {
                    b',' => {
                        self.ws();
                        if in_object {
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if in_object => depth -= 1,
                    b']' if !in_object => depth -= 1,
                    _ => return unsupported(),
                }
            }
        }
    }

    // ----- values -----

    /// Checks the value at `pos` against `node` (as `NodeSeed` does in raw mode).
    fn value(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        if depth(path) > MAX_DEPTH {
            return unsupported();
        }
        if node.alternatives.is_empty() {
            // Most nodes: dispatched here on the first byte, without `any`'s second look.
            if node.types == T_ANY {
                return self.skip_value();
            }
            return match self.peek()? {
                b'"' => self.str_value(node, path),
                b'{' if accepts(node.types, T_OBJECT) => {
                    self.object_start(node, path);
                    self.object(node, path)
                }
                b'[' if accepts(node.types, T_ARRAY) => self.array(node, path),
                b'{' | b'[' => Err(Stop::Violation),
                b'-' | b'0'..=b'9' => self.number_value(node, path),
                _ => self.any(node, path),
            };
        }
        let c = self.peek()?;
        if c == b'"' {
            return self.str_value(node, path);
        }
        if (ambiguous_for(node, T_OBJECT) || ambiguous_for(node, T_ARRAY))
            && matches!(c, b'{' | b'[')
        {
            let got = if c == b'{' { T_OBJECT } else { T_ARRAY };
            if accepts(node.types, got) && ambiguous_for(node, got) {
                return self.alternatives(node, got, path);
            }
        }
        self.any(node, path)
    }

    /// A string value at `node`.
    #[inline(always)]
    fn str_value(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        if node.flags & F_ANY_STRING_OK != 0 && !(self.record && self.may_capture(path)) {
            // Any string is valid and none is recorded here: the scan is the whole check.
            self.string()?;
            return Ok(());
        }
        if plain_string(node) {
            return self.plain_str(node, path);
        }
        let (start, end, esc) = self.string()?;
        self.str_scalar(node, start, end, esc, path)
    }

    /// A string at a node where only the type matters (`Ctx::raw_value`): a long one is not
    /// even decoded.
    fn plain_str(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        let (start, end, esc) = self.string()?;
        if end - start > LONG_STRING {
            if self.record {
                if let Some([Seg::Key(k)]) = segs::<1>(path) {
                    self.facts.record(k, || Fact::LongStr);
                }
            }
            return Ok(());
        }
        self.str_scalar(node, start, end, esc, path)
    }

    fn str_scalar(
        &mut self,
        node: &'static Node,
        start: usize,
        end: usize,
        esc: bool,
        path: P<'_, 'a>,
    ) -> R {
        let b = self.b;
        if esc && !self.needs_value(path) && plain_string(node) {
            // Only the type of a plain string matters, and no fact needs its text: no decoding.
            return self.scalar(node, Scalar::Str(""), path);
        }
        if esc {
            self.escaped_scalar(node, start, end, path)
        } else {
            // `scalar` for a string, without its dispatch on the type.
            let v = &b[start + 1..end - 1];
            if self.record {
                self.capture_str(v, path);
            }
            if str_ok(node, v) {
                Ok(())
            } else {
                Err(Stop::Violation)
            }
        }
    }

    /// `str_scalar` for a string with escapes whose text matters: decoded first. Out of
    /// line: the hot paths stay small.
    #[inline(never)]
    fn escaped_scalar(
        &mut self,
        node: &'static Node,
        start: usize,
        end: usize,
        path: P<'_, 'a>,
    ) -> R {
        let v: String =
            serde_json::from_slice(&self.b[start..end]).map_err(|_| Stop::Unsupported)?;
        self.scalar(node, Scalar::Str(&v), path)
    }

    /// Any value, dispatched on its type (`NodeVisitor`).
    fn any(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        match self.peek()? {
            b'{' => {
                self.object_start(node, path);
                self.map_in(node, path)
            }
            b'[' => self.seq_in(node, path),
            b'"' => {
                let (start, end, esc) = self.string()?;
                self.str_scalar(node, start, end, esc, path)
            }
            b't' => {
                self.literal(b"true")?;
                self.bool_value(node, true, path)
            }
            b'f' => {
                self.literal(b"false")?;
                self.bool_value(node, false, path)
            }
            b'n' => {
                self.literal(b"null")?;
                self.scalar(node, Scalar::Null, path)
            }
            b'-' | b'0'..=b'9' => self.number_value(node, path),
            _ => unsupported(),
        }
    }

    /// `scalar` for a boolean: at a node without alternatives, only its type is checked.
    fn bool_value(&mut self, node: &'static Node, v: bool, path: P<'_, 'a>) -> R {
        self.scalar_known(node, Scalar::Bool(v), path, |_| {
            accepts(node.types, T_BOOLEAN)
        })
    }

    /// `scalar` where the caller knows what `scalar_ok` comes to at a node without
    /// alternatives (`own`): that dispatch is skipped.
    #[inline(always)]
    fn scalar_known(
        &mut self,
        node: &'static Node,
        s: Scalar<'_>,
        path: P<'_, 'a>,
        own: impl FnOnce(&Scalar<'_>) -> bool,
    ) -> R {
        if self.record {
            self.capture_scalar(&s, path);
        }
        let ok = if node.alternatives.is_empty() {
            own(&s)
        } else {
            scalar_ok(node, &s)
        };
        if ok {
            Ok(())
        } else {
            Err(Stop::Violation)
        }
    }

    /// A number at `node`, read as the parser reads it.
    fn number_value(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        let (start, end) = self.number()?;
        let text = &self.b[start..end];
        let n = if text.len() <= 19 && text.iter().all(u8::is_ascii_digit) {
            // A non-negative integer below 10^19 is a `u64` to the parser too.
            Scalar::U64(text.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
        } else if let Some(v) = short_decimal(text) {
            Scalar::F64(v)
        } else if node.int64 {
            // An integer literal below `i64::MIN` can read as `i64::MIN` (see `int64_read`).
            int64_read(text, parsed_number(text)?)
        } else {
            parsed_number(text)?
        };
        self.scalar_known(node, n, path, |n| {
            accepts(node.types, n.type_bits()) && check_number(node, *n)
        })
    }

    fn scalar(&mut self, node: &'static Node, s: Scalar<'_>, path: P<'_, 'a>) -> R {
        if self.record {
            self.capture_scalar(&s, path);
        }
        if scalar_ok(node, &s) {
            Ok(())
        } else {
            Err(Stop::Violation)
        }
    }

    /// Tries each alternative of `node` that accepts `got` on the value at `pos`; the first
    /// that passes is run again for real (`Ctx::buffered_alternatives`).
    fn alternatives(&mut self, node: &'static Node, got: Types, path: P<'_, 'a>) -> R {
        if got == T_OBJECT
            && node.flags & F_SHAPE_UNION != 0
            && !(self.record && self.may_record(path))
        {
            return self.shape_union(node);
        }
        let start = self.pos;
        for &alt in node.alternatives {
            if !accepts(alt.types, got) {
                continue;
            }
            let record = std::mem::replace(&mut self.record, false);
            let trial = self.value(alt, path);
            self.record = record;
            match trial {
                Ok(()) if !record => return Ok(()),
                // Nothing below would be recorded: the trial was the real run.
                Ok(()) if alt.flags & F_DEPRECATED_INSIDE == 0 && !self.may_record(path) => {
                    return Ok(())
                }
                Ok(()) => {
                    self.pos = start;
                    return self.value(alt, path);
                }
                Err(Stop::Violation) => self.pos = start,
                Err(Stop::Unsupported) => return unsupported(),
            }
        }
        if node.lenient {
            return self.skip_value();
        }
        Err(Stop::Violation)
    }

    /// `alternatives` for a shape union (`F_SHAPE_UNION`) where nothing is recorded: one pass
    /// over the object notes which of the union's required names it has (its name table);
    /// an alternative that has all of its names passes, as its trial would.
    fn shape_union(&mut self, node: &'static Node) -> R {
        let mut seen = 0u8;
        self.pos += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            let mut key = self.key()?;
            loop {
                if let Some(d) = node.shape_name(key) {
                    seen |= 1 << d;
                }
                // Most values here are strings: scanned without `skip_value`'s machinery.
                if self.peek()? == b'"' {
                    self.pos += 1;
                    self.scan_str()?;
                } else {
                    self.skip_value()?;
                }
                match self.next_key()? {
                    Some(next) => key = next,
                    None => break,
                }
            }
        }
        let objects = node
            .alternatives
            .iter()
            .filter(|a| accepts(a.types, T_OBJECT))
            .count();
        if node.disc_props[..objects]
            .iter()
            .any(|&need| need & !seen == 0)
            || node.lenient
        {
            Ok(())
        } else {
            Err(Stop::Violation)
        }
    }

    fn map_in(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        if !accepts(node.types, T_OBJECT) {
            return Err(Stop::Violation);
        }
        if node.alternatives.is_empty() {
            return self.object(node, path);
        }
        if let (true, Some(disc)) = (node.flags & F_DISCRIMINATED_OBJECT != 0, node.discriminator) {
            return self.discriminated(node, disc, path);
        }
        match candidates(node, T_OBJECT) {
            (None, _) if node.lenient => self.skip_value(),
            (None, _) => Err(Stop::Violation),
            (Some(only), false) => self.map_in(only, path),
            (Some(_), true) => match node.discriminator {
                Some(disc) => self.discriminated(node, disc, path),
                // The streaming checker buffers a `Value` here.
                None => unsupported(),
            },
        }
    }

    fn seq_in(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        if !accepts(node.types, T_ARRAY) {
            return Err(Stop::Violation);
        }
        if node.alternatives.is_empty() {
            return self.array(node, path);
        }
        match candidates(node, T_ARRAY) {
            (None, _) if node.lenient => self.skip_value(),
            (None, _) => Err(Stop::Violation),
            (Some(only), false) => self.seq_in(only, path),
            // The streaming checker buffers a `Value` here.
            (Some(_), true) => unsupported(),
        }
    }

    /// An object whose alternatives the value of `disc` tells apart: finds the first `disc`,
    /// then checks the whole object against the alternative it names.
    #[inline(never)]
    fn discriminated(&mut self, node: &'static Node, disc: &'static str, path: P<'_, 'a>) -> R {
        let start = self.pos;
        let (memo_base, checked_base, prefix_base) =
            (self.memo_len, self.checked_len, self.prefix_len);
        let r = self.find_disc(node, disc, path);
        let result = match r {
            Ok(Some(Disc {
                key,
                value: (vs, ve, esc),
                before,
            })) => {
                let b = self.b;
                let owned;
                let value = if esc {
                    owned = serde_json::from_slice::<String>(&b[vs..ve]).ok();
                    owned.as_ref().map(String::as_bytes)
                } else {
                    Some(&b[vs + 1..ve - 1])
                };
                if self.record && self.track_messages {
                    self.message_by_role(value, path);
                }
                let chosen = match self.guessed {
                    // `guess` read this very value for this union.
                    Some((at, union, alt)) if at == vs && std::ptr::eq(union, node) => Some(alt),
                    _ => value.map(|value| node.alternative_for(disc, value)),
                };
                // The value is read again as the chosen alternative's property: not rescanned.
                if self.memo_len < MEMO {
                    self.memo[self.memo_len] = (vs, ve, esc);
                    self.memo_len += 1;
                }
                self.pos = start;
                match chosen {
                    None => unsupported(),
                    // The entries before the discriminator are checked from where their
                    // values start, then the object goes on from the discriminator's value,
                    // as the chosen alternative (no key is read twice).
                    Some(Some(alt))
                        if self.prefix_len - prefix_base == before
                            && accepts(alt.types, T_OBJECT) =>
                    {
                        self.object_resumed(alt, prefix_base, key, (vs, ve, esc), path)
                    }
                    Some(Some(alt)) => self.object(alt, path),
                    Some(None) if node.lenient => self.skip_value(),
                    Some(None) => Err(Stop::Violation),
                }
            }
            // Nothing reads this object again: its values are skipped again with their
            // syntax checked (`find_disc` jumped over its containers).
            Ok(None) if node.lenient => {
                self.pos = start;
                self.skip_value()
            }
            Ok(None) => {
                let all_require = node
                    .alternatives
                    .iter()
                    .filter(|a| accepts(a.types, T_OBJECT))
                    .all(|a| a.required.contains(&disc));
                if all_require {
                    Err(Stop::Violation)
                } else {
                    // The streaming checker buffers a `Value` here.
                    Err(Stop::Unsupported)
                }
            }
            Err(e) => Err(e),
        };
        self.memo_len = memo_base;
        self.checked_len = checked_base;
        self.prefix_len = prefix_base;
        result
    }

    /// Reads an object up to its first `disc` key: the extent of that key's string value,
    /// or `None` (the whole object read) when there is none. String values on the way are
    /// remembered.
    ///
    /// A container value whose key has one and the same node in every alternative that
    /// declares it (a chat tool's `function`) is checked against that node at once, with
    /// nothing recorded, and remembered: the chosen alternative does not read it again
    /// (`entry`). Other containers are skipped and checked once the alternative is known.
    #[inline(never)]
    fn find_disc(
        &mut self,
        node: &'static Node,
        disc: &'static str,
        path: P<'_, 'a>,
    ) -> R<Option<Disc<'a>>> {
        self.pos += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(None);
        }
        let mut before = 0;
        loop {
            let key = self.key()?;
            if same_bytes(key, disc.as_bytes()) {
                if self.peek()? != b'"' {
                    return unsupported();
                }
                let value = self.string()?;
                return Ok(Some(Disc { key, value, before }));
            }
            if self.prefix_len < PREFIX {
                self.prefix[self.prefix_len] = (key, self.pos);
                self.prefix_len += 1;
            }
            before += 1;
            if self.peek()? == b'"' {
                let found = self.string()?;
                if self.memo_len < MEMO {
                    self.memo[self.memo_len] = found;
                    self.memo_len += 1;
                }
            } else if !self.check_ahead(node, disc, key, path)? {
                // Read again once the alternative is known (and its syntax checked then).
                self.jump_over()?;
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Ok(None),
                _ => return unsupported(),
            }
        }
    }

    /// Moves past the value at `pos` by its brackets and strings alone, without checking its
    /// syntax: for a value before a discriminator, which the chosen alternative reads again
    /// in full (`find_disc`; where nothing reads it again, `discriminated` skips the object
    /// again with `skip_value`). Scalars are skipped as usual.
    #[inline(never)]
    fn jump_over(&mut self) -> R {
        if !matches!(self.peek()?, b'{' | b'[') {
            return self.skip_value();
        }
        let b = self.b;
        let mut pos = self.pos + 1;
        let mut depth = 1u32;
        let mut unused = 0;
        while depth > 0 {
            let Some(&c) = b.get(pos) else {
                return unsupported();
            };
            pos += 1;
            // Tests, not a jump table (an indirect branch mispredicted at every change of
            // token); quotes first, the most frequent.
            if c == b'"' {
                loop {
                    pos = plain_run(b, pos, &mut unused);
                    match b.get(pos) {
                        Some(b'"') => {
                            pos += 1;
                            break;
                        }
                        Some(b'\\') => pos += 2,
                        Some(_) => pos += 1,
                        None => return unsupported(),
                    }
                }
            } else if c | 0x20 == b'{' {
                // `{` or `[`
                depth += 1;
            } else if c | 0x20 == b'}' {
                // `}` or `]`
                depth -= 1;
            }
        }
        self.pos = pos;
        Ok(())
    }

    /// Checks the value of `key` (before the discriminator `disc` of union `node`) ahead of
    /// the discriminator, when nothing below it would be recorded and there is room to
    /// remember it, against the node the key has in the alternatives: the only one, when they
    /// agree (a chat tool's `function`), or else the one of the alternative that the next
    /// `"disc"` key in the text names (`guess`: a chat message's `content` before its
    /// `role`). `Ok(true)`: checked and remembered (the value read); `Ok(false)`: not checked
    /// (the value not read, or read and broken: the alternative's own pass will find that
    /// again).
    ///
    /// What is remembered is the node the value was checked against: the chosen alternative
    /// reuses it only when its own property has that very node (`entry`), so a wrong guess
    /// costs a second reading, never a wrong answer.
    #[inline(never)]
    fn check_ahead(
        &mut self,
        node: &'static Node,
        disc: &'static str,
        key: Text<'_>,
        path: P<'_, 'a>,
    ) -> R<bool> {
        if self.checked_len >= CHECKED || !matches!(self.peek()?, b'{' | b'[') {
            return Ok(false);
        }
        let mut only: Option<(&'static Node, usize)> = None;
        for &alt in node
            .alternatives
            .iter()
            .filter(|a| accepts(a.types, T_OBJECT))
        {
            if let Some(i) = alt.find_bytes(key) {
                match only {
                    None => only = Some((alt, i)),
                    Some((a, j)) if std::ptr::eq(a.properties[j].node, alt.properties[i].node) => {}
                    Some(_) => {
                        only = self
                            .guess(node, disc)
                            .and_then(|alt| Some((alt, alt.find_bytes(key)?)));
                        break;
                    }
                }
            }
        }
        let Some((alt, i)) = only else {
            return Ok(false);
        };
        let prop = &alt.properties[i];
        let here = child(path, Seg::Key(prop.name));
        if prop.node.flags & F_DEPRECATED_INSIDE != 0
            || (self.record && Self::records_under(alt, i, here.depth))
        {
            return Ok(false);
        }
        let start = self.pos;
        let record = std::mem::replace(&mut self.record, false);
        let checked = self.value(prop.node, Some(&here));
        self.record = record;
        match checked {
            Ok(()) => {
                self.checked[self.checked_len] = (start, self.pos, prop.node);
                self.checked_len += 1;
                Ok(true)
            }
            Err(_) => {
                self.pos = start;
                Ok(false)
            }
        }
    }

    /// The alternative of `node` named by the first `"disc"` after `pos` that is followed by
    /// `:` and a plain string, found as text (not parsed): a guess, which may be a key of a
    /// nested object or none at all; `check_ahead` uses it only where a wrong guess costs
    /// time, not correctness. The text searched over a whole body is bounded by its length
    /// (`guess_budget`), so guessing stays linear however the objects nest.
    #[inline(never)]
    fn guess(&mut self, node: &'static Node, disc: &'static str) -> Option<&'static Node> {
        let finder = disc_finder(disc)?;
        let b = self.b;
        let from = self.pos;
        let limit = b.len().min(from.saturating_add(self.guess_budget));
        let found = finder.find(&b[from..limit]);
        let len = finder.needle().len();
        self.guess_budget -= found.map_or(limit - from, |at| at + len);
        let mut p = from + found? + len;
        while b.get(p).is_some_and(|c| c.is_ascii_whitespace()) {
            p += 1;
        }
        if b.get(p) != Some(&b':') {
            return None;
        }
        p += 1;
        while b.get(p).is_some_and(|c| c.is_ascii_whitespace()) {
            p += 1;
        }
        if b.get(p) != Some(&b'"') {
            return None;
        }
        let rest = &b[p + 1..b.len().min(p + 65)];
        let n = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[n] != b'"' {
            return None;
        }
        let alt = node.alternative_for(disc, &rest[..n]);
        self.guessed = Some((p, node, alt));
        alt
    }

    /// An object checked against `node` (`Ctx::object`).
    fn object(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        self.pos += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return self.object_end(node, 0, 0, path);
        }
        let key = self.key()?;
        self.object_rest(node, key, 0, 0, path)
    }

    /// An object checked against `node` after `find_disc` read up to its discriminator: the
    /// entries before it (remembered in `prefix` from `base` on), then the discriminator's
    /// entry and the rest.
    #[inline(never)]
    fn object_resumed(
        &mut self,
        node: &'static Node,
        base: usize,
        disc: Text<'a>,
        (vs, ve, esc): (usize, usize, bool),
        path: P<'_, 'a>,
    ) -> R {
        let mut seen = 0u64;
        let end = self.prefix_len;
        for i in base..end {
            let (key, value) = self.prefix[i];
            self.pos = value;
            self.entry_out_of_line(node, &mut seen, key, path)?;
        }
        let count = end - base + 1;
        // The discriminator's entry, checked from the value already read: what `entry` and
        // `str_value` do for a string that goes through `str_scalar` (a constant), without
        // reading it again.
        if let Some(i) = node.find_bytes(disc) {
            let prop = &node.properties[i];
            let n = prop.node;
            if i < 64
                && !esc
                && depth(path) < MAX_DEPTH
                && node.key_max_length.is_none()
                && n.alternatives.is_empty()
                && !n.deprecated
                && n.flags & (F_PLAIN_STRING | F_ANY_STRING_OK) == 0
            {
                seen |= 1 << i;
                let v = &self.b[vs + 1..ve - 1];
                if self.record {
                    let here = child(path, Seg::Key(prop.name));
                    self.capture_str(v, Some(&here));
                }
                // `node` was chosen because this value is its constant (`alternative_for`),
                // and a constant passes its own node's rules (checked for every one of the
                // tables by `every_discriminator_constant_passes_its_own_rules`).
                debug_assert!(accepts(n.types, T_STRING) && check_text(n, v));
                self.pos = ve;
                return match self.next_key()? {
                    Some(key) => self.object_rest(node, key, seen, count, path),
                    None => self.object_end(node, seen, count, path),
                };
            }
        }
        self.pos = vs;
        self.object_rest(node, disc, seen, count - 1, path)
    }

    /// The rest of an object checked against `node`, from the value of `key`, after `count`
    /// entries that set the `seen` bits. Bit i of `seen`: slot i seen (a property's index, or
    /// `properties.len() + j` for the `j`th required name that is not a property), as the
    /// streaming checker counts.
    #[inline(never)]
    fn object_rest(
        &mut self,
        node: &'static Node,
        key: Text<'a>,
        mut seen: u64,
        mut count: usize,
        path: P<'_, 'a>,
    ) -> R {
        let mut key = key;
        loop {
            count += 1;
            self.entry(node, &mut seen, key, path)?;
            match self.next_key()? {
                Some(next) => key = next,
                None => break,
            }
        }
        self.object_end(node, seen, count, path)
    }

    /// The rules on a whole object, once its `count` entries are read.
    fn object_end(&mut self, node: &'static Node, seen: u64, count: usize, path: P<'_, 'a>) -> R {
        // A required name is present iff its slot was seen (slots from 64 on are left to the
        // streaming checker's arithmetic, which does not track them either).
        if seen & node.required_slots != node.required_slots {
            return Err(Stop::Violation);
        }
        if let Some(max) = node.max_properties {
            if count > max as usize {
                return Err(Stop::Violation);
            }
        }
        // Containers record at depths 1 and 3 only (a message's `tool_calls`).
        if self.record && matches!(depth(path), 1 | 3) {
            self.capture_container(Fact::Object(count), path);
        }
        Ok(())
    }

    /// One entry of an object (`Ctx::begin_entry`, then its value).
    #[inline(always)]
    fn entry(&mut self, node: &'static Node, seen: &mut u64, key: Text<'a>, path: P<'_, 'a>) -> R {
        if let Some(max) = node.key_max_length {
            if key.len() > max as usize && longer_than(key, max) {
                return Err(Stop::Violation);
            }
        }
        if let Some(i) = node.find_bytes(key) {
            if i < 64 {
                *seen |= 1 << i;
            }
            let prop = &node.properties[i];
            let here = child(path, Seg::Key(prop.name));
            if prop.node.deprecated && self.record {
                self.deprecated.push(path_string(Some(&here)));
            }
            if self.checked_len > 0 {
                let at = self.pos;
                let done = self.checked[..self.checked_len]
                    .iter()
                    .find(|(start, _, n)| *start == at && std::ptr::eq(*n, prop.node));
                // Checked by `check_ahead` with nothing to record, as this pass would.
                if let Some(&(_, end, _)) = done {
                    if !(self.record && Self::records_under(node, i, here.depth)) {
                        self.pos = end;
                        return Ok(());
                    }
                }
            }
            let records = self.record && Self::records_under(node, i, here.depth);
            if !records
                && prop.node.flags & F_ANY_STRING_OK != 0
                && self.b.get(self.pos) == Some(&b'"')
                && here.depth <= MAX_DEPTH
            {
                // What `value` and `str_value` do with a string that any string satisfies
                // and that nothing records: its scan, without the call.
                self.string()?;
                return Ok(());
            }
            if self.record && !records {
                // Nothing in this value is recorded: it is checked as a trial is.
                self.record = false;
                let r = self.value(prop.node, Some(&here));
                self.record = true;
                return r;
            }
            return self.value(prop.node, Some(&here));
        }
        self.other_entry(node, seen, key, path)
    }

    /// `entry`, not inlined (for the few entries before a discriminator).
    #[inline(never)]
    fn entry_out_of_line(
        &mut self,
        node: &'static Node,
        seen: &mut u64,
        key: Text<'a>,
        path: P<'_, 'a>,
    ) -> R {
        self.entry(node, seen, key, path)
    }

    /// `entry` for a key that is not a property of `node`. Out of line: the hot paths stay
    /// small.
    #[inline(never)]
    fn other_entry(
        &mut self,
        node: &'static Node,
        seen: &mut u64,
        key: Text<'a>,
        path: P<'_, 'a>,
    ) -> R {
        if let Some(j) = node
            .required
            .iter()
            .position(|r| same_bytes(r.as_bytes(), key))
        {
            let i = node.properties.len() + j;
            if i < 64 {
                *seen |= 1 << i;
            }
        }
        match node.additional {
            Additional::Allowed if key == b"id" && self.is_tool_call(path) => {
                self.tool_call_id(path)
            }
            Additional::Allowed => self.skip_value(),
            Additional::Forbidden => Err(Stop::Violation),
            Additional::Schema(n) => {
                let Ok(key) = std::str::from_utf8(key) else {
                    return unsupported();
                };
                let here = child(path, Seg::Owned(key));
                self.value(n, Some(&here))
            }
        }
    }

    fn array(&mut self, node: &'static Node, path: P<'_, 'a>) -> R {
        self.pos += 1;
        self.ws();
        let mut len = 0usize;
        if self.peek()? == b']' {
            self.pos += 1;
        } else {
            loop {
                match node.items {
                    Some(items) => {
                        let here = child(path, Seg::Index(len));
                        self.value(items, Some(&here))?;
                    }
                    None => self.skip_value()?,
                }
                len += 1;
                self.ws();
                match self.next()? {
                    b',' => self.ws(),
                    b']' => break,
                    _ => return unsupported(),
                }
            }
        }
        if node.min_items.is_some_and(|min| len < min as usize)
            || node.max_items.is_some_and(|max| len > max as usize)
        {
            return Err(Stop::Violation);
        }
        // Containers record at depths 1 and 3 only (a message's `tool_calls`).
        if self.record && matches!(depth(path), 1 | 3) {
            self.capture_container(Fact::Array(len), path);
        }
        Ok(())
    }

    // ----- facts (as `Ctx::capture_*`) -----

    fn capture_scalar(&mut self, s: &Scalar<'_>, path: P<'_, 'a>) {
        if let Scalar::Str(v) = *s {
            return self.capture_str(v.as_bytes(), path);
        }
        if let Some([Seg::Key(k)]) = segs::<1>(path) {
            self.facts.record(k, || Fact::of(s));
        }
    }

    /// `capture_scalar` for a string, from its bytes. (Tests of the depth, not a `match`: a
    /// jump table here was a mispredicted indirect branch per string.)
    fn capture_str(&mut self, v: Text<'_>, path: P<'_, 'a>) {
        let Some(p) = path else { return };
        if p.depth == 1 {
            if let Seg::Key(k) = p.seg {
                self.facts
                    .record(k, || Short::from_bytes(v).map_or(Fact::LongStr, Fact::Str));
            }
        } else if p.depth == 2 {
            if let (
                Seg::Index(_),
                Some(Path {
                    seg: Seg::Key("modalities"),
                    ..
                }),
            ) = (p.seg, p.parent)
            {
                if v == b"audio" {
                    self.facts.modalities_audio = true;
                }
            }
        } else if (p.depth == 3 || p.depth == 5) && self.track_messages {
            self.capture_message_str(v, path);
        }
    }

    /// Whether a string at `path` is recorded as a fact (its text is needed).
    fn needs_value(&self, path: P<'_, 'a>) -> bool {
        if !self.record {
            return false;
        }
        match (depth(path), path.map(|p| p.seg)) {
            (1 | 2, _) => true,
            (3, Some(Seg::Key("role" | "tool_call_id"))) | (5, Some(Seg::Key("id"))) => {
                self.track_messages
            }
            _ => false,
        }
    }

    fn capture_message_str(&mut self, v: Text<'_>, path: P<'_, 'a>) {
        // Not UTF-8 only in a body the final check rejects: then the facts are not read.
        let text = || Box::<str>::from(String::from_utf8_lossy(v));
        let Some(msg) = self.facts.message() else {
            return;
        };
        match segs::<3>(path) {
            Some([Seg::Key("messages"), Seg::Index(i), Seg::Key("role")]) if i == msg.index => {
                msg.role = Some(Short::from_bytes(v).unwrap_or(EMPTY));
            }
            Some([Seg::Key("messages"), Seg::Index(i), Seg::Key("tool_call_id")])
                if i == msg.index =>
            {
                msg.tool_call_id = Some(text());
            }
            _ => {
                if let Some(
                    [Seg::Key("messages"), Seg::Index(i), Seg::Key("tool_calls"), Seg::Index(_), Seg::Key("id")],
                ) = segs::<5>(path)
                {
                    if i == msg.index {
                        msg.tool_call_ids.push(text());
                    }
                }
            }
        }
    }

    fn capture_container(&mut self, fact: Fact, path: P<'_, 'a>) {
        let d = depth(path);
        if d == 1 {
            if let Some([Seg::Key(k)]) = segs::<1>(path) {
                self.facts.record(k, || fact);
            }
        } else if d == 3 && self.track_messages {
            if let (
                Some([Seg::Key("messages"), Seg::Index(i), Seg::Key("tool_calls")]),
                Some(msg),
                Fact::Array(n),
            ) = (segs::<3>(path), self.facts.message(), fact)
            {
                if msg.index == i {
                    msg.tool_calls = n;
                }
            }
        }
    }

    /// A chat message starts (`Facts::start_message`), unless `node` is a union with a
    /// discriminator: then `discriminated` starts it once it knows the role, and only if
    /// the message-order rule can read it.
    #[inline(always)]
    fn object_start(&mut self, node: &Node, path: P<'_, 'a>) {
        if self.record && self.track_messages && node.discriminator.is_none() {
            self.message_start(path);
        }
    }

    /// `object_start` where it may start a message.
    #[inline(never)]
    fn message_start(&mut self, path: P<'_, 'a>) {
        if let Some([Seg::Key("messages"), Seg::Index(index)]) = segs::<2>(path) {
            self.facts.start_message(index);
        }
    }

    /// A chat message whose role is known: started as a fact only if the message-order rule
    /// can read it (an assistant's or a tool's message, `MsgFact::opens_or_answers`); any
    /// other is a gap in the kept indexes, which is all the rule needs of it. (A second `role`
    /// key that names another role breaks the chosen alternative's own, so the streaming
    /// checker decides such a body.)
    #[inline(never)]
    fn message_by_role(&mut self, role: Option<&[u8]>, path: P<'_, 'a>) {
        if let (Some(b"assistant" | b"tool"), Some([Seg::Key("messages"), Seg::Index(index)])) =
            (role, segs::<2>(path))
        {
            self.facts.start_message(index);
        }
    }

    /// Whether a scalar at `path` is recorded as a fact (`capture_scalar`, `plain_str`): at
    /// the top level, an item of `modalities`, a chat message's `role` or `tool_call_id`, and
    /// a chat tool call's `id`.
    fn may_capture(&self, path: P<'_, 'a>) -> bool {
        let Some(p) = path else { return true };
        match p.depth {
            1 => true,
            2 => matches!(p.parent.map(|q| q.seg), Some(Seg::Key(k)) if same(k, "modalities")),
            3 => {
                self.track_messages
                    && matches!(p.seg, Seg::Key(k) if same(k, "role") || same(k, "tool_call_id"))
            }
            5 => self.track_messages && matches!(p.seg, Seg::Key(k) if same(k, "id")),
            _ => false,
        }
    }

    /// Whether a value at `path` or below it can record a fact (see `capture_scalar`,
    /// `needs_value`, `capture_container`, `object_start`, `plain_str` and `is_tool_call`):
    /// the body and its top-level values do; below them only `modalities[i]`, chat
    /// `messages[i]` down to their fields, and a message's `tool_calls`. (Deprecations are the
    /// node's business: `F_DEPRECATED_INSIDE`.)
    fn may_record(&self, path: P<'_, 'a>) -> bool {
        let Some(at) = path else { return true };
        if at.depth <= 1 {
            return true;
        }
        // The frames at depth 3 (if any) and 1.
        let (mut third, mut p) = (None, Some(at));
        while let Some(frame) = p {
            if frame.depth == 3 {
                third = Some(frame.seg);
            }
            if frame.depth == 1 {
                break;
            }
            p = frame.parent;
        }
        match p.map(|top| top.seg) {
            Some(Seg::Key(k)) if same(k, "modalities") => true,
            Some(Seg::Key(k)) if same(k, "messages") => {
                self.track_messages
                    && (at.depth <= 3
                        || matches!(third, Some(Seg::Key(t)) if same(t, "tool_calls")))
            }
            Some(Seg::Key(_)) => false,
            _ => true,
        }
    }

    /// Whether the value of property `i` of `node`, an object's entry at `depth`, can record
    /// anything (where `record` is on, so under no trial):
    /// - at the top level: a fact of its own (`FACT_KEYS`), and the facts under `messages`
    ///   and `modalities`;
    /// - at depth 2: nothing (an entry there is in a top-level object; a chat message and a
    ///   `modalities` item are array items, not entries);
    /// - at depth 3, in a chat message (the only objects at depth 2 that record): its
    ///   `role`, `tool_call_id` and `tool_calls`;
    /// - deeper: under `tool_calls`, the calls' `id`s;
    ///
    /// and, anywhere, a deprecated parameter inside it. `record_mask` has these names at
    /// every depth (a top-level `role` key, say, is kept recording: harmless). Any other value
    /// is checked with `record` off, as `may_record` says of every path under it: none of
    /// the capture calls at each of its containers and strings.
    #[inline(always)]
    fn records_under(node: &Node, i: usize, depth: u32) -> bool {
        match depth {
            2 => node.properties[i].node.flags & F_DEPRECATED_INSIDE != 0,
            1 | 3 => i >= 64 || node.record_mask >> i & 1 != 0,
            _ => true,
        }
    }

    /// Whether `path` is a chat tool call (`messages[i].tool_calls[j]`), whose `id` the
    /// message-order rule needs (`Ctx::is_tool_call_id`).
    fn is_tool_call(&self, path: P<'_, 'a>) -> bool {
        self.track_messages
            && self.record
            && matches!(
                segs::<4>(path),
                Some([
                    Seg::Key("messages"),
                    Seg::Index(_),
                    Seg::Key("tool_calls"),
                    Seg::Index(_)
                ])
            )
    }

    /// The `id` of a chat tool call: recorded when it is a string.
    fn tool_call_id(&mut self, path: P<'_, 'a>) -> R {
        if self.peek()? != b'"' {
            // The streaming checker parses it as a `Value`, with that parser's limits.
            return unsupported();
        }
        let (start, end, esc) = self.string()?;
        let id: Box<str> = if esc {
            serde_json::from_slice::<String>(&self.b[start..end])
                .map_err(|_| Stop::Unsupported)?
                .into()
        } else {
            match std::str::from_utf8(&self.b[start + 1..end - 1]) {
                Ok(id) => id.into(),
                Err(_) => return unsupported(),
            }
        };
        let Some([_, Seg::Index(i), ..]) = segs::<4>(path) else {
            return Ok(());
        };
        if let Some(msg) = self.facts.message() {
            if msg.index == i {
                msg.tool_call_ids.push(id);
            }
        }
        Ok(())
    }
}

/// The first alternative of `node` that accepts `got`, and whether another one does too.
fn candidates(node: &'static Node, got: Types) -> (Option<&'static Node>, bool) {
    let mut cands = node
        .alternatives
        .iter()
        .copied()
        .filter(|a| accepts(a.types, got));
    (cands.next(), cands.next().is_some())
}

/// A number the short paths do not read, by the parser's own conversion (out of range: an
/// error it reports). Out of line: the hot paths stay small.
#[cold]
#[inline(never)]
fn parsed_number(text: &[u8]) -> R<Scalar<'static>> {
    serde_json::Deserializer::from_slice(text)
        .deserialize_any(NumVisitor)
        .map_err(|_| Stop::Unsupported)
}

/// A decimal with a fraction, no exponent and at most 15 digits (`0.7`, `-12.25`), as the
/// parser reads it: its digits as an integer below 2^53, divided by a power of ten up to
/// 10^15. Both are exact in an `f64`, so the quotient is the correctly rounded value, which
/// serde_json's own conversion (`significand as f64 / POW10[k]`) also gives. Anything else
/// goes to the parser.
fn short_decimal(text: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let dot = digits.iter().position(|&c| c == b'.')?;
    if dot == 0 || dot + 1 == digits.len() || digits.len() > 16 {
        return None;
    }
    let mut significand = 0u64;
    for (i, &c) in digits.iter().enumerate() {
        if i != dot {
            if !c.is_ascii_digit() {
                return None;
            }
            significand = significand * 10 + u64::from(c - b'0');
        }
    }
    let fraction = digits.len() - dot - 1;
    let v = significand as f64 / *POW10.get(fraction)?;
    Some(if negative { -v } else { v })
}

// ----- scalar rules (as `Ctx::scalar_in` and `Ctx::check_scalar`, without the messages) -----

pub(crate) fn scalar_ok(node: &Node, s: &Scalar<'_>) -> bool {
    if node.alternatives.is_empty() {
        return check_scalar(node, s);
    }
    if let Scalar::Null = s {
        return node.nullable || node.alternatives.iter().any(|a| a.nullable);
    }
    let got = s.type_bits();
    if !accepts(node.types, got) {
        return false;
    }
    node.alternatives
        .iter()
        .any(|alt| accepts(alt.types, got) && scalar_ok(alt, s))
        || node.lenient
}

fn check_scalar(node: &Node, s: &Scalar<'_>) -> bool {
    if let Scalar::Null = s {
        return node.nullable || node.types == T_ANY;
    }
    if !accepts(node.types, s.type_bits()) {
        return false;
    }
    match *s {
        Scalar::Str(v) => check_text(node, v.as_bytes()),
        Scalar::Bool(_) | Scalar::Null => true,
        n => check_number(node, n),
    }
}

fn check_number(node: &Node, n: Scalar<'_>) -> bool {
    if node.int64 {
        let fits = match n {
            Scalar::U64(v) => v <= i64::MAX as u64,
            Scalar::F64(v) => (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v),
            _ => true,
        };
        if !fits {
            return false;
        }
    }
    let Some(v) = n.as_f64() else { return true };
    !(node.minimum.is_some_and(|min| v < min) || node.maximum.is_some_and(|max| v > max))
}

/// `scalar_ok` for a string, on its bytes (no `&str` needed for a union).
fn str_ok(node: &Node, v: &[u8]) -> bool {
    if !accepts(node.types, T_STRING) {
        return false;
    }
    if node.alternatives.is_empty() {
        return check_text(node, v);
    }
    node.alternatives
        .iter()
        .any(|alt| accepts(alt.types, T_STRING) && str_ok(alt, v))
        || node.lenient
}

/// Whether `text` has more than `max` characters (for a key longer than `max` bytes: rare,
/// so out of line).
#[cold]
#[inline(never)]
fn longer_than(text: &[u8], max: u32) -> bool {
    chars(text) > max as usize
}

/// The number of characters of UTF-8 `text`: its bytes that do not continue a character.
fn chars(text: &[u8]) -> usize {
    text.iter().filter(|&&b| (b as i8) >= -0x40).count()
}

/// The string rules (`Ctx::check_str`) on the bytes of a string (UTF-8 once the body passes
/// its check).
fn check_text(node: &Node, v: &[u8]) -> bool {
    // Lengths first, here: they usually differ.
    let known = |e: &&str| e.len() == v.len() && same_bytes(e.as_bytes(), v);
    if !node.enum_values.is_empty() && !node.enum_values.iter().any(known) {
        return false;
    }
    // A string has no more characters than bytes: within `maxLength` bytes, only a
    // `minLength` needs them counted.
    let within = node.max_length.is_none_or(|max| v.len() <= max as usize);
    if node.min_length.is_some() || !within {
        let len = chars(v);
        if node.min_length.is_some_and(|min| len < min as usize)
            || node.max_length.is_some_and(|max| len > max as usize)
        {
            return false;
        }
    }
    node.format != Format::FunctionName
        || v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::validate::{check, check_streaming};

    fn data_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate")
    }

    fn endpoint_named(name: &str) -> Endpoint {
        Endpoint::ALL
            .into_iter()
            .find(|e| format!("{e:?}") == name)
            .unwrap()
    }

    /// Every body of the corpora: (endpoint, bytes).
    fn corpus() -> Vec<(Endpoint, Vec<u8>)> {
        let mut out = Vec::new();
        for dir in ["valid", "spec_examples"] {
            let mut files: Vec<_> = std::fs::read_dir(data_dir().join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for p in files {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let e = endpoint_named(name.split("__").next().unwrap());
                out.push((e, std::fs::read(&p).unwrap()));
            }
        }
        let invalid: Value =
            serde_json::from_slice(&std::fs::read(data_dir().join("invalid.json")).unwrap())
                .unwrap();
        for case in invalid.as_array().unwrap() {
            let e = endpoint_named(case["endpoint"].as_str().unwrap());
            out.push((e, serde_json::to_vec(&case["body"]).unwrap()));
        }
        out
    }

    /// Both checkers give the same report (order included) for `body`.
    fn same_report(e: Endpoint, body: &[u8]) {
        let fast = check(e, body);
        let slow = check_streaming(e, body);
        assert_eq!(
            fast,
            slow,
            "{e}: {}",
            String::from_utf8_lossy(&body[..body.len().min(400)])
        );
    }

    /// A tiny deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Values that break (or stress) a rule somewhere: wrong types, bounds, long and escaped
    /// strings, empty containers, nulls.
    fn replacements() -> Vec<Value> {
        vec![
            Value::Null,
            json!(true),
            json!(0),
            json!(-1),
            json!(2.5),
            json!(3.0),
            json!(1e300),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(""),
            json!("x"),
            json!("audio"),
            json!("user"),
            json!("tool"),
            json!("bad name!"),
            json!("a\"b\\c\n\u{e9}\u{1F600}"),
            json!("y".repeat(300)),
            json!([]),
            json!(["text", "audio"]),
            json!({}),
            json!({"type": "text", "text": "hi"}),
            json!({"role": "user", "content": "hi"}),
        ]
    }

    /// Every (pointer) path of `v`, containers included.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    pointers(x, p, out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    pointers(x, p, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_accept_path_accepts_the_valid_corpora() {
        let mut declined = Vec::new();
        for dir in ["valid", "spec_examples"] {
            for entry in std::fs::read_dir(data_dir().join(dir)).unwrap() {
                let p = entry.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let e = endpoint_named(name.split("__").next().unwrap());
                let body = std::fs::read(&p).unwrap();
                if accept(e, &body, &mut Facts::default()).is_none() {
                    declined.push(name);
                }
            }
        }
        declined.sort();
        // Every body is accepted here, the array forms of embeddings `input`, completions
        // `prompt` and moderations `input` included: the streaming checker buffers them as a
        // `Value` and tries each form, this pass tries them in place
        // (`array_forms_agree_with_the_streaming_checker`).
        assert!(declined.is_empty(), "{declined:?}");
    }

    /// The array forms of a union of string and array alternatives (`prompt`, `input`) are
    /// tried in place: each must decide as the streaming checker does, valid or broken.
    #[test]
    fn array_forms_agree_with_the_streaming_checker() {
        let forms = [
            r#"["a","b"]"#,
            r#"[1212,318]"#,
            r#"[[1212,318],[257]]"#,
            r#"[]"#,
            r#"[[]]"#,
            r#"[1,"a"]"#,
            r#"["a",1]"#,
            r#"[[1,2],[3,"x"]]"#,
            r#"[[1,2],"x"]"#,
            r#"[-1]"#,
            r#"[1.5]"#,
            r#"[null]"#,
            r#"[{"type":"text","text":"a"}]"#,
            r#"[{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"a"}]"#,
            r#"[{"type":"text"}]"#,
            r#"[{"type":"nope","text":"a"}]"#,
            r#"[[[1]]]"#,
        ];
        let mut accepted = 0;
        for form in forms {
            for (e, body) in [
                (
                    Endpoint::Completions,
                    format!(r#"{{"model":"m","prompt":{form}}}"#),
                ),
                (
                    Endpoint::Embeddings,
                    format!(r#"{{"model":"m","input":{form}}}"#),
                ),
                (Endpoint::Moderations, format!(r#"{{"input":{form}}}"#)),
            ] {
                same_report(e, body.as_bytes());
                let text = body.as_str();
                if accept(e, text.as_bytes(), &mut Facts::default()).is_some() {
                    accepted += 1;
                    assert!(
                        check_streaming(e, body.as_bytes()).is_valid(),
                        "{e}: {body}"
                    );
                }
            }
        }
        // Both kinds are here.
        assert!(
            accepted >= 10 && accepted <= 3 * forms.len() - 10,
            "{accepted}"
        );
    }

    #[test]
    fn both_checkers_agree_on_the_corpora() {
        for (e, body) in corpus() {
            same_report(e, &body);
            // Pretty-printed, and with the keys in the other order.
            let v: Value = serde_json::from_slice(&body).unwrap();
            same_report(e, serde_json::to_string_pretty(&v).unwrap().as_bytes());
        }
    }

    /// A container before its object's discriminator is checked ahead against the
    /// alternative that the next `"disc"` in the text names (`guess`). The text may name
    /// the wrong one (a nested key, the next object's, none at all): that costs a second
    /// reading, and both checkers must still agree.
    #[test]
    fn wrong_guesses_change_no_answer() {
        let content = r#"[{"text":"a","type":"text"}]"#;
        let image = r#"[{"image_url":{"url":"https://x/y.png"},"type":"image_url"}]"#;
        let decoy =
            r#"[{"image_url":{"role":"system","url":"https://x/y.png"},"type":"image_url"}]"#;
        let bodies = [
            // Right guesses (valid).
            (
                format!(
                    r#"[{{"content":{content},"role":"system"}},{{"content":{image},"role":"user"}}]"#
                ),
                true,
            ),
            // Right guesses; the tool message answers no call (the order rule).
            (
                format!(
                    r#"[{{"content":{content},"role":"assistant"}},{{"content":{content},"role":"tool","tool_call_id":"x"}}]"#
                ),
                false,
            ),
            // A nested `role` key (an image's extra property) before the message's own: the
            // guess is the system role, the message a user's (valid).
            (format!(r#"[{{"content":{decoy},"role":"user"}}]"#), true),
            // The nested key says user, whose content passes the check ahead; the message is
            // the assistant's, which takes no images: read again, and rejected.
            (
                format!(
                    r#"[{{"content":{},"role":"assistant"}}]"#,
                    decoy.replace("system", "user")
                ),
                false,
            ),
            // No role here: the guess is the next message's.
            (
                format!(r#"[{{"content":{image}}},{{"content":"b","role":"system"}}]"#),
                false,
            ),
            // An image for the system role (which takes text parts only), guessed as the
            // next message's user role.
            (
                format!(
                    r#"[{{"content":{image},"name":"n","role":"system"}},{{"content":"b","role":"user"}}]"#
                ),
                false,
            ),
            // No `role` anywhere after the container.
            (format!(r#"[{{"content":{content}}}]"#), false),
            // Spaces around the colon, and a role that is no alternative.
            (
                format!(
                    r#"[{{"content":{content}, "role" : "user"}}, {{"content":{content},"role":"nobody"}}]"#
                ),
                false,
            ),
        ];
        for (messages, valid) in &bodies {
            let body = format!(r#"{{"model":"m","messages":{messages}}}"#);
            same_report(Endpoint::ChatCompletions, body.as_bytes());
            let report = check(Endpoint::ChatCompletions, body.as_bytes());
            assert_eq!(report.is_valid(), *valid, "{body}");
        }
        // The search is bounded by the body's length in all: once spent, no more guesses.
        let body = format!(r#"{{"content":{content}}}"#);
        let mut facts = Facts::default();
        let mut f = Fast::new(body.as_bytes(), &mut facts, false);
        f.pos = 1;
        let messages = match Endpoint::ChatCompletions
            .root()
            .properties
            .iter()
            .find(|p| p.name == "messages")
        {
            Some(p) => p.node.items.expect("messages are an array"),
            None => panic!("chat has messages"),
        };
        assert!(f.guess(messages, "role").is_none());
        assert_eq!(f.guess_budget, 1, "the search read from `pos` to the end");
    }

    /// `guess` has a searcher only for the discriminators it was written for: every
    /// discriminator of the tables must be one of them (another would be jumped over and
    /// read again, correct but slower, without anyone noticing).
    #[test]
    fn every_discriminator_has_a_searcher() {
        let mut discs: Vec<&str> = crate::validate::derived_tests::all_nodes()
            .iter()
            .filter_map(|n| n.discriminator)
            .collect();
        discs.sort_unstable();
        discs.dedup();
        assert!(!discs.is_empty());
        for disc in discs {
            let finder = disc_finder(disc).unwrap_or_else(|| panic!("no searcher for {disc}"));
            assert_eq!(finder.needle(), format!("\"{disc}\"").as_bytes());
        }
    }

    /// `object_resumed` does not check a discriminator's value again: the alternative was
    /// chosen because the value is its constant, which must then pass the rest of its node's
    /// string rules too.
    #[test]
    fn every_discriminator_constant_passes_its_own_rules() {
        let mut constants = 0;
        for node in crate::validate::derived_tests::all_nodes() {
            let Some(disc) = node.discriminator else {
                continue;
            };
            for alt in node.alternatives {
                let Some(i) = alt.find(disc) else { continue };
                let n = alt.properties[i].node;
                if let [only] = n.enum_values {
                    assert!(
                        accepts(n.types, T_STRING) && check_text(n, only.as_bytes()),
                        "{disc} = {only:?} fails its own node"
                    );
                    constants += 1;
                }
            }
        }
        assert!(constants > 20, "only {constants} constants");
    }

    /// `record` is switched off for values that record nothing (`records_under`): every
    /// value that does record must still do so on the accept path. Each body here breaks a
    /// cross-field rule only through a fact recorded at one of those places (or carries a
    /// deprecation), so a fact the accept path failed to record would make it accept the
    /// body, and its report would differ from the streaming checker's.
    #[test]
    fn facts_are_recorded_wherever_they_are_read() {
        use serde_json::json;
        let chat = |extra: Value| {
            let mut body = json!({
                "model": "gpt-4o",
                "metadata": {"a": "b"},
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let cases = [
            // Top-level scalars and a top-level object.
            (
                Endpoint::ChatCompletions,
                chat(json!({"top_logprobs": 2})),
                1,
            ),
            (
                Endpoint::ChatCompletions,
                chat(json!({"top_logprobs": 2, "logprobs": true})),
                0,
            ),
            (
                Endpoint::ChatCompletions,
                chat(json!({"stream_options": {"include_usage": true}})),
                1,
            ),
            (
                Endpoint::ChatCompletions,
                chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
                0,
            ),
            // An item of `modalities`.
            (
                Endpoint::ChatCompletions,
                chat(json!({"modalities": ["text", "audio"]})),
                1,
            ),
            // A message's role, tool calls and their ids, a tool message's tool_call_id
            // (content arrays before the role, in both orders).
            (
                Endpoint::ChatCompletions,
                chat(json!({"messages": [
                    {"content": [{"text": "x", "type": "text"}], "role": "user"},
                    {"content": null, "role": "assistant", "tool_calls": [
                        {"function": {"arguments": "{}", "name": "f"}, "id": "c1", "type": "function"}]},
                    {"content": [{"text": "r", "type": "text"}], "role": "tool", "tool_call_id": "c2"},
                ]})),
                // `c1` not answered, `c2` answers nothing.
                2,
            ),
            (
                Endpoint::ChatCompletions,
                chat(json!({"messages": [
                    {"role": "assistant", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r"}]},
                ]})),
                0,
            ),
            // A user's and a system message (not kept as facts: gaps in the kept indexes)
            // between a call and its answer, and after an unanswered call.
            (
                Endpoint::ChatCompletions,
                chat(json!({"messages": [
                    {"role": "assistant", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "user", "content": "wait"},
                    {"role": "tool", "tool_call_id": "c1", "content": "r"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "system", "content": "s"},
                ]})),
                3,
            ),
            // Deprecated parameters, at the top level and inside a message.
            (Endpoint::ChatCompletions, chat(json!({"max_tokens": 5})), 0),
            (
                Endpoint::ChatCompletions,
                chat(json!({"messages": [
                    {"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}},
                ]})),
                0,
            ),
            // Other endpoints' facts.
            (
                Endpoint::Completions,
                json!({"model": "m", "prompt": "p", "best_of": 1, "n": 2}),
                1,
            ),
        ];
        let cases_decided = cases.clone();
        for (e, body, violations) in cases {
            let bytes = serde_json::to_vec(&body).unwrap();
            let report = check(e, &bytes);
            assert_eq!(report.violations().len(), violations, "{e}: {body}");
            same_report(e, &bytes);
            same_report(e, serde_json::to_string_pretty(&body).unwrap().as_bytes());
        }
        // The accept path reads every body above to its end (none is left to the streaming
        // checker), so the cross-field rules judged the facts it recorded.
        for (e, body, _) in &cases_decided {
            let bytes = serde_json::to_vec(body).unwrap();
            assert!(
                accept(*e, &bytes, &mut Facts::default()).is_some(),
                "{e}: {body}"
            );
        }
        // The deprecations are reported by the accept path itself.
        let body = serde_json::to_vec(&chat(json!({"max_tokens": 5}))).unwrap();
        let mut facts = Facts::default();
        let deprecated = accept(Endpoint::ChatCompletions, &body, &mut facts);
        assert_eq!(deprecated, Some(vec!["max_tokens".to_string()]));
    }

    #[test]
    fn both_checkers_agree_on_mutated_bodies() {
        let reps = replacements();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut runs = 0;
        // Chat bodies only: an invalid value deep in the other endpoints' alternatives makes
        // the streaming checker score every alternative of every level, minutes in a debug
        // build (the fuzz targets cover them).
        for (e, body) in corpus() {
            if e != Endpoint::ChatCompletions {
                continue;
            }
            let v: Value = serde_json::from_slice(&body).unwrap();
            let mut ptrs = Vec::new();
            pointers(&v, String::new(), &mut ptrs);
            for p in &ptrs {
                // Remove it, or replace it by a few of the values.
                let mut removed = v.clone();
                let (parent, last) = p.rsplit_once('/').unwrap();
                match removed.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        a.remove(last.parse::<usize>().unwrap());
                    }
                    _ => unreachable!(),
                }
                same_report(e, &serde_json::to_vec(&removed).unwrap());
                for _ in 0..3 {
                    let mut m = v.clone();
                    *m.pointer_mut(p).unwrap() = reps[rng.below(reps.len())].clone();
                    same_report(e, &serde_json::to_vec(&m).unwrap());
                    runs += 1;
                }
            }
        }
        assert!(runs > 500, "{runs}");
    }

    /// The accept path's two shortcuts: an object whose discriminator comes first goes on from
    /// its value (the key is not read twice), and a union trial that passed is not run again
    /// when nothing below it is recorded. Both must decide as the streaming checker does,
    /// with the discriminator first, last and absent, and facts below the trials.
    #[test]
    fn discriminator_first_and_union_trials_agree() {
        let texts: &[&str] = &[
            r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"a"}]}"#,
            r#"{"model":"m","messages":[{"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi","role":"tool"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u","detail":"low"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"text":"a","type":"text"},{"image_url":{"url":"u"},"type":"image_url"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","text":"a"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x","format":"wav"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}},{}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","x":[1,{"y":null}]}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","id":"c1","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","content":"x","tool_call_id":"c1"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","id":"c1","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","content":"x","tool_call_id":"c9"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","id":3,"function":{"name":"f","arguments":"{}"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"function","name":"f","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f g"}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"nope"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function","function":{"name":"f"}}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{}}}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema"}}"#,
            // Checked ahead of the discriminator (`check_ahead`): valid, broken, not the
            // alternative the discriminator names, and twice.
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f","parameters":{}},"type":"function"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f g"},"type":"function"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"},"type":"custom"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"},"function":{"name":"g h"},"type":"function"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":[1,{"a":2}],"type":"function"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":{"function":{"name":"f"},"type":"function"}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"json_schema":{"name":"n","strict":true},"type":"json_schema"}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"json_schema":{"strict":true},"type":"json_schema"}}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"},"id":"c1","type":"function"}]},{"role":"tool","content":"x","tool_call_id":"c1"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"},"id":"c1","type":"function"}]},{"role":"tool","content":"x","tool_call_id":"c2"}]}"#,
            r#"{"model":"m","messages":[{"content":[{"text":"a","type":"text"}],"role":"system"},{"content":[{"image_url":{"url":"u"},"type":"image_url"}],"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"content":[{"image_url":{"url":"u"},"type":"image_url"}],"role":"system"}]}"#,
            // Entries before the discriminator, resumed from `prefix`: within and beyond its
            // four slots, broken, and a nested union among them.
            r#"{"model":"m","messages":[{"content":"a","name":"n","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"content":"a","name":"n","x":1,"y":{"z":[2]},"w":3,"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"content":"a","name":5,"x":1,"y":2,"w":3,"role":"user"}]}"#,
            r#"{"model":"m","messages":[{"content":5,"name":"n","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"content":[{"text":"a","type":"text"},{"type":"nope"}],"name":"n","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"tool_calls":[{"function":{"name":"f","arguments":"{}"},"id":"c1","type":"function"}],"content":null,"role":"assistant"},{"content":"x","tool_call_id":"c1","role":"tool"}]}"#,
        ];
        let mut accepted = 0;
        for t in texts {
            same_report(Endpoint::ChatCompletions, t.as_bytes());
            accepted += usize::from(check(Endpoint::ChatCompletions, t.as_bytes()).is_valid());
        }
        // Both kinds are here: bodies the shortcuts accept, and bodies they must not.
        assert!(accepted >= 8 && accepted <= texts.len() - 8, "{accepted}");
        let input: &[&str] = &[
            r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"}]}]}"#,
            r#"{"model":"m","input":[{"type":"message","role":"user","content":"a"}]}"#,
            r#"{"model":"m","input":"a","tools":[{"type":"function","name":"f","parameters":{}}]}"#,
        ];
        for t in input {
            same_report(Endpoint::Responses, t.as_bytes());
        }
    }

    /// Containers before a discriminator are jumped over by their brackets (`jump_over`) and
    /// checked when the alternative is known; where none is (a lenient union without its
    /// discriminator), they are skipped again with their syntax checked. Broken syntax inside
    /// them must give the streaming checker's report either way.
    #[test]
    fn containers_before_a_discriminator_keep_their_syntax_checked() {
        let broken = [
            "[1 2]",
            "[1,]",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            r#"["x\u12"]"#,
            "[tru]",
            r#"["a\"]"#,
            r#"[{"b":[}]]"#,
            "[01]",
            "[\"a\u{1}\"]",
        ];
        let fine = [r#"[1,2]"#, r#"{"a":[{"b":"]"}]}"#, r#"["x\"]"]"#, "[]"];
        let cases = broken
            .iter()
            .map(|v| (v, false))
            .chain(fine.iter().map(|v| (v, true)));
        for (value, valid_syntax) in cases {
            let bodies = [
                // Chat: before role (the discriminator), and with no role at all.
                (
                    Endpoint::ChatCompletions,
                    format!(r#"{{"model":"m","messages":[{{"content":{value},"role":"user"}}]}}"#),
                ),
                (
                    Endpoint::ChatCompletions,
                    format!(
                        r#"{{"model":"m","messages":[{{"x":{value},"role":"user","content":"hi"}}]}}"#
                    ),
                ),
                (
                    Endpoint::ChatCompletions,
                    format!(r#"{{"model":"m","messages":[{{"x":{value},"content":"hi"}}]}}"#),
                ),
                // Responses items are lenient: an item without its `type` passes unread.
                (
                    Endpoint::Responses,
                    format!(
                        r#"{{"model":"m","input":[{{"x":{value},"role":"user","content":"hi"}}]}}"#
                    ),
                ),
                (
                    Endpoint::Responses,
                    format!(r#"{{"model":"m","input":[{{"x":{value}}}]}}"#),
                ),
                // A custom tool's `format`: a lenient union told apart by `type`, here absent.
                (
                    Endpoint::Responses,
                    format!(
                        r#"{{"model":"m","input":"hi","tools":[{{"type":"custom","name":"t","format":{{"x":{value}}}}}]}}"#
                    ),
                ),
            ];
            for (e, body) in bodies {
                same_report(e, body.as_bytes());
                if !valid_syntax {
                    let report = check(e, body.as_bytes());
                    assert!(
                        report.violations().iter().any(|v| v.param == "body"),
                        "{e}: {body}: {:?}",
                        report.violations()
                    );
                }
            }
        }
    }

    /// The accept path reads bytes and checks the body's UTF-8 only when a string or key had a
    /// byte from 0x80 on: every kind of broken UTF-8, in every place a string can be (a value
    /// it checks, one it skips, a key, the last bytes of a string, a discriminator), must give
    /// the report the streaming checker gives, and valid non-ASCII text must pass with its facts.
    #[test]
    fn utf8_is_checked_wherever_it_is_not_ascii() {
        let broken: [&[u8]; 7] = [
            b"\xff",
            b"\x80",
            b"\xc3",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"caf\xc3",
        ];
        let places = [
            r#"{"model":"m","messages":[{"role":"user","content":"<>"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"a long text before <> and after it"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"k<>":"v"}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"k":"<>"}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"<>"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x<>":1}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":{"y":["<>"]}}"#,
            r#"{"model":"m","messages":[{"content":"<>","role":"user"}]}"#,
            r#"{"model":"m","messages":[{"role":"us<>er","content":"hi"}]}"#,
            r#"{"model":"m<>","messages":[{"role":"user","content":"hi"}]}"#,
        ];
        for place in places {
            for bad in broken {
                let (a, b) = place.split_once("<>").unwrap();
                let body = [a.as_bytes(), bad, b.as_bytes()].concat();
                let text = String::from_utf8_lossy(&body).into_owned();
                assert!(
                    accept(Endpoint::ChatCompletions, &body, &mut Facts::default()).is_none(),
                    "{text}"
                );
                same_report(Endpoint::ChatCompletions, &body);
                let report = check(Endpoint::ChatCompletions, &body);
                assert_eq!(report.violations().len(), 1, "{text}");
                assert!(
                    report.violations()[0].message.contains("invalid UTF-8"),
                    "{text}"
                );
            }
            // Valid non-ASCII in the same place: the body is judged on its rules as before.
            let fine = place.replace("<>", "é😀€");
            same_report(Endpoint::ChatCompletions, fine.as_bytes());
        }
        // Non-ASCII text that passes, recorded as a fact where a rule reads it.
        let body = r#"{"model":"mödel","messages":[{"role":"assistant","content":"ça va","tool_calls":[{"id":"é1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"é1","content":"ok"}],"metadata":{"clé":"välue"}}"#;
        let mut facts = Facts::default();
        assert!(accept(Endpoint::ChatCompletions, body.as_bytes(), &mut facts).is_some());
        assert!(check(Endpoint::ChatCompletions, body.as_bytes()).is_valid());
        let ids: Vec<&str> = facts
            .messages()
            .flat_map(|m| m.tool_call_ids.iter().map(|s| &**s))
            .collect();
        assert_eq!(ids, ["é1"]);
        let wrong = body.replace(r#""tool_call_id":"é1""#, r#""tool_call_id":"è1""#);
        same_report(Endpoint::ChatCompletions, wrong.as_bytes());
        assert!(!check(Endpoint::ChatCompletions, wrong.as_bytes()).is_valid());
    }

    /// `maxLength` counts characters: a string of more bytes than the limit but no more
    /// characters passes, one character more does not (metadata values: at most 512).
    #[test]
    fn max_length_counts_characters_not_bytes() {
        for (value, valid) in [
            ("é".repeat(512), true),
            ("é".repeat(513), false),
            ("x".repeat(512), true),
            ("x".repeat(513), false),
        ] {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"k": value}});
            let body = serde_json::to_vec(&body).unwrap();
            same_report(Endpoint::ChatCompletions, &body);
            assert_eq!(check(Endpoint::ChatCompletions, &body).is_valid(), valid);
            let text = std::str::from_utf8(&body).unwrap();
            assert_eq!(
                accept(
                    Endpoint::ChatCompletions,
                    text.as_bytes(),
                    &mut Facts::default()
                )
                .is_some(),
                valid
            );
        }
    }

    /// `short_decimal` gives the parser's `f64`, bit for bit, on the decimals it takes, and
    /// leaves the others (exponents, integers, more than 15 digits) to the parser.
    #[test]
    fn short_decimals_read_as_the_parser_reads_them() {
        let parse = |t: &str| serde_json::from_str::<f64>(t).unwrap();
        let fixed = [
            "0.7",
            "0.9",
            "-0.0",
            "0.0",
            "2.0",
            "2.0000000000001",
            "1.99999999999999",
            "0.30000000000001",
            "-12.25",
            "123456789012.345",
            "0.00000000000001",
            "9.99999999999999",
        ];
        for t in fixed {
            let v = short_decimal(t.as_bytes()).expect(t);
            assert_eq!(v.to_bits(), parse(t).to_bits(), "{t}");
        }
        for t in ["1e5", "1.5e2", "12", "-3", "0.1234567890123456", "1.", "-"] {
            assert_eq!(short_decimal(t.as_bytes()), None, "{t}");
        }
        let mut rng = Rng(0x5eed_d15c);
        let mut taken = 0;
        for _ in 0..20_000 {
            let int_digits = 1 + rng.below(8);
            let frac_digits = 1 + rng.below(9);
            let mut t = String::new();
            if rng.below(3) == 0 {
                t.push('-');
            }
            let first = if int_digits == 1 {
                rng.below(10)
            } else {
                1 + rng.below(9)
            };
            t.push(char::from(b'0' + first as u8));
            for _ in 1..int_digits {
                t.push(char::from(b'0' + rng.below(10) as u8));
            }
            t.push('.');
            for _ in 0..frac_digits {
                t.push(char::from(b'0' + rng.below(10) as u8));
            }
            if let Some(v) = short_decimal(t.as_bytes()) {
                assert_eq!(v.to_bits(), parse(&t).to_bits(), "{t}");
                taken += 1;
            }
        }
        assert!(taken > 15_000, "{taken}");
    }

    #[test]
    fn both_checkers_agree_on_broken_and_odd_text() {
        let texts: &[&str] = &[
            "",
            " ",
            "{",
            "{}",
            "[]",
            "null",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]} x"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"h\i"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"\ud83d\ude00"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"\udc00"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":"\ud800"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1e400}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":1e400}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":01}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":-0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1.}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2.0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":9223372036854775808}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":-9223372036854775809}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"model":"n"}"#,
            r#"{"model":"m","messages":[{"content":"hi","role":"user","role":"tool"}]}"#,
            r#"{"model":"m","messages":[{"content":"hi","role":"u\u0073er"}]}"#,
            r#"{"model":"m","messages":[{"content":"hi","role":5}]}"#,
            r#"{"model":"m","messages":[{"content":"hi","role":1e400}]}"#,
            r#"{"model":"m","messages":[{"content":"hi"}]}"#,
            r#"{"mod\u0065l":"m","messages":[{"role":"user","content":"hi"}]}"#,
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\u{1}b\"}]}",
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":tru}",
            "\t{ \"model\" : \"m\" ,\r\n \"messages\" : [ { \"role\" : \"user\" , \"content\" : \"hi\" } ] }\n",
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c\u0031","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c2","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":7,"type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"modalities":["text","audio"]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"functions":[{"name":"f"}]}"#,
        ];
        for e in Endpoint::ALL {
            for t in texts {
                same_report(e, t.as_bytes());
            }
        }
        // Deep nesting inside a skipped value and inside checked ones.
        let deep = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{{}},"x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        same_report(Endpoint::ChatCompletions, deep.as_bytes());
        // Every prefix of a body (truncated input) and byte-level damage.
        let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"content":[{"type":"text","text":"hi \"there\""}],"role":"user"}],"temperature":0.5,"n":2,"stop":["a"],"metadata":{"k":"v"},"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#;
        let mut rng = Rng(7);
        for e in [Endpoint::ChatCompletions, Endpoint::Responses] {
            for i in 0..body.len() {
                same_report(e, &body[..i]);
                let mut damaged = body.to_vec();
                let bytes = b"{}[]\",:\\ 0-9eE.tfnu";
                damaged[i] = bytes[rng.below(bytes.len())];
                same_report(e, &damaged);
            }
        }
    }

    /// `seed` (`format: int64`, in chat and legacy completions) at, beyond and around the
    /// limits of an `i64`: the accept path takes the values in range itself, and both
    /// checkers reject the others with the same report.
    #[test]
    fn int64_limits_hold_in_both_checkers() {
        let bodies = [
            (
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":SEED}"#,
            ),
            (
                Endpoint::Completions,
                r#"{"model":"m","prompt":"hi","seed":SEED}"#,
            ),
        ];
        let inside = [
            "-9223372036854775808",
            "9223372036854775807",
            "0",
            "-1",
            "1e3",
            "-1000000000000000000",
            "9999999999999999999e-1",
            // Decimals and exponents keep the rounded reading: -2^63 exactly.
            "-9223372036854775808.0",
            "-9.223372036854775808e18",
            "-9.2233720368547758085e18",
            "null",
        ];
        let outside = [
            "-9223372036854775809",
            "-9223372036854776001",
            // The last literal that the parser rounds to -2^63, and the first that it does not.
            "-9223372036854776832",
            "-9223372036854776833",
            "-10000000000000000000",
            "-92233720368547758080",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807.0",
            "9.3e18",
            "-9.3e18",
        ];
        for (e, template) in bodies {
            for v in inside {
                let body = template.replace("SEED", v);
                assert!(
                    accept(e, body.as_bytes(), &mut Facts::default()).is_some(),
                    "{e}: {v}"
                );
                same_report(e, body.as_bytes());
                assert!(check(e, body.as_bytes()).is_valid(), "{e}: {v}");
            }
            for v in outside {
                let body = template.replace("SEED", v);
                assert!(
                    accept(e, body.as_bytes(), &mut Facts::default()).is_none(),
                    "{e}: {v}"
                );
                same_report(e, body.as_bytes());
                let report = check(e, body.as_bytes());
                let [violation] = report.violations() else {
                    panic!("{e}: {v}: {report:?}");
                };
                assert_eq!(violation.param, "seed", "{e}: {v}");
                assert_eq!(
                    violation.message,
                    "Invalid 'seed': integer out of range. Expected a 64-bit signed integer."
                );
            }
        }
    }

    #[test]
    fn paths_read_the_openai_way() {
        let a = Path {
            parent: None,
            seg: Seg::Key("messages"),
            depth: 1,
        };
        let b = child(Some(&a), Seg::Index(2));
        let c = child(Some(&b), Seg::Owned("k"));
        assert_eq!(path_string(Some(&c)), "messages[2].k");
        assert_eq!(path_string(None), "body");
        assert!(segs::<2>(Some(&c)).is_none());
        assert!(matches!(
            segs::<3>(Some(&c)),
            Some([Seg::Key("messages"), Seg::Index(2), Seg::Owned("k")])
        ));
    }

    /// Every byte value at every position of a word, among plain bytes and behind another
    /// special byte: the lowest flagged byte is the first `"`, `\\` or control byte.
    #[test]
    fn special_bytes_flags_the_first_special_byte() {
        let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for fill in [b'a', 0xE9, 0x7F, 0x80] {
            for at in 0..8 {
                for c in 0..=255u8 {
                    let mut w = [fill; 8];
                    w[at] = c;
                    let hits = special_bytes(u64::from_le_bytes(w));
                    let first = (hits != 0).then(|| (hits.trailing_zeros() / 8) as usize);
                    let want = w.iter().position(|&b| special(b));
                    assert_eq!(first, want, "{w:?}");
                }
            }
        }
    }

    #[test]
    fn strings_are_scanned_exactly() {
        let f = |text: &str| {
            let mut facts = Facts::default();
            let mut fast = Fast::new(text.as_bytes(), &mut facts, false);
            fast.record = false;
            fast.string().map(|(a, b, esc)| (a, b, esc, fast.pos))
        };
        assert_eq!(f(r#""abc""#), Ok((0, 5, false, 5)));
        assert_eq!(f(r#""0123456789abcdef\"x" 1"#), Ok((0, 21, true, 21)));
        assert_eq!(
            f(r#""é€😀 long enough to span chunks""#).map(|r| r.2),
            Ok(false)
        );
        assert_eq!(f(r#""\ud83d\ude00""#).map(|r| r.2), Ok(true));
        assert_eq!(f(r#""\ud83d""#), Err(Stop::Unsupported));
        assert_eq!(f(r#""\ude00""#), Err(Stop::Unsupported));
        assert_eq!(f(r#""\x""#), Err(Stop::Unsupported));
        assert_eq!(f("\"a\u{7}b\""), Err(Stop::Unsupported));
        assert_eq!(f(r#""open"#), Err(Stop::Unsupported));
        assert_eq!(f(r#""\u12"#), Err(Stop::Unsupported));
    }

    /// The scans go a word or two words at a time: the first special byte is found at every
    /// offset from the string's start and from the end of the body, and a byte from 0x80 on
    /// is noted wherever it is.
    #[test]
    fn string_ends_are_found_at_every_offset() {
        let scan = |text: &[u8]| {
            let mut facts = Facts::default();
            let mut fast = Fast::new(text, &mut facts, false);
            fast.record = false;
            let r = fast.string().map(|(a, b, esc)| (a, b, esc, fast.pos));
            (r, fast.high & HIGHS != 0)
        };
        let mut cases = 0;
        for n in 0..48 {
            for pad in 0..20 {
                let run = "a".repeat(n);
                let tail = " ".repeat(pad);
                let body = format!("\"{run}\"{tail}");
                assert_eq!(scan(body.as_bytes()), (Ok((0, n + 2, false, n + 2)), false));
                let body = format!("\"{run}\\nbc\"{tail}");
                assert_eq!(scan(body.as_bytes()), (Ok((0, n + 6, true, n + 6)), false));
                let body = format!("\"{run}\u{1}b\"{tail}");
                assert_eq!(scan(body.as_bytes()).0, Err(Stop::Unsupported));
                let body = format!("\"{run}\u{e9}{run}\"{tail}");
                assert_eq!(
                    scan(body.as_bytes()),
                    (Ok((0, 2 * n + 4, false, 2 * n + 4)), true)
                );
                let body = format!("\"{run}");
                assert_eq!(scan(body.as_bytes()).0, Err(Stop::Unsupported));
                cases += 5;
            }
        }
        assert_eq!(cases, 48 * 20 * 5);
    }
}
