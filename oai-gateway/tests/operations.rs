//! Item 5 of issue #20 (part): health endpoints, the header-read and body-read timeouts, the
//! connection cap, an oversized declared body refused at once, and the SIGTERM drain of the
//! binary.

mod support;

use std::process::Stdio;
use std::time::Duration;

use oai_resilience::mock::MockServer;
use support::{chat_as, config_for, raw, raw_gateway, request, start, KEY};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn healthz_and_readyz() {
    let (upstream, gw) = raw_gateway(&[], &[]).await;
    let res = request(gw, "GET", "/healthz", &[], "").await;
    assert_eq!(
        (res.status, res.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let res = request(gw, "GET", "/readyz", &[], "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert!(upstream.received().is_empty());

    let unresolvable = start(config_for("https://no-such-host.invalid/v1", &[], &[])).await;
    let res = request(unresolvable, "GET", "/healthz", &[], "").await;
    assert_eq!(res.status, 200);
    let res = request(unresolvable, "GET", "/readyz", &[], "").await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(res.json()["reason"].as_str().unwrap().contains("resolve"));
}

#[tokio::test(start_paused = true)]
async fn an_oversized_declared_body_is_refused_at_once() {
    let (upstream, gw) = raw_gateway(&["--max-body-bytes", "1024"], &[]).await;
    let start = Instant::now();
    // 10 GB declared, 8 bytes sent, the connection left open.
    let res = raw(
        gw,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\ncontent-length: 10000000000\r\n\r\n{{\"model\""
        ),
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.body);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(res.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1024"));
    // A body over the limit without a declared length (chunked) is cut at the limit: 413.
    let big = "x".repeat(2000);
    let res = raw(
        gw,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        ),
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.body);
    assert!(upstream.received().is_empty());
}

/// Whether the server closes `stream` within `within` (reads until EOF or an error).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(start_paused = true)]
async fn slow_clients_are_cut_off() {
    let (upstream, gw) = raw_gateway(
        &[
            "--header-read-timeout",
            "300ms",
            "--body-read-timeout",
            "300ms",
        ],
        &[],
    )
    .await;
    // Silence after connecting.
    let mut silent = TcpStream::connect(gw).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    // Headers never finished.
    let mut slow = TcpStream::connect(gw).await.unwrap();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
    // A body that stops arriving: 408.
    let start = Instant::now();
    let res = raw(
        gw,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             content-length: 100\r\n\r\n{{\"model\""
        ),
    )
    .await;
    assert_eq!(res.status, 408, "{}", res.body);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(upstream.received().is_empty());
}

#[tokio::test(start_paused = true)]
async fn connections_over_the_cap_wait() {
    let (_upstream, gw) = raw_gateway(
        &["--max-connections", "2", "--header-read-timeout", "30s"],
        &[],
    )
    .await;
    let a = TcpStream::connect(gw).await.unwrap();
    let _b = TcpStream::connect(gw).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = tokio::spawn(async move { request(gw, "GET", "/healthz", &[], "").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");
    drop(a);
    let res = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(res.status, 200);
}

/// Runs the binary with `args`; returns the child and the address it listens on.
async fn spawn_binary(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oai-gateway"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("oai-gateway: listening on http://") {
                return rest.split('/').next().unwrap().to_owned();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("the gateway did not start listening");
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_exits_0() {
    let upstream = MockServer::builder()
        .latency(Duration::from_millis(1500))
        .start()
        .await;
    let url = upstream.url();
    let (mut child, addr) = spawn_binary(&["--upstream", &url, "--drain-timeout", "20s"]).await;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { chat_as(addr, KEY).await }))
        .collect();
    // The calls are at the upstream when the signal comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the gateway exits after the drain")
        .unwrap();
    for call in calls {
        let res = call.await.unwrap();
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.json()["object"], "chat.completion");
    }
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(upstream.counts().ok, 3);
    // Nobody listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn help_lists_the_flags_and_bad_configuration_exits_2() {
    let bin = env!("CARGO_BIN_EXE_oai-gateway");
    let out = tokio::process::Command::new(bin)
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--upstream ",
        "--upstream-ca",
        "--upstream-auth-header",
        "--access-key ",
        "--access-keys-file",
        "--allow-route",
        "--allow-admin-routes",
        "--max-body-bytes",
        "--max-buffered-bytes",
        "--header-read-timeout",
        "--body-read-timeout",
        "--max-connections",
        "--drain-timeout",
        "--max-pacing-wait",
        "--min-upload-rate",
        "--store",
        "OPENAI_API_KEY",
        "OAI_GATEWAY_UPSTREAM",
    ] {
        assert!(help.contains(flag), "--help does not list {flag}");
    }
    let secret = "gw-secret-0123456789abcdef";
    let access = format!("team={secret}");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    // (arguments, the error expected), with no environment.
    let without_env: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--bogus"], "unknown option \"--bogus\""),
        (vec!["--listen", "nowhere"], "--listen"),
        (
            vec!["--upstream", "api.openai.com/v1"],
            "--upstream: invalid base URL",
        ),
        (vec!["--access-key", &access], "OPENAI_API_KEY is not set"),
        (vec!["--access-key", "team"], "expected NAME=KEY"),
        (vec!["--max-body-bytes", "0"], "--max-body-bytes"),
        (
            vec!["--max-body-bytes", "1000", "--max-buffered-bytes", "999"],
            "--max-buffered-bytes must be at least --max-body-bytes",
        ),
        (vec!["--drain-timeout", "soon"], "--drain-timeout"),
        (vec!["--max-pacing-wait", "0"], "--max-pacing-wait"),
        (vec!["--min-upload-rate", "fast"], "--min-upload-rate"),
        (vec!["--upstream-ca", "/no/such/ca.pem"], "--upstream-ca"),
        (vec!["--store", "memcached://x"], "--store"),
        (vec!["--upstream"], "--upstream needs a value"),
        (vec!["--no-default-routes"], "no route"),
    ];
    let mut cases: Vec<Case<'_>> = without_env
        .into_iter()
        .map(|(args, want)| (args, vec![], want))
        .collect();
    cases.push((
        vec!["--access-key", "team=short"],
        vec![("OPENAI_API_KEY", KEY)],
        "shorter than",
    ));
    // A bad value in a variable: the error names the variable.
    for (name, value) in [
        ("OAI_GATEWAY_MAX_CONNECTIONS", "many"),
        ("OAI_GATEWAY_ALLOW_ADMIN_ROUTES", "maybe"),
    ] {
        cases.push((vec![], vec![(name, value)], name));
    }
    for (args, env, want) in cases {
        let out = tokio::process::Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("OPENAI_API_KEY")
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("oai-gateway: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains(secret),
            "{args:?}: {err}"
        );
    }
}

/// Sends `bytes` one at a time, one every `every`, until they run out or the gateway closes
/// the connection.
fn trickle(mut w: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Then silence, with the connection open.
        std::future::pending::<()>().await;
    });
}

