//! [`InProcessStore`]: the default pacing store, in this process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{micros, Admission, KeyModel, LearnedLimits, PacingStore, StoreFuture};
use crate::pace::{Cost, PaceKey};

/// The default [`PacingStore`]: state in this process, behind one mutex, on the
/// [`tokio::time::Instant`] clock (virtual time works).
#[derive(Clone)]
pub struct InProcessStore {
    inner: Arc<InProcessInner>,
}

struct InProcessInner {
    origin: Instant,
    keys: Mutex<HashMap<PaceKey, KeyModel>>,
}

impl fmt::Debug for InProcessStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessStore")
            .field("keys", &self.keys().len())
            .finish()
    }
}

crate::macros::default_via_new!(InProcessStore);

impl InProcessStore {
    /// An empty store.
    pub fn new() -> Self {
        InProcessStore {
            inner: Arc::new(InProcessInner {
                origin: Instant::now(),
                keys: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn now_us(&self) -> u64 {
        micros(self.inner.origin.elapsed())
    }

    /// The keys' models, locked (a poisoned lock is taken over).
    fn keys(&self) -> MutexGuard<'_, HashMap<PaceKey, KeyModel>> {
        self.inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, key: &PaceKey, f: impl FnOnce(&mut KeyModel, u64) -> T) -> T {
        let now = self.now_us();
        let mut keys = self.keys();
        let model = keys.entry(key.clone()).or_default();
        f(model, now)
    }

    /// The state of `key`, if it has any.
    #[cfg(test)]
    pub(crate) fn key_model(&self, key: &PaceKey) -> Option<KeyModel> {
        self.keys().get(key).copied()
    }

    pub(crate) fn admit_now(&self, key: &PaceKey, cost: Cost) -> Admission {
        self.with(key, |m, now| {
            m.admit_keeping(now, 1.0, cost.tokens as f64, f64::from(cost.reserve))
                .into()
        })
    }

    pub(crate) fn learn_now(&self, key: &PaceKey, limits: LearnedLimits) {
        self.with(key, |m, now| m.learn(now, limits));
    }

    pub(crate) fn pause_now(&self, key: &PaceKey, duration: Duration) {
        self.with(key, |m, now| m.pause(now, micros(duration)));
    }
}

impl PacingStore for InProcessStore {
    fn admit<'a>(&'a self, key: &'a PaceKey, cost: Cost) -> StoreFuture<'a, Admission> {
        let a = self.admit_now(key, cost);
        Box::pin(async move { Ok(a) })
    }

    fn learn<'a>(&'a self, key: &'a PaceKey, limits: LearnedLimits) -> StoreFuture<'a, ()> {
        self.learn_now(key, limits);
        Box::pin(async { Ok(()) })
    }

    fn pause<'a>(&'a self, key: &'a PaceKey, duration: Duration) -> StoreFuture<'a, ()> {
        self.pause_now(key, duration);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pace::store::test_limits as limits;

    #[tokio::test(start_paused = true)]
    async fn in_process_store_follows_virtual_time() {
        let store = InProcessStore::new();
        let key = PaceKey::new("x").with_credential(b"Bearer sk-secret");
        store.learn(&key, limits(1.0, 10.0)).await.unwrap();
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Wait(Duration::from_millis(100))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Admitted
        );
        store.pause(&key, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            store.admit(&key, Cost::tokens(1)).await.unwrap(),
            Admission::Wait(Duration::from_secs(1))
        );
        assert!(!format!("{store:?}").contains("sk-secret"));
    }
}
