//! `brownout`: the primary answers 100 % 503 for 20 s, then recovers; a secondary is healthy.
//!
//! Two embedded mocks (20 ms latency, no limits), calls arriving at 20 per second for 30 s
//! (600 calls, at most 50 in flight); the primary's 503s last from the start to 20 s. Rows:
//!
//! - `stack`: [`FallbackLayer`] with two routes, `primary` and `secondary`, each an
//!   [`OpenAiLayer`] (default retry, budget and pacer); the primary's breaker is the
//!   scenario's: 3 consecutive failures open it for 1.5 s ([`scenario_breaker`]);
//! - `stack (default breaker)`: the same routes with a breaker of the default configuration
//!   (`CircuitBreakerLayer::new()`: 5 consecutive failures or half the calls of 10 s; open
//!   for 5 s);
//! - `baseline`: the stack before the breaker and the routes: [`OpenAiLayer`] without the
//!   breaker (retry and budget only), one route, the primary.
//!
//! Figures per row: `failed` calls; `calls_during_outage` (calls started before 20 s);
//! `primary_requests_during_outage` (requests the primary mock received before 20 s) and
//! their ratio to the calls; `recovery_s`: from the primary's recovery to the start of the
//! first call from which on every call was served by the primary (`null` if none was).
//! Goal for the stack: 0 failed; primary requests during the outage <= 5 % of the calls
//! started then; recovery within 2 s.
//!
//! Why 1.5 s: while the primary is down, an open circuit lets one probe through per open
//! period, so its requests during the outage are about the failures that open it plus
//! outage / `open_for` probes (3 + 20 / 1.5 = 16 for 400 calls, 4 %); after the recovery the
//! first probe comes at most `open_for` plus one arrival gap later (1.55 s). The default 5 s
//! sends fewer probes (4) but may keep the traffic on the secondary for up to 5 s.
//!
//! `loadtest --scenario brownout [--json] [--outage-ms MS]` runs it alone (it needs two mocks,
//! so it does not combine with the other scenarios' options); `--outage-ms` moves the
//! recovery (the calls then last 10 s longer than the outage), which shows how the phase of
//! the breaker's open period decides `recovery_s`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use oai_resilience::breaker::{BreakerConfig, CircuitBreakerLayer};
use oai_resilience::fallback::{FallbackLayer, Route, ServedBy};
use oai_resilience::mock::MockServer;
use oai_resilience::stack::{ClientBody, OpenAiLayer};
use oai_resilience::{AuthLayer, BoxError};
use test_support::http_client;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

use super::{MockHost, CHAT, PATH, TEST_KEY};

/// The scenario's timing.
#[derive(Debug, Clone)]
pub(crate) struct Brownout {
    /// How long the primary answers 503, from the start.
    pub(crate) outage: Duration,
    /// How long calls keep arriving.
    pub(crate) duration: Duration,
    /// Time between call starts (open loop).
    pub(crate) arrival: Duration,
    /// Calls in flight at most.
    pub(crate) concurrency: usize,
    /// The mocks' answer time.
    pub(crate) latency: Duration,
    /// Run the mocks on a runtime of their own (real time only).
    pub(crate) mock_runtime: bool,
}

impl Default for Brownout {
    fn default() -> Self {
        Brownout {
            outage: Duration::from_secs(20),
            duration: Duration::from_secs(30),
            arrival: Duration::from_millis(50),
            concurrency: 50,
            latency: Duration::from_millis(20),
            mock_runtime: true,
        }
    }
}

/// The scenario's breaker for the primary: 3 consecutive failures open it for 1.5 s (the
/// failure ratio as by default).
pub(crate) fn scenario_breaker() -> BreakerConfig {
    BreakerConfig::new()
        .consecutive_failures(3)
        .open_for(Duration::from_millis(1500))
}

/// Which client a row ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client3 {
    /// Two routes, the scenario's breaker.
    Stack,
    /// Two routes, the default breaker.
    StackDefault,
    /// One route, no breaker.
    Baseline,
}

