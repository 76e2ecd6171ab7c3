//! Priority lanes in the pacer, in virtual time: a higher lane goes before older calls of a
//! lower one, a lane with a share is not starved by a flood above it, a call that cannot be
//! admitted before its deadline or the max wait fails at once, and without priorities the
//! queue stays first come, first served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use oai_resilience::pace::{
    Cost, InProcessStore, PaceKey, PaceLayer, Pacer, PacerConfig, Priority, StaticLimits,
};
use oai_resilience::ErrorKind;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::pace_pacer::{acquire_within, assert_retry_after, refused_at_once};

fn key() -> PaceKey {
    PaceKey::new("api.test").with_credential(b"Bearer sk-lanes")
}

/// `rpm` requests per minute known in advance, no max wait.
fn per_minute(rpm: u64) -> PacerConfig {
    let mut cfg = PacerConfig::default();
    cfg.static_limits = StaticLimits::new(Some(rpm), None);
    cfg.max_wait = None;
    cfg
}

/// The names of granted calls, in the order of their grants.
type Order = Arc<Mutex<Vec<String>>>;

/// A pacer of `rpm` requests per minute and no max wait, with `tune` applied to its config.
fn lanes_pacer(rpm: u64, tune: impl FnOnce(&mut PacerConfig)) -> Pacer {
    let mut cfg = per_minute(rpm);
    tune(&mut cfg);
    Pacer::new(cfg)
}

/// A pacer as [`lanes_pacer`] makes it with every slot of the full bucket of [`key`] taken
/// (asserting that none waited), so that the next call waits; the key; and an empty [`Order`].
async fn drained(rpm: u64, tune: impl FnOnce(&mut PacerConfig)) -> (Pacer, PaceKey, Order) {
    let pacer = lanes_pacer(rpm, tune);
    let k = key();
    for _ in 0..rpm {
        drop(pacer.acquire(&k, Cost::tokens(1), None).await.unwrap());
    }
    assert_eq!(pacer.metrics().waits, 0);
    (pacer, k, Order::default())
}

/// Queues one call per `(name, lane)`, in this order; each records its name when granted.
fn queue_calls(
    pacer: &Pacer,
    k: &PaceKey,
    calls: impl IntoIterator<Item = (String, Priority)>,
    order: &Order,
) -> Vec<JoinHandle<()>> {
    calls
        .into_iter()
        .map(|(name, lane)| {
            // The place in the queue is taken here, in call order, not when the task runs.
            let acquire = pacer.acquire_in_lane(k, Cost::tokens(1), None, lane);
            let order = order.clone();
            tokio::spawn(async move {
                let permit = acquire.await.unwrap();
                order.lock().unwrap().push(name);
                permit.on_response(None);
            })
        })
        .collect()
}

async fn join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

fn named(prefix: &str, n: usize, lane: Priority) -> Vec<(String, Priority)> {
    (0..n).map(|i| (format!("{prefix}{i}"), lane)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_high_call_is_admitted_before_earlier_queued_low_ones() {
    let (pacer, k, order) = drained(1, |_| {}).await;
    let mut calls = named("low", 3, Priority::LOW);
    calls.extend(named("normal", 1, Priority::NORMAL));
    calls.extend(named("high", 2, Priority::HIGH));
    let start = Instant::now();
    join(queue_calls(&pacer, &k, calls, &order)).await;
    // One slot a minute: both high calls first, then the normal one, then the low ones in
    // their own arrival order.
    assert_eq!(
        *order.lock().unwrap(),
        ["high0", "high1", "normal0", "low0", "low1", "low2"]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(6 * 60));
    assert_eq!(pacer.metrics().queue_len, 0);
}

#[tokio::test(start_paused = true)]
async fn a_high_call_arriving_later_still_goes_next() {
    let (pacer, k, order) = drained(1, |_| {}).await;
    let mut tasks = queue_calls(&pacer, &k, named("low", 2, Priority::LOW), &order);
    // The first low call is the head and waits for its slot; 30 s into that wait a high
    // call comes and takes the slot at 60 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    tasks.extend(queue_calls(
        &pacer,
        &k,
        named("high", 1, Priority::HIGH),
        &order,
    ));
    join(tasks).await;
    assert_eq!(*order.lock().unwrap(), ["high0", "low0", "low1"]);
}

