//! Priority lanes: the order in which a key's waiting calls are admitted.
//!
//! Every call waits in one lane of its key's queue, named by its [`Priority`] (a request
//! extension; [`Priority::NORMAL`] without one). When the key's buckets are scarce, the head
//! of the queue, the one call that may take the next slot, is the oldest call of the highest
//! lane that has callers waiting, unless a lane with a [share](super::PacerConfig::lane_shares)
//! has received less than its share of the key's recent grants: then that lane's oldest call
//! goes first. With every call in one lane (no priorities set) the queue is first come, first
//! served by arrival, as it is without lanes.
//!
//! The queue orders the calls of one process. Paced through a shared store
//! ([`PaceLayer::pacing_store`](super::PaceLayer::pacing_store), Redis), where processes do
//! not see each other's queues, lanes hold by a reserve instead
//! ([`PacerConfig::lane_reserves`](super::PacerConfig::lane_reserves)): a call of a lower lane
//! is admitted only when it leaves the shared request bucket the requests kept for the lanes
//! above it, so that their calls, from any process, find room at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::Waker;

/// The lane of a call in the pacer's queue, as a request extension: when a key's budget is
/// scarce, waiting calls of a higher lane are admitted before those of a lower one.
///
/// A level from 0 (lowest) to 255 (highest); three named levels cover most uses. A request
/// without the extension is in [`Priority::NORMAL`], so a stack where nobody sets one paces
/// first come, first served. A lane can be given a minimum share of the key's grants
/// ([`PacerConfig::lane_shares`](super::PacerConfig::lane_shares)) so that a flood of higher
/// calls never starves it.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use oai_resilience::pace::Priority;
///
/// let mut req = http::Request::post("https://api.openai.com/v1/chat/completions")
///     .body(Full::new(Bytes::from_static(b"{}")))
///     .unwrap();
/// // An interactive call goes before queued batch work on the same key.
/// req.extensions_mut().insert(Priority::HIGH);
/// assert_eq!(Priority::parse("high"), Some(Priority::HIGH));
/// assert_eq!(Priority::parse("200"), Some(Priority::new(200)));
/// assert!(Priority::HIGH > Priority::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// Background and batch work: admitted after every higher lane.
    pub const LOW: Priority = Priority(64);
    /// The lane of a call that sets no priority.
    pub const NORMAL: Priority = Priority(128);
    /// Interactive calls: admitted before every lower lane.
    pub const HIGH: Priority = Priority(192);

    /// The lane at `level` (0 lowest, 255 highest; [`NORMAL`](Self::NORMAL) is 128).
    pub const fn new(level: u8) -> Self {
        Priority(level)
    }

    /// The level, 0 (lowest) to 255 (highest).
    pub const fn level(self) -> u8 {
        self.0
    }

    /// Reads a priority as a header or an option carries it: `low` (or `batch`), `normal`,
    /// `high` (or `interactive`), any case, or a level from 0 to 255. `None` for anything
    /// else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let named = [
            ("low", Self::LOW),
            ("batch", Self::LOW),
            ("normal", Self::NORMAL),
            ("high", Self::HIGH),
            ("interactive", Self::HIGH),
        ];
        if let Some((_, p)) = named.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
            return Some(*p);
        }
        s.parse::<u8>().ok().map(Priority)
    }
}

/// [`Priority::NORMAL`].
impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

/// Grants counted by a lane's share decay by this factor per grant of the key made while the
/// lane had calls waiting: the share is measured over roughly the last 64 such grants.
const SHARE_DECAY: f64 = 1.0 - 1.0 / 64.0;

/// The lane shares of a configuration, cleaned: each share clamped to (0, 1], one per lane
/// (the last given wins), highest lane first.
pub(super) fn normalize_shares(shares: &[(Priority, f64)]) -> Arc<[(Priority, f64)]> {
    let mut by_lane = BTreeMap::new();
    for &(lane, share) in shares {
        if share.is_finite() && share > 0.0 {
            by_lane.insert(lane, share.min(1.0));
        } else {
            by_lane.remove(&lane);
        }
    }
    by_lane.into_iter().rev().collect()
}

