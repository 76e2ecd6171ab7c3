//! The shape of the generated tables (`rules_gen.rs`) and the endpoints they cover.
//!
//! Below the tables and both checkers: it imports only `keys.rs`. What needs the tables
//! themselves (an endpoint's root node, its schema name and parameters) is in `mod.rs`.

use std::fmt;

use http::Method;

use super::keys::{same_bytes, RECORDING_NAMES};

/// A JSON type bit set; `T_ANY` (empty) accepts every type.
pub(crate) type Types = u8;
pub(crate) const T_ANY: Types = 0;
pub(crate) const T_STRING: Types = 1;
pub(crate) const T_NUMBER: Types = 2;
pub(crate) const T_INTEGER: Types = 4;
pub(crate) const T_BOOLEAN: Types = 8;
pub(crate) const T_ARRAY: Types = 16;
pub(crate) const T_OBJECT: Types = 32;

/// One schema node, summarised from `rules.json`. Every field is a constraint the spec states
/// (or, for the few prose limits, that the generator's `OVERRIDES` cite).
#[derive(Debug)]
// Laid out in this order (`repr(C)`): what every value reads (types, flags, the slices) shares
// the first cache line; the key table comes last.
#[repr(C)]
pub(crate) struct Node {
    // `flags`, `required_slots` and `slots` are derived from the other fields at compile time
    // by `Node::derive` (the generated literals take them from `DERIVED` and call it), so the
    // checkers read them instead of recomputing them.
    pub(crate) types: Types,
    /// `F_*` bits.
    pub(crate) flags: u8,
    pub(crate) nullable: bool,
    pub(crate) deprecated: bool,
    /// Inside a subtree whose nested rules are unconfirmed (Responses `input`/`tools`): a value
    /// that no alternative explains passes.
    pub(crate) lenient: bool,
    /// The value must fit in an `i64` (the spec's ±9.2e18 bounds).
    pub(crate) int64: bool,
    pub(crate) format: Format,
    pub(crate) properties: &'static [Prop],
    /// `oneOf`/`anyOf` alternatives: the value is valid if any one is.
    pub(crate) alternatives: &'static [&'static Node],
    pub(crate) items: Option<&'static Node>,
    pub(crate) additional: Additional,
    /// A closed enum (open `known_values` lists are not in the tables).
    pub(crate) enum_values: &'static [&'static str],
    pub(crate) required: &'static [&'static str],
    /// The property whose `const` value tells the alternatives apart.
    pub(crate) discriminator: Option<&'static str>,
    pub(crate) minimum: Option<f64>,
    pub(crate) maximum: Option<f64>,
    pub(crate) min_items: Option<u32>,
    pub(crate) max_items: Option<u32>,
    pub(crate) min_length: Option<u32>,
    pub(crate) max_length: Option<u32>,
    pub(crate) max_properties: Option<u32>,
    pub(crate) key_max_length: Option<u32>,
    /// The seen-slots of the required names: a property's index, or `properties.len() + j`
    /// for the `j`th required name that is not a property (slots from 64 on are not tracked).
    pub(crate) required_slots: u64,
    /// Bit i: the value of property i can record a fact or a deprecation (its name is one
    /// of `RECORDING_NAMES`, or it has a deprecated parameter inside). The accept path reads
    /// it at the depths where those names record (`Fast::records_under`).
    pub(crate) record_mask: u64,
    /// Open-addressing table from `key_slot(name)` to property index + 1 (0: empty); used when
    /// there are more than `LINEAR` properties.
    pub(crate) slots: [u8; SLOTS],
    /// For a node with a discriminator: in alternative `k`, the index + 1 of the property it
    /// names (0: none), for the first `DISC_ALTS` alternatives.
    pub(crate) disc_props: [u8; DISC_ALTS],
}

/// Alternatives whose discriminator property `disc_props` records.
pub(crate) const DISC_ALTS: usize = 32;

/// Slots of a node's key table.
pub(crate) const SLOTS: usize = 64;
/// Up to this many properties a linear search is as fast as the table.
const LINEAR: usize = 4;
/// `plain_string`: the only thing to check about a string value is that it is one.
pub(crate) const F_PLAIN_STRING: u8 = 1;
/// `ambiguous_for(T_OBJECT)`: more than one alternative accepts an object, no discriminator.
pub(crate) const F_AMBIGUOUS_OBJECT: u8 = 2;
/// `ambiguous_for(T_ARRAY)`: more than one alternative accepts an array.
pub(crate) const F_AMBIGUOUS_ARRAY: u8 = 4;

