//! The stack under the clients Rust code already uses: reqwest with reqwest-middleware
//! (feature `reqwest`) and async-openai (feature `async-openai`).
//!
//! Both run each request through the layers of an [`OpenAiLayer`](crate::OpenAiLayer) —
//! validation, auth checks, the retry layer's loop, pacing, classification — and send each
//! attempt with reqwest. A layer's clones share their state, so an adapter built from a
//! clone of a layer shares its pacer and retry budget with every tower stack and every other
//! adapter built from that layer.
//!
//! | client | feature | entry point | a failure the stack gives up on |
//! |---|---|---|---|
//! | reqwest-middleware 0.5 (reqwest 0.13) | `reqwest` | [`reqwest::OpenAiMiddleware`] | `reqwest_middleware::Error::Middleware` carrying the [`Error`](crate::Error), or OpenAI's error response ([`reqwest::ErrorMode`]) |
//! | async-openai 0.43 | `async-openai` | [`async_openai::AsyncOpenAiService`] | OpenAI's error response, so `OpenAIError::ApiError` with OpenAI's `code` |
//!
//! Request bodies: a body reqwest holds as bytes (JSON bodies, strings, `Vec<u8>`) is taken
//! without a copy and replayed by the retry layer; a streamed body is sent once, and if a
//! retry would have been needed the call fails with
//! [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable). async-openai's requests
//! are replayed through their `HttpRequestFactory`, so its multipart uploads are retried.
//! Response bodies are not buffered: a 200 event stream streams (error bodies are read, to
//! classify them).

mod body;

#[cfg(feature = "async-openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-openai")))]
pub mod async_openai;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
