//! `oai-gateway`: an OpenAI-compatible proxy that puts the `oai-resilience` stack (local
//! checks, retries with jitter, pacing at the rate limit, typed errors) in front of any OpenAI
//! client, in any language: point the client's `base_url` at the gateway.
//!
//! The binary is `src/main.rs`; this library holds everything it runs, so that tests can start
//! gateways in-process. It uses only `oai-resilience`'s public API.
//!
//! - [`config`]: the flags and environment variables, checked before anything starts;
//! - [`gateway`]: the proxy service, [`Gateway`];
//! - [`upstream`]: the HTTP client to the upstream (rustls, HTTP/1.1 and HTTP/2) and the stack
//!   over it;
//! - [`server`]: the listener, the connection limits and the graceful drain;
//! - [`metrics`]: the counters behind `GET /metrics`;
//! - [`logging`]: text or JSON log lines.
//!
//! See `oai-gateway/README.md` for how to run it and the security model.

pub mod config;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use gateway::Gateway;
