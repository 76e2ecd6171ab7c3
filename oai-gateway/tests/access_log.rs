//! Item 5 of issue #20: the access log, one JSON object per request with `--log-format json`.
//! Alone in its test binary: a thread-local subscriber (`set_default`) would race with other
//! tests' threads over tracing's per-callsite interest cache.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use oai_gateway::logging::JsonLines;
use oai_resilience::mock::MockServer;
use support::{config, request, CHAT};

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

#[tokio::test]
async fn the_access_log_is_one_json_object_per_request() {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("oai_gateway::access=info")
        .with_writer(buffer.clone())
        .event_format(JsonLines)
        .finish();
    // The test's runtime has one thread: the gateway's tasks log through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = MockServer::start().await;
    let server_key = support::SERVER_KEY;
    let access = "alice-access-key-0123456789";
    let c = config(
        &[
            "--upstream",
            &server.url(),
            "--access-key",
            &format!("alice={access}"),
            "--log-format",
            "json",
        ],
        &[("OPENAI_API_KEY", server_key)],
    );
    assert_eq!(c.log_format, oai_gateway::config::LogFormat::Json);
    let addr = support::start(c).await;
    let auth = format!("Bearer {access}");
    let res = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        CHAT,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = &lines[0];
    assert_eq!(line["target"], "oai_gateway::access");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], "200");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["access_key"], "alice");
    assert!(line["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        line["request_id"].as_str().unwrap().starts_with("req_"),
        "{line}"
    );
    assert!(!text.contains(access) && !text.contains(server_key));
}
