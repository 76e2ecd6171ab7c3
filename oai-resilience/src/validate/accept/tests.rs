//! The accept pass against the full report: both agree on the corpora, on mutations of them
//! and on broken text; and the accept pass's own pieces (the tokenizer, the guesses, the
//! facts) do what they say.

use serde_json::{json, Value};

use super::lex::special_bytes;
use super::*;
use crate::validate::{check, check_streaming};

fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate")
}

fn endpoint_named(name: &str) -> Endpoint {
    Endpoint::ALL
        .into_iter()
        .find(|e| format!("{e:?}") == name)
        .unwrap()
}

/// Every body of the corpora: (endpoint, bytes).
fn corpus() -> Vec<(Endpoint, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["valid", "spec_examples"] {
        let mut files: Vec<_> = std::fs::read_dir(data_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for p in files {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let e = endpoint_named(name.split("__").next().unwrap());
            out.push((e, std::fs::read(&p).unwrap()));
        }
    }
    let invalid: Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("invalid.json")).unwrap()).unwrap();
    for case in invalid.as_array().unwrap() {
        let e = endpoint_named(case["endpoint"].as_str().unwrap());
        out.push((e, serde_json::to_vec(&case["body"]).unwrap()));
    }
    out
}

/// Both checkers give the same report (order included) for `body`.
fn same_report(e: Endpoint, body: &[u8]) {
    let fast = check(e, body);
    let slow = check_streaming(e, body);
    assert_eq!(
        fast,
        slow,
        "{e}: {}",
        String::from_utf8_lossy(&body[..body.len().min(400)])
    );
}

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that break (or stress) a rule somewhere: wrong types, bounds, long and escaped
/// strings, empty containers, nulls.
fn replacements() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(2.5),
        json!(3.0),
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("x"),
        json!("audio"),
        json!("user"),
        json!("tool"),
        json!("bad name!"),
        json!("a\"b\\c\n\u{e9}\u{1F600}"),
        json!("y".repeat(300)),
        json!([]),
        json!(["text", "audio"]),
        json!({}),
        json!({"type": "text", "text": "hi"}),
        json!({"role": "user", "content": "hi"}),
    ]
}

/// Every (pointer) path of `v`, containers included.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_accept_path_accepts_the_valid_corpora() {
    let mut declined = Vec::new();
    for dir in ["valid", "spec_examples"] {
        for entry in std::fs::read_dir(data_dir().join(dir)).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let e = endpoint_named(name.split("__").next().unwrap());
            let body = std::fs::read(&p).unwrap();
            if accept(e, &body, &mut Facts::default()).is_none() {
                declined.push(name);
            }
        }
    }
    declined.sort();
    // Every body is accepted here, the array forms of embeddings `input`, completions
    // `prompt` and moderations `input` included: the streaming checker buffers them as a
    // `Value` and tries each form, this pass tries them in place
    // (`array_forms_agree_with_the_streaming_checker`).
    assert!(declined.is_empty(), "{declined:?}");
}

