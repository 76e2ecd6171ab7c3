//! [`PaceLayer`]: the pacer's configuration and the request-to-key mapping.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Uri};
use tower_layer::Layer;

use super::cost::CostEstimator;
use super::key::PaceKey;
use super::pacer::{Pacer, PacerConfig};
use super::service::Pace;

/// A function from a request's URI, headers and body bytes (if readable) to its [`PaceKey`].
pub type KeyFn = Arc<dyn Fn(&Uri, &HeaderMap, Option<&[u8]>) -> PaceKey + Send + Sync>;

/// Builds [`Pace`] services that share one [`Pacer`]. See the [module docs](super).
///
/// Clones share the pacer, so every clone of a stack paces against the same limits.
#[derive(Clone)]
pub struct PaceLayer {
    pub(crate) pacer: Pacer,
    pub(crate) keying: Arc<Keying>,
}

pub(crate) struct Keying {
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) per_model: bool,
    pub(crate) estimator: CostEstimator,
}

impl fmt::Debug for PaceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaceLayer")
            .field("pacer", &self.pacer)
            .field("custom_key", &self.keying.key_fn.is_some())
            .field("per_model", &self.keying.per_model)
            .field("estimator", &self.keying.estimator)
            .finish()
    }
}

impl Default for PaceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PaceLayer {
    /// A layer with the default [`PacerConfig`]: learn from headers, probe a cold key with one
    /// request, wait at most 60 s, key by base URL + credential hash + model.
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

    /// The shared pacer: its [`metrics`](Pacer::metrics) (queue length, waits, wait time) and
    /// [`key_state`](Pacer::key_state).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }
}

impl<S> Layer<S> for PaceLayer {
    type Service = Pace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pace {
            inner,
            pacer: self.pacer.clone(),
            keying: self.keying.clone(),
        }
    }
}
