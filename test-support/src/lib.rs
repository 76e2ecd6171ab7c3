//! What the workspace's test binaries share (a dev-dependency; not published):
//!
//! - [`KEY`], [`CHAT`], [`CHAT_5_TOKENS`]: the test key and the chat bodies that many tests
//!   send (a file that wants a key of its own, to tell its requests apart, keeps its own);
//! - [`http_client`]: the plain hyper-util client under the stacks;
//! - [`redis_server`]: a throwaway `redis-server` on a free loopback port (also the
//!   loadtest's `--store redis`);
//! - [`capture`]: a `tracing` writer that keeps the events, for the tests that check them.
//!
//! It does not depend on `oai-resilience`, so that crate's own tests can use it.

pub mod capture;
pub mod redis_server;

use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// A well-formed project key, accepted by the tests' mock servers.
pub const KEY: &str = "sk-proj-Zq3xV9mN2pL8rT5wY1kB7cD4fG6hJ0aS";

/// The smallest valid chat-completions body.
pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#;

/// A chat-completions body that asks for at most 5 tokens.
pub const CHAT_5_TOKENS: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}"#;

/// A hyper-util client over plain HTTP on the tokio runtime, for bodies of type `B`.
pub fn http_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}
