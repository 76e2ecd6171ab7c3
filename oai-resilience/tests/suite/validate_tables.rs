//! The committed rule tables and spec examples are what the generator makes from the shared
//! data. Runs when `../shared/openai-openapi` (or `$OAI_SHARED_DIR`) and `python3` are present;
//! the example check also needs PyYAML. Otherwise it says why it did not run.

use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn committed_tables_match_the_generator() {
    let Some(shared) = shared() else {
        eprintln!("skipped: ../shared/openai-openapi not found");
        return;
    };
    if !python_ok("json") {
        eprintln!("skipped: python3 not found");
        return;
    }
    let out = Command::new("python3")
        .arg(repo().join("scripts/gen_validation_rules.py"))
        .arg("--stdout")
        .arg("--rules")
        .arg(shared.join("rules.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(repo().join("oai-resilience/src/validate/rules_gen.rs")).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "rules_gen.rs is stale: run `python3 scripts/gen_validation_rules.py`"
    );
}

#[test]
fn a_changed_rule_changes_the_tables() {
    // The staleness check above can fail: one bound changed in the data changes the output.
    let Some(shared) = shared() else {
        eprintln!("skipped: ../shared/openai-openapi not found");
        return;
    };
    if !python_ok("json") {
        eprintln!("skipped: python3 not found");
        return;
    }
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
    let out = Command::new("python3")
        .arg(repo().join("scripts/gen_validation_rules.py"))
        .arg("--stdout")
        .arg("--rules")
        .arg(&tmp)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(repo().join("oai-resilience/src/validate/rules_gen.rs")).unwrap();
    assert!(String::from_utf8(out.stdout).unwrap() != committed);
}

#[test]
fn committed_spec_examples_match_the_spec() {
    let Some(shared) = shared() else {
        eprintln!("skipped: ../shared/openai-openapi not found");
        return;
    };
    if !python_ok("yaml") {
        eprintln!("skipped: python3 with PyYAML not found");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("oai-validate-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("python3")
        .arg(repo().join("scripts/gen_validation_rules.py"))
        .arg("--examples")
        .arg("--spec")
        .arg(shared.join("openapi.yaml"))
        .arg("--examples-out")
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