/// The array forms of a union of string and array alternatives (`prompt`, `input`) are
/// tried in place: each must decide as the streaming checker does, valid or broken.
#[test]
fn array_forms_agree_with_the_streaming_checker() {
    let forms = [
        r#"["a","b"]"#,
        r#"[1212,318]"#,
        r#"[[1212,318],[257]]"#,
        r#"[]"#,
        r#"[[]]"#,
        r#"[1,"a"]"#,
        r#"["a",1]"#,
        r#"[[1,2],[3,"x"]]"#,
        r#"[[1,2],"x"]"#,
        r#"[-1]"#,
        r#"[1.5]"#,
        r#"[null]"#,
        r#"[{"type":"text","text":"a"}]"#,
        r#"[{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"a"}]"#,
        r#"[{"type":"text"}]"#,
        r#"[{"type":"nope","text":"a"}]"#,
        r#"[[[1]]]"#,
    ];
    let mut accepted = 0;
    for form in forms {
        for (e, body) in [
            (
                Endpoint::Completions,
                format!(r#"{{"model":"m","prompt":{form}}}"#),
            ),
            (
                Endpoint::Embeddings,
                format!(r#"{{"model":"m","input":{form}}}"#),
            ),
            (Endpoint::Moderations, format!(r#"{{"input":{form}}}"#)),
        ] {
            same_report(e, body.as_bytes());
            let text = body.as_str();
            if accept(e, text.as_bytes(), &mut Facts::default()).is_some() {
                accepted += 1;
                assert!(
                    check_streaming(e, body.as_bytes()).is_valid(),
                    "{e}: {body}"
                );
            }
        }
    }
    // Both kinds are here.
    assert!(
        accepted >= 10 && accepted <= 3 * forms.len() - 10,
        "{accepted}"
    );
}

#[test]
fn both_checkers_agree_on_the_corpora() {
    for (e, body) in corpus() {
        same_report(e, &body);
        // Pretty-printed, and with the keys in the other order.
        let v: Value = serde_json::from_slice(&body).unwrap();
        same_report(e, serde_json::to_string_pretty(&v).unwrap().as_bytes());
    }
}

/// A container before its object's discriminator is checked ahead against the
/// alternative that the next `"disc"` in the text names (`guess`). The text may name
/// the wrong one (a nested key, the next object's, none at all): that costs a second
/// reading, and both checkers must still agree.
#[test]
fn wrong_guesses_change_no_answer() {
    let content = r#"[{"text":"a","type":"text"}]"#;
    let image = r#"[{"image_url":{"url":"https://x/y.png"},"type":"image_url"}]"#;
    let decoy = r#"[{"image_url":{"role":"system","url":"https://x/y.png"},"type":"image_url"}]"#;
    let bodies = [
        // Right guesses (valid).
        (
            format!(
                r#"[{{"content":{content},"role":"system"}},{{"content":{image},"role":"user"}}]"#
            ),
            true,
        ),
        // Right guesses; the tool message answers no call (the order rule).
        (
            format!(
                r#"[{{"content":{content},"role":"assistant"}},{{"content":{content},"role":"tool","tool_call_id":"x"}}]"#
            ),
            false,
        ),
        // A nested `role` key (an image's extra property) before the message's own: the
        // guess is the system role, the message a user's (valid).
        (format!(r#"[{{"content":{decoy},"role":"user"}}]"#), true),
        // The nested key says user, whose content passes the check ahead; the message is
        // the assistant's, which takes no images: read again, and rejected.
        (
            format!(
                r#"[{{"content":{},"role":"assistant"}}]"#,
                decoy.replace("system", "user")
            ),
            false,
        ),
        // No role here: the guess is the next message's.
        (
            format!(r#"[{{"content":{image}}},{{"content":"b","role":"system"}}]"#),
            false,
        ),
        // An image for the system role (which takes text parts only), guessed as the
        // next message's user role.
        (
            format!(
                r#"[{{"content":{image},"name":"n","role":"system"}},{{"content":"b","role":"user"}}]"#
            ),
            false,
        ),
        // No `role` anywhere after the container.
        (format!(r#"[{{"content":{content}}}]"#), false),
        // Spaces around the colon, and a role that is no alternative.
        (
            format!(
                r#"[{{"content":{content}, "role" : "user"}}, {{"content":{content},"role":"nobody"}}]"#
            ),
            false,
        ),
    ];
    for (messages, valid) in &bodies {
        let body = format!(r#"{{"model":"m","messages":{messages}}}"#);
        same_report(Endpoint::ChatCompletions, body.as_bytes());
        let report = check(Endpoint::ChatCompletions, body.as_bytes());
        assert_eq!(report.is_valid(), *valid, "{body}");
    }
    // The search is bounded by the body's length in all: once spent, no more guesses.
    let body = format!(r#"{{"content":{content}}}"#);
    let mut facts = Facts::default();
    let mut f = Fast::new(body.as_bytes(), &mut facts, false);
    f.pos = 1;
    let messages = match Endpoint::ChatCompletions
        .root()
        .properties
        .iter()
        .find(|p| p.name == "messages")
    {
        Some(p) => p.node.items.expect("messages are an array"),
        None => panic!("chat has messages"),
    };
    assert!(f.guess(messages, "role").is_none());
    assert_eq!(f.guess_budget, 1, "the search read from `pos` to the end");
}

/// `guess` has a searcher only for the discriminators it was written for: every
/// discriminator of the tables must be one of them (another would be jumped over and
/// read again, correct but slower, without anyone noticing).
#[test]
fn every_discriminator_has_a_searcher() {
    let mut discs: Vec<&str> = crate::validate::derived_tests::all_nodes()
        .iter()
        .filter_map(|n| n.discriminator)
        .collect();
    discs.sort_unstable();
    discs.dedup();
    assert!(!discs.is_empty());
    for disc in discs {
        let finder = disc_finder(disc).unwrap_or_else(|| panic!("no searcher for {disc}"));
        assert_eq!(finder.needle(), format!("\"{disc}\"").as_bytes());
    }
}

/// `object_resumed` does not check a discriminator's value again: the alternative was
/// chosen because the value is its constant, which must then pass the rest of its node's
/// string rules too.
#[test]
fn every_discriminator_constant_passes_its_own_rules() {
    let mut constants = 0;
    for node in crate::validate::derived_tests::all_nodes() {
        let Some(disc) = node.discriminator else {
            continue;
        };
        for alt in node.alternatives {
            let Some(i) = alt.find(disc) else { continue };
            let n = alt.properties[i].node;
            if let [only] = n.enum_values {
                assert!(
                    accepts(n.types, T_STRING) && check_text(n, only.as_bytes()),
                    "{disc} = {only:?} fails its own node"
                );
                constants += 1;
            }
        }
    }
    assert!(constants > 20, "only {constants} constants");
}

/// `record` is switched off for values that record nothing (`records_under`): every
/// value that does record must still do so on the accept path. Each body here breaks a
/// cross-field rule only through a fact recorded at one of those places (or carries a
/// deprecation), so a fact the accept path failed to record would make it accept the
/// body, and its report would differ from the streaming checker's.
#[test]
fn facts_are_recorded_wherever_they_are_read() {
    use serde_json::json;
    let chat = |extra: Value| {
        let mut body = json!({
            "model": "gpt-4o",
            "metadata": {"a": "b"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        // Top-level scalars and a top-level object.
        (
            Endpoint::ChatCompletions,
            chat(json!({"top_logprobs": 2})),
            1,
        ),
        (
            Endpoint::ChatCompletions,
            chat(json!({"top_logprobs": 2, "logprobs": true})),
            0,
        ),
        (
            Endpoint::ChatCompletions,
            chat(json!({"stream_options": {"include_usage": true}})),
            1,
        ),
        (
            Endpoint::ChatCompletions,
            chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
            0,
        ),
        // An item of `modalities`.
        (
            Endpoint::ChatCompletions,
            chat(json!({"modalities": ["text", "audio"]})),
            1,
        ),
        // A message's role, tool calls and their ids, a tool message's tool_call_id
        // (content arrays before the role, in both orders).
        (
            Endpoint::ChatCompletions,
            chat(json!({"messages": [
                {"content": [{"text": "x", "type": "text"}], "role": "user"},
                {"content": null, "role": "assistant", "tool_calls": [
                    {"function": {"arguments": "{}", "name": "f"}, "id": "c1", "type": "function"}]},
                {"content": [{"text": "r", "type": "text"}], "role": "tool", "tool_call_id": "c2"},
            ]})),
            // `c1` not answered, `c2` answers nothing.
            2,
        ),
        (
            Endpoint::ChatCompletions,
            chat(json!({"messages": [
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r"}]},
            ]})),
            0,
        ),
        // A user's and a system message (not kept as facts: gaps in the kept indexes)
        // between a call and its answer, and after an unanswered call.
        (
            Endpoint::ChatCompletions,
            chat(json!({"messages": [
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "user", "content": "wait"},
                {"role": "tool", "tool_call_id": "c1", "content": "r"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "system", "content": "s"},
            ]})),
            3,
        ),
        // Deprecated parameters, at the top level and inside a message.
        (Endpoint::ChatCompletions, chat(json!({"max_tokens": 5})), 0),
        (
            Endpoint::ChatCompletions,
            chat(json!({"messages": [
                {"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}},
            ]})),
            0,
        ),
        // Other endpoints' facts.
        (
            Endpoint::Completions,
            json!({"model": "m", "prompt": "p", "best_of": 1, "n": 2}),
            1,
        ),
    ];
    let cases_decided = cases.clone();
    for (e, body, violations) in cases {
        let bytes = serde_json::to_vec(&body).unwrap();
        let report = check(e, &bytes);
        assert_eq!(report.violations().len(), violations, "{e}: {body}");
        same_report(e, &bytes);
        same_report(e, serde_json::to_string_pretty(&body).unwrap().as_bytes());
    }
    // The accept path reads every body above to its end (none is left to the streaming
    // checker), so the cross-field rules judged the facts it recorded.
    for (e, body, _) in &cases_decided {
        let bytes = serde_json::to_vec(body).unwrap();
        assert!(
            accept(*e, &bytes, &mut Facts::default()).is_some(),
            "{e}: {body}"
        );
    }
    // The deprecations are reported by the accept path itself.
    let body = serde_json::to_vec(&chat(json!({"max_tokens": 5}))).unwrap();
    let mut facts = Facts::default();
    let deprecated = accept(Endpoint::ChatCompletions, &body, &mut facts);
    assert_eq!(deprecated, Some(vec!["max_tokens".to_string()]));
}

#[test]
fn both_checkers_agree_on_mutated_bodies() {
    let reps = replacements();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut runs = 0;
    // Chat bodies only: an invalid value deep in the other endpoints' alternatives makes
    // the streaming checker score every alternative of every level, minutes in a debug
    // build (the fuzz targets cover them).
    for (e, body) in corpus() {
        if e != Endpoint::ChatCompletions {
            continue;
        }
        let v: Value = serde_json::from_slice(&body).unwrap();
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        for p in &ptrs {
            // Remove it, or replace it by a few of the values.
            let mut removed = v.clone();
            let (parent, last) = p.rsplit_once('/').unwrap();
            match removed.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    a.remove(last.parse::<usize>().unwrap());
                }
                _ => unreachable!(),
            }
            same_report(e, &serde_json::to_vec(&removed).unwrap());
            for _ in 0..3 {
                let mut m = v.clone();
                *m.pointer_mut(p).unwrap() = reps[rng.below(reps.len())].clone();
                same_report(e, &serde_json::to_vec(&m).unwrap());
                runs += 1;
            }
        }
    }
    assert!(runs > 500, "{runs}");
}

/// The accept path's two shortcuts: an object whose discriminator comes first goes on from
/// its value (the key is not read twice), and a union trial that passed is not run again
/// when nothing below it is recorded. Both must decide as the streaming checker does,
/// with the discriminator first, last and absent, and facts below the trials.
#[test]
fn discriminator_first_and_union_trials_agree() {
    let texts: &[&str] = &[
        r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"a"}]}"#,
        r#"{"model":"m","messages":[{"role":"user"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi","role":"tool"}]}"#,
        r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u","detail":"low"}}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"text":"a","type":"text"},{"image_url":{"url":"u"},"type":"image_url"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","text":"a"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x","format":"wav"}}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}},{}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","x":[1,{"y":null}]}]}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","id":"c1","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","content":"x","tool_call_id":"c1"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","id":"c1","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","content":"x","tool_call_id":"c9"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","id":3,"function":{"name":"f","arguments":"{}"}}]}]}"#,
        r#"{"model":"m","messages":[{"role":"function","name":"f","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f g"}}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"nope"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function","function":{"name":"f"}}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{}}}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema"}}"#,
        // Checked ahead of the discriminator (`check_ahead`): valid, broken, not the
        // alternative the discriminator names, and twice.
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f","parameters":{}},"type":"function"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f g"},"type":"function"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"},"type":"custom"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"},"function":{"name":"g h"},"type":"function"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":{"name":"f"}}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"function":[1,{"a":2}],"type":"function"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":{"function":{"name":"f"},"type":"function"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"json_schema":{"name":"n","strict":true},"type":"json_schema"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"json_schema":{"strict":true},"type":"json_schema"}}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"},"id":"c1","type":"function"}]},{"role":"tool","content":"x","tool_call_id":"c1"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"},"id":"c1","type":"function"}]},{"role":"tool","content":"x","tool_call_id":"c2"}]}"#,
        r#"{"model":"m","messages":[{"content":[{"text":"a","type":"text"}],"role":"system"},{"content":[{"image_url":{"url":"u"},"type":"image_url"}],"role":"user"}]}"#,
        r#"{"model":"m","messages":[{"content":[{"image_url":{"url":"u"},"type":"image_url"}],"role":"system"}]}"#,
        // Entries before the discriminator, resumed from `prefix`: within and beyond its
        // four slots, broken, and a nested union among them.
        r#"{"model":"m","messages":[{"content":"a","name":"n","role":"user"}]}"#,
        r#"{"model":"m","messages":[{"content":"a","name":"n","x":1,"y":{"z":[2]},"w":3,"role":"user"}]}"#,
        r#"{"model":"m","messages":[{"content":"a","name":5,"x":1,"y":2,"w":3,"role":"user"}]}"#,
        r#"{"model":"m","messages":[{"content":5,"name":"n","role":"user"}]}"#,
        r#"{"model":"m","messages":[{"content":[{"text":"a","type":"text"},{"type":"nope"}],"name":"n","role":"user"}]}"#,
        r#"{"model":"m","messages":[{"tool_calls":[{"function":{"name":"f","arguments":"{}"},"id":"c1","type":"function"}],"content":null,"role":"assistant"},{"content":"x","tool_call_id":"c1","role":"tool"}]}"#,
    ];
    let mut accepted = 0;
    for t in texts {
        same_report(Endpoint::ChatCompletions, t.as_bytes());
        accepted += usize::from(check(Endpoint::ChatCompletions, t.as_bytes()).is_valid());
    }
    // Both kinds are here: bodies the shortcuts accept, and bodies they must not.
    assert!(accepted >= 8 && accepted <= texts.len() - 8, "{accepted}");
    let input: &[&str] = &[
        r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"}]}]}"#,
        r#"{"model":"m","input":[{"type":"message","role":"user","content":"a"}]}"#,
        r#"{"model":"m","input":"a","tools":[{"type":"function","name":"f","parameters":{}}]}"#,
    ];
    for t in input {
        same_report(Endpoint::Responses, t.as_bytes());
    }
}

