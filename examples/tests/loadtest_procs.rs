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

fn count(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

#[test]
fn burst_over_two_processes_in_process_and_through_redis() {
    let reports = loadtest(&[
        "--scenario",
        "burst",
        "--n",
        "40",
        "--concurrency",
        "8",
        "--processes",
        "2",
        "--store",
        "redis",
    ]);
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
    // Through Redis, cold: each process probes once, then both pace on the limits learned
    // into Redis, so only a few 429s (the other process's probe, not yet counted in the first
    // one's headers; requests in flight), each retried once.
    let redis = &runs[1];
    assert_eq!(count(redis, "failed"), 0, "{redis}");
    let limited = count(redis, "server_429s");
    assert!(limited <= 3, "{redis}");
    assert!(count(redis, "requests_sent") <= 40 + limited, "{redis}");
    assert_eq!(count(redis, "redis_fallbacks"), 0, "{redis}");
}

#[test]
fn processes_without_a_store_give_one_in_process_row() {
    let reports = loadtest(&[
        "--scenario",
        "flaky",
        "--n",
        "30",
        "--concurrency",
        "6",
        "--processes",
        "3",
    ]);
    let runs = reports[0]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["store"], "in-process");
    assert_eq!(count(&runs[0], "ok") + count(&runs[0], "failed"), 30);
    // The mock counted every request of the three workers: at least one per call.
    assert!(count(&runs[0], "requests_sent") >= 30, "{}", runs[0]);
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
