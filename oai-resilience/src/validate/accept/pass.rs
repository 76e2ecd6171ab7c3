//! What every part of the accept pass shares, below all of them (it imports none): its state
//! ([`Fast`]), the key or string it reads ([`Text`]), and why it stops ([`Stop`]).

use crate::validate::schema::Node;
use crate::validate::vocab::Facts;

/// Why the pass stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The value breaks a rule (inside a trial: that alternative does not match).
    Violation,
    /// Something this pass leaves to the streaming checker.
    Unsupported,
}

pub(super) type R<T = ()> = Result<T, Stop>;

/// `Err(Stop::Unsupported)`, kept out of the hot paths' code (valid bodies never take it).
#[cold]
#[inline(never)]
pub(super) fn unsupported<T>() -> R<T> {
    Err(Stop::Unsupported)
}

/// A key or string as it is in the body (UTF-8 once the body passes its check).
pub(super) type Text<'a> = &'a [u8];

/// How many string values read before a discriminator are remembered (not scanned twice).
pub(super) const MEMO: usize = 8;

/// How many entries before a discriminator are remembered (their keys are not read twice).
pub(super) const PREFIX: usize = 4;

/// How many values read before a discriminator are remembered as checked.
pub(super) const CHECKED: usize = 4;

/// The state of one accept pass over a body (its methods: the walk over values in
/// `accept.rs`, the tokenizer in `lex.rs`, the facts in `record.rs`).
pub(super) struct Fast<'a, 'f> {
    pub(super) b: &'a [u8],
    /// The OR of the string and key bytes read: its high bits say whether any was non-ASCII.
    pub(super) high: u64,
    pub(super) pos: usize,
    /// False while an alternative is tried: facts and deprecations are not recorded.
    pub(super) record: bool,
    pub(super) track_messages: bool,
    pub(super) facts: &'f mut Facts,
    pub(super) deprecated: Vec<String>,
    /// (start, end, has escapes) of string values already scanned.
    pub(super) memo: [(usize, usize, bool); MEMO],
    pub(super) memo_len: usize,
    /// (start, end, node) of values before a discriminator already checked against `node`,
    /// the only node their key has in any alternative (see `find_disc`).
    pub(super) checked: [(usize, usize, &'static Node); CHECKED],
    pub(super) checked_len: usize,
    /// (key, where its value starts) of the entries before a discriminator, in order.
    pub(super) prefix: [(Text<'a>, usize); PREFIX],
    pub(super) prefix_len: usize,
    /// How many more bytes `guess` may search in this body.
    pub(super) guess_budget: usize,
    /// The last guess: where the discriminator's value starts, the union, and the
    /// alternative that value names (read again by `discriminated` when it is the one).
    pub(super) guessed: Option<(usize, &'static Node, Option<&'static Node>)>,
}
