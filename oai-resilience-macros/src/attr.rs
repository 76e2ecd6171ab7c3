//! Parsing of the `#[openai_call(...)]` options.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Token};

use crate::duration::parse_duration_nanos;

mod kw {
    syn::custom_keyword!(retry);
    syn::custom_keyword!(policy);
    syn::custom_keyword!(max_attempts);
    syn::custom_keyword!(base_delay);
    syn::custom_keyword!(max_delay);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(idempotent);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(skip_all);
    syn::custom_keyword!(name);
    syn::custom_keyword!(validate);
    syn::custom_keyword!(api_key);
    syn::custom_keyword!(key_rules);
    syn::custom_keyword!(base_url);
}

/// The option names, in the order the "expected one of" messages list them.
pub(crate) const ACCEPTED: &str = "`retry`, `policy`, `max_attempts`, `base_delay`, `max_delay`, \
`timeout`, `idempotent`, `skip(..)`, `skip_all`, `name`, `validate(..)`, `api_key`, `key_rules`, \
`base_url`, `crate`";

/// A duration option: a literal checked at compile time, or any `Duration` expression.
#[derive(Debug)]
pub(crate) enum DurationOpt {
    /// `"60s"`, in nanoseconds, with the literal's span.
    Literal(u64, Span),
    /// An expression of type `std::time::Duration`.
    Expr(Box<Expr>),
}

/// `validate(<arg> = "<METHOD> <path>")`.
#[derive(Debug)]
pub(crate) struct Validate {
    pub(crate) arg: Ident,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) span: Span,
}

/// Where the API key to check comes from.
#[derive(Debug)]
pub(crate) enum KeySource {
    /// `api_key = "ENV_VAR"`: an environment variable, read before the first attempt.
    Env(LitStr),
    /// `api_key = <expr>`: an expression (usually an argument) holding the key.
    Expr(Box<Expr>),
}

/// The parsed options.
#[derive(Debug, Default)]
pub(crate) struct Options {
    pub(crate) retry: Option<Expr>,
    pub(crate) policy: Option<Expr>,
    pub(crate) max_attempts: Option<Expr>,
    pub(crate) base_delay: Option<DurationOpt>,
    pub(crate) max_delay: Option<DurationOpt>,
    pub(crate) timeout: Option<DurationOpt>,
    pub(crate) idempotent: Option<Span>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) skip_all: Option<Span>,
    pub(crate) name: Option<LitStr>,
    pub(crate) validate: Vec<Validate>,
    pub(crate) api_key: Option<KeySource>,
    /// `key_rules = <expr>`: the `KeyRules` the key is checked with (default: OpenAI's).
    pub(crate) key_rules: Option<Expr>,
    /// `base_url = <expr>`: the base URL the call sends to, whose host the key is checked
    /// for (default: `OPENAI_BASE_URL`'s, else OpenAI's).
    pub(crate) base_url: Option<Expr>,
    pub(crate) krate: Option<syn::Path>,
}

fn duplicate(span: Span, what: &str) -> syn::Error {
    syn::Error::new(span, format!("`{what}` is given more than once"))
}

fn parse_duration(input: ParseStream<'_>, what: &str) -> syn::Result<DurationOpt> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return match parse_duration_nanos(&lit.value()) {
            Ok(n) => Ok(DurationOpt::Literal(n, lit.span())),
            Err(msg) => Err(syn::Error::new(
                lit.span(),
                format!("invalid `{what}`: {msg}; expected a duration such as \"60s\", \"500ms\" or \"1m30s\""),
            )),
        };
    }
    let expr: Expr = input.parse()?;
    if let Expr::Lit(lit) = &expr {
        return Err(syn::Error::new(
            lit.span(),
            format!("invalid `{what}`: expected a duration string such as \"60s\" or a `std::time::Duration` expression"),
        ));
    }
    Ok(DurationOpt::Expr(Box::new(expr)))
}