impl Client3 {
    pub(crate) const EVERY: [Client3; 3] =
        [Client3::Stack, Client3::StackDefault, Client3::Baseline];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Client3::Stack => "stack",
            Client3::StackDefault => "stack (default breaker)",
            Client3::Baseline => "baseline (retry + budget, one route)",
        }
    }
}

/// One row's figures.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) client: Client3,
    pub(crate) calls: usize,
    pub(crate) failed: usize,
    /// Failed calls by kind.
    pub(crate) failed_by_kind: Vec<(String, usize)>,
    pub(crate) calls_during_outage: usize,
    pub(crate) primary_requests_during_outage: u64,
    pub(crate) primary_requests: u64,
    pub(crate) secondary_requests: u64,
    /// Calls the secondary served.
    pub(crate) served_by_secondary: usize,
    pub(crate) recovery: Option<Duration>,
}

impl Row {
    /// Primary requests during the outage over the calls started then.
    pub(crate) fn outage_ratio(&self) -> f64 {
        self.primary_requests_during_outage as f64 / self.calls_during_outage.max(1) as f64
    }

    /// Whether the scenario's goal is met: 0 failed, <= 5 %, recovery <= 2 s.
    pub(crate) fn goal_met(&self) -> bool {
        self.failed == 0
            && self.outage_ratio() <= 0.05
            && self.recovery.is_some_and(|r| r <= Duration::from_secs(2))
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "brownout",
            "client": self.client.label(),
            "calls": self.calls,
            "failed": self.failed,
            "failed_by_kind": super::kinds_json(&self.failed_by_kind),
            "calls_during_outage": self.calls_during_outage,
            "primary_requests_during_outage": self.primary_requests_during_outage,
            "primary_requests_over_calls_during_outage": self.outage_ratio(),
            "primary_requests": self.primary_requests,
            "secondary_requests": self.secondary_requests,
            "served_by_secondary": self.served_by_secondary,
            "recovery_s": self.recovery.map(|d| d.as_secs_f64()),
            "goal_met": self.goal_met(),
        })
    }

    pub(crate) fn table_row(&self) -> String {
        let failed = super::kinds_cell(&self.failed_by_kind);
        format!(
            "| brownout | {} | {} | {failed} | {} | {} ({:.1} %) | {} | {} | {} |",
            self.client.label(),
            self.calls,
            self.calls_during_outage,
            self.primary_requests_during_outage,
            self.outage_ratio() * 100.0,
            self.primary_requests,
            self.served_by_secondary,
            self.recovery
                .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
        )
    }
}

/// The table header.
pub(crate) const HEADER: &str = "| scenario | client | calls | failed | calls during outage | primary requests during outage | primary requests | served by secondary | recovery s |\n|---|---|---|---|---|---|---|---|---|";

/// A mock with `latency`, no limits, on a runtime of its own or on the current one.
async fn start_mock(cfg: &Brownout) -> Result<MockHost, BoxError> {
    let latency = cfg.latency;
    MockHost::spawn(cfg.mock_runtime, move || {
        MockServer::builder()
            .api_key(TEST_KEY)
            .latency(latency)
            .no_rate_limits()
            .random_server_errors(0.0, 7)
            .start()
    })
    .await
}

type Svc = BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    oai_resilience::Error,
>;

/// A route's stack against `server`.
fn route(server: &MockServer) -> Result<OpenAiLayer, BoxError> {
    Ok(OpenAiLayer::new()
        .base_url(server.url().parse()?)
        .auth(AuthLayer::from_key(TEST_KEY)))
}

fn client_for(
    which: Client3,
    primary: &MockServer,
    secondary: &MockServer,
) -> Result<Svc, BoxError> {
    let http = http_client::<ClientBody>();
    Ok(match which {
        Client3::Baseline => BoxCloneService::new(route(primary)?.without_breaker().layer(http)),
        Client3::Stack | Client3::StackDefault => {
            let primary = match which {
                Client3::Stack => {
                    route(primary)?.breaker(CircuitBreakerLayer::with_config(scenario_breaker()))
                }
                _ => route(primary)?.breaker(CircuitBreakerLayer::new()),
            };
            BoxCloneService::new(
                FallbackLayer::new()
                    .route(Route::new("primary", primary))
                    .route(Route::new("secondary", route(secondary)?))
                    .layer(http),
            )
        }
    })
}

