//! The store path's cold-key probe: while this process has not seen an answer for a key, one
//! request goes first and the others wait for its headers (learned into the store), as the
//! in-process [`Pacer`](super::Pacer) does, so a cold burst does not go out blind.
//!
//! The probe is per process: N processes that start cold send at most N probes, then pace
//! on the limits that the probes' headers taught the shared store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{admit_until, deadline_limit, paced_locally, PacingStore};
use super::{Cost, PaceKey};
use crate::error::Error;

/// Rounds of waiting for other requests' probes before a request goes ahead without one: each
/// round ends when a probe ends (answered, failed or cancelled), so this only bounds a
/// pathological run of failing probes.
const MAX_PROBE_ROUNDS: usize = 1_000;

enum Phase {
    /// A probe is out; its sender is dropped when it ends.
    Probing(watch::Receiver<()>),
    /// An answer was seen: pace on the store alone.
    Known,
}

/// A pacing store and, per key, whether this process has seen an answer yet.
pub(crate) struct StoreBackend {
    pub(crate) store: Arc<dyn PacingStore>,
    probe: bool,
    keys: Mutex<HashMap<PaceKey, Phase>>,
}

crate::macros::debug_struct!(StoreBackend, |s| "StoreBackend" {
    "store": s.store,
    "probe": s.probe,
} finish);

/// Held by a key's probe: [`answered`](ProbeGuard::answered) marks the key known; dropping
/// it unanswered (an error before any response, a cancelled call) lets the next request
/// probe instead.
pub(crate) struct ProbeGuard {
    backend: Arc<StoreBackend>,
    key: PaceKey,
    tx: Option<watch::Sender<()>>,
}

impl ProbeGuard {
    /// The probe got an answer (its headers, if any, are in the store): the key is known.
    pub(crate) fn answered(mut self) {
        self.backend
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.key.clone(), Phase::Known);
        // Wakes the waiters.
        self.tx = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            let mut keys = self
                .backend
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if matches!(keys.get(&self.key), Some(Phase::Probing(_))) {
                keys.remove(&self.key);
            }
        }
    }
}

impl StoreBackend {
    pub(crate) fn new(store: Arc<dyn PacingStore>, probe: bool) -> Self {
        StoreBackend {
            store,
            probe,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until the key is known in this process or this request becomes its probe, then
    /// until the store admits the request. `Some(guard)`: this request is the probe.
    pub(crate) async fn admit(
        self: Arc<Self>,
        key: &PaceKey,
        cost: Cost,
        max_wait: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<Option<ProbeGuard>, Error> {
        let start = Instant::now();
        let (limit, why) = deadline_limit(start, max_wait, deadline);
        let mut guard = None;
        if self.probe {
            for _ in 0..MAX_PROBE_ROUNDS {
                let mut rx = {
                    let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
                    match keys.get(key) {
                        Some(Phase::Known) => break,
                        Some(Phase::Probing(rx)) => rx.clone(),
                        None => {
                            let (tx, rx) = watch::channel(());
                            keys.insert(key.clone(), Phase::Probing(rx));
                            guard = Some(ProbeGuard {
                                backend: self.clone(),
                                key: key.clone(),
                                tx: Some(tx),
                            });
                            break;
                        }
                    }
                };
                // Only the sender's drop ends this wait (nothing is ever sent).
                match limit {
                    Some(l) => {
                        if tokio::time::timeout_at(l, rx.changed()).await.is_err() {
                            return Err(paced_locally(
                                key,
                                &format!("{why} (waiting for the first answer on this key)"),
                                start.elapsed(),
                            ));
                        }
                    }
                    None => {
                        let _ = rx.changed().await;
                    }
                }
            }
        }
        let max_wait = max_wait.map(|w| w.saturating_sub(start.elapsed()));
        admit_until(&*self.store, key, cost, max_wait, deadline).await?;
        Ok(guard)
    }
}
