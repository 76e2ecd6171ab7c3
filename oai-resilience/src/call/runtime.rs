//! Runtime support for the code that `#[openai_call]` generates, which names this module, and
//! only this module, as `oai_resilience::__private` (a re-export of it). Not a public API: the
//! names and signatures here change without notice. The public side of the attribute (its
//! docs, [`CallError`]) is the parent module, `call`.

use std::fmt::{self, Debug};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

pub use std::sync::OnceLock;
pub use std::time::Duration;

use tracing::Instrument;

pub use crate::auth::KeyRules;
pub use crate::error::Error;
pub use crate::retry::RetryConfig;

use super::CallError;
use crate::auth::{self, ApiKey, EnvSource, KeySource};
use crate::error::{AuthCause, CallContext, ErrorKind, RetryContext, StopReason};
use crate::redact;
use crate::validate::{self, Endpoint};

/// The longest `Debug` text kept for one argument, in characters.
pub const MAX_ARG_CHARS: usize = 256;

/// `std::any::type_name` of a function item, to learn the annotated function's path.
pub fn type_name_of<T>(_: T) -> &'static str {
    std::any::type_name::<T>()
}

/// Turns the path of the marker item inside the annotated function into the function's path:
/// `my_crate::api::summarize::__oai_fn_marker` becomes `my_crate::api::summarize`.
pub fn function_path(marker: &'static str) -> &'static str {
    let path = marker.strip_suffix("::__oai_fn_marker").unwrap_or(marker);
    let mut path = path;
    while let Some(p) = path.strip_suffix("::{{closure}}") {
        path = p;
    }
    path
}

/// Accepts a `Duration` (or anything that converts into one) for duration options.
pub fn into_duration(d: impl Into<Duration>) -> Duration {
    d.into()
}

/// The base of an annotated function's retry configuration: `retry = <expr>` or the defaults.
pub fn base_config(config: RetryConfig) -> RetryConfig {
    config
}

/// Collects the arguments that are not skipped, as `(name, Debug text)`.
#[derive(Debug, Default)]
pub struct Args {
    list: Vec<(String, String)>,
}

impl Args {
    /// Records one argument: its `Debug` text, truncated and redacted
    /// ([`redact::arg_text`]).
    pub fn arg<T: Debug + ?Sized>(&mut self, name: &str, value: &T) {
        let text = redact::arg_text(name, value, MAX_ARG_CHARS);
        self.list.push((name.to_owned(), text));
    }
}

/// An argument on its way into the context: [`ArgJson`] records a `serde_json::Value` as
/// JSON, [`ArgDebug`] anything else by its `Debug` text. The generated code calls
/// `(&&ArgRef(&arg)).oai_record(sink, name)`: method lookup tries the receiver
/// `&&ArgRef<T>` first, which only `ArgJson` implements (for `T` = `Value` or `&Value`),
/// then `&ArgRef<T>`, which `ArgDebug` implements for every `T: Debug`.
#[derive(Debug)]
pub struct ArgRef<'a, T: ?Sized>(pub &'a T);

/// Records a JSON argument as JSON. See [`ArgRef`].
pub trait ArgJson {
    /// Records the argument.
    fn oai_record(self, sink: &mut Args, name: &str);
}

impl ArgJson for &&ArgRef<'_, serde_json::Value> {
    fn oai_record(self, sink: &mut Args, name: &str) {
        sink.arg(name, &JsonText(self.0));
    }
}

impl ArgJson for &&ArgRef<'_, &serde_json::Value> {
    fn oai_record(self, sink: &mut Args, name: &str) {
        sink.arg(name, &JsonText(self.0));
    }
}

/// Records any other argument by its `Debug` text. See [`ArgRef`].
pub trait ArgDebug {
    /// Records the argument.
    fn oai_record(self, sink: &mut Args, name: &str);
}

impl<T: Debug + ?Sized> ArgDebug for &ArgRef<'_, T> {
    fn oai_record(self, sink: &mut Args, name: &str) {
        sink.arg(name, self.0);
    }
}

/// A JSON value whose `Debug` text is its compact JSON.
struct JsonText<'a>(&'a serde_json::Value);

impl Debug for JsonText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)
    }
}

/// One call of an annotated function.
#[derive(Debug)]
pub struct Call {
    function: &'static str,
    config: &'static RetryConfig,
    idempotent: bool,
}

impl Call {
    /// A call of `function` under `config` (built once per function, so that the calls of one
    /// function share its retry budget); `idempotent` tells the policy whether a timed-out
    /// attempt may be repeated.
    pub fn new(function: &'static str, config: &'static RetryConfig, idempotent: bool) -> Self {
        Call {
            function,
            config,
            idempotent,
        }
    }

