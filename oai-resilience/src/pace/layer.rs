//! [`PaceLayer`]: the pacer's configuration and the request-to-key mapping.

use std::sync::Arc;

use http::{HeaderMap, Uri};

use crate::observe::{Observer, SharedObserver};

use super::cost::CostEstimator;
use super::key::{Keying, PaceKey};
use super::pacer::{Pacer, PacerConfig};
use super::probe::StoreBackend;
use super::service::Pace;
use super::store::PacingStore;

/// Builds [`Pace`] services that share one [`Pacer`]. See the [module docs](super).
///
/// Clones share the pacer, so every clone of a stack paces against the same limits.
#[derive(Clone)]
pub struct PaceLayer {
    pub(crate) pacer: Pacer,
    pub(crate) keying: Arc<Keying>,
    pub(crate) store: Option<Arc<StoreBackend>>,
    pub(crate) observer: Option<SharedObserver>,
}

crate::macros::debug_struct!(PaceLayer, |s| "PaceLayer" {
    "pacer": s.pacer,
    "custom_key": s.keying.key_fn.is_some(),
    "per_model": s.keying.per_model,
    "estimator": s.keying.estimator,
    "store": s.store,
    "observer": s.observer.is_some(),
} finish);

crate::macros::default_via_new!(PaceLayer);

impl PaceLayer {
    /// A layer with the default [`PacerConfig`]: learn from headers, send a cold key's first
    /// wave at once, wait at most 60 s, key by base URL + credential hash + model.
    pub fn new() -> Self {
        Self::with_config(PacerConfig::default())
    }

    /// A layer with its own pacer configured by `config`.
    pub fn with_config(config: PacerConfig) -> Self {
        Self::with_pacer(Pacer::new(config))
    }

    /// A layer over an existing pacer, to share limits between stacks.
    pub fn with_pacer(pacer: Pacer) -> Self {
        PaceLayer {
            pacer,
            keying: Arc::new(Keying {
                key_fn: None,
                per_model: true,
                estimator: CostEstimator::default(),
            }),
            store: None,
            observer: None,
        }
    }

    fn keying_mut(&mut self) -> &mut Keying {
        if Arc::get_mut(&mut self.keying).is_none() {
            self.keying = Arc::new(Keying {
                key_fn: self.keying.key_fn.clone(),
                per_model: self.keying.per_model,
                estimator: self.keying.estimator,
            });
        }
        Arc::get_mut(&mut self.keying).expect("just made unique")
    }

    /// Whether the default key includes the body's `model` (default `true`). OpenAI's limits
    /// are per model; turn this off for a service whose limits are per key only.
    pub fn per_model(mut self, yes: bool) -> Self {
        self.keying_mut().per_model = yes;
        self
    }

    /// Replaces the default key with `f(uri, headers, body bytes)`.
    pub fn key_fn(
        mut self,
        f: impl Fn(&Uri, &HeaderMap, Option<&[u8]>) -> PaceKey + Send + Sync + 'static,
    ) -> Self {
        self.keying_mut().key_fn = Some(Arc::new(f));
        self
    }

    /// Sets how token costs are estimated.
    pub fn estimator(mut self, estimator: CostEstimator) -> Self {
        self.keying_mut().estimator = estimator;
        self
    }

    /// Paces through `store` (shared with other processes, such as a `RedisStore` with the
    /// `redis` feature) instead of this layer's in-process [`Pacer`].
    ///
    /// Requests are keyed and costed as before ([`per_model`](Self::per_model),
    /// [`key_fn`](Self::key_fn), [`estimator`](Self::estimator)); each one waits until the
    /// store admits it, at most the pacer's [`PacerConfig::max_wait`] and never past its
    /// [`CallDeadline`](super::CallDeadline); the response's `x-ratelimit-*` headers are
    /// reported with [`PacingStore::learn`] and a server 429 pauses the key in the store for
    /// its hint (else [`PacerConfig::default_pause`]). A request that cannot be admitted in
    /// time fails as [paced locally](super::is_paced_locally), as with the pacer.
    ///
    /// A cold key is treated as by the pacer: by default ([`PacerConfig::cold_window`] `None`)
    /// its first wave goes out at once, and every process paces on the limits in the store
    /// as soon as any process's answer has put them there. With a cold window set, until
    /// this process has seen an answer on a key, one request goes first and the others wait
    /// for its headers (learned into the store); N processes that start cold then send at
    /// most N probes.
    ///
    /// Limits: the store holds token buckets and pauses only. The pacer's
    /// adaptive (AIMD) rate, static limits and FIFO queue do not apply (waiters poll the
    /// store at the wait it announces), and [`Pacer::metrics`] does not count requests paced
    /// through the store. To be safe from the very first request, record the limits up front
    /// with [`PacingStore::learn`]. A store error (a Redis store that fails closed) fails the
    /// request with that error, before anything is sent.
    ///
    /// A store already behind an `Arc` (shared with other stacks) is a store too:
    /// `pacing_store(Arc::clone(&store))`.
    ///
    /// ```
    /// use oai_resilience::pace::{InProcessStore, PaceLayer};
    ///
    /// let layer = PaceLayer::new().pacing_store(InProcessStore::new());
    /// assert!(layer.store().is_some());
    /// assert!(PaceLayer::new().store().is_none());
    /// ```
    pub fn pacing_store(mut self, store: impl PacingStore) -> Self {
        let probe = self.pacer.config().cold_window.is_some();
        self.store = Some(Arc::new(StoreBackend::new(Arc::new(store), probe)));
        self
    }

    /// The store this layer paces through, if [`pacing_store`](Self::pacing_store) set one
    /// (`None`: the in-process [`Pacer`]).
    pub fn store(&self) -> Option<&Arc<dyn PacingStore>> {
        self.store.as_ref().map(|b| &b.store)
    }

    /// Registers `observer`: it sees each attempt that waited for a slot
    /// ([`Observer::pacing_wait`]) and the usage that a [`UsageLayer`](crate::usage::UsageLayer)
    /// below reads from the answers ([`Observer::tokens_used`]).
    /// [`OpenAiLayer::observer`](crate::OpenAiLayer::observer) registers the stack's observer
    /// here too. Attempts paced through a [store](Self::pacing_store) report no waits.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use oai_resilience::observe::{Observer, PacingWait};
    /// use oai_resilience::pace::PaceLayer;
    ///
    /// #[derive(Debug)]
    /// struct Waits;
    /// impl Observer for Waits {
    ///     fn pacing_wait(&self, event: &PacingWait<'_>) {
    ///         println!("waited {:?} for {}", event.waited, event.limit);
    ///     }
    /// }
    /// let layer = PaceLayer::new().observer(Arc::new(Waits));
    /// # let _ = layer;
    /// ```
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The shared pacer: its [`metrics`](Pacer::metrics) (queue length, waits, wait time) and
    /// [`key_state`](Pacer::key_state).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }
}

crate::macros::layer_impl!(PaceLayer => Pace, |l| {
    pacer: l.pacer.clone(),
    keying: l.keying.clone(),
    store: l.store.clone(),
    observer: l.observer.clone(),
});

/// The constructor that needs the layer lives here, so that `service.rs` does not import it.
impl<S> Pace<S> {
    /// Wraps `inner` with a default [`PaceLayer`].
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&PaceLayer::new(), inner)
    }
}