/// One key's waiting calls, by lane, and the grants each lane with a share received lately.
#[derive(Debug)]
pub(super) struct Queue {
    /// Lane → ticket (arrival order) → the waiter's waker, once it has parked. A lane
    /// without calls is removed.
    lanes: BTreeMap<Priority, BTreeMap<u64, Option<Waker>>>,
    /// `(lane, share)`, highest lane first.
    shares: Arc<[(Priority, f64)]>,
    /// For each lane in `shares`: its decayed grants, and the decayed grants of every lane
    /// made while it had calls waiting.
    served: Vec<(f64, f64)>,
}

impl Queue {
    pub(super) fn new(shares: Arc<[(Priority, f64)]>) -> Self {
        Queue {
            lanes: BTreeMap::new(),
            served: Vec::new(),
            shares,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.lanes.values().map(BTreeMap::len).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Enters `ticket` in `lane` (not yet parked).
    pub(super) fn push(&mut self, lane: Priority, ticket: u64) {
        self.lanes.entry(lane).or_default().insert(ticket, None);
    }

    /// Parks a waiting `ticket` with the waker to wake when it may move.
    pub(super) fn park(&mut self, lane: Priority, ticket: u64, waker: &Waker) {
        if let Some(w) = self.lanes.get_mut(&lane).and_then(|q| q.get_mut(&ticket)) {
            match w {
                Some(old) if old.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
    }

    /// Takes `ticket` out of the queue; `true` if it was the head.
    pub(super) fn remove(&mut self, lane: Priority, ticket: u64) -> bool {
        let was_head = self.head() == Some((lane, ticket));
        if let Some(q) = self.lanes.get_mut(&lane) {
            q.remove(&ticket);
            if q.is_empty() {
                self.lanes.remove(&lane);
            }
        }
        was_head
    }

    /// The call that may take the next slot: the oldest of the highest lane that is owed its
    /// share, else the oldest of the highest lane.
    pub(super) fn head(&self) -> Option<(Priority, u64)> {
        if self.lanes.len() > 1 {
            for (i, &(lane, share)) in self.shares.iter().enumerate() {
                let (served, seen) = self.served.get(i).copied().unwrap_or_default();
                if served < share * seen {
                    if let Some(t) = self.lanes.get(&lane).and_then(|q| q.keys().next()) {
                        return Some((lane, *t));
                    }
                }
            }
        }
        let (lane, q) = self.lanes.iter().next_back()?;
        q.keys().next().map(|t| (*lane, *t))
    }

    /// Wakes the head, if it has parked.
    pub(super) fn wake_head(&mut self) {
        let Some((lane, ticket)) = self.head() else {
            return;
        };
        if let Some(w) = self
            .lanes
            .get_mut(&lane)
            .and_then(|q| q.get_mut(&ticket))
            .and_then(Option::take)
        {
            w.wake();
        }
    }

    /// Counts a grant to `lane` (already out of the queue) towards the shares of the lanes
    /// that have calls waiting: a lane's share is of the grants made while it waited, so a
    /// lane that was idle is owed nothing for that time.
    pub(super) fn granted(&mut self, lane: Priority) {
        if self.shares.is_empty() {
            return;
        }
        self.served.resize(self.shares.len(), (0.0, 0.0));
        for (i, (l, _)) in self.shares.iter().enumerate() {
            if *l != lane && !self.lanes.contains_key(l) {
                continue;
            }
            let (served, seen) = &mut self.served[i];
            *seen = *seen * SHARE_DECAY + 1.0;
            *served = *served * SHARE_DECAY + if *l == lane { 1.0 } else { 0.0 };
        }
    }

    /// How many waiting calls are surely admitted before `ticket` of `lane`: the older ones of
    /// its lane, and (unless its lane has a share, which can take it past them) every call of
    /// the higher lanes.
    pub(super) fn ahead(&self, lane: Priority, ticket: u64) -> usize {
        let own = self
            .lanes
            .get(&lane)
            .map_or(0, |q| q.range(..ticket).count());
        if self.shares.iter().any(|(l, _)| *l == lane) {
            return own;
        }
        let higher: usize = self
            .lanes
            .range(lane..)
            .filter(|(l, _)| **l > lane)
            .map(|(_, q)| q.len())
            .sum();
        own + higher
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(shares: &[(Priority, f64)]) -> Queue {
        Queue::new(normalize_shares(shares))
    }

    #[test]
    fn one_lane_is_first_come_first_served() {
        let mut q = queue(&[]);
        for t in [3, 1, 2] {
            q.push(Priority::default(), t);
        }
        assert_eq!(q.head(), Some((Priority::NORMAL, 1)));
        assert!(q.remove(Priority::NORMAL, 1));
        assert!(!q.remove(Priority::NORMAL, 3));
        assert_eq!(q.head(), Some((Priority::NORMAL, 2)));
        assert_eq!(q.len(), 1);
        // Removing what is not there changes nothing.
        assert!(!q.remove(Priority::HIGH, 2));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_higher_lane_is_the_head_and_counts_ahead() {
        let mut q = queue(&[]);
        q.push(Priority::LOW, 0);
        q.push(Priority::LOW, 1);
        q.push(Priority::HIGH, 2);
        q.push(Priority::NORMAL, 3);
        assert_eq!(q.head(), Some((Priority::HIGH, 2)));
        assert_eq!(q.ahead(Priority::LOW, 1), 3);
        assert_eq!(q.ahead(Priority::NORMAL, 3), 1);
        assert_eq!(q.ahead(Priority::HIGH, 2), 0);
    }

    #[test]
    fn a_lane_below_its_share_goes_first() {
        let mut q = queue(&[(Priority::LOW, 0.25)]);
        q.push(Priority::LOW, 0);
        q.push(Priority::HIGH, 1);
        // Nothing granted yet: no lane is owed anything.
        assert_eq!(q.head(), Some((Priority::HIGH, 1)));
        q.granted(Priority::HIGH);
        // 0 of 1 grant is below a quarter.
        assert_eq!(q.head(), Some((Priority::LOW, 0)));
        // A lane with a share counts only its own older calls as surely ahead.
        assert_eq!(q.ahead(Priority::LOW, 0), 0);
        q.granted(Priority::LOW);
        assert_eq!(q.head(), Some((Priority::HIGH, 1)));
    }

    #[test]
    fn grants_while_a_lane_is_idle_owe_it_nothing() {
        let mut q = queue(&[(Priority::LOW, 0.5)]);
        for _ in 0..10 {
            q.granted(Priority::HIGH);
        }
        q.push(Priority::LOW, 0);
        q.push(Priority::HIGH, 1);
        assert_eq!(q.head(), Some((Priority::HIGH, 1)));
        q.remove(Priority::HIGH, 1);
        q.granted(Priority::HIGH);
        q.push(Priority::HIGH, 2);
        // One grant while it waited, none to it: below a half.
        assert_eq!(q.head(), Some((Priority::LOW, 0)));
    }

    #[test]
    fn shares_are_cleaned() {
        let s = normalize_shares(&[
            (Priority::LOW, 0.5),
            (Priority::HIGH, 2.0),
            (Priority::NORMAL, f64::NAN),
            (Priority::new(1), 0.1),
            (Priority::new(1), 0.0),
        ]);
        assert_eq!(&*s, &[(Priority::HIGH, 1.0), (Priority::LOW, 0.5)]);
    }

    #[test]
    fn priorities_parse_by_name_or_level() {
        assert_eq!(Priority::parse(" Interactive "), Some(Priority::HIGH));
        assert_eq!(Priority::parse("batch"), Some(Priority::LOW));
        assert_eq!(Priority::parse("NORMAL"), Some(Priority::NORMAL));
        assert_eq!(Priority::parse("0"), Some(Priority::new(0)));
        assert_eq!(Priority::parse("256"), None);
        assert_eq!(Priority::parse("urgent"), None);
        assert_eq!(Priority::parse(""), None);
        assert_eq!(Priority::new(7).level(), 7);
    }
}
