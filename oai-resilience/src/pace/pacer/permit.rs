//! The two halves of a slot: [`Acquire`], the future that waits for it in the key's queue,
//! and [`Permit`], the granted slot that reports the outcome back to the key's state.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::{
    rate_limited, KeyEntry, KeyState, LearnedBucket, Priority, Shared, Since, Step, PACED_LOCALLY,
};
use crate::error::{DelaySource, Error, ErrorKind};
use crate::observe::PacingLimit;
use crate::pace::bucket::EPS;
use crate::pace::cost::Cost;
use crate::pace::key::PaceKey;
use crate::parse::RateLimitSnapshot;

/// A granted slot. Report the outcome with [`on_response`](Permit::on_response) or
/// [`on_rate_limited`](Permit::on_rate_limited); dropping it reports nothing and only frees
/// its place among the requests in flight.
pub struct Permit {
    shared: Arc<Shared>,
    entry: Arc<KeyEntry>,
    tokens: u64,
    cost: Cost,
    waited: Duration,
    held_by: Option<PacingLimit>,
    level_before: Option<f64>,
    /// When it was sent, and the key's grant counters right after its grant.
    since: Since,
    open: bool,
}

crate::macros::debug_struct!(Permit, |s| "Permit" {
    "key": s.entry.key,
    "tokens": s.tokens,
    "waited": s.waited,
} finish);

impl Permit {
    /// How long the request waited for this slot.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The tokens this request was counted for (the estimate, corrected).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The key.
    pub fn key(&self) -> &PaceKey {
        &self.entry.key
    }

    /// What held the request at its last wait; `None` if it was granted at once.
    pub fn held_by(&self) -> Option<PacingLimit> {
        self.held_by
    }

    /// A handle that settles this request's token charge with the usage its response
    /// reports, after the permit has reported the response.
    pub(crate) fn usage_charge(&self) -> UsageCharge {
        UsageCharge {
            entry: self.entry.clone(),
            cost: self.cost,
            charged: self.tokens,
            grant: self.since.grants,
        }
    }

    /// Reports a response (a success, or an error other than a 429) and its snapshot.
    pub fn on_response(mut self, snapshot: Option<&RateLimitSnapshot>) {
        self.open = false;
        let config = &self.shared.config;
        let now = Instant::now();
        let mut st = self.entry.lock();
        st.advance(now);
        st.finish(self.tokens);
        st.known = true;
        if let Some(s) = snapshot {
            self.correct_ratio(&mut st, s, now);
            st.learn(s, now, config, Some(self.since()));
        }
        st.success(config);
        st.wake_head();
    }

    /// Reports an error response other than a 429 (or a failure before any response): the
    /// snapshot is learned, but the adaptive rate does not grow.
    pub fn on_error(mut self, snapshot: Option<&RateLimitSnapshot>) {
        self.open = false;
        let now = Instant::now();
        let mut st = self.entry.lock();
        st.advance(now);
        st.finish(self.tokens);
        st.answered();
        if let Some(s) = snapshot {
            st.learn(s, now, &self.shared.config, Some(self.since()));
        }
        st.wake_head();
    }

    /// Reports a 429 with the server's hint and snapshot: the whole key pauses.
    pub fn on_rate_limited(mut self, hint: Option<Duration>, snapshot: Option<&RateLimitSnapshot>) {
        self.open = false;
        self.entry.lock().finish(self.tokens);
        rate_limited(
            &self.shared,
            &self.entry,
            hint,
            snapshot,
            Some((self.since(), self.tokens)),
        );
    }

    fn since(&self) -> Since {
        self.since
    }

    /// Corrects the token estimate: when this request was alone in flight, the server's
    /// remaining tokens show what it really counted.
    fn correct_ratio(&self, st: &mut KeyState, s: &RateLimitSnapshot, now: Instant) {
        let (Some(before), Some(remaining), Some(LearnedBucket { bucket: b, .. })) =
            (self.level_before, s.remaining_tokens, st.tokens)
        else {
            return;
        };
        // Reported usage is exact: it corrects the estimate instead.
        if st.usage.is_some() {
            return;
        }
        if st.grants != self.since.grants || st.in_flight != 0 || self.tokens == 0 {
            return;
        }
        // A full bucket hides how much was used.
        if remaining as f64 + EPS >= b.capacity {
            return;
        }
        // Only a clean sample: the refill during the flight small next to the cost, and the
        // bucket never near full (a full bucket wastes refill, which would read as usage).
        let refilled = (now - self.since.sent_at).as_secs_f64() * b.refill;
        if refilled > 0.25 * self.tokens as f64 || before + refilled >= b.capacity {
            return;
        }
        let used = before + refilled - remaining as f64;
        if used <= 0.0 {
            return;
        }
        // One odd sample moves the ratio a little, a steady bias moves it all the way.
        let ratio = st.token_ratio;
        let sample = (used / self.cost.tokens.max(1) as f64).clamp(ratio * 0.8, ratio * 1.25);
        st.token_ratio = (0.7 * ratio + 0.3 * sample).clamp(0.25, 4.0);
    }
}

/// A granted request's token charge, to settle with the usage its response reports.
pub(crate) struct UsageCharge {
    entry: Arc<KeyEntry>,
    cost: Cost,
    charged: u64,
    grant: u64,
}

impl UsageCharge {
    /// The tokens the request was counted for.
    pub(crate) fn charged(&self) -> u64 {
        self.charged
    }