/// Containers before a discriminator are jumped over by their brackets (`jump_over`) and
/// checked when the alternative is known; where none is (a lenient union without its
/// discriminator), they are skipped again with their syntax checked. Broken syntax inside
/// them must give the streaming checker's report either way.
#[test]
fn containers_before_a_discriminator_keep_their_syntax_checked() {
    let broken = [
        "[1 2]",
        "[1,]",
        r#"{"a" 1}"#,
        r#"{"a":1,}"#,
        r#"["x\u12"]"#,
        "[tru]",
        r#"["a\"]"#,
        r#"[{"b":[}]]"#,
        "[01]",
        "[\"a\u{1}\"]",
    ];
    let fine = [r#"[1,2]"#, r#"{"a":[{"b":"]"}]}"#, r#"["x\"]"]"#, "[]"];
    let cases = broken
        .iter()
        .map(|v| (v, false))
        .chain(fine.iter().map(|v| (v, true)));
    for (value, valid_syntax) in cases {
        let bodies = [
            // Chat: before role (the discriminator), and with no role at all.
            (
                Endpoint::ChatCompletions,
                format!(r#"{{"model":"m","messages":[{{"content":{value},"role":"user"}}]}}"#),
            ),
            (
                Endpoint::ChatCompletions,
                format!(
                    r#"{{"model":"m","messages":[{{"x":{value},"role":"user","content":"hi"}}]}}"#
                ),
            ),
            (
                Endpoint::ChatCompletions,
                format!(r#"{{"model":"m","messages":[{{"x":{value},"content":"hi"}}]}}"#),
            ),
            // Responses items are lenient: an item without its `type` passes unread.
            (
                Endpoint::Responses,
                format!(
                    r#"{{"model":"m","input":[{{"x":{value},"role":"user","content":"hi"}}]}}"#
                ),
            ),
            (
                Endpoint::Responses,
                format!(r#"{{"model":"m","input":[{{"x":{value}}}]}}"#),
            ),
            // A custom tool's `format`: a lenient union told apart by `type`, here absent.
            (
                Endpoint::Responses,
                format!(
                    r#"{{"model":"m","input":"hi","tools":[{{"type":"custom","name":"t","format":{{"x":{value}}}}}]}}"#
                ),
            ),
        ];
        for (e, body) in bodies {
            same_report(e, body.as_bytes());
            if !valid_syntax {
                let report = check(e, body.as_bytes());
                assert!(
                    report.violations().iter().any(|v| v.param == "body"),
                    "{e}: {body}: {:?}",
                    report.violations()
                );
            }
        }
    }
}

/// The accept path reads bytes and checks the body's UTF-8 only when a string or key had a
/// byte from 0x80 on: every kind of broken UTF-8, in every place a string can be (a value
/// it checks, one it skips, a key, the last bytes of a string, a discriminator), must give
/// the report the streaming checker gives, and valid non-ASCII text must pass with its facts.
#[test]
fn utf8_is_checked_wherever_it_is_not_ascii() {
    let broken: [&[u8]; 7] = [
        b"\xff",
        b"\x80",
        b"\xc3",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"caf\xc3",
    ];
    let places = [
        r#"{"model":"m","messages":[{"role":"user","content":"<>"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"a long text before <> and after it"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"k<>":"v"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"k":"<>"}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"<>"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x<>":1}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":{"y":["<>"]}}"#,
        r#"{"model":"m","messages":[{"content":"<>","role":"user"}]}"#,
        r#"{"model":"m","messages":[{"role":"us<>er","content":"hi"}]}"#,
        r#"{"model":"m<>","messages":[{"role":"user","content":"hi"}]}"#,
    ];
    for place in places {
        for bad in broken {
            let (a, b) = place.split_once("<>").unwrap();
            let body = [a.as_bytes(), bad, b.as_bytes()].concat();
            let text = String::from_utf8_lossy(&body).into_owned();
            assert!(
                accept(Endpoint::ChatCompletions, &body, &mut Facts::default()).is_none(),
                "{text}"
            );
            same_report(Endpoint::ChatCompletions, &body);
            let report = check(Endpoint::ChatCompletions, &body);
            assert_eq!(report.violations().len(), 1, "{text}");
            assert!(
                report.violations()[0].message.contains("invalid UTF-8"),
                "{text}"
            );
        }
        // Valid non-ASCII in the same place: the body is judged on its rules as before.
        let fine = place.replace("<>", "é😀€");
        same_report(Endpoint::ChatCompletions, fine.as_bytes());
    }
    // Non-ASCII text that passes, recorded as a fact where a rule reads it.
    let body = r#"{"model":"mödel","messages":[{"role":"assistant","content":"ça va","tool_calls":[{"id":"é1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"é1","content":"ok"}],"metadata":{"clé":"välue"}}"#;
    let mut facts = Facts::default();
    assert!(accept(Endpoint::ChatCompletions, body.as_bytes(), &mut facts).is_some());
    assert!(check(Endpoint::ChatCompletions, body.as_bytes()).is_valid());
    let ids: Vec<&str> = facts
        .messages()
        .flat_map(|m| m.tool_call_ids.iter().map(|s| &**s))
        .collect();
    assert_eq!(ids, ["é1"]);
    let wrong = body.replace(r#""tool_call_id":"é1""#, r#""tool_call_id":"è1""#);
    same_report(Endpoint::ChatCompletions, wrong.as_bytes());
    assert!(!check(Endpoint::ChatCompletions, wrong.as_bytes()).is_valid());
}

/// `maxLength` counts characters: a string of more bytes than the limit but no more
/// characters passes, one character more does not (metadata values: at most 512).
#[test]
fn max_length_counts_characters_not_bytes() {
    for (value, valid) in [
        ("é".repeat(512), true),
        ("é".repeat(513), false),
        ("x".repeat(512), true),
        ("x".repeat(513), false),
    ] {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"k": value}});
        let body = serde_json::to_vec(&body).unwrap();
        same_report(Endpoint::ChatCompletions, &body);
        assert_eq!(check(Endpoint::ChatCompletions, &body).is_valid(), valid);
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(
            accept(
                Endpoint::ChatCompletions,
                text.as_bytes(),
                &mut Facts::default()
            )
            .is_some(),
            valid
        );
    }
}

/// `short_decimal` gives the parser's `f64`, bit for bit, on the decimals it takes, and
/// leaves the others (exponents, integers, more than 15 digits) to the parser.
#[test]
fn short_decimals_read_as_the_parser_reads_them() {
    let parse = |t: &str| serde_json::from_str::<f64>(t).unwrap();
    let fixed = [
        "0.7",
        "0.9",
        "-0.0",
        "0.0",
        "2.0",
        "2.0000000000001",
        "1.99999999999999",
        "0.30000000000001",
        "-12.25",
        "123456789012.345",
        "0.00000000000001",
        "9.99999999999999",
    ];
    for t in fixed {
        let v = short_decimal(t.as_bytes()).expect(t);
        assert_eq!(v.to_bits(), parse(t).to_bits(), "{t}");
    }
    for t in ["1e5", "1.5e2", "12", "-3", "0.1234567890123456", "1.", "-"] {
        assert_eq!(short_decimal(t.as_bytes()), None, "{t}");
    }
    let mut rng = Rng(0x5eed_d15c);
    let mut taken = 0;
    for _ in 0..20_000 {
        let int_digits = 1 + rng.below(8);
        let frac_digits = 1 + rng.below(9);
        let mut t = String::new();
        if rng.below(3) == 0 {
            t.push('-');
        }
        let first = if int_digits == 1 {
            rng.below(10)
        } else {
            1 + rng.below(9)
        };
        t.push(char::from(b'0' + first as u8));
        for _ in 1..int_digits {
            t.push(char::from(b'0' + rng.below(10) as u8));
        }
        t.push('.');
        for _ in 0..frac_digits {
            t.push(char::from(b'0' + rng.below(10) as u8));
        }
        if let Some(v) = short_decimal(t.as_bytes()) {
            assert_eq!(v.to_bits(), parse(&t).to_bits(), "{t}");
            taken += 1;
        }
    }
    assert!(taken > 15_000, "{taken}");
}

#[test]
fn both_checkers_agree_on_broken_and_odd_text() {
    let texts: &[&str] = &[
        "",
        " ",
        "{",
        "{}",
        "[]",
        "null",
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]} x"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"},]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"h\i"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"\ud83d\ude00"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"\udc00"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":"\ud800"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1e400}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":1e400}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":01}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":-0}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1.}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2.0}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":9223372036854775808}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":-9223372036854775809}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"model":"n"}"#,
        r#"{"model":"m","messages":[{"content":"hi","role":"user","role":"tool"}]}"#,
        r#"{"model":"m","messages":[{"content":"hi","role":"u\u0073er"}]}"#,
        r#"{"model":"m","messages":[{"content":"hi","role":5}]}"#,
        r#"{"model":"m","messages":[{"content":"hi","role":1e400}]}"#,
        r#"{"model":"m","messages":[{"content":"hi"}]}"#,
        r#"{"mod\u0065l":"m","messages":[{"role":"user","content":"hi"}]}"#,
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\u{1}b\"}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":tru}",
        "\t{ \"model\" : \"m\" ,\r\n \"messages\" : [ { \"role\" : \"user\" , \"content\" : \"hi\" } ] }\n",
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c\u0031","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c2","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":7,"type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"modalities":["text","audio"]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"functions":[{"name":"f"}]}"#,
    ];
    for e in Endpoint::ALL {
        for t in texts {
            same_report(e, t.as_bytes());
        }
    }
    // Deep nesting inside a skipped value and inside checked ones.
    let deep = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{{}},"x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    same_report(Endpoint::ChatCompletions, deep.as_bytes());
    // Every prefix of a body (truncated input) and byte-level damage.
    let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"content":[{"type":"text","text":"hi \"there\""}],"role":"user"}],"temperature":0.5,"n":2,"stop":["a"],"metadata":{"k":"v"},"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#;
    let mut rng = Rng(7);
    for e in [Endpoint::ChatCompletions, Endpoint::Responses] {
        for i in 0..body.len() {
            same_report(e, &body[..i]);
            let mut damaged = body.to_vec();
            let bytes = b"{}[]\",:\\ 0-9eE.tfnu";
            damaged[i] = bytes[rng.below(bytes.len())];
            same_report(e, &damaged);
        }
    }
}

