//! The committed rule tables and spec examples are what the generator makes from the shared
//! data. Runs when `../shared/openai-openapi` (or `$OAI_SHARED_DIR`) and `python3` are present;
//! the example check also needs PyYAML. Otherwise it says why it did not run.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn shared() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("OAI_SHARED_DIR") {
        return Some(PathBuf::from(dir));
    }
    repo()
        .ancestors()
        .skip(1)
        .take(4)
        .map(|d| d.join("shared/openai-openapi"))
        .find(|d| d.join("rules.json").is_file())
}

fn python_ok(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The shared data directory, when it is found and `python3` can import `module`; otherwise
/// prints which is missing (`python` names the interpreter the test wants) and gives `None`.
fn shared_and_python(module: &str, python: &str) -> Option<PathBuf> {
    let Some(shared) = shared() else {
        eprintln!("skipped: ../shared/openai-openapi not found");
        return None;
    };
    if !python_ok(module) {
        eprintln!("skipped: {python} not found");
        return None;
    }
    Some(shared)
}

/// Runs `scripts/gen_validation_rules.py` with `args`.
fn generator(args: &[&OsStr]) -> Output {
    Command::new("python3")
        .arg(repo().join("scripts/gen_validation_rules.py"))
        .args(args)
        .output()
        .unwrap()
}

/// The generator's standard output, after asserting that it succeeded (its stderr otherwise).
fn succeeded(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The committed `rules_gen.rs`.
fn committed_rules() -> String {
    std::fs::read_to_string(repo().join("oai-resilience/src/validate/rules_gen.rs")).unwrap()
}

#[test]
fn committed_tables_match_the_generator() {
    let Some(shared) = shared_and_python("json", "python3") else {
        return;
    };
    let rules = shared.join("rules.json");
    let out = generator(&["--stdout".as_ref(), "--rules".as_ref(), rules.as_ref()]);
    assert!(
        succeeded(out) == committed_rules(),
        "rules_gen.rs is stale: run `python3 scripts/gen_validation_rules.py`"
    );
}

#[test]
fn a_changed_rule_changes_the_tables() {
    // The staleness check above can fail: one bound changed in the data changes the output.
    let Some(shared) = shared_and_python("json", "python3") else {
        return;
    };
    let text = std::fs::read_to_string(shared.join("rules.json")).unwrap();
    let mut rules: serde_json::Value = serde_json::from_str(&text).unwrap();
    let temperature = rules["operations"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|op| op["operation"] == "POST /chat/completions")
        .unwrap()["properties"]["temperature"]
        .as_object_mut()
        .unwrap();
    assert_eq!(temperature["maximum"], 2);
    temperature.insert("maximum".into(), 3.into());
    let tmp = std::env::temp_dir().join(format!("oai-validate-rules-{}.json", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&rules).unwrap()).unwrap();
    let out = generator(&["--stdout".as_ref(), "--rules".as_ref(), tmp.as_ref()]);
    let _ = std::fs::remove_file(&tmp);
    assert!(succeeded(out) != committed_rules());
}

#[test]
fn committed_spec_examples_match_the_spec() {
    let Some(shared) = shared_and_python("yaml", "python3 with PyYAML") else {
        return;
    };
    let tmp = std::env::temp_dir().join(format!("oai-validate-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let spec = shared.join("openapi.yaml");
    let out = generator(&[
        "--examples".as_ref(),
        "--spec".as_ref(),
        spec.as_ref(),
        "--examples-out".as_ref(),
        tmp.as_ref(),
    ]);
    succeeded(out);
    let list = |dir: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let fresh = list(&tmp);
    let committed = list(&repo().join("oai-resilience/tests/data/validate/spec_examples"));
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(fresh.len(), committed.len());
    assert!(
        fresh == committed,
        "spec_examples are stale: run the generator with --examples"
    );
}