/// One call's outcome: when it started, and the route index that served it (or the error's
/// kind).
type Outcome = (Instant, Result<usize, String>);

/// Runs one row against fresh mocks.
pub(crate) async fn run_row(cfg: &Brownout, which: Client3) -> Result<Row, BoxError> {
    let primary = start_mock(cfg).await?;
    let secondary = start_mock(cfg).await?;
    let svc = client_for(which, &primary.mock, &secondary.mock)?;
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let calls = (cfg.duration.as_nanos() / cfg.arrival.as_nanos().max(1)) as usize;
    primary.mock.set_random_server_errors(1.0);
    let start = Instant::now();
    let recovered_at = start + cfg.outage;
    let switch = {
        let server = primary.mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(recovered_at).await;
            // The count first: what arrived before the switch arrived during the outage.
            let during = server.counts().total;
            server.set_random_server_errors(0.0);
            during
        })
    };
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let (svc, gate) = (svc.clone(), gate.clone());
        let at = start + cfg.arrival * i as u32;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _slot = gate.acquire_owned().await.ok();
            let began = Instant::now();
            let req = http::Request::post(PATH)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                .expect("a valid request");
            let res = match svc.oneshot(req).await {
                Ok(res) => {
                    let index = res
                        .extensions()
                        .get::<ServedBy>()
                        .map_or(0, ServedBy::index);
                    match res.into_body().collect().await {
                        Ok(_) => Ok(index),
                        Err(_) => Err("connection".to_string()),
                    }
                }
                Err(e) => Err(e.kind().to_string()),
            };
            (began, res)
        }));
    }
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(calls);
    for t in tasks {
        outcomes.push(t.await?);
    }
    let primary_requests_during_outage = switch.await?;
    outcomes.sort_by_key(|o| o.0);
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for (_, r) in &outcomes {
        if let Err(kind) = r {
            *by_kind.entry(kind.clone()).or_default() += 1;
        }
    }
    // The first call started after the recovery from which on every call was served by the
    // primary (index 0).
    let mut recovery = None;
    for (began, r) in outcomes.iter().rev() {
        if *began < recovered_at || *r != Ok(0) {
            break;
        }
        recovery = Some(began.saturating_duration_since(recovered_at));
    }
    Ok(Row {
        client: which,
        calls,
        failed: by_kind.values().sum(),
        failed_by_kind: by_kind.into_iter().collect(),
        calls_during_outage: outcomes.iter().filter(|o| o.0 < recovered_at).count(),
        primary_requests_during_outage,
        primary_requests: primary.mock.counts().total,
        secondary_requests: secondary.mock.counts().total,
        served_by_secondary: outcomes.iter().filter(|o| o.1 == Ok(1)).count(),
        recovery,
    })
}

/// Whether the command line asks for `brownout` (`--scenario brownout`).
pub(crate) fn asked(args: &[String]) -> bool {
    super::scenario_asked(args, "brownout")
}

/// The options of `--scenario brownout`: (`--json`, the timing with `--outage-ms`).
///
/// # Errors
///
/// An option it does not take, or an `--outage-ms` that is not a number.
pub(crate) fn parse(args: &[String]) -> Result<(bool, Brownout), String> {
    let mut json = false;
    let mut cfg = Brownout::default();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--scenario" => {
                rest.next();
            }
            "--json" => json = true,
            "--outage-ms" => {
                let ms: u64 = rest
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--outage-ms needs a number of milliseconds")?;
                cfg.outage = Duration::from_millis(ms);
                cfg.duration = cfg.outage + Duration::from_secs(10);
            }
            other => {
                return Err(format!(
                    "brownout runs alone: {other} is not one of its options \
                     (--json, --outage-ms MS)"
                ))
            }
        }
    }
    Ok((json, cfg))
}