/// The node or a node below it is deprecated (a real run records a warning there).
pub(crate) const F_DEPRECATED_INSIDE: u8 = 8;

/// Every string value is valid here (`scalar_ok` holds for any string): a string needs no
/// more than its scan, unless a fact records it.
pub(crate) const F_ANY_STRING_OK: u8 = 16;

/// An object union whose object alternatives (at most `SHAPE_ALTS`) are told apart by their
/// required names alone: each takes any object, has no properties, no alternatives and no
/// other object rule (the tables' depth limit leaves such nodes, e.g. chat content parts),
/// with at most `SHAPE_NAMES` distinct required names, none twice in one alternative.
///
/// Such a union has no properties and no discriminator, so its key table and
/// discriminator slots are free, and hold its names instead (`shape_name`): `slots` maps a
/// name to its index `d` + 1, `disc_props[SHAPE_ALTS + d]` locates the name (alternative
/// index << 4 | position in its `required`), and `disc_props[k]` is the mask of the names
/// the `k`th object alternative requires.
pub(crate) const F_SHAPE_UNION: u8 = 32;
/// A discriminated union whose key table holds its alternatives' constants (`slots`: from
/// `key_slot(constant)` to the first alternative with that constant, index + 1), so that
/// `alternative_for` probes instead of walking the alternatives: set when every alternative
/// is within `DISC_ALTS` and the node has no key table of its own.
pub(crate) const F_DISC_TABLE: u8 = 64;
/// A union with a discriminator and more than one alternative that takes an object: an
/// object here is `Fast::discriminated`'s (what `candidates` would find, without the walk).
pub(crate) const F_DISCRIMINATED_OBJECT: u8 = 128;
/// Object alternatives a shape union may have.
pub(crate) const SHAPE_ALTS: usize = 8;
/// Distinct required names a shape union may have (bits of a `u8`).
pub(crate) const SHAPE_NAMES: usize = 8;

const fn shape_only(n: &Node) -> bool {
    n.types == T_OBJECT
        && n.properties.is_empty()
        && matches!(n.additional, Additional::Allowed)
        && n.max_properties.is_none()
        && n.key_max_length.is_none()
        && n.alternatives.is_empty()
        && n.discriminator.is_none()
        && n.required.len() <= 64
}

/// The name table of a shape union over `alts` (see `F_SHAPE_UNION`), or `None` when its
/// names do not fit: more than `SHAPE_NAMES`, a name twice in one alternative, an alternative
/// index or a position from 16 on.
const fn shape_names(alts: &[&Node]) -> Option<([u8; SLOTS], [u8; DISC_ALTS])> {
    let mut slots = [0u8; SLOTS];
    let mut table = [0u8; DISC_ALTS];
    let mut names = 0;
    let (mut a, mut k) = (0, 0);
    while a < alts.len() {
        if const_accepts(alts[a].types, T_OBJECT) {
            let required = alts[a].required;
            let mut need = 0u8;
            let mut j = 0;
            while j < required.len() {
                if a >= 16 || j >= 16 {
                    return None;
                }
                // The name's index, if an earlier alternative (or position) has it.
                let mut d = 0;
                while d < names {
                    let at = table[SHAPE_ALTS + d] as usize;
                    if const_same(alts[at >> 4].required[at & 15], required[j]) {
                        break;
                    }
                    d += 1;
                }
                if d == names {
                    if names == SHAPE_NAMES {
                        return None;
                    }
                    table[SHAPE_ALTS + d] = (a << 4 | j) as u8;
                    let mut slot = key_slot(required[j].as_bytes());
                    while slots[slot] != 0 {
                        slot = (slot + 1) % SLOTS;
                    }
                    slots[slot] = (d + 1) as u8;
                    names += 1;
                }
                if need & (1 << d) != 0 {
                    return None;
                }
                need |= 1 << d;
                j += 1;
            }
            table[k] = need;
            k += 1;
        }
        a += 1;
    }
    Some((slots, table))
}