    fn context<A: Fn(&mut Args)>(&self, args: &A) -> CallContext {
        let mut sink = Args::default();
        args(&mut sink);
        CallContext {
            function: self.function.to_owned(),
            args: sink.list,
        }
    }

    /// The error for a call that a local check refused before the first attempt: the body ran
    /// zero times.
    pub fn rejected<E, A>(&self, err: Error, args: &A) -> E
    where
        E: CallError,
        A: Fn(&mut Args),
    {
        let retry = RetryContext {
            attempts: 0,
            elapsed: Duration::ZERO,
            stop: StopReason::NotRetryable,
            outcomes: Vec::new(),
            deadline: self.config.settings().deadline,
            refused_hint: None,
        };
        tracing::info!(
            target: "oai_resilience::call",
            function = self.function,
            kind = %err.kind(),
            "refused before the first attempt"
        );
        crate::observe::reject(self.config.settings().observer.as_deref(), err.kind(), None);
        E::from_error(err)
            .attach_retry_context(retry)
            .attach_call_context(self.context(args))
    }

    /// Runs the attempts through [`retry::call_with`](crate::retry::call_with) (the retry layer's loop,
    /// policy, backoff, budget and deadline) inside an `openai_call` span, and attaches the
    /// call's context to the final error.
    pub async fn run<T, E, A, F, Fut>(self, args: &A, mut attempt: F) -> Result<T, E>
    where
        E: CallError,
        A: Fn(&mut Args),
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let span = tracing::info_span!(
            target: "oai_resilience::call",
            "openai_call",
            function = self.function,
            attempts = tracing::field::Empty,
        );
        // Atomic, not `Cell`: the future must stay `Send` when the body's is.
        let attempts = AtomicU32::new(0);
        let result = crate::retry::call_with(self.config, self.idempotent, |n| {
            attempts.store(n, Ordering::Relaxed);
            tracing::debug!(target: "oai_resilience::call", attempt = n, "attempt");
            attempt(n)
        })
        .instrument(span.clone())
        .await;
        span.record("attempts", attempts.load(Ordering::Relaxed));
        let _entered = span.enter();
        match result {
            Ok(v) => {
                tracing::debug!(target: "oai_resilience::call", attempts = attempts.load(Ordering::Relaxed), "succeeded");
                Ok(v)
            }
            Err(e) => {
                tracing::info!(
                    target: "oai_resilience::call",
                    attempts = attempts.load(Ordering::Relaxed),
                    kind = %e.classification().map_or(ErrorKind::Internal, |e| e.kind()),
                    "failed"
                );
                Err(e.attach_call_context(self.context(args)))
            }
        }
    }
}

/// Validates the argument `value` as the JSON body of `method path` with the validation
/// layer's rules ([`validate::validate_value`]), before the first attempt.
///
/// # Errors
///
/// [`ErrorKind::InvalidParameter`] with every violation, or when `value` does not serialize;
/// [`ErrorKind::Internal`] when the crate has no rules for `method path` (a typo in the
/// attribute must not turn validation off silently).
pub fn validate<T: serde::Serialize + ?Sized>(
    value: &T,
    method: &str,
    path: &str,
) -> Result<(), Error> {
    let endpoint = Endpoint::from_path(path)
        .filter(|e| e.method().as_str() == method)
        .ok_or_else(|| {
            Error::new(ErrorKind::Internal).with_detail(format!(
                "`validate(..)` names {method} {path}, an endpoint without validation rules"
            ))
        })?;
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::InvalidParameter).with_detail(format!(
            "the body of {method} {path} does not serialize to JSON: {e}"
        ))
    })?;
    validate::validate_value(endpoint, &json)
}

/// The rules of `key_rules = <expr>` (a type check with a clear error when `<expr>` is not a
/// [`KeyRules`]).
pub fn key_rules(rules: KeyRules) -> KeyRules {
    rules
}

/// The host a call's key is checked for, from `base_url = <expr>`: the host of that base URL
/// (with or without `/v1`, as [`OpenAiLayer::base_url`](crate::OpenAiLayer::base_url) takes it).
///
/// # Errors
///
/// [`ErrorKind::Internal`] with the [`InvalidBaseUrl`](crate::stack::InvalidBaseUrl) as its
/// source when `base` is not a valid base URL (the stack fails such requests the same way).
pub fn key_host<T: BaseArg + ?Sized>(base: &T) -> Result<Option<String>, Error> {
    crate::stack::host_of_base(&base.base_text())
        .map(Some)
        .map_err(|e| {
            Error::new(ErrorKind::Internal)
                .with_detail(e.to_string())
                .with_source(e)
        })
}

