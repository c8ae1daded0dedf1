//! The consumer runtime with a scripted handler: retries, dead letters, a
//! database outage, and shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::providers::ProviderError;
use orderflow_core::ports::store::{Store, StoreError, StoreTx};
use orderflow_domain::EventId;
use orderflow_domain::events::{Envelope, EventData, topics};
use orderflow_domain::money::Currency;
use orderflow_domain::order::{Order, OrderStatus};
use orderflow_workers::{
    Applied, BatchReport, Consumer, ConsumerSettings, Effect, Handler, Prepared, RetryPolicy,
    WorkerError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, tiny_retry};

const GROUP: &str = "scripted";

/// A test handler's `group` (`$group`) and `topics` (`user.events`).
macro_rules! reads_user_events_as {
    ($group:expr) => {
        fn group(&self) -> &'static str {
            $group
        }

        fn topics(&self) -> &'static [&'static str] {
            &[topics::USER_EVENTS]
        }
    };
}

type MakeError = fn() -> WorkerError;

fn outage() -> WorkerError {
    ProviderError::transient("email", "simulated outage").into()
}

fn bad_address() -> WorkerError {
    ProviderError::permanent("email", "invalid recipient").into()
}

fn database_down() -> WorkerError {
    StoreError::Unavailable("connection refused".into()).into()
}

/// A handler that fails on demand. On success its effect is only the
/// processed mark the runtime writes.
struct Scripted {
    /// Failures still to return per event: (how many, which error).
    failures: Mutex<HashMap<EventId, (u32, MakeError)>>,
    /// Every call, in order.
    calls: Mutex<Vec<EventId>>,
    /// Told about every applied event and every failure, for tests that
    /// wait on `run`.
    events: Option<mpsc::UnboundedSender<Result<EventId, EventId>>>,
}

impl Scripted {
    fn new() -> Self {
        Self {
            failures: Mutex::default(),
            calls: Mutex::default(),
            events: None,
        }
    }

    fn fail(self, event: &Envelope, times: u32, error: MakeError) -> Self {
        self.failures
            .lock()
            .unwrap()
            .insert(event.id, (times, error));
        self
    }

    fn calls(&self) -> Vec<EventId> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_for(&self, event: &Envelope) -> usize {
        self.calls().iter().filter(|id| **id == event.id).count()
    }
}

#[async_trait]
impl Handler for Scripted {
    reads_user_events_as!(GROUP);

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let id = delivery.envelope.id;
        if !matches!(delivery.envelope.data, EventData::UserRegistered { .. }) {
            return Ok(Prepared::Ignored);
        }
        self.calls.lock().unwrap().push(id);
        let failure = {
            let mut failures = self.failures.lock().unwrap();
            match failures.get_mut(&id) {
                Some((remaining, make)) if *remaining > 0 => {
                    *remaining -= 1;
                    Some(make())
                }
                _ => None,
            }
        };
        if let Some(error) = failure {
            if let Some(events) = &self.events {
                let _ = events.send(Err(id));
            }
            return Err(error);
        }
        // The runtime writes the processed mark in its group commit; the
        // effect itself writes nothing more.
        Ok(Prepared::Effect(Box::new(Told {
            id,
            events: self.events.clone(),
        })))
    }
}

/// Tells the test, after the group commit, that the event was applied.
struct Told {
    id: EventId,
    events: Option<mpsc::UnboundedSender<Result<EventId, EventId>>>,
}

#[async_trait]
impl Effect for Told {
    async fn apply(&mut self, _tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        if let Some(events) = &self.events {
            let _ = events.send(Ok(self.id));
        }
    }
}

/// A UserRegistered event; events of one `user` share a partition.
fn registered(user: uuid::Uuid) -> Envelope {
    Envelope::new(
        EventData::UserRegistered {
            user_id: user,
            email: "a@example.com".into(),
            name: "A".into(),
        },
        None,
    )
}

/// The next thing the handler reports; a generous time-out only turns a hang
/// into a failure, it is not a wait for the worker.
async fn next(
    rx: &mut mpsc::UnboundedReceiver<Result<EventId, EventId>>,
) -> Result<EventId, EventId> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("handler alive")
}

