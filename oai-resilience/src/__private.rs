//! Runtime support for the code that `#[openai_call]` generates. Not a public API: the names
//! and signatures here change without notice.

use std::borrow::Cow;
use std::fmt::{self, Debug, Write as _};
use std::future::Future;

pub use std::time::Duration;

use crate::call::CallError;
use crate::error::{CallContext, Error, ErrorKind, RetryContext, StopReason};
use crate::parse::redact_secrets;

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

/// The options of one annotated function, built by the generated code.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) initial_backoff: Option<Duration>,
    pub(crate) max_backoff: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
}

impl Options {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// `max_attempts = n`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// `initial_backoff = ".."`.
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = Some(d);
        self
    }

    /// `max_backoff = ".."`.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = Some(d);
        self
    }

    /// `timeout = ".."`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// Collects the arguments that are not skipped, as `(name, Debug text)`.
#[derive(Debug, Default)]
pub struct Args {
    list: Vec<(String, String)>,
}

/// Whether an argument's name says it holds a secret, so its value is never shown.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with("key")
        || n.ends_with("secret")
        || n.ends_with("password")
        || n.ends_with("credentials")
        || n == "token"
        || n.ends_with("_token")
        || n.ends_with("authorization")
}

/// A `fmt::Write` that keeps the first `max` characters and notes that more came.
struct Truncating {
    out: String,
    chars: usize,
    max: usize,
    cut: bool,
}

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.chars == self.max {
                self.cut = true;
                // Stop formatting: the rest would be thrown away.
                return Err(fmt::Error);
            }
            self.out.push(c);
            self.chars += 1;
        }
        Ok(())
    }
}

impl Args {
    /// Records one argument: its `Debug` text, truncated and redacted.
    pub fn arg<T: Debug + ?Sized>(&mut self, name: &str, value: &T) {
        let text = if is_secret_name(name) {
            "[redacted]".to_owned()
        } else {
            let mut w = Truncating {
                out: String::new(),
                chars: 0,
                // One more than kept, so a cut is seen even if the key-like token ends at it.
                max: MAX_ARG_CHARS,
                cut: false,
            };
            let _ = write!(w, "{value:?}");
            let mut text = redact_secrets(&w.out).into_owned();
            if w.cut {
                text.push('…');
            }
            text
        };
        self.list.push((name.to_owned(), text));
    }
}

/// One call of an annotated function.
#[derive(Debug)]
pub struct Call {
    function: Cow<'static, str>,
    options: Options,
}

impl Call {
    /// A call of `function` with `options`.
    pub fn new(function: impl Into<Cow<'static, str>>, options: Options) -> Self {
        Call {
            function: function.into(),
            options,
        }
    }

    fn context<A: Fn(&mut Args)>(&self, args: &A) -> CallContext {
        let mut sink = Args::default();
        args(&mut sink);
        CallContext {
            function: self.function.clone().into_owned(),
            args: sink.list,
        }
    }

    /// The error for a call that a local check refused before the first attempt.
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
            deadline: self.options.timeout,
            refused_hint: None,
        };
        tracing::debug!(function = %self.function, kind = %err.kind(), "refused before the first attempt");
        E::from_error(err).attach_context(retry, self.context(args))
    }

    /// Runs the attempts under the retry policy and attaches the context to the final error.
    pub async fn run<T, E, A, F, Fut>(self, args: &A, mut attempt: F) -> Result<T, E>
    where
        E: CallError,
        A: Fn(&mut Args),
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // TODO(retry): drive through `crate::retry` once it lands; one attempt until then.
        let start = tokio::time::Instant::now();
        match attempt(1).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let kind = e.to_error().kind();
                let retry = RetryContext {
                    attempts: 1,
                    elapsed: start.elapsed(),
                    stop: StopReason::NotRetryable,
                    outcomes: vec![crate::error::AttemptOutcome {
                        attempt: 1,
                        kind,
                        status: e.to_error().status(),
                        delay: None,
                        delay_source: None,
                    }],
                    deadline: self.options.timeout,
                    refused_hint: None,
                };
                let _ = ErrorKind::Timeout;
                Err(e.attach_context(retry, self.context(args)))
            }
        }
    }
}

/// Validates the argument `value` as the JSON body of `method path`, before the first attempt.
///
/// # Errors
///
/// [`ErrorKind::InvalidParameter`] with the violations, or when `value` does not serialize.
pub fn validate<T: serde::Serialize + ?Sized>(
    value: &T,
    method: &str,
    path: &str,
) -> Result<(), Error> {
    let _ = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::InvalidParameter).with_detail(format!(
            "the body of {method} {path} does not serialize: {e}"
        ))
    })?;
    // TODO(validate): call `crate::validate` once it lands.
    Ok(())
}

/// Checks the API key held by an argument or expression, before the first attempt.
///
/// # Errors
///
/// The auth layer's [`ErrorKind::MissingApiKey`] / [`ErrorKind::MalformedApiKey`].
pub fn check_key<K: KeyArg + ?Sized>(key: &K) -> Result<(), Error> {
    match key.key() {
        None => Err(Error::new(ErrorKind::MissingApiKey)),
        Some(_k) => Ok(()), // TODO(auth): call the auth layer's key check once it lands.
    }
}

/// Checks the API key in the environment variable `var`, before the first attempt.
///
/// # Errors
///
/// As [`check_key`].
pub fn check_key_env(var: &str) -> Result<(), Error> {
    let value = std::env::var(var).ok();
    check_key(&value)
}

/// What `api_key = <expr>` accepts: something that may hold a key.
pub trait KeyArg {
    /// The key, if there is one.
    fn key(&self) -> Option<&str>;
}

impl KeyArg for str {
    fn key(&self) -> Option<&str> {
        Some(self)
    }
}

impl KeyArg for String {
    fn key(&self) -> Option<&str> {
        Some(self)
    }
}

impl<K: KeyArg + ?Sized> KeyArg for &K {
    fn key(&self) -> Option<&str> {
        (**self).key()
    }
}

impl<K: KeyArg> KeyArg for Option<K> {
    fn key(&self) -> Option<&str> {
        self.as_ref().and_then(KeyArg::key)
    }
}

impl KeyArg for secrecy::SecretString {
    fn key(&self) -> Option<&str> {
        Some(secrecy::ExposeSecret::expose_secret(self))
    }
}