/// The host a call's key is checked for without `base_url = ..`: the host of
/// `OPENAI_BASE_URL` when it is set and valid (the base [`OpenAiLayer::new`](crate::OpenAiLayer::new)
/// reads), else none, which the key rules treat as OpenAI's API.
pub fn key_host_env() -> Result<Option<String>, Error> {
    let value = std::env::var_os("OPENAI_BASE_URL").map(|v| v.to_string_lossy().into_owned());
    Ok(value
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| crate::stack::host_of_base(&v).ok()))
}

/// What `base_url = <expr>` accepts: a `&str`, `String`, `http::Uri`, or a reference to one.
pub trait BaseArg {
    /// The base URL as text.
    fn base_text(&self) -> std::borrow::Cow<'_, str>;
}

impl BaseArg for str {
    fn base_text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl BaseArg for String {
    fn base_text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl BaseArg for http::Uri {
    fn base_text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(self.to_string())
    }
}

impl<T: BaseArg + ?Sized> BaseArg for &T {
    fn base_text(&self) -> std::borrow::Cow<'_, str> {
        (**self).base_text()
    }
}

/// Checks the API key held by an argument or expression, before the first attempt, with the
/// function the auth layer decides with ([`auth::check_key_for_host`] with `rules`:
/// [`KeyRules::openai`] unless `key_rules = ..` says otherwise), for the target `host` (see
/// [`key_host`] and [`key_host_env`]). So a key the macro accepts for a target is a key
/// [`OpenAiLayer`](crate::OpenAiLayer) accepts for it, and the other way round.
///
/// # Errors
///
/// The auth layer's [`ErrorKind::MissingApiKey`] / [`ErrorKind::MalformedApiKey`]; the error
/// of `host`.
pub async fn check_key<K: KeyArg + ?Sized>(
    key: &K,
    rules: &KeyRules,
    host: Result<Option<String>, Error>,
) -> Result<(), Error> {
    let host = host?;
    let host = host.as_deref();
    match key.key() {
        KeyRef::Missing => Err(Error::new(ErrorKind::MissingApiKey)
            .with_auth_cause(AuthCause::MissingKey)
            .with_detail("the `api_key` of this call holds no key")),
        KeyRef::Key(k) => auth::check_key_for_host(k, rules, host),
        KeyRef::Source(source) => {
            let creds = source.resolve().await?;
            auth::check_key_for_host(creds.key().expose_secret(), rules, host)
        }
    }
}

/// Checks the API key in the environment variable `var`, before the first attempt, for the
/// target `host`.
///
/// # Errors
///
/// As [`check_key`].
pub async fn check_key_env(
    var: &'static str,
    rules: &KeyRules,
    host: Result<Option<String>, Error>,
) -> Result<(), Error> {
    let source = KeySource::from(EnvSource::new().key_var(var));
    check_key(&source, rules, host).await
}

/// A key, or where to get one.
#[derive(Debug)]
pub enum KeyRef<'a> {
    /// No key.
    Missing,
    /// The key.
    Key(&'a str),
    /// A source to resolve.
    Source(&'a KeySource),
}

/// What `api_key = <expr>` accepts: a `&str`, `String`, [`ApiKey`], `SecretString`,
/// [`KeySource`], or an `Option` of one.
pub trait KeyArg {
    /// The key, or where to get it.
    fn key(&self) -> KeyRef<'_>;
}

impl KeyArg for str {
    fn key(&self) -> KeyRef<'_> {
        KeyRef::Key(self)
    }
}

impl KeyArg for String {
    fn key(&self) -> KeyRef<'_> {
        KeyRef::Key(self)
    }
}

impl KeyArg for ApiKey {
    fn key(&self) -> KeyRef<'_> {
        KeyRef::Key(self.expose_secret())
    }
}

impl KeyArg for secrecy::SecretString {
    fn key(&self) -> KeyRef<'_> {
        KeyRef::Key(secrecy::ExposeSecret::expose_secret(self))
    }
}

impl KeyArg for KeySource {
    fn key(&self) -> KeyRef<'_> {
        KeyRef::Source(self)
    }
}

impl<K: KeyArg + ?Sized> KeyArg for &K {
    fn key(&self) -> KeyRef<'_> {
        (**self).key()
    }
}

impl<K: KeyArg> KeyArg for Option<K> {
    fn key(&self) -> KeyRef<'_> {
        self.as_ref().map_or(KeyRef::Missing, KeyArg::key)
    }
}