/// `seed` (`format: int64`, in chat and legacy completions) at, beyond and around the
/// limits of an `i64`: the accept path takes the values in range itself, and both
/// checkers reject the others with the same report.
#[test]
fn int64_limits_hold_in_both_checkers() {
    let bodies = [
        (
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":SEED}"#,
        ),
        (
            Endpoint::Completions,
            r#"{"model":"m","prompt":"hi","seed":SEED}"#,
        ),
    ];
    let inside = [
        "-9223372036854775808",
        "9223372036854775807",
        "0",
        "-1",
        "1e3",
        "-1000000000000000000",
        "9999999999999999999e-1",
        // Decimals and exponents keep the rounded reading: -2^63 exactly.
        "-9223372036854775808.0",
        "-9.223372036854775808e18",
        "-9.2233720368547758085e18",
        "null",
    ];
    let outside = [
        "-9223372036854775809",
        "-9223372036854776001",
        // The last literal that the parser rounds to -2^63, and the first that it does not.
        "-9223372036854776832",
        "-9223372036854776833",
        "-10000000000000000000",
        "-92233720368547758080",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807.0",
        "9.3e18",
        "-9.3e18",
    ];
    for (e, template) in bodies {
        for v in inside {
            let body = template.replace("SEED", v);
            assert!(
                accept(e, body.as_bytes(), &mut Facts::default()).is_some(),
                "{e}: {v}"
            );
            same_report(e, body.as_bytes());
            assert!(check(e, body.as_bytes()).is_valid(), "{e}: {v}");
        }
        for v in outside {
            let body = template.replace("SEED", v);
            assert!(
                accept(e, body.as_bytes(), &mut Facts::default()).is_none(),
                "{e}: {v}"
            );
            same_report(e, body.as_bytes());
            let report = check(e, body.as_bytes());
            let [violation] = report.violations() else {
                panic!("{e}: {v}: {report:?}");
            };
            assert_eq!(violation.param, "seed", "{e}: {v}");
            assert_eq!(
                violation.message,
                "Invalid 'seed': integer out of range. Expected a 64-bit signed integer."
            );
        }
    }
}

