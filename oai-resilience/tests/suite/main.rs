//! The integration tests that need no process of their own, in one test binary (`suite`):
//! one copy of the tokio, hyper and tower generics to compile and one executable to link,
//! instead of one per file. Each file is a module, so a test's path starts with its file's
//! name (`cargo test -p oai-resilience --test suite classify_e2e::`).
//!
//! The tests here are end-to-end runs against the mock server and Redis (`classify_e2e`,
//! `retry_e2e`, `pace_e2e`, `stack_e2e`, `redis_*`, the adapters, …) and the layers over
//! `service_fn` fakes (`pace_*`, `retry_*`, `validate_*`, `usage`, `watchdog`, `observe`,
//! which records into a thread-local `metrics` recorder). Each test builds its own runtime,
//! servers and layers; none sets process-wide state (a global subscriber or recorder,
//! environment variables).
//!
//! The other files in `tests/` are binaries of their own because their tests need the whole
//! process:
//! - `auth_leak`, `pace_events`, `retry_events`, `secrets_everything`, `spans` and
//!   `validate_events` install a global tracing subscriber to capture what the stack logs;
//! - `base_url_env` sets environment variables;
//! - `load_stack` bounds the growth of the process's resident set, which other tests running
//!   beside it would grow.
//!
//! `breaker`, `breaker_stack` and `fallback` need nothing of the process either: they can be
//! modules here too.
//!
//! The helpers shared with those binaries stay in `tests/` and are included here once.

#[cfg(feature = "mock")]
#[path = "../auth_common/mod.rs"]
mod auth_common;
#[path = "../support/retry_fixtures.rs"]
mod retry_fixtures;
#[cfg(feature = "mock")]
#[path = "../scripted/mod.rs"]
mod scripted;
#[cfg(feature = "redis")]
#[path = "../support/mod.rs"]
mod support;

mod adapter_async_openai;
mod adapter_reqwest;
mod auth_local;
mod auth_server;
mod base_url;
mod cancel_stack;
mod classify_e2e;
mod hostile_server;
mod mock_server;
mod observe;
mod pace_e2e;
mod pace_lanes;
mod pace_layer;
mod pace_pacer;
mod pace_shapes;
mod pace_stack_e2e;
mod redis_budget;
mod redis_openai_layer;
mod redis_stack;
mod redis_store;
mod retry_call;
mod retry_e2e;
mod retry_schedule;
mod retry_service;
mod stack_e2e;
mod usage;
mod validate_corpus;
mod validate_layer;
mod validate_mock;
mod validate_tables;
mod watchdog;
