//! The expansion of `#[openai_call]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::attr::{DurationOpt, KeySource, Options};

/// The arguments that are plain identifiers, in order, with whether they are the receiver.
fn arg_idents(item: &ItemFn) -> Vec<Ident> {
    item.sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Receiver(r) => Some(Ident::new("self", r.self_token.span)),
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.subpat.is_none() => Some(pi.ident.clone()),
                _ => None,
            },
        })
        .collect()
}

/// Checks the function's shape and the options against it. Every error points at the
/// offending token.
pub(crate) fn check(item: &ItemFn, opts: &Options) -> syn::Result<()> {
    let sig = &item.sig;
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    if sig.asyncness.is_none() {
        push(syn::Error::new(
            sig.fn_token.span,
            "`#[openai_call]` applies to `async fn` only: the body is one attempt that is awaited and retried",
        ));
    }
    if let Some(c) = &sig.constness {
        push(syn::Error::new(
            c.span,
            "`#[openai_call]` cannot apply to a `const fn`",
        ));
    }
    if let Some(v) = &sig.variadic {
        push(syn::Error::new(
            v.span(),
            "`#[openai_call]` cannot apply to a variadic function",
        ));
    }
    for arg in &sig.inputs {
        if let FnArg::Receiver(r) = arg {
            if r.reference.is_some() && r.mutability.is_some() {
                push(syn::Error::new_spanned(
                    r,
                    "`#[openai_call]` does not support `&mut self`: each attempt borrows the arguments and \
                     a `&mut` borrow cannot be shared between attempts; take `&self` (use interior mutability)",
                ));
            }
        }
    }
    match &sig.output {
        ReturnType::Default => push(syn::Error::new(
            sig.paren_token.span.close(),
            "`#[openai_call]` needs a function that returns `Result<T, E>`, where `E` is \
             `oai_resilience::Error` or implements `oai_resilience::call::CallError`",
        )),
        ReturnType::Type(_, ty) => {
            if !is_result(ty) {
                push(syn::Error::new_spanned(
                    ty,
                    "`#[openai_call]` needs a function that returns `Result<T, E>`, where `E` is \
                     `oai_resilience::Error` or implements `oai_resilience::call::CallError`",
                ));
            }
        }
    }
    let names = arg_idents(item);
    for s in &opts.skip {
        if !names.iter().any(|n| n == s) {
            push(syn::Error::new(
                s.span(),
                format!("`skip({s})` names no argument of `{}`", sig.ident),
            ));
        }
    }
    for v in &opts.validate {
        if !names.contains(&v.arg) {
            push(syn::Error::new(
                v.arg.span(),
                format!(
                    "`validate({} = ..)` names no argument of `{}`",
                    v.arg, sig.ident
                ),
            ));
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether the type's last path segment is a `Result` (any alias named `…Result`).
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) => tp
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string().ends_with("Result"))
            .unwrap_or(false),
        Type::Paren(p) => is_result(&p.elem),
        Type::Group(g) => is_result(&g.elem),
        _ => false,
    }
}

/// Replaces `impl Trait` with `_`, so the return type can annotate a `let`.
struct ImplToInfer;

impl VisitMut for ImplToInfer {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(it) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](it.impl_token.span),
            });
            return;
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
}