    /// Replaces the charge with the true `(input, output)` tokens (see
    /// `KeyState::settle_usage`).
    pub(crate) fn settle(self, used: (u64, u64)) {
        let now = Instant::now();
        let mut st = self.entry.lock();
        st.advance(now);
        st.settle_usage(self.cost, self.charged, self.grant, used);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.open {
            let mut st = self.entry.lock();
            st.finish(self.tokens);
            st.wake_head();
        }
    }
}

/// The future of [`Pacer::acquire`](super::Pacer::acquire): resolves to a [`Permit`] when the slot comes.
///
/// Dropping it leaves the queue at once and lets the next waiter move up.
pub struct Acquire {
    shared: Arc<Shared>,
    entry: Arc<KeyEntry>,
    /// The lane and the ticket (arrival order) in the key's queue.
    place: (Priority, u64),
    cost: Cost,
    started: Instant,
    limit: Option<Instant>,
    by_deadline: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
    waited: bool,
    held_by: Option<PacingLimit>,
}

crate::macros::debug_struct!(Acquire, |s| "Acquire" {
    "key": s.entry.key,
    "lane": s.place.0,
    "ticket": s.place.1,
    "cost": s.cost,
} finish);

impl Acquire {
    /// Waits in `entry`'s queue at `place`, until `limit` at the latest.
    pub(super) fn new(
        shared: Arc<Shared>,
        entry: Arc<KeyEntry>,
        place: (Priority, u64),
        cost: Cost,
        started: Instant,
        (limit, by_deadline): (Option<Instant>, bool),
    ) -> Self {
        Acquire {
            shared,
            entry,
            place,
            cost,
            started,
            limit,
            by_deadline,
            sleep: None,
            done: false,
            waited: false,
            held_by: None,
        }
    }

    fn fail(&mut self, now: Instant, expected: Option<Instant>) -> Error {
        self.entry.lock().leave(self.place);
        self.finish_queue();
        self.shared.paced_errors.fetch_add(1, Ordering::Relaxed);
        let waited = now - self.started;
        let why = if self.by_deadline {
            "the call's deadline"
        } else {
            "the max wait"
        };
        let detail = match expected {
            Some(t) => format!(
                "{PACED_LOCALLY}: no slot on {} before {why} (waited {} ms, next slot in {} ms)",
                self.entry.key,
                waited.as_millis(),
                (t - now).as_millis()
            ),
            None => format!(
                "{PACED_LOCALLY}: no slot on {} before {why} (waited {} ms)",
                self.entry.key,
                waited.as_millis()
            ),
        };
        tracing::warn!(key = %self.entry.key, waited_ms = waited.as_millis() as u64, "{detail}");
        let mut err = Error::new(ErrorKind::RateLimited).with_detail(detail);
        if let Some(t) = expected {
            err = err.with_retry_after(t - now, DelaySource::RateLimitReset);
        }
        err
    }

    fn finish_queue(&mut self) {
        self.done = true;
        self.shared.queue_len.fetch_sub(1, Ordering::Relaxed);
        if self.waited {
            let w = Instant::now() - self.started;
            self.shared
                .wait_nanos
                .fetch_add(w.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        }
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(Error::new(ErrorKind::Internal)
                .with_detail("pacer: acquire polled after completion")));
        }
        // Bounded: each round either returns or sleeps on a timer that had not yet fired.
        for _ in 0..8 {
            let now = Instant::now();
            let (step, earliest) = {
                let mut st = this.entry.lock();
                let step = st.step(this.place, this.cost, now, cx.waker());
                let mut earliest = None;
                if let Step::Wait(until, limit) = step {
                    this.held_by = Some(limit);
                    // Behind others, on the first look: does the queue ahead already outlast
                    // the bound?
                    if until.is_none() && !this.waited && this.limit.is_some() {
                        earliest = st.earliest(this.place, this.cost, now);
                    }
                }
                (step, earliest)
            };
            match step {
                Step::Granted(info) => {
                    this.finish_queue();
                    this.shared.granted.fetch_add(1, Ordering::Relaxed);
                    let waited = now - this.started;
                    if this.waited {
                        tracing::debug!(key = %this.entry.key, waited_ms = waited.as_millis() as u64, "pacing slot granted after wait");
                    }
                    return Poll::Ready(Ok(Permit {
                        shared: this.shared.clone(),
                        entry: this.entry.clone(),
                        tokens: info.tokens,
                        cost: this.cost,
                        waited,
                        held_by: this.held_by,
                        level_before: info.level_before,
                        since: info.since,
                        open: true,
                    }));
                }
                Step::Wait(until, _) => {
                    if !this.waited {
                        this.waited = true;
                        this.shared.waits.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            key = %this.entry.key,
                            wait_ms = until.map(|t| (t - now).as_millis() as u64),
                            "pacing: waiting for a slot"
                        );
                    }
                    if let (Some(t), Some(limit)) = (until.or(earliest), this.limit) {
                        if t > limit {
                            return Poll::Ready(Err(this.fail(now, Some(t))));
                        }
                    }
                    if this.limit.is_some_and(|l| l <= now) {
                        return Poll::Ready(Err(this.fail(now, until)));
                    }
                    let wake_at = match (until, this.limit) {
                        (Some(t), Some(l)) => Some(t.min(l)),
                        (t, l) => t.or(l),
                    };
                    let Some(wake_at) = wake_at else {
                        return Poll::Pending;
                    };
                    let sleep = match &mut this.sleep {
                        Some(s) => {
                            s.as_mut().reset(wake_at);
                            s
                        }
                        None => this
                            .sleep
                            .insert(Box::pin(tokio::time::sleep_until(wake_at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if !self.done {
            self.entry.lock().leave(self.place);
            self.finish_queue();
        }
    }
}
