//! `--scenario stall`: streams that stop half-way (#23).
//!
//! The mock answers every call with an event stream spread over `--stream-ms` (1 s), after
//! 20 ms; a seeded 10 % of the streams stop after 3 events for 60 s
//! ([`MockBuilder::stall_streams`](oai_resilience::mock::MockBuilder::stall_streams)). Two
//! clients run the same calls (N = 200 at concurrency 50, each against a fresh mock with the
//! same seed), each call sent and its body read to the end:
//!
//! - `stack (watchdog)`: [`OpenAiLayer`] over a [`WatchdogLayer`] with an idle bound of
//!   `--idle-ms` (2 s) next to hyper-util: a stalled body ends with [`ErrorKind::Timeout`]
//!   whose source is [`Stall::Idle`];
//! - `baseline (no watchdog)`: the same stack without the watchdog: a stalled call waits for
//!   the stream to resume. The scenario stops waiting `--deadline-s` (15 s) after it started
//!   and counts the calls still running as `hung`.
//!
//! Goal for the stack: every call ends, the stalled ones with the typed error, each within the
//! idle bound + 1 s of its last event, and none ends in any other way.
//!
//! With `--json`, one object per client row: `client`, `calls`, `ok`, `failed`,
//! `failed_by_kind` (kind → count; `hung` for the calls the deadline found silent for longer
//! than a healthy stream lasts, `unfinished` for the others it cut), `stall_errors`
//! (timeouts whose source is the idle stall), `max_call_s`, `max_after_last_event_s` (of the
//! calls that did not end normally), `idle_timeout_s` (`null` without the watchdog),
//! `deadline_s`, `requests_sent`, `wall_s`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use oai_resilience::mock::{MockServer, Route};
use oai_resilience::stack::{ClientBody, OpenAiLayer};
use oai_resilience::watchdog::{Stall, WatchdogLayer};
use oai_resilience::{AuthLayer, BoxError, Error, ErrorKind};
use test_support::http_client;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

/// The options of the scenario.
#[derive(Debug, Clone)]
struct Options {
    /// `--n`, `--concurrency`, `--latency-ms`, `--json`.
    base: super::AloneOptions,
    idle: Duration,
    deadline: Duration,
    stream: Duration,
    fraction: f64,
    after_events: usize,
    pause: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            base: super::AloneOptions {
                calls: 200,
                concurrency: 50,
                latency: Duration::from_millis(20),
                json: false,
            },
            idle: Duration::from_secs(2),
            deadline: Duration::from_secs(15),
            stream: Duration::from_secs(1),
            fraction: 0.1,
            after_events: 3,
            pause: Duration::from_secs(60),
        }
    }
}

/// The usage lines of this scenario's own options.
const USAGE: &str = "\
Usage: loadtest --scenario stall [--n N] [--concurrency C] [--idle-ms MS] [--deadline-s S]
                [--stream-ms MS] [--latency-ms MS] [--json]

  --idle-ms MS     the watchdog's idle bound (default 2000)
  --deadline-s S   when the scenario stops waiting for hung calls (default 15)
  --stream-ms MS   how long each event stream lasts when it does not stall (default 1000)
";

/// Whether the command line asks for this scenario (`--scenario stall`).
pub(crate) fn requested(raw: &[String]) -> bool {
    super::scenario_asked(raw, "stall")
}

fn parse(raw: &[String]) -> Result<Options, String> {
    super::parse_alone(
        raw,
        Options::default(),
        |o| &mut o.base,
        |o, arg, it| {
            match arg {
                "--idle-ms" => {
                    o.idle = Duration::from_millis(super::option_number(it, "--idle-ms")?)
                }
                "--deadline-s" => {
                    o.deadline = Duration::from_secs(super::option_number(it, "--deadline-s")?)
                }
                "--stream-ms" => {
                    o.stream = Duration::from_millis(super::option_number(it, "--stream-ms")?)
                }
                other => return Err(format!("--scenario stall does not take {other}\n{USAGE}")),
            }
            Ok(())
        },
    )
}

/// How one call ended.
#[derive(Debug)]
struct Ended {
    took: Duration,
    /// From the last event received (or the head) to the end.
    after_last_event: Duration,
    /// `None` for a call that read its stream to the end; else the error's kind name, or
    /// `hung`.
    failure: Option<String>,
    /// The error was the watchdog's idle stall.
    stall_error: bool,
}

/// One client's row.
#[derive(Debug)]
struct Row {
    client: &'static str,
    idle: Option<Duration>,
    ended: Vec<Ended>,
    requests: u64,
    wall: Duration,
}