/// What a batch polled, handled, retried and dead-lettered.
fn attempts(report: &BatchReport) -> (usize, usize, usize, usize) {
    (
        report.polled,
        report.handled,
        report.retries,
        report.dead_lettered,
    )
}

/// Cancels `shutdown` and waits (10 s at most) for the consumer `running`.
async fn stop<T>(shutdown: CancellationToken, running: tokio::task::JoinHandle<T>) -> T {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops promptly")
        .unwrap()
}

async fn consumer<H: Handler>(h: &Harness, handler: Arc<H>, retry: RetryPolicy) -> Consumer {
    Consumer::subscribe(handler, h.store.clone(), h.log.as_ref(), retry)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_flaky_handler_is_retried_until_it_succeeds() {
    let h = Harness::new(None, tiny_retry(5)).await;
    let event = registered(uuid::Uuid::now_v7());
    let handler = Arc::new(Scripted::new().fail(&event, 2, outage));
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(5)).await;
    h.append(std::slice::from_ref(&event)).await;

    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!(attempts(&report), (1, 1, 2, 0));
    assert_eq!(handler.calls_for(&event), 3);
    assert!(h.store.is_processed(GROUP, event.id).await.unwrap());
    assert_eq!(h.lag(GROUP).await, 0);
    assert!(
        consumer
            .process_batch(Duration::ZERO)
            .await
            .unwrap()
            .is_idle()
    );
}

#[tokio::test]
async fn a_handler_that_keeps_failing_is_dead_lettered_and_the_group_moves_on() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let user = uuid::Uuid::now_v7();
    let (bad, good) = (registered(user), registered(user));
    let handler = Arc::new(Scripted::new().fail(&bad, u32::MAX, outage));
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(3)).await;
    h.append(&[bad.clone(), good.clone()]).await;

    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!(attempts(&report), (2, 1, 2, 1));
    assert_eq!(handler.calls_for(&bad), 3, "max_attempts attempts in total");
    assert_eq!(
        handler.calls_for(&good),
        1,
        "the event after it is handled in the same batch"
    );
    assert_eq!(h.lag(GROUP).await, 0, "offsets move past the dead letter");
    assert!(
        !h.store.is_processed(GROUP, bad.id).await.unwrap(),
        "not marked, so a replay can succeed"
    );

    let dead = h.store.dead_letters(10, false).await.unwrap();
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(
        (dead.group.as_str(), dead.topic.as_str(), dead.attempts),
        (GROUP, topics::USER_EVENTS, 3)
    );
    assert_eq!(dead.event, bad);
    assert!(dead.error.contains("simulated outage"), "{}", dead.error);
    assert_eq!(dead.replayed_at, None);

    let failed = h.events_on(topics::FAILED_MESSAGES).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].envelope.id, dead.id,
        "the record and its event share an id"
    );
    let EventData::MessageFailed {
        group,
        topic,
        partition,
        offset,
        attempts,
        original,
        error,
    } = &failed[0].envelope.data
    else {
        panic!("expected MessageFailed, got {:?}", failed[0].envelope.data);
    };
    assert_eq!(
        (group.as_str(), topic.as_str(), *attempts),
        (GROUP, topics::USER_EVENTS, 3)
    );
    assert_eq!((*partition, *offset), (dead.partition, dead.offset));
    assert_eq!(**original, bad);
    assert_eq!(error, &dead.error);
}

#[tokio::test]
async fn permanent_errors_are_dead_lettered_without_retries() {
    let h = Harness::new(None, tiny_retry(5)).await;
    let event = registered(uuid::Uuid::now_v7());
    let handler = Arc::new(Scripted::new().fail(&event, u32::MAX, bad_address));
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(5)).await;
    h.append(std::slice::from_ref(&event)).await;

    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.retries, report.dead_lettered), (0, 1));
    assert_eq!(handler.calls_for(&event), 1);
    assert_eq!(
        h.store.dead_letters(10, false).await.unwrap()[0].attempts,
        1
    );
}

