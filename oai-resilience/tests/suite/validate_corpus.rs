//! The valid and invalid corpora of the validation layer.
//!
//! - `data/validate/spec_examples/`: every request-body example that `openapi.yaml` carries
//!   for the seven endpoints (extracted by `scripts/gen_validation_rules.py --examples`).
//! - `data/validate/valid/`: hand-written requests that use every optional parameter with a
//!   legal value, plus the alternative forms (nulls, string vs array, custom voices, …).
//! - `data/validate/invalid.json`: one case per rule kind per endpoint, each with the exact
//!   parameter paths of every violation it must produce.
//!
//! Each file's name starts with its endpoint: `ChatCompletions__name.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oai_resilience::validate::{self, Endpoint};
use oai_resilience::ErrorKind;
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate")
}

fn endpoint_named(name: &str) -> Endpoint {
    Endpoint::ALL
        .into_iter()
        .find(|e| format!("{e:?}") == name)
        .unwrap_or_else(|| panic!("unknown endpoint name {name}"))
}

/// (file name, endpoint, bytes) of every file in `dir`, sorted by name.
fn corpus(dir: &str) -> Vec<(String, Endpoint, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(data_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let endpoint = endpoint_named(name.split("__").next().unwrap());
            (name, endpoint, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn sorted(r: &validate::Report) -> (Vec<String>, Vec<String>) {
    let mut v: Vec<String> = r.violations().iter().map(|v| v.to_string()).collect();
    let mut d = r.deprecated().to_vec();
    v.sort();
    d.sort();
    (v, d)
}

fn assert_all_valid(dir: &str) -> usize {
    let files = corpus(dir);
    let mut rejected = Vec::new();
    for (name, endpoint, bytes) in &files {
        let report = validate::check(*endpoint, bytes);
        if !report.is_valid() {
            rejected.push(format!("{name}: {:?}", report.violations()));
        }
        let value: Value = serde_json::from_slice(bytes).unwrap();
        let by_value = validate::check_value(*endpoint, &value);
        // A `Value` object iterates its keys sorted, so only the order may differ.
        assert_eq!(
            sorted(&report),
            sorted(&by_value),
            "{name}: bytes and Value disagree"
        );
    }
    assert!(
        rejected.is_empty(),
        "false rejections:\n{}",
        rejected.join("\n")
    );
    files.len()
}

#[test]
fn every_spec_example_passes() {
    let n = assert_all_valid("spec_examples");
    assert_eq!(
        n, 22,
        "the spec carries 22 request examples for the seven endpoints"
    );
    let covered: BTreeSet<Endpoint> = corpus("spec_examples").iter().map(|c| c.1).collect();
    assert_eq!(
        covered.len(),
        Endpoint::ALL.len(),
        "an example per endpoint"
    );
}

#[test]
fn every_hand_written_valid_request_passes() {
    let n = assert_all_valid("valid");
    assert!(n >= 20, "{n}");
}

#[test]
fn the_valid_corpus_uses_every_parameter_of_every_endpoint() {
    let mut used: BTreeMap<Endpoint, BTreeSet<String>> = BTreeMap::new();
    for (_, endpoint, bytes) in corpus("valid") {
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        used.entry(endpoint)
            .or_default()
            .extend(value.as_object().unwrap().keys().cloned());
    }
    for e in Endpoint::ALL {
        let used = used.get(&e).cloned().unwrap_or_default();
        let missing: Vec<&str> = e.parameters().filter(|p| !used.contains(*p)).collect();
        assert!(missing.is_empty(), "{e}: no valid case uses {missing:?}");
    }
}

#[test]
fn deprecated_parameters_pass_and_are_reported() {
    let body =
        std::fs::read(data_dir().join("valid/ChatCompletions__all_parameters.json")).unwrap();
    let report = validate::check(Endpoint::ChatCompletions, &body);
    assert!(report.is_valid());
    let deprecated: Vec<&str> = report.deprecated().iter().map(String::as_str).collect();
    assert_eq!(
        deprecated,
        [
            "user",
            "prompt_cache_retention",
            "max_tokens",
            "seed",
            "function_call",
            "functions"
        ]
    );
}

#[test]
fn every_invalid_case_reports_exactly_its_parameters() {
    let text = std::fs::read_to_string(data_dir().join("invalid.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();

    let mut kinds: BTreeMap<Endpoint, BTreeSet<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let endpoint = endpoint_named(case["endpoint"].as_str().unwrap());
        let rule = case["rule"].as_str().unwrap();
        kinds.entry(endpoint).or_default().insert(rule.to_owned());
        let body = &serde_json::to_vec(&case["body"]).unwrap()[..];
        // Compared sorted: the case bodies go through `Value`, which sorts object keys.
        let mut want: Vec<&str> = case["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let err = match validate::validate(endpoint, body) {
            Ok(()) => {
                failures.push(format!("{endpoint} {rule}: accepted {}", case["body"]));
                continue;
            }
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::InvalidParameter);
        want.sort();
        let mut got: Vec<&str> = err.violations().iter().map(|v| v.param.as_str()).collect();
        got.sort();
        if got != want {
            failures.push(format!(
                "{endpoint} {rule}: want {want:?}, got {:?}",
                err.violations()
            ));
        }
        if let Some(msg) = case.get("message").and_then(Value::as_str) {
            if !err.violations().iter().any(|v| v.message == msg) {
                failures.push(format!(
                    "{endpoint} {rule}: no message {msg:?} in {:?}",
                    err.violations()
                ));
            }
        }
        let by_value = validate::check_value(endpoint, &case["body"]);
        assert_eq!(
            sorted(&by_value).0,
            sorted(&validate::check(endpoint, body)).0,
            "{endpoint} {rule}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every endpoint has cases for the rule kinds its schema has.
    for e in Endpoint::ALL {
        let k = kinds.get(&e).cloned().unwrap_or_default();
        assert!(k.contains("type"), "{e} lacks a type case");
        if !e.required().is_empty() {
            assert!(k.contains("required"), "{e} lacks a required case");
        }
    }
    assert!(cases.len() >= 60, "{}", cases.len());
}

#[test]
fn invalid_json_is_one_violation_on_the_body() {
    for body in [&b"{\"model\": "[..], b"not json", b"{} trailing", b""] {
        let err = validate::validate(Endpoint::Embeddings, body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParameter);
        assert_eq!(err.violations().len(), 1);
        assert_eq!(err.violations()[0].param, "body");
        assert!(
            err.violations()[0]
                .message
                .starts_with("We could not parse the JSON body"),
            "{:?}",
            err.violations()
        );
    }
}

#[test]
fn a_body_that_is_not_an_object_is_a_type_error() {
    let err = validate::validate(Endpoint::ChatCompletions, b"[1,2]").unwrap_err();
    assert_eq!(err.violations()[0].param, "body");
    assert_eq!(
        err.violations()[0].message,
        "Invalid type for 'body': expected an object, but got an array instead."
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = |prefix: &str| {
        let mut body = String::from(prefix);
        body.push_str(&"[".repeat(10_000));
        body.push_str(&"]".repeat(10_000));
        body.push('}');
        body
    };
    // Skipped subtrees are scanned without recursion: a type error, no crash.
    let body =
        deep(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"metadata":{"k":"#) + "}";
    let err = validate::validate(Endpoint::ChatCompletions, body.as_bytes()).unwrap_err();
    assert_eq!(err.violations()[0].param, "metadata.k");
    // A subtree kept to choose between alternatives hits the parser's depth limit.
    let body = deep(r#"{"model":"m","input":"#);
    let err = validate::validate(Endpoint::Embeddings, body.as_bytes()).unwrap_err();
    assert_eq!(err.violations()[0].param, "input");
    assert!(
        err.violations()[0].message.contains("recursion limit"),
        "{:?}",
        err.violations()
    );
    let by_value = serde_json::from_str::<Value>(&body);
    assert!(by_value.is_err(), "a Value cannot even hold it");
}
