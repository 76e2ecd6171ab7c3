//! `loadtest --processes P --store ...` end to end: the real binary, its worker processes, the
//! mock it starts and (for `--store redis`) a throwaway `redis-server` it starts on a free
//! loopback port (`scripts/ensure-redis.sh` installs it). Small configurations; the
//! assertions are on counts, never on timing.

use std::process::Command;

fn loadtest(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--json", "--svg", "none"])
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect()
}

/// `loadtest --scenario SCENARIO --n N --concurrency C --processes P` and `extra`, with
/// `[N, C, P]` = `sizes`: its reports.
fn over_processes(scenario: &str, sizes: [u32; 3], extra: &[&str]) -> Vec<serde_json::Value> {
    let [n, c, p] = sizes.map(|v| v.to_string());
    let mut args = vec!["--scenario", scenario, "--n", &n];
    args.extend(["--concurrency", &c, "--processes", &p]);
    args.extend(extra);
    loadtest(&args)
}

fn count(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

#[test]
fn burst_over_two_processes_in_process_and_through_redis() {
    let reports = over_processes("burst", [40, 8, 2], &["--store", "redis"]);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r["scenario"], "burst");
    assert_eq!(count(r, "processes"), 2);
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{r}");
    assert_eq!(runs[0]["store"], "in-process");
    assert_eq!(runs[1]["store"], "redis");
    for run in runs {
        // Every call of every worker is accounted for.
        assert_eq!(count(run, "ok") + count(run, "failed"), 40, "{run}");
        assert!(run["p50_ms"].as_f64() <= run["p99_ms"].as_f64(), "{run}");
    }
    // Through Redis, cold: the first wave (8 calls, within the bucket of 20) goes out at once,
    // then both processes pace on the limits learned into Redis, so only a few 429s
    // (requests in flight that another process's headers did not count yet), each retried
    // once.
    let redis = &runs[1];
    assert_eq!(count(redis, "failed"), 0, "{redis}");
    let limited = count(redis, "server_429s");
    assert!(limited <= 3, "{redis}");
    assert!(count(redis, "requests_sent") <= 40 + limited, "{redis}");
    assert_eq!(count(redis, "redis_fallbacks"), 0, "{redis}");
}

#[test]
fn processes_without_a_store_give_one_in_process_row() {
    let reports = over_processes("flaky", [30, 6, 3], &[]);
    let runs = reports[0]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["store"], "in-process");
    assert_eq!(count(&runs[0], "ok") + count(&runs[0], "failed"), 30);
    // The mock counted every request of the three workers: at least one per call.
    assert!(count(&runs[0], "requests_sent") >= 30, "{}", runs[0]);
}

/// The cold start at a real latency (here 50 ms) over two processes, through Redis: the stack
/// pacing in-process, through Redis, and the plain client, each against the ideal.
#[test]
fn latency_over_two_processes_reports_three_rows_and_the_ideal() {
    let reports = over_processes(
        "latency",
        [16, 8, 2],
        &["--latency-ms", "50", "--store", "redis"],
    );
    let r = &reports[0];
    assert_eq!(r["scenario"], "latency");
    assert_eq!(r["latency_ms"], 50.0);
    // Two rounds of 50 ms: 8 calls at 4 in each process.
    assert_eq!(r["minimum_s"], 0.1);
    let runs = r["runs"].as_array().expect("runs");
    let stores: Vec<&str> = runs.iter().map(|r| r["store"].as_str().unwrap()).collect();
    assert_eq!(stores, ["in-process", "redis", "baseline"], "{r}");
    assert_eq!(runs[2]["client"], "baseline");
    for run in runs {
        assert_eq!(count(run, "ok"), 16, "{run}");
        assert_eq!(count(run, "failed"), 0, "{run}");
        assert_eq!(count(run, "requests_sent"), 16, "{run}");
        assert_eq!(run["minimum_s"], 0.1);
        // Nothing beats the ideal.
        assert!(run["wall_s"].as_f64().unwrap() >= 0.1, "{run}");
        assert!(run["p99_ms"].as_f64().unwrap() >= 50.0, "{run}");
    }
}

#[test]
fn help_prints_the_usage_and_exits_0() {
    for flag in ["--help", "-h"] {
        let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["--scenario", "burst", flag])
            .output()
            .expect("run loadtest");
        assert!(out.status.success(), "{flag}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("Usage: loadtest"), "{stdout}");
        assert!(stdout.contains("--latency-ms") && stdout.contains("--svg PATH"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--frobnicate")
        .output()
        .expect("run loadtest");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --frobnicate"));
}

/// A run writes no plot unless `--svg PATH` asks, and then only there.
#[test]
fn the_plot_is_written_only_where_asked() {
    let checkout_plot = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/burst.svg");
    let before = std::fs::metadata(checkout_plot)
        .and_then(|m| m.modified())
        .ok();
    let dir = std::env::temp_dir().join(format!("loadtest-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["--scenario", "burst", "--n", "24", "--concurrency", "8"])
            .args(extra)
            .current_dir(&dir)
            .output()
            .expect("run loadtest");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = run(&[]);
    assert!(!stdout.contains("plot written"), "{stdout}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing in the cwd"
    );
    let svg = dir.join("plot.svg");
    let stdout = run(&["--svg", svg.to_str().unwrap()]);
    assert!(stdout.contains("burst plot written to"), "{stdout}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let after = std::fs::metadata(checkout_plot)
        .and_then(|m| m.modified())
        .ok();
    assert_eq!(before, after, "docs/burst.svg untouched");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_store_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--store", "memcached://127.0.0.1:1"])
        .output()
        .expect("run loadtest");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown store"));
}
