//! Procedural macros of [`oai-resilience`](https://docs.rs/oai-resilience).
//!
//! Use them through the facade crate: `oai_resilience::openai_call`, whose documentation
//! describes the options.

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
/// The options, the argument rules and the error types are described in the `call` module of
/// `oai-resilience` (`oai_resilience::call`).
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