#[tokio::test(start_paused = true)]
async fn without_priorities_the_queue_is_first_come_first_served() {
    let (pacer, k, order) = drained(1, |_| {}).await;
    // `acquire` (no lane) and an explicit NORMAL lane are one lane: arrival order.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let name = format!("c{i}");
        if i % 2 == 0 {
            let acquire = pacer.acquire(&k, Cost::tokens(1), None);
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                drop(acquire.await.unwrap());
                order.lock().unwrap().push(name);
            }));
        } else {
            tasks.extend(queue_calls(
                &pacer,
                &k,
                [(name, Priority::default())],
                &order,
            ));
        }
    }
    join(tasks).await;
    assert_eq!(*order.lock().unwrap(), ["c0", "c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(Priority::default(), Priority::NORMAL);
}

/// How many of the first `grants` grants went to the low lane, with `high` and `low` calls
/// queued at once (one slot a second).
async fn low_grants(shares: Vec<(Priority, f64)>, grants: usize) -> usize {
    let (pacer, k, order) = drained(60, |cfg| cfg.lane_shares = shares).await;
    // The flood: more high calls than the grants looked at, so the high lane never empties.
    let mut calls = named("high", grants + 10, Priority::HIGH);
    calls.extend(named("low", grants, Priority::LOW));
    let tasks = queue_calls(&pacer, &k, calls, &order);
    // Grants at 1 s, 2 s, ...: the last one looked at comes at `grants` seconds.
    tokio::time::sleep(Duration::from_millis(grants as u64 * 1000 + 500)).await;
    let low = {
        let order = order.lock().unwrap();
        assert_eq!(order.len(), grants);
        order.iter().filter(|n| n.starts_with("low")).count()
    };
    for t in tasks {
        t.abort();
    }
    low
}

#[tokio::test(start_paused = true)]
async fn a_low_lane_with_a_share_gets_it_under_a_high_flood() {
    // Without a share the flood takes every slot.
    assert_eq!(low_grants(Vec::new(), 50).await, 0);
    // With a fifth, the low lane gets a fifth of the slots while the flood lasts.
    let low = low_grants(vec![(Priority::LOW, 0.2)], 50).await;
    assert!((9..=11).contains(&low), "{low} of 50");
    // A share of a half.
    let low = low_grants(vec![(Priority::LOW, 0.5)], 50).await;
    assert!((24..=26).contains(&low), "{low} of 50");
}

#[tokio::test(start_paused = true)]
async fn a_share_is_a_floor_not_a_cap() {
    // The low lane alone gets every slot, whatever its share.
    let (pacer, k, order) = drained(60, |cfg| cfg.lane_shares = vec![(Priority::LOW, 0.2)]).await;
    let start = Instant::now();
    join(queue_calls(
        &pacer,
        &k,
        named("low", 10, Priority::LOW),
        &order,
    ))
    .await;
    assert_eq!(order.lock().unwrap().len(), 10);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_call_behind_a_queue_longer_than_its_deadline_fails_at_once() {
    let (pacer, k, order) = drained(1, |_| {}).await;
    let tasks = queue_calls(&pacer, &k, named("high", 3, Priority::HIGH), &order);
    tokio::task::yield_now().await;
    // Three high calls ahead need three slots, then this one its own: 4 minutes at the
    // earliest, past its 90 s deadline.
    let err = refused_at_once(&pacer, &k, Priority::LOW, Some(Duration::from_secs(90))).await;
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.status(), None);
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_retry_after(&err, 240.0);
    assert_eq!(pacer.metrics().paced_errors, 1);
    // The calls ahead keep their places.
    assert_eq!(pacer.key_state(&k).unwrap().queue_len, 3);
    join(tasks).await;
    assert_eq!(order.lock().unwrap().len(), 3);
    assert_eq!(pacer.metrics().queue_len, 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_behind_a_queue_longer_than_the_max_wait_fails_at_once() {
    let (pacer, k, order) = drained(1, |cfg| cfg.max_wait = Some(Duration::from_secs(90))).await;
    // The head waits 60 s, within the max wait.
    let tasks = queue_calls(&pacer, &k, named("first", 1, Priority::NORMAL), &order);
    tokio::task::yield_now().await;
    // The next one in the same lane needs two slots: 120 s, past the max wait.
    let err = refused_at_once(&pacer, &k, Priority::NORMAL, None).await;
    assert!(err.to_string().contains("max wait"), "{err}");
    assert_retry_after(&err, 120.0);
    join(tasks).await;
    assert_eq!(*order.lock().unwrap(), ["first0"]);
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_queue_fits_its_deadline_waits_and_goes() {
    let (pacer, k, order) = drained(1, |_| {}).await;
    let tasks = queue_calls(&pacer, &k, named("high", 1, Priority::HIGH), &order);
    tokio::task::yield_now().await;
    // One call ahead: 120 s at the earliest, within 150 s.
    let permit = acquire_within(&pacer, &k, Priority::LOW, Some(Duration::from_secs(150)))
        .await
        .unwrap();
    assert_eq!(permit.waited(), Duration::from_secs(120));
    join(tasks).await;
}

fn request(lane: Option<Priority>) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post("https://api.test/v1/chat/completions")
        .header("authorization", "Bearer sk-lanes")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    if let Some(lane) = lane {
        req.extensions_mut().insert(lane);
    }
    req
}

/// Sends a [`request`] in `lane` through a clone of `svc` and asserts that it was answered.
async fn send<S>(svc: &S, lane: Option<Priority>)
where
    S: tower::Service<http::Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone().oneshot(request(lane)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_layer_reads_the_priority_extension() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let upstream = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let lane = req.extensions().get::<Priority>().copied();
        seen.lock().unwrap().push(lane);
        async move {
            Ok::<_, oai_resilience::Error>(http::Response::new(Full::new(Bytes::from_static(
                b"{}",
            ))))
        }
    });
    let svc = PaceLayer::with_config(per_minute(1)).layer(upstream);
    // The first call empties the bucket of one.
    send(&svc, None).await;
    let mut tasks = Vec::new();
    for lane in [None, Some(Priority::LOW), Some(Priority::HIGH)] {
        let call = svc.clone().oneshot(request(lane));
        tasks.push(tokio::spawn(call));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // The high call went first, then the call without a lane (normal), then the low one.
    assert_eq!(
        *order.lock().unwrap(),
        [None, Some(Priority::HIGH), None, Some(Priority::LOW)]
    );
}

/// A store whose request bucket holds 4 and refills 4 per second, for the key of [`request`].
async fn store_of_four() -> InProcessStore {
    use oai_resilience::pace::{BucketLimits, LearnedLimits, PacingStore};
    let store = InProcessStore::new();
    let mut limits = LearnedLimits::default();
    limits.requests = Some(BucketLimits::new(4.0, 4.0));
    let k = key().with_model("gpt-4o-mini");
    store.learn(&k, limits).await.unwrap();
    store
}

fn ok_upstream() -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<Full<Bytes>>,
    Error = oai_resilience::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, oai_resilience::Error>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
    })
}