#[tokio::test]
async fn a_database_outage_stops_the_batch_uncommitted_and_the_next_call_resumes_it() {
    let h = Harness::new(None, tiny_retry(5)).await;
    let user = uuid::Uuid::now_v7();
    let events = [registered(user), registered(user), registered(user)];
    let handler = Arc::new(Scripted::new().fail(&events[1], 1, database_down));
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(5)).await;
    h.append(&events).await;

    let error = consumer.process_batch(Duration::ZERO).await.unwrap_err();
    assert!(error.is_store_unavailable(), "{error}");
    assert_eq!(h.lag(GROUP).await, 3, "nothing committed");
    assert_eq!(
        h.store.count_dead_letters().await.unwrap(),
        0,
        "an outage is not the event's fault"
    );
    assert!(
        h.store.is_processed(GROUP, events[0].id).await.unwrap(),
        "the first effect is durable"
    );

    // The next call resumes the batch in hand instead of polling past it.
    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.polled, report.handled, report.retries), (0, 2, 0));
    assert_eq!(h.lag(GROUP).await, 0);
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        handler.calls(),
        [ids[0], ids[1], ids[1], ids[2]],
        "the first event is not handled again"
    );
}

#[tokio::test]
async fn ignored_events_are_committed_without_a_mark() {
    let h = Harness::new(None, tiny_retry(3)).await;
    // sms does not care about OrderPlaced: it reads past it without a mark.
    let mut sms = h.deps.consumer("sms").await.unwrap();
    let ann = h.user("Ann").await;
    let mug = h.product(500, 3).await;
    let (_, placed) = h.place_order(&ann, &[(&mug, 1)]).await;
    let report = sms.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.polled, report.ignored), (1, 1));
    assert!(!h.store.is_processed("sms", placed.id).await.unwrap());
    assert_eq!(h.lag("sms").await, 0);
}

#[tokio::test]
async fn run_handles_events_as_they_come_and_stops_on_shutdown() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Arc::new(Scripted {
        events: Some(tx),
        ..Scripted::new()
    });
    let consumer = consumer(&h, handler.clone(), tiny_retry(3)).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    let user = uuid::Uuid::now_v7();
    let events = [registered(user), registered(user)];
    h.append(&events).await;
    for event in &events {
        assert_eq!(next(&mut rx).await, Ok(event.id));
    }
    stop(shutdown, running).await;
    assert_eq!(
        h.lag(GROUP).await,
        0,
        "the batch in hand was committed before returning"
    );
}

#[tokio::test]
async fn shutdown_during_a_retry_wait_commits_the_finished_part_of_the_batch() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let user = uuid::Uuid::now_v7();
    let (good, bad) = (registered(user), registered(user));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Arc::new(Scripted {
        events: Some(tx),
        ..Scripted::new().fail(&bad, u32::MAX, outage)
    });
    // Waits of up to an hour: only shutdown can end them in time.
    let patient = RetryPolicy::new(5, Duration::from_secs(3600), Duration::from_secs(3600));
    let consumer = consumer(&h, handler.clone(), patient).await;
    h.append(&[good.clone(), bad.clone()]).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    // The good event's commit and the bad one's first failure, in either
    // order: the bad one is prepared while the good one's effect is written.
    let mut seen = [next(&mut rx).await, next(&mut rx).await];
    seen.sort();
    let mut expected = [Ok(good.id), Err(bad.id)];
    expected.sort();
    assert_eq!(seen, expected);
    stop(shutdown, running).await;

    assert_eq!(
        h.lag(GROUP).await,
        1,
        "the handled event is committed, the failing one is left for redelivery"
    );
    assert_eq!(h.store.count_dead_letters().await.unwrap(), 0);
}

/// Records when each event's handling started and ended, taking 50 ms each.
struct Timed {
    log: Mutex<Vec<(EventId, std::time::Instant, std::time::Instant)>>,
    /// Each event in a lane of its own instead of its key's.
    lane_per_event: bool,
}