fn duration_tokens(krate: &TokenStream, d: &DurationOpt) -> TokenStream {
    match d {
        DurationOpt::Literal(nanos, span) => {
            quote_spanned!(*span=> #krate::__private::Duration::from_nanos(#nanos))
        }
        DurationOpt::Expr(e) => {
            let span = e.span();
            quote_spanned!(span=> #krate::__private::into_duration(#e))
        }
    }
}

/// Generates the function. `check` has passed.
pub(crate) fn expand(item: ItemFn, opts: Options) -> TokenStream {
    let krate: TokenStream = match &opts.krate {
        Some(p) => p.to_token_stream(),
        None => quote!(::oai_resilience),
    };
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item.clone();

    // The retry configuration, built once per function (in a nested `fn`, so the options
    // cannot capture the arguments) and kept in a static: the calls share its retry budget.
    let base = match &opts.retry {
        Some(e) => {
            let span = e.span();
            quote_spanned!(span=> #krate::__private::base_config(#e))
        }
        None => quote!(#krate::__private::RetryConfig::new()),
    };
    let mut config = base;
    if let Some(p) = &opts.policy {
        let span = p.span();
        config.extend(quote_spanned!(span=> .policy(#p)));
    }
    if let Some(n) = &opts.max_attempts {
        let span = n.span();
        config.extend(quote_spanned!(span=> .max_attempts(#n)));
    }
    if let Some(d) = &opts.base_delay {
        let d = duration_tokens(&krate, d);
        config.extend(quote!(.base_delay(#d)));
    }
    if let Some(d) = &opts.max_delay {
        let d = duration_tokens(&krate, d);
        config.extend(quote!(.max_delay(#d)));
    }
    if let Some(d) = &opts.timeout {
        let d = duration_tokens(&krate, d);
        config.extend(quote!(.deadline(#d)));
    }

    let idempotent = opts.idempotent.is_some();
    let function = match &opts.name {
        Some(lit) => quote!(#lit),
        None => quote!(#krate::__private::function_path(
            #krate::__private::type_name_of(__oai_fn_marker)
        )),
    };

    // The argument capture, run only when an error leaves the function.
    let captured: Vec<TokenStream> = if opts.skip_all.is_some() {
        Vec::new()
    } else {
        arg_idents(&item)
            .into_iter()
            .filter(|id| !opts.skip.iter().any(|s| s == id))
            .map(|id| {
                let name = id.to_string();
                // A `serde_json::Value` is recorded as JSON, anything else by `Debug`.
                quote_spanned!(id.span()=> {
                    #[allow(unused_imports)]
                    use #krate::__private::{ArgDebug as _, ArgJson as _};
                    (&&#krate::__private::ArgRef(&#id)).oai_record(__oai_sink, #name);
                })
            })
            .collect()
    };

    // Checks that run once, before the first attempt.
    let mut pre: Vec<TokenStream> = Vec::new();
    for v in &opts.validate {
        let arg = &v.arg;
        let (method, path) = (&v.method, &v.path);
        pre.push(quote_spanned!(v.span=>
            #krate::__private::validate(&#arg, #method, #path)
        ));
    }
    let rules = match &opts.key_rules {
        Some(r) => quote_spanned!(r.span()=> #krate::__private::key_rules(#r)),
        None => quote!(#krate::__private::key_rules(#krate::__private::KeyRules::openai())),
    };
    // The key is checked for the host the call targets, as the auth layer checks it.
    let host = match &opts.base_url {
        Some(b) => quote_spanned!(b.span()=> #krate::__private::key_host(&#b)),
        None => quote!(#krate::__private::key_host_env()),
    };
    match &opts.api_key {
        Some(KeySource::Env(lit)) => pre.push(quote_spanned!(lit.span()=>
            #krate::__private::check_key_env(#lit, &#rules, #host).await
        )),
        Some(KeySource::Expr(e)) => {
            let span = e.span();
            pre.push(quote_spanned!(span=>
                #krate::__private::check_key(&#e, &#rules, #host).await
            ));
        }
        None => {}
    }
    let pre_checks = if pre.is_empty() {
        quote!()
    } else {
        quote! {
            let mut __oai_pre: ::core::result::Result<(), #krate::__private::Error> =
                ::core::result::Result::Ok(());
            #(
                if __oai_pre.is_ok() {
                    __oai_pre = #pre;
                }
            )*
            if let ::core::result::Result::Err(__oai_err) = __oai_pre {
                return ::core::result::Result::Err(
                    #krate::__private::Call::rejected(&__oai_call, __oai_err, &__oai_args),
                );
            }
        }
    };

    // tracing's early-return trick: the annotated `return` fixes the attempt block's output
    // type before the body is checked, so `?` and type errors point at the user's code.
    let fake_return = match &sig.output {
        ReturnType::Type(_, ty) => {
            let mut ty = (**ty).clone();
            ImplToInfer.visit_type_mut(&mut ty);
            quote! {
                #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
                if false {
                    let __oai_fake_return: #ty = loop {};
                    return __oai_fake_return;
                }
            }
        }
        ReturnType::Default => quote!(),
    };
    let stmts = &block.stmts;
    let body_span = block.brace_token.span.join();
    let attempt = quote_spanned! {body_span=>
        |__oai_attempt: u32| async {
            let _ = __oai_attempt;
            #fake_return
            #(#stmts)*
        }
    };

    quote! {
        #(#attrs)*
        #vis #sig {
            fn __oai_fn_marker() {}
            fn __oai_config() -> #krate::__private::RetryConfig {
                #config
            }
            static __OAI_CONFIG: #krate::__private::OnceLock<#krate::__private::RetryConfig> =
                #krate::__private::OnceLock::new();
            let __oai_call = #krate::__private::Call::new(
                #function,
                __OAI_CONFIG.get_or_init(__oai_config),
                #idempotent,
            );
            let __oai_args = |__oai_sink: &mut #krate::__private::Args| {
                let _ = &__oai_sink;
                #(#captured)*
            };
            #pre_checks
            #krate::__private::Call::run(__oai_call, &__oai_args, #attempt).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(attr: &str, item: &str) -> String {
        let opts: Options = syn::parse_str(attr).unwrap();
        let item: ItemFn = syn::parse_str(item).unwrap();
        check(&item, &opts).unwrap();
        expand(item, opts).to_string()
    }

    #[test]
    fn crate_override_replaces_every_path() {
        let out = expand_str(
            r#"crate = "oai", api_key = "K", validate(body = "POST /v1/embeddings")"#,
            "async fn f(body: &B) -> Result<(), E> { Ok(()) }",
        );
        assert!(out.contains("oai :: __private :: Call :: run"), "{out}");
        assert!(out.contains("oai :: __private :: validate"), "{out}");
        assert!(out.contains("oai :: __private :: check_key_env"), "{out}");
        assert!(!out.contains("oai_resilience"), "{out}");
        let default = expand_str("", "async fn f() -> Result<(), E> { Ok(()) }");
        assert!(default.contains(":: oai_resilience :: __private :: Call :: run"));
    }

    #[test]
    fn skipped_and_pattern_arguments_are_not_captured() {
        let out = expand_str(
            "skip(key)",
            "async fn f(key: &str, text: &str, (a, b): (u8, u8)) -> Result<(), E> { Ok(()) }",
        );
        assert!(
            out.contains("ArgRef (& text)) . oai_record (__oai_sink , \"text\")"),
            "{out}"
        );
        assert!(!out.contains("\"key\""), "{out}");
        assert!(!out.contains("\"a\""), "{out}");
    }

    #[test]
    fn impl_trait_in_the_return_type_becomes_inferred() {
        let out = expand_str("", "async fn f() -> Result<impl Debug, E> { Ok(1) }");
        assert!(
            out.contains("let __oai_fake_return : Result < _ , E >"),
            "{out}"
        );
    }

    #[test]
    fn shape_errors_are_all_reported() {
        let opts: Options = syn::parse_str("skip(nope)").unwrap();
        let item: ItemFn = syn::parse_str("fn f(&mut self) -> u8 { 1 }").unwrap();
        let err = check(&item, &opts).unwrap_err();
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("`async fn` only"));
        assert!(messages[1].contains("`&mut self`"));
        assert!(messages[2].contains("returns `Result<T, E>`"));
        assert!(messages[3].contains("`skip(nope)` names no argument"));
    }
}