/// The constant of an alternative's discriminator property (`disc_prop`: its index + 1, 0
/// for none), when it is a one-value enum.
const fn disc_constant(alt: &Node, disc_prop: u8) -> Option<&'static str> {
    if disc_prop == 0 {
        return None;
    }
    match alt.properties[disc_prop as usize - 1].node.enum_values {
        [only] => Some(*only),
        _ => None,
    }
}

/// The derived fields before `Node::derive` fills them in.
pub(crate) const DERIVED: Node = Node {
    types: T_ANY,
    nullable: false,
    deprecated: false,
    lenient: false,
    enum_values: &[],
    minimum: None,
    maximum: None,
    int64: false,
    min_items: None,
    max_items: None,
    min_length: None,
    max_length: None,
    max_properties: None,
    key_max_length: None,
    format: Format::None,
    items: None,
    properties: &[],
    required: &[],
    additional: Additional::Allowed,
    alternatives: &[],
    discriminator: None,
    slots: [0; SLOTS],
    disc_props: [0; DISC_ALTS],
    required_slots: 0,
    record_mask: 0,
    flags: 0,
};

/// A key's first slot in a node's table: a multiplicative hash of its length and its first,
/// middle and last bytes (1.05 probes per property on the generated tables).
#[inline]
pub(crate) const fn key_slot(b: &[u8]) -> usize {
    let n = b.len();
    if n == 0 {
        return 0;
    }
    let x = (b[0] as u32) | (b[n - 1] as u32) << 8 | (b[n / 2] as u32) << 16 | (n as u32) << 24;
    (x.wrapping_mul(0x9E37_79B1) >> 26) as usize
}

const fn const_same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn const_accepts(types: Types, got: Types) -> bool {
    types == T_ANY || types & got != 0
}

const fn plain(n: &Node) -> bool {
    n.enum_values.is_empty()
        && n.min_length.is_none()
        && n.max_length.is_none()
        && matches!(n.format, Format::None)
}

/// A named property of an object node.
#[derive(Debug)]
pub(crate) struct Prop {
    pub(crate) name: &'static str,
    pub(crate) node: &'static Node,
}

/// What an object does with keys it does not declare.
#[derive(Debug)]
pub(crate) enum Additional {
    /// Accepted unchecked.
    Allowed,
    /// Rejected (`additionalProperties: false`).
    Forbidden,
    /// Each value must match the node (a map such as `metadata`).
    Schema(&'static Node),
}

/// A string format checked by hand (the spec states it in prose only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    None,
    /// `FunctionObject.name`: a-z, A-Z, 0-9, `_` and `-`.
    FunctionName,
}

