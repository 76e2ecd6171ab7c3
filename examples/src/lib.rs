//! Runnable examples and the demo of `oai-resilience`; see the binaries in `src/bin`.
