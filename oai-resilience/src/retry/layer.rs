//! [`RetryLayer`]: the layer that builds [`Retry`] services.

use std::sync::Arc;

use tower_layer::Layer;

use super::config::RetryConfig;
use super::service::Retry;
use crate::observe::Observer;

/// Builds [`Retry`] services from a [`RetryConfig`]. See the [`retry` module
/// docs](crate::retry).
///
/// Every service this layer builds (and every clone of those) shares the config's budget and
/// random source.
#[derive(Debug, Clone, Default)]
pub struct RetryLayer {
    config: RetryConfig,
}

impl RetryLayer {
    /// A layer with the default [`RetryConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer with `config`.
    pub fn with_config(config: RetryConfig) -> Self {
        RetryLayer { config }
    }

    /// Registers `observer` on the config ([`RetryConfig::observer`]): it sees every attempt,
    /// retry and stop. See [`crate::observe`].
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.config = self.config.observer(observer);
        self
    }

    /// The config.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }
}

impl From<RetryConfig> for RetryLayer {
    fn from(config: RetryConfig) -> Self {
        RetryLayer::with_config(config)
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::with_config(inner, self.config.clone())
    }
}
