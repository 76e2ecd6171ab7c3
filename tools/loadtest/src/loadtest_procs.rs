//! `--processes P` and `--store memory|redis|redis://HOST:PORT`: a scenario split over P worker
//! processes that share one server and, with Redis, one pacing store.
//!
//! The parent starts the mock (or uses `--base-url`), then re-executes this binary P times with
//! the hidden `--worker` flag. Each worker reads its share of the calls, the concurrency, the
//! server URL, the key and the store from one JSON line on stdin (so the key never appears in
//! a command line), builds the full stack ([`OpenAiLayer`], with
//! [`OpenAiLayer::pacing_store`] for Redis), says `ready`, waits for `go`, runs its calls and
//! prints one JSON line of results. The wall time runs from `go` to the last worker's
//! results, so process start-up and connection set-up are not counted.
//!
//! With a Redis store the scenario runs twice in the same run, against a fresh mock each
//! time: P processes pacing in-process (each process learns the limit alone) and P processes
//! pacing through Redis (all pace on the limits learned into Redis; nothing is configured up
//! front). `latency` and `stream-long` also run the baseline client (no stack) over P
//! processes, a third row. `--store redis` (no URL) starts a throwaway `redis-server` on a
//! free loopback port for the run (the tests' harness, `test_support::redis_server`).
//!
//! The calls are split in proportion to each process's share of the concurrency (200 calls
//! at 50 over 4 processes: 52, 52, 48, 48 calls at 13, 13, 12, 12), so that the minimum wall
//! time is ⌈N/C⌉ rounds where C divides evenly; `--latency-ms` reaches the mock as in one
//! process, and the minimum is computed from the shares ([`Config::minimum_over`]).

use std::collections::BTreeMap;
use std::process::Stdio;

use oai_resilience::pace::RedisStore;
use oai_resilience::pace::RedisStoreConfig;
use test_support::redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

/// Where the workers keep their pacing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreArg {
    /// Each process its own in-process pacer (the default).
    Memory,
    /// A Redis server at this URL.
    Redis(String),
    /// A `redis-server` that the parent starts for the run.
    RedisLocal,
}

/// The multi-process options.
#[derive(Debug, Clone)]
pub(crate) struct Multi {
    pub(crate) store: StoreArg,
    pub(crate) processes: usize,
    /// Rounds of the in-process/Redis pair (their order alternating), for a median ratio on
    /// a noisy machine.
    pub(crate) repeat: usize,
}

/// Takes `--store`, `--processes` and `--repeat` (and their values) out of `args`. `None` when neither
/// is given: the loadtest runs in one process as before.
pub(crate) fn split_args(args: Vec<String>) -> Result<(Option<Multi>, Vec<String>), String> {
    let (mut store, mut processes, mut rest) = (None, None, Vec::new());
    let mut repeat = 1;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => {
                let v = it.next().ok_or("--store needs a value")?;
                store = Some(match v.as_str() {
                    "memory" | "in-process" => StoreArg::Memory,
                    "redis" => StoreArg::RedisLocal,
                    url if url.starts_with("redis://") => StoreArg::Redis(url.to_string()),
                    other => {
                        return Err(format!(
                            "unknown store {other}; expected memory, redis or redis://HOST:PORT"
                        ))
                    }
                });
            }
            "--processes" => {
                let v = it.next().ok_or("--processes needs a value")?;
                let n: usize = v.parse().map_err(|e| format!("--processes: {e}"))?;
                if n == 0 {
                    return Err("--processes must be at least 1".into());
                }
                processes = Some(n);
            }
            "--repeat" => {
                let v = it.next().ok_or("--repeat needs a value")?;
                repeat = v.parse().map_err(|e| format!("--repeat: {e}"))?;
                if repeat == 0 {
                    return Err("--repeat must be at least 1".into());
                }
            }
            _ => rest.push(a),
        }
    }
    if store.is_none() && processes.is_none() {
        return Ok((None, rest));
    }
    Ok((
        Some(Multi {
            store: store.unwrap_or(StoreArg::Memory),
            processes: processes.unwrap_or(1),
            repeat,
        }),
        rest,
    ))
}