impl Row {
    fn failed_by_kind(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in &self.ended {
            if let Some(kind) = &e.failure {
                *out.entry(kind.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    fn failed(&self) -> usize {
        self.ended.iter().filter(|e| e.failure.is_some()).count()
    }

    fn stall_errors(&self) -> usize {
        self.ended.iter().filter(|e| e.stall_error).count()
    }

    fn max_call(&self) -> Duration {
        self.ended.iter().map(|e| e.took).max().unwrap_or_default()
    }

    fn max_after_last_event(&self) -> Duration {
        self.ended
            .iter()
            .filter(|e| e.failure.is_some())
            .map(|e| e.after_last_event)
            .max()
            .unwrap_or_default()
    }

    fn json(&self, o: &Options) -> serde_json::Value {
        serde_json::json!({
            "scenario": "stall",
            "client": self.client,
            "calls": self.ended.len(),
            "ok": self.ended.len() - self.failed(),
            "failed": self.failed(),
            "failed_by_kind": self.failed_by_kind(),
            "stall_errors": self.stall_errors(),
            "max_call_s": self.max_call().as_secs_f64(),
            "max_after_last_event_s": self.max_after_last_event().as_secs_f64(),
            "idle_timeout_s": self.idle.map(|d| d.as_secs_f64()),
            "deadline_s": o.deadline.as_secs_f64(),
            "requests_sent": self.requests,
            "wall_s": self.wall.as_secs_f64(),
        })
    }

    fn line(&self) -> String {
        format!(
            "{:<24} {:>5} {:>5} {:>6}  {:<28} {:>10.2} {:>12.2} {:>9.2}",
            self.client,
            self.ended.len(),
            self.ended.len() - self.failed(),
            self.failed(),
            format!("{:?}", self.failed_by_kind()),
            self.max_call().as_secs_f64(),
            self.max_after_last_event().as_secs_f64(),
            self.wall.as_secs_f64(),
        )
    }
}

type Svc = BoxCloneService<http::Request<Full<Bytes>>, http::Response<Body>, Error>;
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Error>;

/// The stack over hyper-util, with the watchdog next to the client when `idle` is set.
fn stack(idle: Option<Duration>) -> Svc {
    let client = http_client::<ClientBody>();
    let layer = OpenAiLayer::new().auth(AuthLayer::from_key(super::TEST_KEY));
    match idle {
        Some(idle) => {
            let svc = layer.layer(
                WatchdogLayer::new()
                    .first_byte(None)
                    .idle(idle)
                    .layer(client),
            );
            BoxCloneService::new(
                svc.map_response(|r| r.map(|b| b.map_err(into_error).boxed_unsync())),
            )
        }
        None => {
            let svc = layer.layer(client);
            BoxCloneService::new(
                svc.map_response(|r| r.map(|b| b.map_err(into_error).boxed_unsync())),
            )
        }
    }
}

fn into_error(e: impl Into<BoxError>) -> Error {
    let e: BoxError = e.into();
    match e.downcast::<Error>() {
        Ok(e) => *e,
        Err(other) => Error::new(ErrorKind::Connection).with_source(other),
    }
}

/// One call: send, read the stream to its end; `last` holds when the last event (or the head)
/// arrived.
async fn one_call(mut svc: Svc, url: String, last: Arc<Mutex<Instant>>) -> Result<(), Error> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(super::CHAT_STREAM.as_bytes())))
        .expect("a valid request");
    let res = match svc.ready().await {
        Ok(svc) => svc.call(req).await,
        Err(e) => Err(e),
    };
    let mut body = res?.into_body();
    *last.lock().expect("not poisoned") = Instant::now();
    while let Some(frame) = body.frame().await {
        frame?;
        *last.lock().expect("not poisoned") = Instant::now();
    }
    Ok(())
}

async fn run_row(
    o: &Options,
    client: &'static str,
    idle: Option<Duration>,
) -> Result<Row, BoxError> {
    let server = MockServer::builder()
        .no_rate_limits()
        .latency(o.base.latency)
        .stream_duration(o.stream)
        .stall_streams(o.fraction, o.after_events, o.pause, 23)
        .start()
        .await;
    let url = server.endpoint(Route::ChatCompletions);
    let svc = stack(idle);
    let permits = Arc::new(Semaphore::new(o.base.concurrency));
    let start = Instant::now();
    let deadline = start + o.deadline;
    let mut tasks = Vec::with_capacity(o.base.calls);
    let hung_after = (o.stream + o.base.latency).max(Duration::from_millis(500));
    for _ in 0..o.base.calls {
        let permit = permits.clone().acquire_owned().await?;
        let (svc, url) = (svc.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let last = Arc::new(Mutex::new(began));
            let call = one_call(svc, url, last.clone());
            let since_last = || last.lock().map(|l| l.elapsed()).unwrap_or_default();
            let ended = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(())) => Ended {
                    took: began.elapsed(),
                    after_last_event: Duration::ZERO,
                    failure: None,
                    stall_error: false,
                },
                Ok(Err(err)) => Ended {
                    took: began.elapsed(),
                    after_last_event: since_last(),
                    stall_error: err.kind() == ErrorKind::Timeout
                        && matches!(Stall::of(&err), Some(Stall::Idle(_))),
                    failure: Some(err.kind().as_str().to_owned()),
                },
                Err(_) => {
                    // Silent for longer than a whole healthy stream: held by a stall.
                    let silent = since_last();
                    let failure = if silent > hung_after {
                        "hung"
                    } else {
                        "unfinished"
                    };
                    Ended {
                        took: began.elapsed(),
                        after_last_event: silent,
                        failure: Some(failure.to_owned()),
                        stall_error: false,
                    }
                }
            };
            drop(permit);
            ended
        }));
    }
    let mut ended = Vec::with_capacity(o.base.calls);
    for t in tasks {
        ended.push(t.await?);
    }
    let wall = start.elapsed();
    let requests = server.counts().total;
    Ok(Row {
        client,
        idle,
        ended,
        requests,
        wall,
    })
}