#[test]
fn paths_read_the_openai_way() {
    let a = Path {
        parent: None,
        seg: Seg::Key("messages"),
        depth: 1,
    };
    let b = child(Some(&a), Seg::Index(2));
    let c = child(Some(&b), Seg::Owned("k"));
    assert_eq!(path_string(Some(&c)), "messages[2].k");
    assert_eq!(path_string(None), "body");
    assert!(segs::<2>(Some(&c)).is_none());
    assert!(matches!(
        segs::<3>(Some(&c)),
        Some([Seg::Key("messages"), Seg::Index(2), Seg::Owned("k")])
    ));
}

/// Every byte value at every position of a word, among plain bytes and behind another
/// special byte: the lowest flagged byte is the first `"`, `\\` or control byte.
#[test]
fn special_bytes_flags_the_first_special_byte() {
    let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
    for fill in [b'a', 0xE9, 0x7F, 0x80] {
        for at in 0..8 {
            for c in 0..=255u8 {
                let mut w = [fill; 8];
                w[at] = c;
                let hits = special_bytes(u64::from_le_bytes(w));
                let first = (hits != 0).then(|| (hits.trailing_zeros() / 8) as usize);
                let want = w.iter().position(|&b| special(b));
                assert_eq!(first, want, "{w:?}");
            }
        }
    }
}

