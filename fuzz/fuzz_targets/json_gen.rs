//! A JSON value generator for the validator targets (included with `#[path]`): keys and
//! strings are drawn from the spec's vocabulary most of the time, so the fuzzer reaches the
//! nested rules (messages by role, tools, response formats, …) instead of only the root.
#![allow(dead_code)]

use arbitrary::{Arbitrary, Result, Unstructured};
use oai_resilience::validate::Endpoint;
use serde_json::{Map, Number, Value};

/// Deepest nesting generated (the streaming parser stops at 128; stay well below).
pub const MAX_DEPTH: u32 = 12;

/// Parameter names and values the rule tables use.
pub const WORDS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "name",
    "user",
    "system",
    "developer",
    "assistant",
    "tool",
    "function",
    "tools",
    "tool_choice",
    "tool_calls",
    "tool_call_id",
    "id",
    "type",
    "text",
    "image_url",
    "url",
    "detail",
    "input_audio",
    "data",
    "format",
    "file",
    "refusal",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "include_usage",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "json_schema",
    "json_object",
    "schema",
    "strict",
    "seed",
    "metadata",
    "store",
    "modalities",
    "audio",
    "voice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "arguments",
    "parameters",
    "description",
    "reasoning_effort",
    "service_tier",
    "prediction",
    "web_search_options",
    "prompt",
    "suffix",
    "echo",
    "best_of",
    "input",
    "encoding_format",
    "dimensions",
    "float",
    "base64",
    "instructions",
    "previous_response_id",
    "conversation",
    "reasoning",
    "effort",
    "truncation",
    "include",
    "background",
    "size",
    "quality",
    "style",
    "output_format",
    "png",
    "webp",
    "jpeg",
    "transparent",
    "opaque",
    "auto",
    "none",
    "required",
    "low",
    "high",
    "medium",
    "minimal",
    "speed",
    "response_format",
    "mp3",
    "wav",
    "alloy",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "dall-e-3",
    "gpt-image-1",
    "tts-1",
    "text-embedding-3-small",
    "omni-moderation-latest",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];

fn word_or_str(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(7, 8)? {
        Ok((*u.choose(WORDS)?).to_owned())
    } else {
        String::arbitrary(u)
    }
}

fn number(u: &mut Unstructured<'_>) -> Result<Number> {
    Ok(match u.int_in_range(0..=4)? {
        0 => Number::from(u.int_in_range(-3i64..=300)?),
        1 => Number::from(i64::arbitrary(u)?),
        2 => Number::from(u64::arbitrary(u)?),
        3 => Number::from_f64(f64::from(u.int_in_range(-40i32..=40)?) / 10.0).unwrap(),
        _ => Number::from_f64(f64::arbitrary(u)?).unwrap_or_else(|| Number::from(0)),
    })
}

/// An arbitrary JSON value, nested at most `MAX_DEPTH - depth` deep.
pub fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let leaf_only = depth >= MAX_DEPTH;
    let pick = if leaf_only {
        u.int_in_range(0..=3)?
    } else {
        u.int_in_range(0..=5)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => Value::Number(number(u)?),
        3 => Value::String(word_or_str(u)?),
        4 => {
            let len = u.int_in_range(0..=6)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(value(u, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => object(u, depth + 1)?,
    })
}

/// An arbitrary JSON object.
pub fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let len = u.int_in_range(0..=8)?;
    let mut map = Map::new();
    for _ in 0..len {
        let key = word_or_str(u)?;
        map.insert(key, value(u, depth)?);
    }
    Ok(Value::Object(map))
}

/// One of the endpoints the rule tables cover.
pub fn endpoint(u: &mut Unstructured<'_>) -> Result<Endpoint> {
    Ok(*u.choose(&Endpoint::ALL)?)
}

/// Invariants shared by both validator targets: a report and the error `validate` gives for
/// the same body agree, and the error is well-formed.
pub fn check_report(
    report: &oai_resilience::validate::Report,
    result: &std::result::Result<(), oai_resilience::Error>,
) {
    use oai_resilience::ErrorKind;

    let violations = report.violations();
    for v in violations {
        assert!(!v.param.is_empty(), "violation without a param: {v:?}");
        assert!(!v.message.is_empty(), "violation without a message: {v:?}");
    }
    // Missing parameters come first.
    let first_other = violations
        .iter()
        .position(|v| !v.message.starts_with("Missing required"))
        .unwrap_or(violations.len());
    assert!(
        violations[first_other..]
            .iter()
            .all(|v| !v.message.starts_with("Missing required")),
        "missing parameters not first: {violations:?}"
    );
    match result {
        Ok(()) => assert!(
            report.is_valid(),
            "validate passed, check did not: {violations:?}"
        ),
        Err(err) => {
            assert!(
                !report.is_valid(),
                "validate failed on a valid report: {err}"
            );
            assert_eq!(err.kind(), ErrorKind::InvalidParameter);
            assert_eq!(err.violations(), violations);
            assert_eq!(err.param(), Some(violations[0].param.as_str()));
            assert!(!err.is_retryable());
            let display = err.to_string();
            assert!(
                !display.contains(['\n', '\r']),
                "Display is not one line: {display:?}"
            );
            assert!(display.starts_with("invalid_parameter: "), "{display:?}");
            let debug = format!("{err:?}");
            assert!(!debug.contains('\n'), "{debug:?}");
        }
    }
}
