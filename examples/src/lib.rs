//! Runnable examples and the demo of `oai-resilience`, as a library so that tests can run
//! them: each binary (`examples/<name>.rs`) is a thin `main` over a module here.
//!
//! - [`stack`]: the default stack assembled from the layers;
//! - [`hyper_client`]: the stack over a hyper-util client, by hand and with the builder
//!   (`--bin hyper_client`);
//! - [`demo`]: the demo's workload and report (`--bin demo`).

pub mod demo;
pub mod hyper_client;
pub mod stack;