/// Runs the scenario and prints its rows and target line.
pub(crate) async fn main(raw: &[String]) -> Result<(), BoxError> {
    let o = super::or_exit(parse(raw));
    let say = |s: &str| super::print_line(o.base.json, s);
    say(&format!(
        "stall: {} calls at concurrency {}, streams of {} ms after {} ms, {:.0} % of them \
         stop after {} events for {} s; deadline {} s",
        o.base.calls,
        o.base.concurrency,
        o.stream.as_millis(),
        o.base.latency.as_millis(),
        o.fraction * 100.0,
        o.after_events,
        o.pause.as_secs(),
        o.deadline.as_secs()
    ));
    say(&format!(
        "{:<24} {:>5} {:>5} {:>6}  {:<28} {:>10} {:>12} {:>9}",
        "client", "calls", "ok", "failed", "failed by kind", "max call s", "after last s", "wall s"
    ));
    let stack_row = run_row(&o, "stack (watchdog)", Some(o.idle)).await?;
    say(&stack_row.line());
    let base_row = run_row(&o, "baseline (no watchdog)", None).await?;
    say(&base_row.line());
    if o.base.json {
        println!("{}", stack_row.json(&o));
        println!("{}", base_row.json(&o));
    }
    let bound = o.idle + Duration::from_secs(1);
    let only_stalls = stack_row.failed() == stack_row.stall_errors();
    let met = only_stalls && stack_row.max_after_last_event() <= bound;
    say(&format!(
        "stall (stack): {} of {} calls ended with the idle-stall timeout, {} otherwise failed, \
         each within {:.2} s of its last event (bound {:.1} s), longest call {:.2} s: target {}; \
         baseline: {} hung at the {} s deadline",
        stack_row.stall_errors(),
        stack_row.ended.len(),
        stack_row.failed() - stack_row.stall_errors(),
        stack_row.max_after_last_event().as_secs_f64(),
        bound.as_secs_f64(),
        stack_row.max_call().as_secs_f64(),
        if met { "met" } else { "MISSED" },
        base_row.failed_by_kind().get("hung").copied().unwrap_or(0),
        o.deadline.as_secs(),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_parse_and_refuse_what_the_scenario_does_not_take() {
        assert!(requested(&args("--json --scenario stall")));
        assert!(!requested(&args("--scenario burst")));
        let o = parse(&args(
            "--scenario stall --n 7 --idle-ms 500 --deadline-s 3 --json",
        ))
        .unwrap();
        assert_eq!(
            (o.base.calls, o.idle, o.deadline, o.base.json),
            (7, Duration::from_millis(500), Duration::from_secs(3), true)
        );
        assert!(parse(&args("--scenario stall --client reqwest"))
            .unwrap_err()
            .contains("--client"));
        assert!(parse(&args("--n")).unwrap_err().contains("needs a value"));
        assert!(parse(&args("--n many")).unwrap_err().contains("--n many"));
    }

    /// In virtual time: with every stream stalled, the watchdog ends each call with the
    /// idle-stall timeout soon after its last event, and without it every call hangs until
    /// the deadline.
    #[tokio::test(start_paused = true)]
    async fn every_stalled_call_ends_typed_with_the_watchdog_and_hangs_without() {
        let mut o = Options {
            fraction: 1.0,
            ..Options::default()
        };
        (o.base.calls, o.base.concurrency) = (6, 3);
        let stack = run_row(&o, "stack (watchdog)", Some(o.idle)).await.unwrap();
        assert_eq!(stack.failed(), 6, "{stack:?}");
        assert_eq!(stack.stall_errors(), 6, "{stack:?}");
        assert_eq!(stack.failed_by_kind().get("timeout"), Some(&6));
        assert!(stack.max_after_last_event() >= o.idle, "{stack:?}");
        let json = stack.json(&o);
        assert_eq!(json["idle_timeout_s"], 2.0);
        assert_eq!(json["failed_by_kind"]["timeout"], 6);
        assert!(json["client"].as_str().unwrap().starts_with("stack"));
        let base = run_row(&o, "baseline (no watchdog)", None).await.unwrap();
        assert_eq!(base.failed(), 6, "{base:?}");
        assert_eq!(base.stall_errors(), 0);
        // Three in flight hang until the deadline; the other three start after it and never
        // hear from the server.
        assert_eq!(base.failed_by_kind().get("hung"), Some(&3), "{base:?}");
        assert!(base.max_call() >= o.deadline);
        assert!(base.json(&o)["idle_timeout_s"].is_null());
    }
}