impl Timed {
    fn new(lane_per_event: bool) -> Arc<Self> {
        Arc::new(Self {
            log: Mutex::default(),
            lane_per_event,
        })
    }

    fn span(&self, id: EventId) -> (std::time::Instant, std::time::Instant) {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(e, _, _)| *e == id)
            .map(|(_, s, e)| (*s, *e))
            .unwrap()
    }
}

#[async_trait]
impl Handler for Timed {
    reads_user_events_as!("timed");

    fn lane(&self, envelope: &Envelope) -> String {
        if self.lane_per_event {
            envelope.id.to_string()
        } else {
            envelope.key.clone()
        }
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log
            .lock()
            .unwrap()
            .push((delivery.envelope.id, started, std::time::Instant::now()));
        Ok(Prepared::Effect(Box::new(Told {
            id: delivery.envelope.id,
            events: None,
        })))
    }
}

#[tokio::test]
async fn one_keys_events_are_handled_in_order_while_other_keys_run_alongside() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let (ann, bob) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let ann_events = [registered(ann), registered(ann), registered(ann)];
    let bob_event = registered(bob);
    h.append(&ann_events).await;
    h.append(std::slice::from_ref(&bob_event)).await;
    let handler = Timed::new(false);
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(3)).await;

    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.polled, report.handled), (4, 4));
    let span = |id: EventId| handler.span(id);
    // One user's events: strictly one after the other, in offset order.
    for pair in ann_events.windows(2) {
        let (first, second) = (span(pair[0].id), span(pair[1].id));
        assert!(
            second.0 >= first.1,
            "the second event of a key starts after the first ended"
        );
    }
    // Another user's event does not wait for them.
    let (bob_start, _) = span(bob_event.id);
    let (_, ann_first_end) = span(ann_events[0].id);
    assert!(
        bob_start < ann_first_end,
        "different keys are handled concurrently"
    );
    assert_eq!(h.lag("timed").await, 0, "the whole batch was committed");
}

#[tokio::test]
async fn a_group_with_narrower_lanes_handles_one_keys_events_side_by_side() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let ann = uuid::Uuid::now_v7();
    let ann_events = [registered(ann), registered(ann), registered(ann)];
    h.append(&ann_events).await;
    let handler = Timed::new(true);
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(3)).await;

    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.polled, report.handled), (3, 3));
    let (_, first_end) = handler.span(ann_events[0].id);
    for later in &ann_events[1..] {
        let (start, _) = handler.span(later.id);
        assert!(
            start < first_end,
            "one key's events in lanes of their own overlap"
        );
    }
    assert_eq!(h.lag("timed").await, 0, "the whole batch was committed");
}

/// An effect that fails in the group commit the first `fails` times it is
/// applied (after the runtime's processed mark, inside its savepoint), and
/// records the order in which effects were committed.
struct FlakyApply {
    fails: Mutex<HashMap<EventId, u32>>,
    /// Events whose effect also makes a write the database refuses (an
    /// order of a user that does not exist), which the store only sends
    /// with the rest of the flush.
    refused: HashSet<EventId>,
    committed: Arc<Mutex<Vec<EventId>>>,
    /// The tasks that committed effects: a group commit runs on a task of
    /// its own, so this counts the group commits of `run`.
    committed_by: Arc<Mutex<HashSet<tokio::task::Id>>>,
    /// How long preparing takes, and how long each effect holds the group
    /// commit's transaction.
    delays: (Duration, Duration),
}

impl FlakyApply {
    fn new(fails: HashMap<EventId, u32>, delays: (Duration, Duration)) -> Arc<Self> {
        Self::refusing(fails, delays, HashSet::new())
    }

    fn refusing(
        fails: HashMap<EventId, u32>,
        delays: (Duration, Duration),
        refused: HashSet<EventId>,
    ) -> Arc<Self> {
        Arc::new(Self {
            fails: Mutex::new(fails),
            refused,
            committed: Arc::default(),
            committed_by: Arc::default(),
            delays,
        })
    }
}