#[test]
fn strings_are_scanned_exactly() {
    let f = |text: &str| {
        let mut facts = Facts::default();
        let mut fast = Fast::new(text.as_bytes(), &mut facts, false);
        fast.record = false;
        fast.string().map(|(a, b, esc)| (a, b, esc, fast.pos))
    };
    assert_eq!(f(r#""abc""#), Ok((0, 5, false, 5)));
    assert_eq!(f(r#""0123456789abcdef\"x" 1"#), Ok((0, 21, true, 21)));
    assert_eq!(
        f(r#""é€😀 long enough to span chunks""#).map(|r| r.2),
        Ok(false)
    );
    assert_eq!(f(r#""\ud83d\ude00""#).map(|r| r.2), Ok(true));
    assert_eq!(f(r#""\ud83d""#), Err(Stop::Unsupported));
    assert_eq!(f(r#""\ude00""#), Err(Stop::Unsupported));
    assert_eq!(f(r#""\x""#), Err(Stop::Unsupported));
    assert_eq!(f("\"a\u{7}b\""), Err(Stop::Unsupported));
    assert_eq!(f(r#""open"#), Err(Stop::Unsupported));
    assert_eq!(f(r#""\u12"#), Err(Stop::Unsupported));
}

/// The scans go a word or two words at a time: the first special byte is found at every
/// offset from the string's start and from the end of the body, and a byte from 0x80 on
/// is noted wherever it is.
#[test]
fn string_ends_are_found_at_every_offset() {
    let scan = |text: &[u8]| {
        let mut facts = Facts::default();
        let mut fast = Fast::new(text, &mut facts, false);
        fast.record = false;
        let r = fast.string().map(|(a, b, esc)| (a, b, esc, fast.pos));
        (r, fast.high & HIGHS != 0)
    };
    let mut cases = 0;
    for n in 0..48 {
        for pad in 0..20 {
            let run = "a".repeat(n);
            let tail = " ".repeat(pad);
            let body = format!("\"{run}\"{tail}");
            assert_eq!(scan(body.as_bytes()), (Ok((0, n + 2, false, n + 2)), false));
            let body = format!("\"{run}\\nbc\"{tail}");
            assert_eq!(scan(body.as_bytes()), (Ok((0, n + 6, true, n + 6)), false));
            let body = format!("\"{run}\u{1}b\"{tail}");
            assert_eq!(scan(body.as_bytes()).0, Err(Stop::Unsupported));
            let body = format!("\"{run}\u{e9}{run}\"{tail}");
            assert_eq!(
                scan(body.as_bytes()),
                (Ok((0, 2 * n + 4, false, 2 * n + 4)), true)
            );
            let body = format!("\"{run}");
            assert_eq!(scan(body.as_bytes()).0, Err(Stop::Unsupported));
            cases += 5;
        }
    }
    assert_eq!(cases, 48 * 20 * 5);
}
