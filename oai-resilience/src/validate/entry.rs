//! The entry points: [`check`] runs the accept pass and, when it does not prove the body
//! valid, the full report; [`Report`] is their outcome.

use std::fmt;

use serde_json::Value;

use super::schema::Endpoint;
use super::{accept, cross, report, vocab};
use crate::error::{Error, ErrorKind, Violation};

/// The outcome of checking one body: every violation, and the deprecated parameters it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub(super) violations: Vec<Violation>,
    pub(super) deprecated: Vec<String>,
}

impl Report {
    /// Whether the body has no violation (deprecated parameters are allowed).
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every violation: missing parameters first, then the others in body order, then the
    /// cross-field rules' and the custom rules'.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The paths of the deprecated parameters the body uses (`max_tokens`,
    /// `messages[2].function_call`).
    pub fn deprecated(&self) -> &[String] {
        &self.deprecated
    }

    /// Emits one `tracing` warning per deprecated parameter.
    pub fn warn_deprecated(&self, route: &dyn fmt::Display) {
        for param in &self.deprecated {
            let advice = deprecation_advice(param);
            tracing::warn!(
                target: "oai_resilience::validate",
                %route,
                param = %param,
                "deprecated parameter `{param}`{advice}"
            );
        }
    }

    /// `Ok(())` if valid, else an [`ErrorKind::InvalidParameter`] error with every violation.
    ///
    /// # Errors
    ///
    /// The [`ErrorKind::InvalidParameter`] error when there is at least one violation.
    pub fn into_result(self) -> Result<(), Error> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::InvalidParameter).with_violations(self.violations))
        }
    }
}

fn deprecation_advice(param: &str) -> &'static str {
    let last = param.rsplit(['.', ']']).next().unwrap_or(param);
    match last {
        "max_tokens" => " (use `max_completion_tokens`; o-series and newer models reject it)",
        "functions" => " (use `tools`)",
        "function_call" => " (use `tool_choice` / `tool_calls`)",
        "user" => " (use `safety_identifier` and `prompt_cache_key`)",
        "prompt_cache_retention" => " (use `prompt_cache_options.ttl`)",
        _ => "",
    }
}

/// Checks a JSON body for `endpoint` and returns the [`Report`]. A body that is not JSON
/// gives one violation on the parameter `body`.
///
/// A valid body is proven valid by a single hand-written pass over its bytes (the accept
/// pass); a body that breaks a rule (or uses a construct that pass leaves alone) is then
/// checked again by the streaming checker (the full report), which writes every violation
/// with its path.
pub fn check(endpoint: Endpoint, body: &[u8]) -> Report {
    // The accept path checks the UTF-8 itself (only where a byte is not ASCII).
    let mut facts = vocab::Facts::default();
    if let Some(deprecated) = accept::accept(endpoint, body, &mut facts) {
        return finish(endpoint, &facts, Vec::new(), deprecated);
    }
    if let Err(report) = utf8(body) {
        return report;
    }
    stream(endpoint, body)
}

/// The streaming checker alone: what [`check`] gives, without its accept path.
#[cfg(test)]
pub(crate) fn check_streaming(endpoint: Endpoint, body: &[u8]) -> Report {
    match utf8(body) {
        Ok(_) => stream(endpoint, body),
        Err(report) => report,
    }
}

/// The streaming checker skips values it need not read without decoding them, so the
/// encoding is checked before it runs: a body that is not UTF-8 is not JSON. (The accept path
/// checks it itself, and only when a string or key has a byte that is not ASCII.)
fn utf8(body: &[u8]) -> Result<&str, Report> {
    std::str::from_utf8(body).map_err(|e| Report {
        violations: vec![Violation::new(
            "body",
            format!(
                "We could not parse the JSON body of your request: invalid UTF-8 at byte {}.",
                e.valid_up_to()
            ),
        )],
        deprecated: Vec::new(),
    })
}

fn stream(endpoint: Endpoint, body: &[u8]) -> Report {
    let mut ctx = report::Ctx::new(endpoint == Endpoint::ChatCompletions);
    ctx.raw = true;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::de::DeserializeSeed::deserialize(
        report::NodeSeed {
            node: endpoint.root(),
            ctx: &mut ctx,
        },
        &mut de,
    )
    .and_then(|()| de.end());
    if let Err(e) = parsed {
        return Report {
            violations: vec![not_json(&e)],
            deprecated: Vec::new(),
        };
    }
    finish(endpoint, &ctx.facts, ctx.violations, ctx.deprecated)
}

/// Checks a parsed body for `endpoint` and returns the [`Report`].
///
/// A `Value` holds numbers as the parser read them, without their text: an integer literal
/// just below `i64::MIN` that it rounded to `i64::MIN` (`"seed": -9223372036854775809`)
/// passes the int64 check here, where [`check()`], which reads the text, rejects it.
pub fn check_value(endpoint: Endpoint, body: &Value) -> Report {
    let mut ctx = report::Ctx::new(endpoint == Endpoint::ChatCompletions);
    // A `&Value` deserializer cannot fail.
    let _ = serde::de::DeserializeSeed::deserialize(
        report::NodeSeed {
            node: endpoint.root(),
            ctx: &mut ctx,
        },
        body,
    );
    finish(endpoint, &ctx.facts, ctx.violations, ctx.deprecated)
}

fn finish(
    endpoint: Endpoint,
    facts: &vocab::Facts,
    mut violations: Vec<Violation>,
    deprecated: Vec<String>,
) -> Report {
    // Cross-field rules only judge bodies whose fields are well-formed, so their messages
    // never contradict the first ones.
    cross::check(endpoint, facts, &mut violations);
    // Missing parameters first: they are the usual fix, and `Error::param`/`Error::hint` name
    // the first violation. Otherwise body order.
    violations.sort_by_key(|v| !v.message.starts_with("Missing required"));
    Report {
        violations,
        deprecated,
    }
}

pub(super) fn not_json(e: &serde_json::Error) -> Violation {
    Violation::new(
        "body",
        format!("We could not parse the JSON body of your request: {e}."),
    )
}

/// Validates a JSON body for `endpoint`; deprecated parameters are logged with `tracing`.
///
/// # Errors
///
/// [`ErrorKind::InvalidParameter`] with every violation ([`Error::violations`]) when the body
/// breaks a rule or is not JSON.
pub fn validate(endpoint: Endpoint, body: &[u8]) -> Result<(), Error> {
    let report = check(endpoint, body);
    report.warn_deprecated(&endpoint);
    report.into_result()
}

/// Validates a parsed body for `endpoint`; deprecated parameters are logged with `tracing`.
///
/// # Errors
///
/// [`ErrorKind::InvalidParameter`] with every violation when the body breaks a rule.
pub fn validate_value(endpoint: Endpoint, body: &Value) -> Result<(), Error> {
    let report = check_value(endpoint, body);
    report.warn_deprecated(&endpoint);
    report.into_result()
}