/// Reads `r` until the gateway closes it; the status of the response it sent first, if any.
async fn status_then_close(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

/// The seven slow-client shapes of item 7 of issue #20, and a streamed upload at a trickle,
/// each cut within its bound (paused clock: the times are the gateway's timers, exactly).
#[tokio::test(start_paused = true)]
async fn each_slow_client_shape_is_cut_within_its_timeout() {
    let (upstream, gw) = raw_gateway(
        &[
            "--header-read-timeout",
            "1s",
            "--body-read-timeout",
            "1s",
            "--min-upload-rate",
            "1000",
            "--max-body-bytes",
            "1000",
        ],
        &[],
    )
    .await;
    let tick = Duration::from_millis(100);
    let bound = Duration::from_millis(1100);
    let auth = format!("authorization: Bearer {KEY}\r\n");
    let json_head = |len: u64| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    let upload_head = |len: u64| {
        format!(
            "POST /v1/files HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    // (shape, what the client sends, one byte per tick or all at once, the answer expected
    // before the close: None = closed without one)
    let long_header = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: {}",
        "a".repeat(100)
    );
    let cases: Vec<(&str, Vec<u8>, bool, Option<u16>)> = vec![
        ("silence after connecting", vec![], false, None),
        (
            "headers at 10 bytes/s",
            long_header.into_bytes(),
            true,
            None,
        ),
        (
            "headers never finished",
            b"GET /v1/models HTTP/1.1\r\nhost: x\r\n".to_vec(),
            false,
            None,
        ),
        (
            "JSON body at 10 bytes/s",
            [json_head(100).into_bytes(), vec![b' '; 100]].concat(),
            true,
            Some(408),
        ),
        (
            "JSON body that stops",
            format!("{}{{\"model\"", json_head(100)).into_bytes(),
            false,
            Some(408),
        ),
        (
            "10 GB declared, 8 bytes sent",
            format!("{}{{\"model\"", json_head(10_000_000_000)).into_bytes(),
            false,
            Some(413),
        ),
        (
            "upload that stops",
            format!("{}12345678", upload_head(1000)).into_bytes(),
            false,
            Some(408),
        ),
        (
            "upload at 10 bytes/s",
            [upload_head(1000).into_bytes(), vec![b'x'; 1000]].concat(),
            true,
            Some(408),
        ),
    ];
    for (shape, bytes, slow, expected) in cases {
        let stream = TcpStream::connect(gw).await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let start = Instant::now();
        if slow {
            // The head at once when there is a body, so that the body is what trickles.
            let split = if expected.is_some() {
                bytes.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4
            } else {
                0
            };
            w.write_all(&bytes[..split]).await.unwrap();
            trickle(w, bytes[split..].to_vec(), tick);
        } else {
            w.write_all(&bytes).await.unwrap();
            tokio::spawn(async move {
                let _w = w;
                std::future::pending::<()>().await;
            });
        }
        let status = tokio::time::timeout(Duration::from_secs(30), status_then_close(&mut r))
            .await
            .unwrap_or_else(|_| panic!("{shape}: still open after 30 s"));
        let took = start.elapsed();
        assert_eq!(status, expected, "{shape}");
        assert!(took <= bound, "{shape}: cut after {took:?}");
    }
    // An idle kept-alive connection: one request answered, then silence.
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    w.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = r.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let start = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), status_then_close(&mut r))
        .await
        .expect("an idle kept-alive connection is still open after 30 s");
    assert_eq!(status, None);
    assert!(
        start.elapsed() <= bound,
        "idle keep-alive cut after {:?}",
        start.elapsed()
    );
    drop(w);
    // Only the uploads' heads (streamed as they came) reached the upstream.
    assert!(upstream
        .received()
        .iter()
        .all(|r| r.request_line().starts_with("POST /v1/files")));
}