impl Node {
    /// Fills in the derived fields (`slots`, `required_slots`, `flags`) from the others; the
    /// generated tables call it on each literal, so it runs at compile time.
    pub(crate) const fn derive(mut self) -> Node {
        let props = self.properties;
        if props.len() > LINEAR {
            assert!(props.len() < SLOTS, "too many properties for the key table");
            let mut i = 0;
            while i < props.len() {
                let mut slot = key_slot(props[i].name.as_bytes());
                while self.slots[slot] != 0 {
                    slot = (slot + 1) % SLOTS;
                }
                self.slots[slot] = (i + 1) as u8;
                i += 1;
            }
        }
        let mut mask = 0u64;
        let mut j = 0;
        while j < self.required.len() {
            let mut slot = props.len() + j;
            let mut i = 0;
            while i < props.len() {
                if const_same(props[i].name, self.required[j]) {
                    slot = i;
                    break;
                }
                i += 1;
            }
            if slot < 64 {
                mask |= 1 << slot;
            }
            j += 1;
        }
        self.required_slots = mask;
        if let Some(disc) = self.discriminator {
            let mut k = 0;
            while k < self.alternatives.len() && k < DISC_ALTS {
                let alt = self.alternatives[k].properties;
                let mut i = 0;
                while i < alt.len() {
                    if const_same(alt[i].name, disc) {
                        assert!(i < u8::MAX as usize, "too many properties");
                        self.disc_props[k] = (i + 1) as u8;
                        break;
                    }
                    i += 1;
                }
                k += 1;
            }
        }
        let disc_table = self.discriminator.is_some()
            && props.len() <= LINEAR
            && self.alternatives.len() <= DISC_ALTS;
        if disc_table {
            let mut k = 0;
            while k < self.alternatives.len() {
                if let Some(c) = disc_constant(self.alternatives[k], self.disc_props[k]) {
                    // Filled in order, so a probe meets the first alternative with a
                    // constant before any later one with the same.
                    let mut slot = key_slot(c.as_bytes());
                    while self.slots[slot] != 0 {
                        slot = (slot + 1) % SLOTS;
                    }
                    self.slots[slot] = (k + 1) as u8;
                }
                k += 1;
            }
        }
        // plain_string: a string type, no string rule here, and every alternative that takes
        // a string is plain with no alternatives of its own.
        let mut plain_string = self.types & T_STRING != 0 && plain(&self);
        let (mut objects, mut arrays) = (0, 0);
        let mut k = 0;
        while k < self.alternatives.len() {
            let a = self.alternatives[k];
            if const_accepts(a.types, T_STRING) && !(plain(a) && a.alternatives.is_empty()) {
                plain_string = false;
            }
            if const_accepts(a.types, T_OBJECT) {
                objects += 1;
            }
            if const_accepts(a.types, T_ARRAY) {
                arrays += 1;
            }
            k += 1;
        }
        let mut flags = 0;
        if plain_string {
            flags |= F_PLAIN_STRING;
        }
        if objects > 1 && self.discriminator.is_none() {
            flags |= F_AMBIGUOUS_OBJECT;
        }
        if arrays > 1 {
            flags |= F_AMBIGUOUS_ARRAY;
        }
        // As `scalar_ok` decides for a string: with no alternatives, the node's own rules;
        // with alternatives, the node must take strings and one plain alternative (or
        // leniency) must take any string.
        let mut any_string = const_accepts(self.types, T_STRING);
        if self.alternatives.is_empty() {
            any_string = any_string && plain(&self);
        } else {
            let mut one = self.lenient;
            let mut k = 0;
            while k < self.alternatives.len() {
                let a = self.alternatives[k];
                if const_accepts(a.types, T_STRING) && a.alternatives.is_empty() && plain(a) {
                    one = true;
                }
                k += 1;
            }
            any_string = any_string && one;
        }
        if any_string {
            flags |= F_ANY_STRING_OK;
        }
        if disc_table {
            flags |= F_DISC_TABLE;
        }
        if objects > 1 && self.discriminator.is_some() {
            flags |= F_DISCRIMINATED_OBJECT;
        }
        if flags & F_AMBIGUOUS_OBJECT != 0 {
            let mut shapes = true;
            let mut count = 0;
            let mut k = 0;
            while k < self.alternatives.len() {
                let a = self.alternatives[k];
                if const_accepts(a.types, T_OBJECT) {
                    shapes = shapes && shape_only(a);
                    count += 1;
                }
                k += 1;
            }
            if shapes && count <= SHAPE_ALTS && self.properties.is_empty() {
                if let Some((slots, names)) = shape_names(self.alternatives) {
                    flags |= F_SHAPE_UNION;
                    self.slots = slots;
                    self.disc_props = names;
                }
            }
        }
        // Children are derived first (their statics are evaluated when read here).
        let mut deprecated = self.deprecated;
        if let Some(items) = self.items {
            deprecated |= items.flags & F_DEPRECATED_INSIDE != 0;
        }
        if let Additional::Schema(n) = self.additional {
            deprecated |= n.flags & F_DEPRECATED_INSIDE != 0;
        }
        let mut i = 0;
        while i < props.len() {
            deprecated |= props[i].node.flags & F_DEPRECATED_INSIDE != 0;
            i += 1;
        }
        let mut k = 0;
        while k < self.alternatives.len() {
            deprecated |= self.alternatives[k].flags & F_DEPRECATED_INSIDE != 0;
            k += 1;
        }
        if deprecated {
            flags |= F_DEPRECATED_INSIDE;
        }
        let mut record_mask = 0u64;
        let mut i = 0;
        while i < props.len() && i < 64 {
            let mut records = props[i].node.flags & F_DEPRECATED_INSIDE != 0;
            let mut r = 0;
            while r < RECORDING_NAMES.len() {
                records |= const_same(props[i].name, RECORDING_NAMES[r]);
                r += 1;
            }
            if records {
                record_mask |= 1 << i;
            }
            i += 1;
        }
        self.record_mask = record_mask;
        self.flags = flags;
        self
    }

