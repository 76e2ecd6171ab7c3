//! Hand-written cross-field rules: what the schema cannot express (VALIDATION-NOTES.md §3).
//!
//! Only rules that the spec states and the API is known to enforce are here, so none of them
//! rejects a request the server accepts. Each rule cites where it is stated. Left out on
//! purpose: model-dependent support (§3.5, changes with every model release), "should"
//! advice (`developer` vs `system`), token limits (need a tokenizer), and prose that the
//! schema contradicts (the assistant `content` requirement, `best_of` with `stream`).

use super::schema::Endpoint;
use super::vocab::{Fact, Facts, MsgFact, Num};
use crate::error::Violation;

/// Appends the violations of the cross-field rules of `endpoint` to `out`.
pub(crate) fn check(endpoint: Endpoint, facts: &Facts, out: &mut Vec<Violation>) {
    match endpoint {
        Endpoint::ChatCompletions => {
            top_logprobs_needs_logprobs(facts, out);
            audio_with_audio_modality(facts, out);
            stream_options_need_stream(facts, out);
            tool_message_order(facts.messages(), out);
        }
        Endpoint::Completions => {
            stream_options_need_stream(facts, out);
            best_of_at_least_n(facts, out);
        }
        Endpoint::Responses => previous_response_xor_conversation(facts, out),
        Endpoint::ImageGenerations => transparent_needs_alpha_format(facts, out),
        _ => {}
    }
}

/// `CreateChatCompletionRequest.top_logprobs`: "`logprobs` must be set to `true` if this
/// parameter is used."
fn top_logprobs_needs_logprobs(facts: &Facts, out: &mut Vec<Violation>) {
    only_when_true(
        facts,
        "top_logprobs",
        "logprobs",
        "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
        out,
    );
}

/// `CreateChatCompletionRequest.audio`: "Required when audio output is requested with
/// `modalities: ["audio"]`."
fn audio_with_audio_modality(facts: &Facts, out: &mut Vec<Violation>) {
    if facts.modalities_audio && !facts.is_set("audio") {
        out.push(Violation::new(
            "audio",
            "Missing required parameter: 'audio' (required when 'modalities' contains 'audio').",
        ));
    }
}

/// `ChatCompletionStreamOptions` (chat and completions): "Only set this when you set
/// `stream: true`."
fn stream_options_need_stream(facts: &Facts, out: &mut Vec<Violation>) {
    only_when_true(
        facts,
        "stream_options",
        "stream",
        "Invalid value for 'stream_options': 'stream_options' is only allowed when 'stream' is true.",
        out,
    );
}

/// `param` may be set only when `flag` is `true`; `message` otherwise. Always inlined, so
/// that the two constant keys are looked up at compile time, as in [`Facts::get`].
#[inline(always)]
fn only_when_true(
    facts: &Facts,
    param: &'static str,
    flag: &str,
    message: &'static str,
    out: &mut Vec<Violation>,
) {
    if facts.is_set(param) && facts.get(flag) != Some(&Fact::Bool(true)) {
        out.push(Violation::new(param, message));
    }
}

/// `CreateCompletionRequest.best_of`: "`best_of` must be greater than `n`". The defaults
/// (both 1) are accepted by the API, so the enforced rule is `best_of >= n`.
fn best_of_at_least_n(facts: &Facts, out: &mut Vec<Violation>) {
    if let (Some(Fact::Num(best_of)), Some(Fact::Num(n))) = (facts.get("best_of"), facts.get("n")) {
        if best_of < n {
            out.push(Violation::new(
                "best_of",
                format!(
                    "Invalid value for 'best_of': must be greater than or equal to 'n' ({}), but got {} instead.",
                    Num(*n),
                    Num(*best_of)
                ),
            ));
        }
    }
}

/// `CreateResponse.previous_response_id`: "Cannot be used in conjunction with
/// `conversation`."
fn previous_response_xor_conversation(facts: &Facts, out: &mut Vec<Violation>) {
    if facts.is_set("previous_response_id") && facts.is_set("conversation") {
        out.push(Violation::new(
            "previous_response_id",
            "Invalid value for 'previous_response_id': it cannot be used together with 'conversation'.",
        ));
    }
}

/// `CreateImageRequest.background`: "If `transparent`, the output format needs to support
/// transparency, so it should be set to either `png` (default value) or `webp`."
fn transparent_needs_alpha_format(facts: &Facts, out: &mut Vec<Violation>) {
    let transparent =
        matches!(facts.get("background"), Some(Fact::Str(s)) if s.as_bytes() == b"transparent");
    let format_ok = match facts.get("output_format") {
        Some(Fact::Str(s)) => matches!(s.as_bytes(), b"png" | b"webp"),
        _ => true,
    };
    if transparent && !format_ok {
        out.push(Violation::new(
            "background",
            "Invalid value for 'background': 'transparent' requires 'output_format' to be 'png' or 'webp'.",
        ));
    }
}

/// Message order (VALIDATION-NOTES.md §3.1, enforced by the API): a `tool` message must
/// answer a preceding assistant message with `tool_calls`, and such an assistant message must
/// be followed by a tool message for each `tool_call_id`.
fn tool_message_order<'a>(messages: impl Iterator<Item = &'a MsgFact>, out: &mut Vec<Violation>) {
    // The open assistant message: its index, its call ids, and the ids not yet answered.
    struct Open<'a> {
        at: usize,
        ids: &'a [Box<str>],
        missing: Vec<&'a str>,
    }
    fn close(open: &mut Option<Open<'_>>, out: &mut Vec<Violation>) {
        if let Some(o) = open.take() {
            if !o.missing.is_empty() {
                out.push(Violation::new(
                    format!("messages[{}].role", o.at),
                    format!(
                        "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                        o.missing.join(", ")
                    ),
                ));
            }
        }
    }
    let mut open: Option<Open<'_>> = None;
    // The facts keep only the messages that open or answer tool calls: a gap in their indexes
    // is a message that did neither, which closes the open one as it would here.
    let mut next = 0;
    for msg in messages {
        if msg.index != next {
            close(&mut open, out);
        }
        next = msg.index + 1;
        let Some(role) = msg.role.as_ref().map(|r| r.as_bytes()) else {
            // No role: already a violation of its own; the order cannot be judged.
            close(&mut open, out);
            continue;
        };
        if role == b"tool" {
            match open.as_mut() {
                Some(o) => {
                    if let Some(id) = msg.tool_call_id.as_deref() {
                        if o.ids.iter().any(|known| &**known == id) {
                            o.missing.retain(|m| *m != id);
                        } else {
                            out.push(Violation::new(
                                format!("messages[{}].tool_call_id", msg.index),
                                format!("Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."),
                            ));
                        }
                    }
                }
                None => out.push(Violation::new(
                    format!("messages[{}].role", msg.index),
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                )),
            }
            continue;
        }
        close(&mut open, out);
        if role == b"assistant" && msg.tool_calls > 0 {
            open = Some(Open {
                at: msg.index,
                ids: &msg.tool_call_ids,
                missing: msg.tool_call_ids.iter().map(|s| &**s).collect(),
            });
        }
    }
    close(&mut open, out);
}
