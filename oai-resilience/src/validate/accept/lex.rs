//! The tokenizer of the accept pass: whitespace, strings scanned eight and sixteen bytes at a
//! time, keys, numbers (the short ones read here, the others by the parser), literals, and
//! values skipped without being checked.

use serde::de::{self, Deserializer as _, Visitor};

use super::pass::{unsupported, Fast, Stop, Text, R};
use crate::validate::vocab::Scalar;

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
pub(super) const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is `"`, `\` or below 0x20 (exact for the lowest
/// such byte). Each test is "byte minus k borrows"; `x ^ '"'` and `x ^ '\'` have the high
/// bits of `x`, so one `& !x` masks out the bytes from 0x80 on for all three.
#[inline(always)]
pub(super) fn special_bytes(x: u64) -> u64 {
    ((x ^ (ONES * b'"' as u64)).wrapping_sub(ONES)
        | (x ^ (ONES * b'\\' as u64)).wrapping_sub(ONES)
        | x.wrapping_sub(ONES * 0x20))
        & !x
        & HIGHS
}

/// The special bytes (`special_bytes`) of the eight bytes at `pos`, or `None` where fewer
/// than eight are left.
#[inline(always)]
pub(super) fn word_hits(b: &[u8], pos: usize, high: &mut u64) -> Option<u64> {
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
pub(super) fn plain_run(b: &[u8], mut pos: usize, high: &mut u64) -> usize {
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
pub(super) fn plain_run_long(b: &[u8], mut pos: usize, high: &mut u64) -> usize {
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
pub(super) fn key_tail(b: &[u8], mut pos: usize, high: &mut u64) -> R<usize> {
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

pub(super) fn hex4(b: &[u8]) -> Option<u16> {
    let mut v = 0u16;
    for &c in b.get(..4)? {
        let d = (c as char).to_digit(16)?;
        v = (v << 4) | d as u16;
    }
    Some(v)
}

/// A number exactly as the parser gives it to a visitor.
pub(super) struct NumVisitor;

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

impl<'a> Fast<'a, '_> {
    // ----- tokenizer -----

    /// Skips whitespace. Compact JSON has none between tokens: one comparison says so.
    #[inline(always)]
    pub(super) fn ws(&mut self) {
        if self.b.get(self.pos).is_some_and(|&c| c <= b' ') {
            self.ws_run();
        }
    }

    #[inline(never)]
    pub(super) fn ws_run(&mut self) {
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
    pub(super) fn peek(&self) -> R<u8> {
        self.b.get(self.pos).copied().ok_or(Stop::Unsupported)
    }

    #[inline(always)]
    pub(super) fn next(&mut self) -> R<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Ok(c)
    }

    /// Scans the rest of a string after its opening quote; returns whether it has escapes.
    pub(super) fn scan_str(&mut self) -> R<bool> {
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
    pub(super) fn escape(&mut self) -> R {
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
    pub(super) fn string(&mut self) -> R<(usize, usize, bool)> {
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
    pub(super) fn key(&mut self) -> R<Text<'a>> {
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
    pub(super) fn next_key(&mut self) -> R<Option<Text<'a>>> {
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
    pub(super) fn number(&mut self) -> R<(usize, usize)> {
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

    pub(super) fn digits(&mut self) {
        while self.b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
    }

    pub(super) fn some_digits(&mut self) -> R {
        if !self.peek()?.is_ascii_digit() {
            return unsupported();
        }
        self.digits();
        Ok(())
    }

    pub(super) fn literal(&mut self, text: &[u8]) -> R {
        if self.b.get(self.pos..self.pos + text.len()) == Some(text) {
            self.pos += text.len();
            Ok(())
        } else {
            Err(Stop::Unsupported)
        }
    }

    /// Skips one value (syntax only, as the parser skips an ignored value), without
    /// recursion: the open containers are bits of a stack word.
    pub(super) fn skip_value(&mut self) -> R {
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
}

/// A number the short paths do not read, by the parser's own conversion (out of range: an
/// error it reports). Out of line: the hot paths stay small.
#[cold]
#[inline(never)]
pub(super) fn parsed_number(text: &[u8]) -> R<Scalar<'static>> {
    serde_json::Deserializer::from_slice(text)
        .deserialize_any(NumVisitor)
        .map_err(|_| Stop::Unsupported)
}

/// A decimal with a fraction, no exponent and at most 15 digits (`0.7`, `-12.25`), as the
/// parser reads it: its digits as an integer below 2^53, divided by a power of ten up to
/// 10^15. Both are exact in an `f64`, so the quotient is the correctly rounded value, which
/// serde_json's own conversion (`significand as f64 / POW10[k]`) also gives. Anything else
/// goes to the parser.
pub(super) fn short_decimal(text: &[u8]) -> Option<f64> {
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