/// `loadtest --scenario brownout [--json]`: every row, the table (on stderr with `--json`,
/// which prints one JSON object per row on stdout) and the goal line of each stack row.
pub(crate) async fn main(args: &[String]) -> Result<(), BoxError> {
    let (json, cfg) = parse(args)?;
    let say = |s: &str| super::print_line(json, s);
    say(HEADER);
    let mut rows = Vec::new();
    for which in Client3::EVERY {
        let row = run_row(&cfg, which).await?;
        say(&row.table_row());
        if json {
            println!("{}", row.json());
        }
        rows.push(row);
    }
    let baseline = rows.iter().find(|r| r.client == Client3::Baseline);
    for r in rows.iter().filter(|r| r.client != Client3::Baseline) {
        say(&format!(
            "brownout ({}): target {}: 0 failed ({}{}), primary requests during outage <= 5 % of calls ({:.1} % = {}/{}{}), recovery <= 2 s ({}{})",
            r.client.label(),
            if r.goal_met() { "met" } else { "MISSED" },
            r.failed,
            baseline.map_or(String::new(), |b| format!("; baseline {}", b.failed)),
            r.outage_ratio() * 100.0,
            r.primary_requests_during_outage,
            r.calls_during_outage,
            baseline.map_or(String::new(), |b| format!(
                "; baseline {:.1} % = {}/{}",
                b.outage_ratio() * 100.0,
                b.primary_requests_during_outage,
                b.calls_during_outage
            )),
            r.recovery.map_or("none".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            baseline.map_or(String::new(), |b| format!(
                "; baseline {}",
                b.recovery.map_or("none".into(), |d| format!("{:.2} s", d.as_secs_f64()))
            )),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenario at a tenth of its time, in virtual time, with the mocks on the test's
    /// runtime: the accounting and the JSON fields (the figures come from the release run).
    #[tokio::test(start_paused = true)]
    async fn a_tiny_brownout_counts_every_call_and_prints_the_fields() {
        let cfg = Brownout {
            outage: Duration::from_secs(2),
            duration: Duration::from_secs(3),
            mock_runtime: false,
            ..Brownout::default()
        };
        for which in Client3::EVERY {
            let row = run_row(&cfg, which).await.unwrap();
            assert_eq!(row.calls, 60);
            assert_eq!(row.calls_during_outage, 40, "{row:?}");
            assert!(row.primary_requests >= row.primary_requests_during_outage);
            let json = row.json();
            for field in [
                "failed",
                "calls_during_outage",
                "primary_requests_during_outage",
            ] {
                assert!(json[field].is_number(), "{field}: {json}");
            }
            assert!(json["recovery_s"].is_number() || json["recovery_s"].is_null());
            if which == Client3::Baseline {
                assert_eq!(row.served_by_secondary, 0);
                assert_eq!(row.secondary_requests, 0);
            } else {
                assert!(json["client"].as_str().unwrap().starts_with("stack"));
                assert_eq!(row.failed, 0, "{row:?}");
                assert!(row.served_by_secondary > 0, "{row:?}");
            }
        }
    }

    #[test]
    fn options_and_their_errors() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let (json, cfg) = parse(&args("--scenario brownout")).unwrap();
        assert!(!json);
        assert_eq!(cfg.outage, Duration::from_secs(20));
        let (json, cfg) = parse(&args("--scenario brownout --json --outage-ms 16000")).unwrap();
        assert!(json);
        assert_eq!(
            (cfg.outage, cfg.duration),
            (Duration::from_secs(16), Duration::from_secs(26))
        );
        assert!(parse(&args("--scenario brownout --n 5"))
            .unwrap_err()
            .contains("--n is not one of its options"));
        for bad in ["--outage-ms", "--outage-ms soon"] {
            let err = parse(&args(&format!("--scenario brownout {bad}"))).unwrap_err();
            assert!(err.contains("needs a number"), "{err}");
        }
    }

    #[test]
    fn only_brownout_is_asked_for() {
        let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert!(asked(&args(&["--scenario", "brownout", "--json"])));
        assert!(!asked(&args(&["--scenario", "burst"])));
        assert!(!asked(&args(&["brownout"])));
    }
}
