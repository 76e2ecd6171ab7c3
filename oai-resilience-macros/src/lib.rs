//! Procedural macros of [`oai-resilience`](https://docs.rs/oai-resilience).
//!
//! Use them through the facade crate: `oai_resilience::openai_call`.
