//! Routing and user rules: which requests to validate and how ([`Validator`]).

use std::fmt;
use std::sync::Arc;

use http::Method;
use serde_json::Value;

use super::entry::{check, not_json, Report};
use super::schema::Endpoint;
use crate::error::{Error, ErrorKind, Violation};

/// A user rule for a route: it sees the parsed body and appends violations.
///
/// Closures `Fn(&Value, &mut Vec<Violation>)` are rules:
///
/// ```
/// use oai_resilience::validate::Validator;
/// use oai_resilience::Violation;
///
/// let v = Validator::new().rule(http::Method::POST, "/chat/completions", |body: &serde_json::Value, out: &mut Vec<Violation>| {
///     if body.get("store") == Some(&serde_json::Value::Bool(true)) {
///         out.push(Violation::new("store", "Invalid value for 'store': this app never stores completions."));
///     }
/// });
/// let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"store":true}"#;
/// let err = v.validate(&http::Method::POST, "/v1/chat/completions", body).unwrap_err();
/// assert_eq!(err.param(), Some("store"));
/// ```
pub trait Rule: Send + Sync + 'static {
    /// Appends the violations of `body` to `out`.
    fn check(&self, body: &Value, out: &mut Vec<Violation>);
}

impl<F> Rule for F
where
    F: Fn(&Value, &mut Vec<Violation>) + Send + Sync + 'static,
{
    fn check(&self, body: &Value, out: &mut Vec<Violation>) {
        self(body, out)
    }
}

#[derive(Clone)]
struct CustomRule {
    method: Method,
    path: String,
    rule: Arc<dyn Rule>,
}

/// Routing and rules: which requests to validate and how. Used by [`ValidateLayer`](super::ValidateLayer), and
/// usable on its own.
///
/// A request path matches when it is a base path (default: none), then optionally `/v1`,
/// then the endpoint's path (`/chat/completions`); a trailing `/` is ignored.
///
/// # Default
///
/// No base path, not strict, no custom rules.
#[derive(Clone, Default)]
pub struct Validator {
    base_paths: Vec<String>,
    strict: bool,
    rules: Vec<CustomRule>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("base_paths", &self.base_paths)
            .field("strict", &self.strict)
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a request's route resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route<'a> {
    /// A spec endpoint (custom rules for it may also apply).
    Endpoint(Endpoint),
    /// A route that only custom rules cover: its path relative to the base path.
    Custom(&'a str),
}

impl Validator {
    /// A validator with the default settings.
    pub fn new() -> Self {
        Validator::default()
    }

    /// Also accepts routes under `prefix` (for example `/openai` for a compatible service
    /// mounted there). May be called several times; the bare paths keep matching.
    pub fn base_path(mut self, prefix: impl Into<String>) -> Self {
        let p = prefix.into();
        let p = p.trim_end_matches('/').to_owned();
        if !p.is_empty() && !self.base_paths.contains(&p) {
            self.base_paths.push(p);
        }
        self
    }

    /// In strict mode a request whose route is unknown is rejected
    /// ([`ErrorKind::InvalidParameter`], nothing sent) instead of passed through.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Whether unknown routes are rejected.
    pub(crate) fn is_strict(&self) -> bool {
        self.strict
    }

    /// Adds a rule for `method` and `path` (written as the spec writes paths, without the base
    /// path or `/v1`: `/chat/completions`). The path may be a route the tables do not know.
    pub fn rule(mut self, method: Method, path: &str, rule: impl Rule) -> Self {
        self.rules.push(CustomRule {
            method,
            path: normalize(path).to_owned(),
            rule: Arc::new(rule),
        });
        self
    }

    /// The route of a request, or `None` when nothing validates it.
    pub fn route<'p>(&self, method: &Method, path: &'p str) -> Option<Route<'p>> {
        let rest = self.relative(path)?;
        if *method == Method::POST {
            if let Some(e) = Endpoint::from_path(rest) {
                return Some(Route::Endpoint(e));
            }
        }
        self.rules
            .iter()
            .any(|r| r.method == *method && r.path == rest)
            .then_some(Route::Custom(rest))
    }

    /// The path without a base path, `/v1` and a trailing `/`.
    fn relative<'p>(&self, path: &'p str) -> Option<&'p str> {
        for base in &self.base_paths {
            if let Some(rest) = path.strip_prefix(base.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return Some(normalize(rest));
                }
            }
        }
        Some(normalize(path))
    }

    /// Checks `body` for the request's route; `None` when the route is unknown.
    pub fn check(&self, method: &Method, path: &str, body: &[u8]) -> Option<Report> {
        let route = self.route(method, path)?;
        let rest = match route {
            Route::Endpoint(e) => e.path(),
            Route::Custom(p) => p,
        };
        let custom: Vec<&CustomRule> = self
            .rules
            .iter()
            .filter(|r| r.method == *method && r.path == rest)
            .collect();
        let mut report = match route {
            Route::Endpoint(e) => check(e, body),
            Route::Custom(_) => Report::default(),
        };
        if custom.is_empty() || report.violations.iter().any(|v| v.param == "body") {
            return Some(report);
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => {
                for r in custom {
                    r.rule.check(&value, &mut report.violations);
                }
            }
            Err(e) => report.violations.push(not_json(&e)),
        }
        Some(report)
    }

    /// Validates `body` for the request's route, logging deprecated parameters.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidParameter`] with every violation; in strict mode also for an
    /// unknown route (with a detail and no violations).
    pub fn validate(&self, method: &Method, path: &str, body: &[u8]) -> Result<(), Error> {
        match self.check(method, path, body) {
            Some(report) => {
                report.warn_deprecated(&format_args!("{method} {path}"));
                report.into_result()
            }
            None if self.strict => Err(self.unknown_route(method, path)),
            None => Ok(()),
        }
    }

    pub(crate) fn unknown_route(&self, method: &Method, path: &str) -> Error {
        Error::new(ErrorKind::InvalidParameter).with_detail(format!(
            "no validation rules for {method} {path} (strict mode rejects unknown routes)"
        ))
    }
}

fn normalize(path: &str) -> &str {
    let p = path.strip_suffix('/').unwrap_or(path);
    p.strip_prefix("/v1")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(p)
}
