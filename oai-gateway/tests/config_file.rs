//! Item 6 of issue #20: the optional TOML file (`--config FILE`), with the precedence
//! flag > environment variable > file > default, and a bad file as a clear error (exit 2).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use oai_gateway::config::LogFormat;
use support::parse;

fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oai-gateway-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const FILE: &str = r#"
# A gateway in front of a local server.
upstream = "http://127.0.0.1:9/v1"
listen = "127.0.0.1:8788"
max-body-bytes = 1048576
max_upload_bytes = 2000000          # underscores work too
body-read-timeout = "15s"
stream-idle-timeout = 20
stream-first-byte-timeout = "0"     # disabled
metrics-listen = "127.0.0.1:9464"
log-format = "json"
allow-routes = ["/v1/rerank"]
allow-admin-routes = true
"#;

#[test]
fn the_file_sets_what_the_flags_set() {
    let path = file("full.toml", FILE);
    let c = parse(&["--config", path.to_str().unwrap()], &[]).unwrap();
    assert_eq!(c.upstream, "http://127.0.0.1:9/v1");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8788");
    assert_eq!(c.max_body_bytes, 1_048_576);
    assert_eq!(c.max_upload_bytes, 2_000_000);
    assert_eq!(c.body_read_timeout, Duration::from_secs(15));
    assert_eq!(c.stream_idle_timeout, Some(Duration::from_secs(20)));
    assert_eq!(c.stream_first_byte_timeout, None);
    assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9464");
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.routes.prefixes().iter().any(|p| p == "/v1/rerank"));
    assert!(c.routes.prefixes().iter().any(|p| p == "/v1/organization"));
    assert!(c
        .routes
        .prefixes()
        .iter()
        .any(|p| p == "/v1/chat/completions"));
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let path = file("precedence.toml", FILE);
    let p = path.to_str().unwrap();
    // The environment names the file too.
    let c = parse(&[], &[("OAI_GATEWAY_CONFIG", p)]).unwrap();
    assert_eq!(c.max_body_bytes, 1_048_576);
    let env = [
        ("OAI_GATEWAY_MAX_BODY_BYTES", "2048"),
        ("OAI_GATEWAY_LOG_FORMAT", "text"),
        ("OAI_GATEWAY_ALLOW_ADMIN_ROUTES", "0"),
    ];
    let c = parse(&["--config", p], &env).unwrap();
    assert_eq!(c.max_body_bytes, 2048, "the variable over the file");
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(!c.routes.prefixes().iter().any(|p| p == "/v1/organization"));
    let c = parse(&["--config", p, "--max-body-bytes", "4096"], &env).unwrap();
    assert_eq!(c.max_body_bytes, 4096, "the flag over both");
    assert_eq!(
        c.max_upload_bytes, 2_000_000,
        "the file where nothing else says"
    );
    assert_eq!(
        c.header_read_timeout,
        Duration::from_secs(10),
        "the default"
    );
}

#[test]
fn relative_paths_in_the_file_are_relative_to_it() {
    let keys = file("keys", "alice alice-access-key-0123456789\n");
    let path = file("with-keys.toml", "access-keys-file = \"keys\"\n");
    let c = parse(
        &["--config", path.to_str().unwrap()],
        &[(
            "OPENAI_API_KEY",
            "sk-proj-SeRvErKeYsErVeRkEy0123456789abcdef",
        )],
    )
    .unwrap();
    assert_eq!(c.access_keys.len(), 1);
    assert!(keys.exists());
}

#[test]
fn a_bad_file_is_a_clear_error() {
    let cases: &[(&str, &str)] = &[
        ("max-body-bytes = \n", "not valid TOML (line 1)"),
        (
            "listen = \"127.0.0.1:1\"\nupstream = [1\n",
            "not valid TOML (line 2)",
        ),
        ("max-bodybytes = 5\n", "unknown key \"max-bodybytes\""),
        (
            "max-body-bytes = true\n",
            "key max-body-bytes: expected a string or a number, not boolean",
        ),
        (
            "allow-admin-routes = \"yes\"\n",
            "key allow-admin-routes: expected true or false",
        ),
        (
            "allow-routes = \"/v1/x\"\n",
            "key allow-routes: expected an array",
        ),
        (
            "access-keys = { a = \"b\" }\n",
            "access keys are not read from the config file",
        ),
        (
            "max-body-bytes = -1\n",
            "key max-body-bytes: \"-1\" is not a whole number",
        ),
        (
            "body-read-timeout = \"soon\"\n",
            "key body-read-timeout: \"soon\" is not a duration",
        ),
        (
            "log-format = \"xml\"\n",
            "key log-format: expected text or json",
        ),
    ];
    for (i, (text, message)) in cases.iter().enumerate() {
        let path = file(&format!("bad{i}.toml"), text);
        let err = parse(&["--config", path.to_str().unwrap()], &[]).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(message), "{text:?}: {shown}");
        assert!(shown.starts_with("--config \""), "{shown}");
        assert!(!shown.contains('\n'), "one line: {shown}");
    }
    let err = parse(&["--config", "/no/such/file.toml"], &[]).unwrap_err();
    assert!(err.to_string().contains("cannot read the file"), "{err}");
}

#[test]
fn the_binary_exits_2_on_a_bad_file() {
    let path = file("exit2.toml", "stream-idle-timeout = \"forever\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oai-gateway"))
        .args(["--config", path.to_str().unwrap()])
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("oai-gateway: --config \"") && err.contains("stream-idle-timeout"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
