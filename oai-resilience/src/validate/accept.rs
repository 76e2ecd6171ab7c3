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

mod lex;
mod pass;
mod record;
mod rules;

use super::keys::same_bytes;
use super::schema::*;
use super::vocab::{
    accepts, ambiguous_for, disc_required, int64_read, plain_string, Fact, Facts, Scalar,
    LONG_STRING,
};
use lex::{parsed_number, plain_run, short_decimal, HIGHS};
use pass::{unsupported, Fast, Stop, Text, CHECKED, MEMO, PREFIX, R};
pub(crate) use rules::scalar_ok;
use rules::{check_number, check_text, longer_than, str_ok};

/// Deeper values (checked nodes, or nesting inside a skipped value) go to the streaming
/// checker, which knows the parser's own limit.
pub(crate) const MAX_DEPTH: u32 = 64;

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
                if disc_required(node, disc) {
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

#[cfg(test)]
mod tests;
