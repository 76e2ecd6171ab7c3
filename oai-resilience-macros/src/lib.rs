//! Procedural macros of [`oai-resilience`](https://docs.rs/oai-resilience).
//!
//! Use them through the facade crate: `oai_resilience::openai_call`. The options are
//! documented on [`openai_call`], each with an example.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attr;
mod duration;
mod expand;

use proc_macro::TokenStream;
use quote::quote;

/// Runs an `async fn` whose body is one attempt of an OpenAI call under the retry layer's
/// policy, backoff, budget and deadline, and gives the error that leaves it structured context
/// (function path, attempts, elapsed time, each attempt's outcome, the last request id, the
/// arguments that are not skipped, redacted).
///
/// What the attribute does, the argument rules, the mapping of errors inside the body and the
/// error types are described in the `oai_resilience::call` module. The options are below.
///
/// ```
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(max_attempts = 2, timeout = "30s", skip(api_key), name = "demo::ask")]
/// async fn ask(api_key: &str, question: &str) -> Result<String, Error> {
///     let _ = (api_key, question);
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let err = ask("sk-…", "why?").await.unwrap_err();
/// assert_eq!(err.attempts(), 2);
/// let call = err.call_context().unwrap();
/// assert_eq!(call.function, "demo::ask");
/// assert_eq!(call.args, vec![("question".to_owned(), "\"why?\"".to_owned())]);
/// # }
/// ```
///
/// # Options
///
/// `#[openai_call(option, option, …)]`, each at most once, in any order. Durations are
/// literals checked at compile time (`h`, `m`, `s`, `ms`, `us`, `ns`, fractions, combined as
/// in `"1m30s"`) or any `std::time::Duration` expression. The retry configuration is built
/// **once per function**, at its first call, and kept in a static: the calls of one function
/// share its retry budget, and the option expressions (but `api_key` and `base_url`) cannot
/// use the arguments.
///
/// ## `retry = <expr>`
///
/// The base `RetryConfig` (default `RetryConfig::new()`); the options below change it.
///
/// ```
/// use oai_resilience::retry::RetryConfig;
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(retry = RetryConfig::new().max_attempts(2).no_budget())]
/// async fn call() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// assert_eq!(call().await.unwrap_err().attempts(), 2);
/// # }
/// ```
///
/// ## `policy = <expr>`
///
/// A `Policy` that replaces the default `OpenAiPolicy` (which retries rate limits, server
/// errors and connection failures, and obeys `x-should-retry`).
///
/// ```
/// use oai_resilience::retry::OpenAiPolicy;
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// // Server errors are not retried for this call.
/// #[openai_call(policy = OpenAiPolicy::new().never_retry_if(|e| e.kind() == ErrorKind::ServerError))]
/// async fn call() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// assert_eq!(call().await.unwrap_err().attempts(), 1);
/// # }
/// ```
///
/// ## `max_attempts = <u32>`
///
/// The maximum number of attempts, counting the first (default 5).
///
/// ```
/// use oai_resilience::{openai_call, Error, ErrorKind, StopReason};
///
/// #[openai_call(max_attempts = 3)]
/// async fn call() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let err = call().await.unwrap_err();
/// assert_eq!(err.attempts(), 3);
/// assert_eq!(err.retry_context().unwrap().stop, StopReason::MaxAttempts);
/// # }
/// ```
///
/// ## `base_delay = "500ms"`, `max_delay = "20s"`
///
/// The backoff's base delay (doubled per retry, with jitter) and its cap.
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(max_attempts = 4, base_delay = "2s", max_delay = "3s")]
/// async fn call() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let err = call().await.unwrap_err();
/// let outcomes = &err.retry_context().unwrap().outcomes;
/// // Three delays, each at most the cap.
/// assert!(outcomes.iter().filter_map(|o| o.delay).all(|d| d <= Duration::from_secs(3)));
/// # }
/// ```
///
/// ## `timeout = "60s"`
///
/// The overall deadline, attempts and delays included; an attempt in flight is cut
/// (default 10 min).
///
/// ```
/// use std::time::Duration;
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(timeout = "1s")]
/// async fn slow() -> Result<(), Error> {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let err = slow().await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// assert_eq!(err.retry_context().unwrap().deadline, Some(Duration::from_secs(1)));
/// # }
/// ```
///
/// ## `idempotent`
///
/// The call is safe to repeat after a local timeout (like a GET), so the policy may retry
/// timeouts; by default a call is treated like a POST, whose timeout is not retried (the
/// server may have processed it).
///
/// ```
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(max_attempts = 3, idempotent)]
/// async fn list_models() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::Timeout))
/// }
///
/// #[openai_call(max_attempts = 3)]
/// async fn create() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::Timeout))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// assert_eq!(list_models().await.unwrap_err().attempts(), 3);
/// assert_eq!(create().await.unwrap_err().attempts(), 1);
/// # }
/// ```
///
/// ## `skip(a, b)`, `skip_all`
///
/// Arguments left out of the error's `CallContext` (`skip_all`: every argument). The others
/// are recorded by their `Debug` text (a `serde_json::Value` as JSON), cut at 256 characters,
/// with anything that looks like an API key redacted; an argument named like a secret (ending
/// in `key`, `secret`, `password`, `token` or `credentials`) is always `[redacted]`.
///
/// ```
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(max_attempts = 1, skip(prompt))]
/// async fn ask(model: &str, prompt: &str) -> Result<(), Error> {
///     let _ = (model, prompt);
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// #[openai_call(max_attempts = 1, skip_all)]
/// async fn quiet(model: &str) -> Result<(), Error> {
///     let _ = model;
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let err = ask("gpt-4o-mini", "a long private text").await.unwrap_err();
/// let args = &err.call_context().unwrap().args;
/// assert_eq!(args, &vec![("model".to_owned(), "\"gpt-4o-mini\"".to_owned())]);
/// let err = quiet("gpt-4o-mini").await.unwrap_err();
/// assert!(err.call_context().unwrap().args.is_empty());
/// # }
/// ```
///
/// ## `name = "…"`
///
/// The name reported in the context and the span instead of the function's path.
///
/// ```
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(max_attempts = 1, name = "billing::summarize")]
/// async fn summarize() -> Result<(), Error> {
///     Err(Error::new(ErrorKind::ServerError))
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let err = summarize().await.unwrap_err();
/// assert_eq!(err.call_context().unwrap().function, "billing::summarize");
/// # }
/// ```
///
/// ## `validate(arg = "POST /v1/chat/completions")`
///
/// Validates the `Serialize` argument `arg` as that endpoint's request body, with the
/// validation layer's rules, before the first attempt: an invalid body fails with
/// `ErrorKind::InvalidParameter` and the body of the function never runs.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(validate(body = "POST /v1/chat/completions"))]
/// async fn chat(sent: &AtomicU32, body: &serde_json::Value) -> Result<(), Error> {
///     let _ = body;
///     sent.fetch_add(1, Ordering::SeqCst);
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let sent = AtomicU32::new(0);
/// let body = serde_json::json!({ "model": "gpt-4o-mini" }); // no `messages`
/// let err = chat(&sent, &body).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidParameter);
/// assert_eq!(err.param(), Some("messages"));
/// assert_eq!(sent.load(Ordering::SeqCst), 0);
/// # }
/// ```
///
/// ## `api_key = <expr>`, `api_key = "ENV_VAR"`
///
/// Checks the API key before the first attempt, as the auth layer does: the key held by
/// `<expr>` (a `&str`, `String`, `ApiKey`, `SecretString`, `KeySource`, or an `Option` of
/// one, `None` being a missing key; it may use the arguments), or the key in the environment
/// variable named by a string literal. A missing or malformed key fails with
/// `ErrorKind::MissingApiKey` or `ErrorKind::MalformedApiKey` and the body never runs.
///
/// ```
/// use oai_resilience::{openai_call, Error, ErrorKind};
///
/// #[openai_call(api_key = key)]
/// async fn with_key(key: &str) -> Result<(), Error> {
///     let _ = key;
///     Ok(())
/// }
///
/// #[openai_call(api_key = "OAI_RESILIENCE_DOC_UNSET_KEY")]
/// async fn from_env() -> Result<(), Error> {
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // A key pasted with its line break.
/// let err = with_key("sk-proj-Zq3xV9mN2pL8rT5wY1kB7cD4fG6hJ0aS\n").await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::MalformedApiKey);
/// assert_eq!(err.attempts(), 0);
/// assert_eq!(from_env().await.unwrap_err().kind(), ErrorKind::MissingApiKey);
/// # }
/// ```
///
/// ## `key_rules = <expr>`
///
/// The `KeyRules` that `api_key` is checked with (default `KeyRules::openai()`;
/// `KeyRules::lenient()` for compatible services with other key shapes). Needs `api_key`.
///
/// ```
/// use oai_resilience::auth::KeyRules;
/// use oai_resilience::{openai_call, Error};
///
/// // An Azure-style key: 32 hexadecimal characters, no `sk-` prefix.
/// #[openai_call(api_key = key, key_rules = KeyRules::lenient())]
/// async fn azure(key: &str) -> Result<(), Error> {
///     let _ = key;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// azure("0123456789abcdef0123456789abcdef").await.unwrap();
/// # }
/// ```
///
/// ## `base_url = <expr>`
///
/// The base URL the body sends to (a `&str`, `String` or `http::Uri`, with or without
/// `/v1`; it may use the arguments): `api_key` is checked for its host, as the auth layer
/// checks it, so the attribute and `OpenAiLayer` accept the same keys for the same target
/// (default: the host of `OPENAI_BASE_URL` if set, else OpenAI's). OpenAI's key shape rules
/// apply to OpenAI's hosts only. Needs `api_key`.
///
/// ```
/// use oai_resilience::{openai_call, Error};
///
/// // A local OpenAI-compatible server, with a short test key.
/// #[openai_call(api_key = key, base_url = "http://127.0.0.1:8000/v1")]
/// async fn local(key: &str) -> Result<(), Error> {
///     let _ = key;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// local("sk-test-123").await.unwrap();
/// # }
/// ```
///
/// ## `crate = "path"`
///
/// The path of `oai-resilience`, for a dependency renamed in `Cargo.toml` or re-exported by
/// another crate.
///
/// ```
/// use oai_resilience as oai;
///
/// #[oai::openai_call(max_attempts = 1, crate = "oai")]
/// async fn call() -> Result<(), oai::Error> {
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// call().await.unwrap();
/// # }
/// ```
#[proc_macro_attribute]
pub fn openai_call(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2 = proc_macro2::TokenStream::from(item.clone());
    let func: syn::ItemFn = match syn::parse(item) {
        Ok(f) => f,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[openai_call]` applies to an `async fn` (a free function or a method)",
            )
            .to_compile_error();
            return quote!(#item2 #err).into();
        }
    };
    let opts = match syn::parse::<attr::Options>(args) {
        Ok(o) => o,
        Err(e) => return with_error(&func, e),
    };
    if let Err(e) = expand::check(&func, &opts) {
        return with_error(&func, e);
    }
    expand::expand(func, opts).into()
}

/// On an attribute error, emits the function unchanged plus the error, so the rest of the
/// user's crate still type-checks (and IDEs keep working).
fn with_error(func: &syn::ItemFn, err: syn::Error) -> TokenStream {
    let err = err.to_compile_error();
    quote!(#func #err).into()
}