#[async_trait]
impl Handler for FlakyApply {
    reads_user_events_as!("flaky-apply");

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let id = delivery.envelope.id;
        let fail = {
            let mut fails = self.fails.lock().unwrap();
            match fails.get_mut(&id) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        };
        tokio::time::sleep(self.delays.0).await;
        Ok(Prepared::Effect(Box::new(FlakyEffect {
            id,
            fail,
            refused: self.refused.contains(&id),
            committed: self.committed.clone(),
            committed_by: self.committed_by.clone(),
            hold: self.delays.1,
        })))
    }
}

struct FlakyEffect {
    id: EventId,
    fail: bool,
    refused: bool,
    committed: Arc<Mutex<Vec<EventId>>>,
    committed_by: Arc<Mutex<HashSet<tokio::task::Id>>>,
    hold: Duration,
}

#[async_trait]
impl Effect for FlakyEffect {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        // A write that must vanish with the savepoint when the effect fails
        // (on a topic the group does not read).
        tx.append(&[Envelope::new(
            EventData::OrderRejected {
                order_id: uuid::Uuid::now_v7(),
                user_id: uuid::Uuid::now_v7(),
                reason: format!("written for {}", self.id),
            },
            None,
        )])
        .await?;
        tokio::time::sleep(self.hold).await;
        if self.fail {
            return Err(outage());
        }
        if self.refused {
            let now = chrono::Utc::now();
            tx.insert_order(&Order {
                id: uuid::Uuid::now_v7(),
                user_id: uuid::Uuid::now_v7(),
                status: OrderStatus::Pending,
                total_cents: 100,
                currency: Currency::parse("EUR").unwrap(),
                items: Vec::new(),
                created_at: now,
                updated_at: now,
            })
            .await?;
        }
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        self.committed.lock().unwrap().push(self.id);
        self.committed_by
            .lock()
            .unwrap()
            .extend(tokio::task::try_id());
    }
}

/// [`FlakyApply`]'s group is done: `processed` are marked processed,
/// `order.events` holds `order_events` events (`why`), and nothing is left.
async fn assert_flaky_apply_done(
    h: &Harness,
    processed: &[EventId],
    order_events: usize,
    why: &str,
) {
    for id in processed {
        assert!(h.store.is_processed("flaky-apply", *id).await.unwrap());
    }
    assert_eq!(
        h.events_on(topics::ORDER_EVENTS).await.len(),
        order_events,
        "{why}"
    );
    assert_eq!(h.lag("flaky-apply").await, 0);
}

#[tokio::test]
async fn a_failing_effect_is_undone_alone_and_its_key_waits_for_it() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let (ann, bob) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let (ann_first, ann_second, bob_only) = (registered(ann), registered(ann), registered(bob));
    h.append(&[ann_first.clone(), bob_only.clone(), ann_second.clone()])
        .await;
    let handler = FlakyApply::new(
        HashMap::from([(ann_first.id, 1)]),
        (Duration::ZERO, Duration::ZERO),
    );
    let committed = handler.committed.clone();
    let mut consumer = consumer(&h, handler, tiny_retry(3)).await;

    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.polled, report.handled, report.retries), (3, 3, 1));
    let committed = committed.lock().unwrap().clone();
    let position = |id: EventId| committed.iter().position(|c| *c == id).unwrap();
    assert!(
        position(ann_first.id) < position(ann_second.id),
        "one key's effects commit in offset order, also across a failed effect: {committed:?}"
    );
    assert_flaky_apply_done(
        &h,
        &[ann_first.id, ann_second.id, bob_only.id],
        3,
        "the failed attempt's write was rolled back with its savepoint, the others kept",
    )
    .await;
}