    /// In a shape union (`F_SHAPE_UNION`), the index of the required name `key`.
    #[inline]
    pub(crate) fn shape_name(&self, key: &[u8]) -> Option<usize> {
        let mut slot = key_slot(key);
        for _ in 0..SLOTS {
            let d = self.slots[slot].checked_sub(1)? as usize;
            let at = self.disc_props[SHAPE_ALTS + d] as usize;
            let name = self.alternatives[at >> 4].required[at & 15];
            if same_bytes(name.as_bytes(), key) {
                return Some(d);
            }
            slot = (slot + 1) % SLOTS;
        }
        None
    }

    /// The index of the property named `key` (property names are unique in a node).
    #[inline(always)]
    pub(crate) fn find(&self, key: &str) -> Option<usize> {
        self.find_bytes(key.as_bytes())
    }

    /// `find` by the key's bytes.
    #[inline(always)]
    pub(crate) fn find_bytes(&self, key: &[u8]) -> Option<usize> {
        let props = self.properties;
        if props.len() <= LINEAR {
            return props
                .iter()
                .position(|p| same_bytes(p.name.as_bytes(), key));
        }
        let mut slot = key_slot(key);
        // The table has free slots (fewer properties than slots): a probe ends at one.
        for _ in 0..SLOTS {
            let i = self.slots[slot].checked_sub(1)? as usize;
            if same_bytes(props[i].name.as_bytes(), key) {
                return Some(i);
            }
            slot = (slot + 1) % SLOTS;
        }
        None
    }

    /// The alternative whose discriminator (`disc`, this node's) is the constant `value`: the
    /// first `k` with `alternatives[k].const_of(disc) == Some(value)`, read through
    /// `disc_props`.
    pub(crate) fn alternative_for(&self, disc: &str, value: &[u8]) -> Option<&'static Node> {
        if self.flags & F_DISC_TABLE != 0 {
            // The table has free slots (at most `DISC_ALTS` constants in `SLOTS`): a probe
            // ends at one.
            let mut slot = key_slot(value);
            for _ in 0..SLOTS {
                let k = self.slots[slot].checked_sub(1)? as usize;
                let alt = self.alternatives[k];
                let c = disc_constant(alt, self.disc_props[k]).unwrap_or_default();
                if c.len() == value.len() && same_bytes(c.as_bytes(), value) {
                    return Some(alt);
                }
                slot = (slot + 1) % SLOTS;
            }
            return None;
        }
        self.alternatives.iter().enumerate().find_map(|(k, &alt)| {
            let constant = match self.disc_props.get(k) {
                Some(&i) => disc_constant(alt, i),
                None => alt.const_of(disc),
            };
            // Lengths first, here: they usually differ.
            constant
                .is_some_and(|c| c.len() == value.len() && same_bytes(c.as_bytes(), value))
                .then_some(alt)
        })
    }

    /// The constant value of `key` in this (object) node, when it is a one-value enum.
    pub(crate) fn const_of(&self, key: &str) -> Option<&'static str> {
        let prop = &self.properties[self.find(key)?];
        match prop.node.enum_values {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// An endpoint whose request body the generated tables describe.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `POST /chat/completions` (`CreateChatCompletionRequest`).
    ChatCompletions,
    /// `POST /completions` (`CreateCompletionRequest`).
    Completions,
    /// `POST /embeddings` (`CreateEmbeddingRequest`).
    Embeddings,
    /// `POST /responses` (`CreateResponse`).
    Responses,
    /// `POST /moderations` (`CreateModerationRequest`).
    Moderations,
    /// `POST /images/generations` (`CreateImageRequest`).
    ImageGenerations,
    /// `POST /audio/speech` (`CreateSpeechRequest`).
    AudioSpeech,
}

impl Endpoint {
    /// Every endpoint the tables cover.
    pub const ALL: [Endpoint; 7] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Moderations,
        Endpoint::ImageGenerations,
        Endpoint::AudioSpeech,
    ];

    /// The path as the spec writes it, without the `/v1` prefix: `/chat/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Moderations => "/moderations",
            Endpoint::ImageGenerations => "/images/generations",
            Endpoint::AudioSpeech => "/audio/speech",
        }
    }

    /// The HTTP method (all are `POST`).
    pub fn method(self) -> Method {
        Method::POST
    }

    /// The endpoint whose spec path is `path` (`/chat/completions`, with or without `/v1` in
    /// front and a trailing `/`).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let path = path.strip_prefix("/v1").unwrap_or(path);
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "POST {}", self.path())
    }
}
