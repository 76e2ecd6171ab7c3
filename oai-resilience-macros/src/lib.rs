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

/// Runs an `async fn` that makes one OpenAI call under the crate's retry policy, and gives its
/// errors structured context. See `oai_resilience::openai_call` for the options.
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