/// [`ok_upstream`] behind a layer with a pacer of its own, configured by `cfg`, that paces
/// through `store`.
fn paced_through(
    store: &InProcessStore,
    cfg: PacerConfig,
) -> impl tower::Service<http::Request<Full<Bytes>>, Error = oai_resilience::Error> + Clone {
    PaceLayer::with_config(cfg)
        .pacing_store(store.clone())
        .layer(ok_upstream())
}

#[tokio::test(start_paused = true)]
async fn through_a_shared_store_lower_lanes_leave_the_reserve_to_higher_ones() {
    let store = store_of_four().await;
    let mut cfg = PacerConfig::default();
    cfg.lane_reserves = vec![(Priority::HIGH, 2)];
    // Two layers with pacers of their own, as two processes sharing the store have.
    let batch = paced_through(&store, cfg.clone());
    let interactive = paced_through(&store, cfg);
    let start = Instant::now();
    // 4 in the bucket: two low calls go, each leaving at least 2.
    for _ in 0..2 {
        send(&batch, Some(Priority::LOW)).await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The other process's high call takes one of the 2 kept for it, at once.
    send(&interactive, Some(Priority::HIGH)).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    // A call without a lane (normal, below high) needs 1 + 2 with 1 left: 500 ms of refill.
    send(&batch, None).await;
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn through_a_shared_store_without_reserves_every_lane_takes_the_bucket() {
    let store = store_of_four().await;
    let svc = paced_through(&store, PacerConfig::default());
    let start = Instant::now();
    for _ in 0..4 {
        send(&svc, Some(Priority::LOW)).await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    send(&svc, Some(Priority::HIGH)).await;
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn in_process_lower_lanes_leave_the_reserve_to_higher_ones() {
    let pacer = lanes_pacer(60, |cfg| cfg.lane_reserves = vec![(Priority::HIGH, 2)]);
    let k = key();
    let start = Instant::now();
    // 60 in the bucket: 58 low calls go at once, leaving 2.
    for _ in 0..58 {
        drop(
            acquire_within(&pacer, &k, Priority::LOW, None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The next low call waits for the refill (1 + 2 needed, 2 there: 1 s at 1/s).
    let order = Order::default();
    let low = queue_calls(&pacer, &k, named("low", 1, Priority::LOW), &order);
    tokio::task::yield_now().await;
    // A high call takes one of the 2 at once, and a normal one (below high) waits too.
    let high = acquire_within(&pacer, &k, Priority::HIGH, None)
        .await
        .unwrap();
    assert_eq!(high.waited(), Duration::ZERO);
    let normal = pacer.acquire(&k, Cost::tokens(1), None).await.unwrap();
    assert_eq!(normal.waited(), Duration::from_secs(2));
    // What held it: the request bucket, short of the reserve.
    assert_eq!(
        normal.held_by(),
        Some(oai_resilience::observe::PacingLimit::Requests)
    );
    join(low).await;
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    // 2 left: the reserve counts in the early failure (1 + 2 needed, 1 s away, past a
    // 500 ms deadline).
    let err = refused_at_once(&pacer, &k, Priority::LOW, Some(Duration::from_millis(500))).await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
}
