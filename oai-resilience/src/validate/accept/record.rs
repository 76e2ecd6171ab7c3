//! What the accept pass records as it goes: the facts the cross-field rules read (as the full
//! report's `Ctx::capture_*` do), and which values can record anything at all.

use super::pass::{unsupported, Fast, Stop, Text, R};
use super::{depth, segs, Path, Seg, P};
use crate::validate::keys::same;
use crate::validate::schema::{Node, F_DEPRECATED_INSIDE};
use crate::validate::vocab::{Fact, Scalar, Short, EMPTY};

impl<'a> Fast<'a, '_> {
    // ----- facts (as `Ctx::capture_*`) -----

    pub(super) fn capture_scalar(&mut self, s: &Scalar<'_>, path: P<'_, 'a>) {
        if let Scalar::Str(v) = *s {
            return self.capture_str(v.as_bytes(), path);
        }
        if let Some([Seg::Key(k)]) = segs::<1>(path) {
            self.facts.record(k, || Fact::of(s));
        }
    }

    /// `capture_scalar` for a string, from its bytes. (Tests of the depth, not a `match`: a
    /// jump table here was a mispredicted indirect branch per string.)
    pub(super) fn capture_str(&mut self, v: Text<'_>, path: P<'_, 'a>) {
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
    pub(super) fn needs_value(&self, path: P<'_, 'a>) -> bool {
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

    pub(super) fn capture_message_str(&mut self, v: Text<'_>, path: P<'_, 'a>) {
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

    pub(super) fn capture_container(&mut self, fact: Fact, path: P<'_, 'a>) {
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
    pub(super) fn object_start(&mut self, node: &Node, path: P<'_, 'a>) {
        if self.record && self.track_messages && node.discriminator.is_none() {
            self.message_start(path);
        }
    }

    /// `object_start` where it may start a message.
    #[inline(never)]
    pub(super) fn message_start(&mut self, path: P<'_, 'a>) {
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
    pub(super) fn message_by_role(&mut self, role: Option<&[u8]>, path: P<'_, 'a>) {
        if let (Some(b"assistant" | b"tool"), Some([Seg::Key("messages"), Seg::Index(index)])) =
            (role, segs::<2>(path))
        {
            self.facts.start_message(index);
        }
    }

    /// Whether a scalar at `path` is recorded as a fact (`capture_scalar`, `plain_str`): at
    /// the top level, an item of `modalities`, a chat message's `role` or `tool_call_id`, and
    /// a chat tool call's `id`.
    pub(super) fn may_capture(&self, path: P<'_, 'a>) -> bool {
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
    pub(super) fn may_record(&self, path: P<'_, 'a>) -> bool {
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
    pub(super) fn records_under(node: &Node, i: usize, depth: u32) -> bool {
        match depth {
            2 => node.properties[i].node.flags & F_DEPRECATED_INSIDE != 0,
            1 | 3 => i >= 64 || node.record_mask >> i & 1 != 0,
            _ => true,
        }
    }

    /// Whether `path` is a chat tool call (`messages[i].tool_calls[j]`), whose `id` the
    /// message-order rule needs (`Ctx::is_tool_call_id`).
    pub(super) fn is_tool_call(&self, path: P<'_, 'a>) -> bool {
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
    pub(super) fn tool_call_id(&mut self, path: P<'_, 'a>) -> R {
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