fn parse_endpoint(lit: &LitStr) -> syn::Result<(String, String)> {
    let value = lit.value();
    let mut parts = value.split_whitespace();
    let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(syn::Error::new(
            lit.span(),
            "expected an endpoint such as \"POST /v1/chat/completions\"",
        ));
    };
    let method = method.to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(syn::Error::new(
            lit.span(),
            format!("unknown HTTP method `{method}`; expected GET, POST, PUT, PATCH or DELETE"),
        ));
    }
    if !path.starts_with('/') {
        return Err(syn::Error::new(
            lit.span(),
            "the endpoint's path must start with `/`, as in \"POST /v1/chat/completions\"",
        ));
    }
    Ok((method, path.to_owned()))
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut o = Options::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::retry) {
                let k: kw::retry = input.parse()?;
                input.parse::<Token![=]>()?;
                let e: Expr = input.parse()?;
                if o.retry.replace(e).is_some() {
                    return Err(duplicate(k.span, "retry"));
                }
            } else if lookahead.peek(kw::policy) {
                let k: kw::policy = input.parse()?;
                input.parse::<Token![=]>()?;
                let e: Expr = input.parse()?;
                if o.policy.replace(e).is_some() {
                    return Err(duplicate(k.span, "policy"));
                }
            } else if lookahead.peek(kw::max_attempts) {
                let k: kw::max_attempts = input.parse()?;
                input.parse::<Token![=]>()?;
                let e: Expr = input.parse()?;
                if let Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(i),
                    ..
                }) = &e
                {
                    match i.base10_parse::<u32>() {
                        Ok(n) if n >= 1 => {}
                        _ => {
                            return Err(syn::Error::new(
                                i.span(),
                                "`max_attempts` counts the first attempt: expected an integer from 1 to 4294967295",
                            ))
                        }
                    }
                }
                if o.max_attempts.replace(e).is_some() {
                    return Err(duplicate(k.span, "max_attempts"));
                }
            } else if lookahead.peek(kw::base_delay) {
                let k: kw::base_delay = input.parse()?;
                input.parse::<Token![=]>()?;
                let d = parse_duration(input, "base_delay")?;
                if o.base_delay.replace(d).is_some() {
                    return Err(duplicate(k.span, "base_delay"));
                }
            } else if lookahead.peek(kw::max_delay) {
                let k: kw::max_delay = input.parse()?;
                input.parse::<Token![=]>()?;
                let d = parse_duration(input, "max_delay")?;
                if o.max_delay.replace(d).is_some() {
                    return Err(duplicate(k.span, "max_delay"));
                }
            } else if lookahead.peek(kw::timeout) {
                let k: kw::timeout = input.parse()?;
                input.parse::<Token![=]>()?;
                let d = parse_duration(input, "timeout")?;
                if o.timeout.replace(d).is_some() {
                    return Err(duplicate(k.span, "timeout"));
                }
            } else if lookahead.peek(kw::idempotent) {
                let k: kw::idempotent = input.parse()?;
                if o.idempotent.replace(k.span).is_some() {
                    return Err(duplicate(k.span, "idempotent"));
                }
            } else if lookahead.peek(kw::skip_all) {
                let k: kw::skip_all = input.parse()?;
                if o.skip_all.replace(k.span).is_some() {
                    return Err(duplicate(k.span, "skip_all"));
                }
            } else if lookahead.peek(kw::skip) {
                let k: kw::skip = input.parse()?;
                if !o.skip.is_empty() {
                    return Err(duplicate(k.span, "skip"));
                }
                let content;
                syn::parenthesized!(content in input);
                let names: Punctuated<Ident, Token![,]> =
                    content.parse_terminated(Ident::parse_any, Token![,])?;
                if names.is_empty() {
                    return Err(syn::Error::new(
                        k.span,
                        "`skip(..)` needs at least one argument name",
                    ));
                }
                for (i, n) in names.iter().enumerate() {
                    if names.iter().take(i).any(|m| m == n) {
                        return Err(syn::Error::new(
                            n.span(),
                            format!("`{n}` is skipped more than once"),
                        ));
                    }
                }
                o.skip = names.into_iter().collect();
            } else if lookahead.peek(kw::name) {
                let k: kw::name = input.parse()?;
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(lit.span(), "`name` must not be empty"));
                }
                if o.name.replace(lit).is_some() {
                    return Err(duplicate(k.span, "name"));
                }
            } else if lookahead.peek(kw::validate) {
                let k: kw::validate = input.parse()?;
                if !o.validate.is_empty() {
                    return Err(duplicate(k.span, "validate"));
                }
                let content;
                syn::parenthesized!(content in input);
                let items: Punctuated<(Ident, LitStr), Token![,]> = content.parse_terminated(
                    |p| {
                        let arg: Ident = p.parse()?;
                        p.parse::<Token![=]>()?;
                        let lit: LitStr = p.parse()?;
                        Ok((arg, lit))
                    },
                    Token![,],
                )?;
                if items.is_empty() {
                    return Err(syn::Error::new(
                        k.span,
                        "`validate(..)` needs an argument and its endpoint: `validate(body = \"POST /v1/chat/completions\")`",
                    ));
                }
                for (arg, lit) in items {
                    if o.validate.iter().any(|v| v.arg == arg) {
                        return Err(syn::Error::new(
                            arg.span(),
                            format!("`{arg}` is validated more than once"),
                        ));
                    }
                    let (method, path) = parse_endpoint(&lit)?;
                    o.validate.push(Validate {
                        arg,
                        method,
                        path,
                        span: lit.span(),
                    });
                }
            } else if lookahead.peek(kw::api_key) {
                let k: kw::api_key = input.parse()?;
                input.parse::<Token![=]>()?;
                let src = if input.peek(LitStr) {
                    let lit: LitStr = input.parse()?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`api_key = \"..\"` names an environment variable, such as \"OPENAI_API_KEY\"",
                        ));
                    }
                    KeySource::Env(lit)
                } else {
                    KeySource::Expr(Box::new(input.parse()?))
                };
                if o.api_key.replace(src).is_some() {
                    return Err(duplicate(k.span, "api_key"));
                }
            } else if lookahead.peek(kw::key_rules) {
                let k: kw::key_rules = input.parse()?;
                input.parse::<Token![=]>()?;
                let e: Expr = input.parse()?;
                if o.key_rules.replace(e).is_some() {
                    return Err(duplicate(k.span, "key_rules"));
                }
            } else if lookahead.peek(kw::base_url) {
                let k: kw::base_url = input.parse()?;
                input.parse::<Token![=]>()?;
                let e: Expr = input.parse()?;
                if o.base_url.replace(e).is_some() {
                    return Err(duplicate(k.span, "base_url"));
                }
            } else if lookahead.peek(Token![crate]) {
                let k: Token![crate] = input.parse()?;
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                let path: syn::Path = lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "`crate` expects the path of the oai-resilience crate, such as \"oai_resilience\"",
                    )
                })?;
                if o.krate.replace(path).is_some() {
                    return Err(duplicate(k.span, "crate"));
                }
            } else if input.peek(Ident) {
                let unknown: Ident = input.parse()?;
                return Err(syn::Error::new(
                    unknown.span(),
                    format!("unknown option `{unknown}`; expected one of: {ACCEPTED}"),
                ));
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        if let (Some(span), false) = (o.skip_all, o.skip.is_empty()) {
            return Err(syn::Error::new(
                span,
                "`skip_all` and `skip(..)` cannot be combined: `skip_all` already skips every argument",
            ));
        }
        if let (Some(rules), None) = (&o.key_rules, &o.api_key) {
            return Err(syn::Error::new_spanned(
                rules,
                "`key_rules` sets how the key is checked, and needs `api_key` to say which key",
            ));
        }
        if let (Some(base), None) = (&o.base_url, &o.api_key) {
            return Err(syn::Error::new_spanned(
                base,
                "`base_url` names the target the key is checked for, and needs `api_key` to say which key",
            ));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        syn::parse_str::<Options>(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_option() {
        let o: Options = syn::parse_str(
            r#"retry = cfg(), policy = p, max_attempts = 3, base_delay = "1s", max_delay = d(),
               timeout = "1m", idempotent, skip(a, b), name = "n", validate(body = "post /v1/embeddings"),
               api_key = key, key_rules = KeyRules::lenient(), base_url = server.url(), crate = "x::y""#,
        )
        .unwrap();
        assert!(o.retry.is_some() && o.policy.is_some() && o.max_attempts.is_some());
        assert!(o.idempotent.is_some());
        assert!(matches!(
            o.base_delay,
            Some(DurationOpt::Literal(1_000_000_000, _))
        ));
        assert!(matches!(o.max_delay, Some(DurationOpt::Expr(_))));
        assert!(matches!(
            o.timeout,
            Some(DurationOpt::Literal(60_000_000_000, _))
        ));
        assert_eq!(o.skip.len(), 2);
        assert_eq!(o.validate[0].method, "POST");
        assert_eq!(o.validate[0].path, "/v1/embeddings");
        assert!(matches!(o.api_key, Some(KeySource::Expr(_))));
        assert!(o.key_rules.is_some());
        assert!(o.base_url.is_some());
        assert_eq!(o.krate.unwrap().segments.len(), 2);
        let o: Options = syn::parse_str("skip(self, key)").unwrap();
        assert_eq!(o.skip[0], "self");
        let o: Options = syn::parse_str(r#"skip_all, api_key = "OPENAI_API_KEY","#).unwrap();
        assert!(o.skip_all.is_some());
        assert!(matches!(o.api_key, Some(KeySource::Env(_))));
    }

    #[test]
    fn rejects_misuse_with_a_message() {
        assert!(err("frobnicate").contains("unknown option `frobnicate`; expected one of: `retry`"));
        assert!(err("name = \"a\", name = \"b\"").contains("`name` is given more than once"));
        assert!(err("idempotent, idempotent").contains("`idempotent` is given more than once"));
        assert!(err("skip(a), skip(b)").contains("`skip` is given more than once"));
        assert!(err("skip(a, a)").contains("`a` is skipped more than once"));
        assert!(err("skip()").contains("at least one argument"));
        assert!(err("skip_all, skip(a)").contains("cannot be combined"));
        assert!(err("max_attempts = 0").contains("counts the first attempt"));
        assert!(err("timeout = 60").contains("expected a duration string"));
        assert!(err("timeout = \"5x\"").contains("unknown unit `x`"));
        assert!(err("validate(body = \"/v1/x\")").contains("expected an endpoint"));
        assert!(err("validate(body = \"FETCH /v1/x\")").contains("unknown HTTP method"));
        assert!(err("validate(body = \"POST v1/x\")").contains("must start with `/`"));
        assert!(err("validate()").contains("needs an argument"));
        assert!(err("api_key = \"\"").contains("names an environment variable"));
        assert!(err("key_rules = r").contains("needs `api_key`"));
        assert!(err("base_url = b").contains("needs `api_key`"));
        assert!(err("api_key = k, base_url = a, base_url = b")
            .contains("`base_url` is given more than once"));
        assert!(err("api_key = k, key_rules = a, key_rules = b")
            .contains("`key_rules` is given more than once"));
        assert!(err("crate = \"not a path\"").contains("expects the path"));
        assert!(err("name = \" \"").contains("must not be empty"));
        assert!(err("= 3").contains("expected one of"));
    }
}