/// Each process's (calls, concurrency): the concurrency split as evenly as it goes (at least
/// 1 each), the calls in proportion to it.
pub(crate) fn shares(calls: usize, concurrency: usize, processes: usize) -> Vec<(usize, usize)> {
    let processes = processes.max(1);
    let conc: Vec<usize> = (0..processes)
        .map(|i| (concurrency / processes + usize::from(i < concurrency % processes)).max(1))
        .collect();
    let total: usize = conc.iter().sum();
    let mut out = Vec::with_capacity(processes);
    let (mut before, mut given) = (0, 0);
    for c in conc {
        before += c;
        let upto = calls * before / total;
        out.push((upto - given, c));
        given = upto;
    }
    out
}

/// What the parent tells a worker (one JSON line on its stdin).
fn worker_config(
    url: &str,
    (calls, concurrency): (usize, usize),
    key: &str,
    which: Which,
    scenario: Scenario,
    redis: Option<(&str, &str)>,
) -> serde_json::Value {
    serde_json::json!({
        "url": url,
        "calls": calls,
        "concurrency": concurrency,
        "key": key,
        "client": which.name(),
        "body": scenario.body(),
        "redis_url": redis.map(|r| r.0),
        "redis_prefix": redis.map(|r| r.1),
    })
}

/// The worker: `loadtest --worker`. Reads its configuration from stdin, answers on stdout.
pub(crate) async fn worker_main() -> Result<(), BoxError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let line = lines.next_line().await?.ok_or("worker: no configuration")?;
    let cfg: serde_json::Value = serde_json::from_str(&line)?;
    let field = |name: &str| {
        cfg[name]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("worker: {name} missing"))
    };
    let count = |name: &str| {
        cfg[name]
            .as_u64()
            .map(|n| n as usize)
            .ok_or(format!("worker: {name} missing"))
    };
    let (url, key, body) = (field("url")?, field("key")?, field("body")?);
    let body = Bytes::from(body);
    let (calls, concurrency) = (count("calls")?, count("concurrency")?);
    let counter = Counter::default();
    let mut redis = None;
    let svc = if cfg["client"] == Which::Baseline.name() {
        build(Which::Baseline, &url, &key, &counter)?
    } else {
        let client: Client<HttpConnector, ValidateBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build_http();
        let client = Counted {
            inner: client,
            counter: counter.clone(),
        };
        let mut layer = OpenAiLayer::new()
            .base_url(api_base(&url).parse()?)
            .auth(AuthLayer::from_key(key));
        if let (Some(u), Some(prefix)) = (cfg["redis_url"].as_str(), cfg["redis_prefix"].as_str()) {
            let mut config = RedisStoreConfig::default();
            config.prefix = prefix.to_string();
            let store = RedisStore::connect(u, config).await?;
            layer = layer.pacing_store(store.clone());
            redis = Some(store);
        }
        BoxCloneService::new(layer.layer(client))
    };
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    let go = lines.next_line().await?;
    if go.as_deref() != Some("go") {
        return Err(format!("worker: expected go, got {go:?}").into());
    }
    let cpu_before = process_cpu();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(calls);
    for _ in 0..calls {
        let (svc, gate) = (svc.clone(), gate.clone());
        let req = http::Request::post(PATH)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.ok();
            let began = Instant::now();
            let res = one_call(svc, req).await;
            (began.elapsed(), res)
        }));
    }
    let (mut ok, mut by_kind, mut latencies) = (0usize, BTreeMap::<String, usize>::new(), vec![]);
    for t in tasks {
        let (took, res) = t.await?;
        latencies.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        match res {
            Ok(()) => ok += 1,
            Err(kind) => *by_kind.entry(kind.to_string()).or_default() += 1,
        }
    }
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let result = serde_json::json!({
        "cpu_us": cpu.map(|c| u64::try_from(c.as_micros()).unwrap_or(u64::MAX)),
        "ok": ok,
        "failed_by_kind": by_kind,
        "latencies_us": latencies,
        "sent": counter.sent.load(Ordering::Relaxed),
        "fallbacks": redis.as_ref().map_or(0, RedisStore::fallbacks),
    });
    out.write_all(format!("{result}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// One row of a multi-process run.
#[derive(Debug, Clone)]
pub(crate) struct ProcRun {
    /// `in-process` or `redis` (the stack), or `baseline` (the plain client).
    pub(crate) label: &'static str,
    pub(crate) run: Run,
    /// 429s the mock answered (`None` with `--base-url`).
    pub(crate) server_429s: Option<u64>,
    /// Redis operations that fell back to in-process pacing, over all workers.
    pub(crate) fallbacks: u64,
}

/// A unique key prefix per run, so that earlier runs' state in the same Redis is not reused.
fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("oai-resilience:loadtest:{}:{nanos}", std::process::id())
}

/// Runs `cfg` over `processes` workers: the stack pacing in-process (`redis: None`) or through
/// Redis, or the baseline client (`Which::Baseline`; `redis` unused).
async fn run_procs(
    cfg: &Config,
    processes: usize,
    which: Which,
    redis: Option<&str>,
) -> Result<ProcRun, BoxError> {
    let redis = redis.filter(|_| which == Which::Stack);
    let mock = match &cfg.base_url {
        None => Some(start_mock(cfg).await),
        Some(_) => None,
    };
    let url = match (&mock, &cfg.base_url) {
        (Some(m), _) => m.url(),
        (None, Some(u)) => u.clone(),
        (None, None) => return Err("no server".into()),
    };
    let prefix = fresh_prefix();
    let exe = std::env::current_exe()?;
    let mut workers = Vec::with_capacity(processes);
    for share in shares(cfg.calls, cfg.concurrency, processes) {
        let mut child = tokio::process::Command::new(&exe)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let config = worker_config(
            &url,
            share,
            &cfg.api_key,
            which,
            cfg.scenario,
            redis.map(|r| (r, prefix.as_str())),
        );
        stdin.write_all(format!("{config}\n").as_bytes()).await?;
        stdin.flush().await?;
        workers.push((child, stdin, BufReader::new(stdout).lines()));
    }
    for (_, _, lines) in &mut workers {
        let ready = lines.next_line().await?;
        if ready.as_deref() != Some("ready") {
            return Err(format!("worker did not start: {ready:?}").into());
        }
    }
    let start = Instant::now();
    for (_, stdin, _) in &mut workers {
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let results: Vec<_> = workers
        .into_iter()
        .map(|(mut child, _stdin, mut lines)| {
            tokio::spawn(async move {
                let line = lines.next_line().await;
                let status = child.wait().await;
                (line, status)
            })
        })
        .collect();
    let mut outputs = Vec::with_capacity(processes);
    for r in results {
        let (line, status) = r.await?;
        let line = line?.ok_or_else(|| format!("a worker gave no results ({:?})", status))?;
        outputs.push(serde_json::from_str::<serde_json::Value>(&line)?);
    }
    let wall = start.elapsed();
    let (mut ok, mut sent, mut fallbacks) = (0usize, 0u64, 0u64);
    // The workers' CPU (client side: stack, HTTP client, Redis client), where every worker
    // could tell; not the mock's nor the Redis server's.
    let mut cpu = Some(Duration::ZERO);
    let mut by_kind = BTreeMap::<String, usize>::new();
    let mut latencies = Vec::with_capacity(cfg.calls);
    for o in &outputs {
        ok += o["ok"].as_u64().unwrap_or(0) as usize;
        sent += o["sent"].as_u64().unwrap_or(0);
        fallbacks += o["fallbacks"].as_u64().unwrap_or(0);
        cpu = cpu
            .zip(o["cpu_us"].as_u64())
            .map(|(c, us)| c + Duration::from_micros(us));
        if let Some(m) = o["failed_by_kind"].as_object() {
            for (k, n) in m {
                *by_kind.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0) as usize;
            }
        }
        if let Some(l) = o["latencies_us"].as_array() {
            latencies.extend(
                l.iter()
                    .filter_map(|v| v.as_u64())
                    .map(Duration::from_micros),
            );
        }
    }
    latencies.sort();
    let counts = mock.as_ref().map(MockServer::counts);
    Ok(ProcRun {
        label: match (which, redis) {
            (Which::Stack, Some(_)) => "redis",
            (Which::Stack, None) => "in-process",
            _ => "baseline",
        },
        run: Run {
            which,
            client: ClientKind::Hyper,
            calls: cfg.calls,
            ok,
            failed_by_kind: by_kind.into_iter().collect(),
            requests_sent: counts.as_ref().map_or(sent, |c| c.total),
            wall,
            p50: quantile(&latencies, 0.5),
            p99: quantile(&latencies, 0.99),
            outage: None,
            samples: Vec::new(),
            cpu,
        },
        server_429s: counts.map(|c| c.rate_limited),
        fallbacks,
    })
}

/// A multi-process scenario's rows: in-process, and Redis when a Redis store was given.
#[derive(Debug, Clone)]
pub(crate) struct ProcReport {
    pub(crate) scenario: Scenario,
    pub(crate) processes: usize,
    /// The mock's answer latency.
    pub(crate) latency: Duration,
    pub(crate) minimum: Option<Duration>,
    pub(crate) rows: Vec<ProcRun>,
}

impl ProcReport {
    /// The table rows (the loadtest's columns; the client column says the store).
    pub(crate) fn table(&self) -> String {
        let name = format!("{} x{}", self.scenario.name(), self.processes);
        self.rows
            .iter()
            .map(|r| {
                let label = format!("| stack, {} |", r.label);
                row(&name, &r.run, self.minimum).replacen("| stack |", &label, 1)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The targets for the Redis row, the 429s, and the Redis/in-process ratios.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rows {
            // Only the stack's rows have a pacer that could fall back.
            let fallbacks = match r.run.which {
                Which::Stack => format!(", {} Redis fallbacks", r.fallbacks),
                _ => String::new(),
            };
            out.push(format!(
                "{} x{} ({}): {} server 429s{fallbacks}",
                self.scenario.name(),
                self.processes,
                r.label,
                r.server_429s.map_or("-".into(), |n| n.to_string()),
            ));
        }
        for redis in self.rows.iter().filter(|r| r.label == "redis") {
            let (Scenario::Burst, Some(min)) = (self.scenario, self.minimum) else {
                break;
            };
            let s = &redis.run;
            let wall = s.wall.as_secs_f64() / min.as_secs_f64();
            let met = s.failed() == 0 && s.per_call() <= 1.15 && wall <= 1.10;
            out.push(format!(
                "burst x{} (redis): target {}: 0 failed ({}), req/call <= 1.15 ({:.3}), \
                 wall <= 1.10x min ({wall:.3}x)",
                self.processes,
                if met { "met" } else { "MISSED" },
                s.failed(),
                s.per_call()
            ));
        }
        // The cold start at a real latency: the stack's rows against the ideal, the
        // baseline's figure beside them.
        if matches!(self.scenario, Scenario::Latency | Scenario::StreamLong) {
            let baseline = self
                .rows
                .iter()
                .filter(|r| r.label == "baseline")
                .filter_map(|r| r.run.over(self.minimum))
                .map(|w| format!("{w:.3}x"))
                .collect::<Vec<_>>();
            let beside = if baseline.is_empty() {
                String::new()
            } else {
                format!("; baseline {}", baseline.join(", "))
            };
            for r in self.rows.iter().filter(|r| r.label != "baseline") {
                let s = &r.run;
                let wall = s.over(self.minimum).unwrap_or(f64::NAN);
                let met = s.failed() == 0 && wall <= 1.10;
                out.push(format!(
                    "{} x{} ({}): target {}: 0 failed ({}), wall <= 1.10x ideal ({wall:.3}x{beside}), \
                     p99 {:.0} ms at latency {:.0} ms, requests {} for {} calls",
                    self.scenario.name(),
                    self.processes,
                    r.label,
                    if met { "met" } else { "MISSED" },
                    s.failed(),
                    s.p99.as_secs_f64() * 1e3,
                    self.latency.as_secs_f64() * 1e3,
                    s.requests_sent,
                    s.calls,
                ));
            }
        }
        // The overhead of the store where both rows do the same work (no limit to wait for).
        if self.scenario == Scenario::Clean {
            for (local, redis) in self.pairs() {
                let cpu = match (redis.run.cpu, local.run.cpu) {
                    (Some(r), Some(l)) => format!("{:.3}", ratio(r, l)),
                    _ => "-".into(),
                };
                out.push(format!(
                    "{} x{}: redis / in-process: calls/s {:.3}, p50 {:.3}, p99 {:.3}, \
                     client CPU {cpu}",
                    self.scenario.name(),
                    self.processes,
                    redis.run.rps() / local.run.rps().max(1e-9),
                    ratio(redis.run.p50, local.run.p50),
                    ratio(redis.run.p99, local.run.p99),
                ));
            }
            if let Some(m) = self.median_rps_ratio().filter(|_| self.pairs().count() > 1) {
                let cpu = self
                    .median_cpu_ratio()
                    .map_or("-".into(), |c| format!("{c:.3}"));
                out.push(format!(
                    "{} x{}: redis / in-process, median of {} rounds: calls/s {m:.3}, \
                     client CPU {cpu}",
                    self.scenario.name(),
                    self.processes,
                    self.pairs().count()
                ));
            }
        }
        out
    }

    /// The (in-process, Redis) rows of each round.
    fn pairs(&self) -> impl Iterator<Item = (&ProcRun, &ProcRun)> {
        let of = |label: &'static str| self.rows.iter().filter(move |r| r.label == label);
        of("in-process").zip(of("redis"))
    }

    /// The median over rounds of Redis calls/s / in-process calls/s.
    pub(crate) fn median_rps_ratio(&self) -> Option<f64> {
        median(
            self.pairs()
                .map(|(l, r)| r.run.rps() / l.run.rps().max(1e-9))
                .collect(),
        )
    }

    /// The median over rounds of the workers' CPU time through Redis / in-process.
    pub(crate) fn median_cpu_ratio(&self) -> Option<f64> {
        let ratios: Option<Vec<f64>> = self
            .pairs()
            .map(|(l, r)| Some(ratio(r.run.cpu?, l.run.cpu?)))
            .collect();
        median(ratios?)
    }

    /// `{"scenario":..,"processes":..,"minimum_s":..,"runs":[..]}`.
    pub(crate) fn json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = r.run.json_against(self.minimum);
                v["client"] = match r.run.which {
                    Which::Stack => format!("stack, {}", r.label),
                    other => other.name().to_string(),
                }
                .into();
                v["store"] = r.label.into();
                v["server_429s"] = r.server_429s.into();
                v["redis_fallbacks"] = r.fallbacks.into();
                v["client_cpu_s"] = r.run.cpu.map(|c| c.as_secs_f64()).into();
                v
            })
            .collect();
        serde_json::json!({
            "scenario": self.scenario.name(),
            "processes": self.processes,
            "latency_ms": self.latency.as_secs_f64() * 1e3,
            "minimum_s": self.minimum.map(|m| m.as_secs_f64()),
            "runs": runs,
            "median_rps_ratio_redis_to_in_process": self.median_rps_ratio(),
            "median_cpu_ratio_redis_to_in_process": self.median_cpu_ratio(),
        })
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn median(mut r: Vec<f64>) -> Option<f64> {
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => None,
        n if n % 2 == 1 => Some(r[n / 2]),
        n => Some((r[n / 2 - 1] + r[n / 2]) / 2.0),
    }
}

/// Runs one scenario over `multi.processes` workers: in-process pacing, and with a Redis
/// store the same again through Redis.
pub(crate) async fn run_multi(cfg: &Config, multi: &Multi) -> Result<ProcReport, BoxError> {
    let local_redis = match multi.store {
        StoreArg::RedisLocal => Some(
            RedisServer::try_start().map_err(|e| format!("could not start redis-server: {e}"))?,
        ),
        _ => None,
    };
    let redis_url = match (&multi.store, &local_redis) {
        (StoreArg::Redis(u), _) => Some(u.clone()),
        (_, Some(l)) => Some(l.url()),
        _ => None,
    };
    // The real-latency scenarios compare with the plain client over the same processes.
    let baseline = matches!(cfg.scenario, Scenario::Latency | Scenario::StreamLong) && cfg.baseline;
    let mut rows = Vec::new();
    for round in 0..multi.repeat {
        let p = multi.processes;
        let mut order: Vec<(Which, Option<&str>)> = vec![(Which::Stack, None)];
        if let Some(url) = &redis_url {
            order.push((Which::Stack, Some(url)));
        }
        if baseline {
            order.push((Which::Baseline, None));
        }
        // Odd rounds run in the reverse order, so that no row always runs on a warmer machine.
        if round % 2 == 1 {
            order.reverse();
        }
        let mut round_rows = Vec::new();
        for (which, redis) in order {
            round_rows.push(run_procs(cfg, p, which, redis).await?);
        }
        // The table keeps one order: in-process, redis, baseline.
        round_rows.sort_by_key(|r| match r.label {
            "in-process" => 0,
            "redis" => 1,
            _ => 2,
        });
        rows.extend(round_rows);
    }
    Ok(ProcReport {
        scenario: cfg.scenario,
        processes: multi.processes,
        latency: cfg.latency,
        minimum: cfg.minimum_over(&shares(cfg.calls, cfg.concurrency, multi.processes)),
        rows,
    })
}

/// `main` with `--processes` or `--store`: every scenario but `outage` (its open-loop arrivals
/// and timed fault switch run in one process only).
pub(crate) async fn main_multi(args: &Args, multi: &Multi) -> Result<(), BoxError> {
    let say = |s: &str| super::print_line(args.json, s);
    say(HEADER);
    let mut notes = Vec::new();
    for &scenario in &args.scenarios {
        if scenario == Scenario::Outage {
            notes.push("outage: skipped with --processes/--store (one process only)".to_string());
            continue;
        }
        let report = run_multi(&args.config(scenario), multi).await?;
        say(&report.table());
        if args.json {
            println!("{}", report.json());
        }
        notes.extend(report.lines());
    }
    for n in notes {
        say(&n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn store_and_processes_are_taken_out_of_the_arguments() {
        let (m, rest) = split_args(strings(&[
            "--scenario",
            "burst",
            "--store",
            "redis://127.0.0.1:6379",
            "--processes",
            "4",
            "--json",
        ]))
        .unwrap();
        let m = m.unwrap();
        assert_eq!(m.store, StoreArg::Redis("redis://127.0.0.1:6379".into()));
        assert_eq!((m.processes, m.repeat), (4, 1));
        assert_eq!(rest, strings(&["--scenario", "burst", "--json"]));
        let (m, rest) = split_args(strings(&["--n", "10"])).unwrap();
        assert!(m.is_none());
        assert_eq!(rest, strings(&["--n", "10"]));
        let (m, _) = split_args(strings(&["--store", "redis"])).unwrap();
        assert_eq!(
            m.map(|m| (m.store, m.processes)),
            Some((StoreArg::RedisLocal, 1))
        );
    }

    #[test]
    fn calls_are_split_in_proportion_to_the_concurrency() {
        assert_eq!(
            shares(200, 50, 4),
            vec![(52, 13), (52, 13), (48, 12), (48, 12)]
        );
        assert_eq!(shares(40, 8, 2), vec![(20, 4), (20, 4)]);
        assert_eq!(shares(30, 6, 3), vec![(10, 2), (10, 2), (10, 2)]);
        // Fewer slots than processes: each process still gets one.
        let s = shares(10, 2, 4);
        assert!(s.iter().all(|&(_, c)| c == 1), "{s:?}");
        assert_eq!(s.iter().map(|s| s.0).sum::<usize>(), 10);
        // The ideal over the shares is the one-process formula where C splits evenly.
        let mut cfg = Config::new(Scenario::Latency);
        cfg.latency = Duration::from_millis(2000);
        assert_eq!(
            cfg.minimum_over(&shares(200, 50, 4)),
            Some(Duration::from_secs(8))
        );
        assert_eq!(cfg.minimum(), Some(Duration::from_secs(8)));
        // 50 calls at 12 take 5 rounds.
        assert_eq!(
            cfg.minimum_over(&[(50, 12), (50, 13)]),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn bad_store_or_processes_are_errors() {
        assert!(split_args(strings(&["--store", "memcached://x"])).is_err());
        assert!(split_args(strings(&["--store"])).is_err());
        assert!(split_args(strings(&["--processes", "0"])).is_err());
        assert!(split_args(strings(&["--processes", "four"])).is_err());
        assert!(split_args(strings(&["--repeat", "0"])).is_err());
        let (m, _) = split_args(strings(&["--store", "redis", "--repeat", "3"])).unwrap();
        assert_eq!(m.map(|m| m.repeat), Some(3));
    }
}
