//! The scalar rules of the accept pass: `Ctx::scalar_in` and `Ctx::check_scalar` of the full
//! report, without the messages (a `bool` for a value, on the bytes of a string).

use crate::validate::keys::same_bytes;
use crate::validate::schema::*;
use crate::validate::vocab::{accepts, Scalar};

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

pub(super) fn check_scalar(node: &Node, s: &Scalar<'_>) -> bool {
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

pub(super) fn check_number(node: &Node, n: Scalar<'_>) -> bool {
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
pub(super) fn str_ok(node: &Node, v: &[u8]) -> bool {
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
pub(super) fn longer_than(text: &[u8], max: u32) -> bool {
    chars(text) > max as usize
}

/// The number of characters of UTF-8 `text`: its bytes that do not continue a character.
pub(super) fn chars(text: &[u8]) -> usize {
    text.iter().filter(|&&b| (b as i8) >= -0x40).count()
}

/// The string rules (`Ctx::check_str`) on the bytes of a string (UTF-8 once the body passes
/// its check).
pub(super) fn check_text(node: &Node, v: &[u8]) -> bool {
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