/// A write the store queues and sends only with the flush, refused by the
/// database at commit: the flush is written again with a savepoint per
/// effect, so only that delivery fails (and, failing every time, is
/// dead-lettered); its neighbour commits once.
#[tokio::test]
async fn a_write_refused_at_commit_fails_only_its_own_delivery() {
    let h = Harness::new(None, tiny_retry(2)).await;
    let (bad, good) = (
        registered(uuid::Uuid::now_v7()),
        registered(uuid::Uuid::now_v7()),
    );
    h.append(&[bad.clone(), good.clone()]).await;
    let handler = FlakyApply::refusing(
        HashMap::new(),
        (Duration::ZERO, Duration::ZERO),
        HashSet::from([bad.id]),
    );
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(2)).await;
    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!(
        (report.handled, report.dead_lettered, report.retries),
        (1, 1, 1),
        "{report:?}"
    );
    assert_eq!(*handler.committed.lock().unwrap(), vec![good.id]);
    assert_eq!(h.store.dead_letters(10, false).await.unwrap().len(), 1);
    assert_flaky_apply_done(
        &h,
        &[good.id],
        1,
        "the refused effect's other writes were rolled back with it",
    )
    .await;
}

#[tokio::test]
async fn effects_of_many_deliveries_share_group_commits() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let events: Vec<Envelope> = (0..100).map(|_| registered(uuid::Uuid::now_v7())).collect();
    h.append(&events).await;
    let handler = FlakyApply::new(HashMap::new(), (Duration::ZERO, Duration::ZERO));
    let mut consumer = consumer(&h, handler.clone(), tiny_retry(3))
        .await
        .with_settings(ConsumerSettings {
            group_commit_max: 64,
            ..ConsumerSettings::default()
        });
    let report = consumer.process_batch(Duration::ZERO).await.unwrap();
    assert_eq!((report.polled, report.handled), (100, 100));
    assert!(
        report.group_commits < report.handled / 2,
        "100 effects in {} transactions",
        report.group_commits
    );
    assert!(
        report.group_commits >= 2,
        "at most 64 effects per group commit, as set"
    );
    assert_eq!(handler.committed.lock().unwrap().len(), 100);
    assert_eq!(h.lag("flaky-apply").await, 0);
}

/// `run` with a group commit interval: deliveries prepared within one
/// interval share a group commit. 20 events appended one by one, 2 ms
/// apart (well under a second even on a busy machine), with an interval of
/// a second: they cross at most one point of the grid, so at most two
/// group commits write them all (without the interval each flush takes
/// what is prepared the moment the last one ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_group_commits_on_the_interval_grid() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let handler = FlakyApply::new(HashMap::new(), (Duration::ZERO, Duration::ZERO));
    let consumer = consumer(&h, handler.clone(), tiny_retry(3))
        .await
        .with_settings(ConsumerSettings {
            group_commit_interval: Duration::from_secs(1),
            ..ConsumerSettings::default()
        });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    for _ in 0..20 {
        h.append(&[registered(uuid::Uuid::now_v7())]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handler.committed.lock().unwrap().len() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 20 effects committed",
            handler.committed.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    let flushes = handler.committed_by.lock().unwrap().len();
    assert!(
        (1..=2).contains(&flushes),
        "20 effects prepared within 40 ms took {flushes} group commits"
    );
    assert_eq!(h.lag("flaky-apply").await, 0);
}

/// `run` commits offsets while group commits are running: the group commit
/// holds SQLite's writer, and the offset commit waits for that writer, so
/// the group commit must progress on its own (it once stalled here until the
/// writer lock timed out, 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_commits_offsets_while_group_commits_hold_the_writer() {
    let h = Harness::new(None, tiny_retry(3)).await;
    let events: Vec<Envelope> = (0..300)
        .map(|i| registered(uuid::Uuid::from_u128(i % 60 + 1)))
        .collect();
    h.append(&events).await;
    // Prepares finish while group commits hold the writer (each effect
    // keeps the transaction 2 ms), so the loop wants to commit offsets then.
    let handler = FlakyApply::new(
        HashMap::new(),
        (Duration::from_millis(1), Duration::from_millis(2)),
    );
    let consumer = consumer(&h, handler.clone(), tiny_retry(3))
        .await
        .with_settings(ConsumerSettings {
            commit_interval: Duration::from_millis(1),
            window: 128,
            ..ConsumerSettings::default()
        });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.lag("flaky-apply").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled with {} events behind",
            h.lag("flaky-apply").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(handler.committed.lock().unwrap().len(), 300);
}
