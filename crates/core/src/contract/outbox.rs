//! Scenarios for the outbox port ([`Outbox`] and [`OutboxBatch`]), and for
//! the [`Relay`] on top of it.
//!
//! Every function takes a fresh, migrated store whose units of work append to
//! the outbox ([`EventDestination::Outbox`](crate::ports::outbox::EventDestination))
//! and that store's outbox. Events are appended through a [`Store`] unit of
//! work, as use cases and consumers do.
//!
//! The relay scenario uses an in-process [`EventPublisher`] that records what
//! it was given and can be told to fail: it stands in for the broker so that
//! the relay's own promise (mark only after the acknowledgement) is checked
//! against every outbox adapter; the Kafka publisher is tested against a real
//! broker in the Kafka adapter's tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::events::{Envelope, topics};

use super::{append_committed, order_rejected, user_registered};
use crate::ports::log::{LogError, LogResult};
use crate::ports::outbox::{EventPublisher, Outbox, OutboxEvent};
use crate::ports::store::Store;
use crate::services::relay::{Relay, RelaySettings};
use tokio_util::sync::CancellationToken;

fn ids_of(events: &[OutboxEvent]) -> Vec<uuid::Uuid> {
    events.iter().map(|e| e.envelope.id).collect()
}

fn envelope_ids(events: &[Envelope]) -> Vec<uuid::Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// Appended rows are claimable once their unit of work commits, never
/// before, and never when it rolls back; they come back oldest first with
/// their topic, key and envelope intact.
pub async fn claim_sees_only_committed(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let user = uuid::Uuid::now_v7();
    let first = vec![user_registered(user), order_rejected(user)];

    let mut tx = store.begin().await.expect("begin");
    tx.append(&first).await.expect("append");
    let batch = outbox.claim(10).await.expect("claim");
    assert!(
        batch.events().is_empty(),
        "uncommitted rows were claimable: {:?}",
        batch.events()
    );
    drop(batch);
    drop(tx);
    let batch = outbox.claim(10).await.expect("claim");
    assert!(
        batch.events().is_empty(),
        "rolled-back rows were claimable: {:?}",
        batch.events()
    );
    drop(batch);
    assert_eq!(
        outbox.backlog().await.unwrap().unsent,
        0,
        "rollback leaves no backlog"
    );

    append_committed(&store, &first).await;
    let second = vec![user_registered(uuid::Uuid::now_v7())];
    append_committed(&store, &second).await;

    let batch = outbox.claim(10).await.expect("claim");
    let events = batch.events();
    let want: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        ids_of(events),
        envelope_ids(&want),
        "oldest first, in append order"
    );
    for (row, envelope) in events.iter().zip(&want) {
        assert_eq!(
            &row.envelope, envelope,
            "the envelope round-trips unchanged"
        );
        assert_eq!(row.topic, envelope.topic(), "topic of {row:?}");
        assert_eq!(row.key, envelope.key, "key of {row:?}");
    }
    assert_eq!(events[0].topic, topics::USER_EVENTS);
    assert_eq!(events[1].topic, topics::ORDER_EVENTS);
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq grows in append order: {events:?}"
    );
}

/// `claim` honours its limit and returns the oldest rows.
pub async fn claim_limit_takes_oldest(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let events: Vec<Envelope> = (0..5)
        .map(|_| user_registered(uuid::Uuid::now_v7()))
        .collect();
    append_committed(&store, &events).await;
    let batch = outbox.claim(3).await.expect("claim");
    assert_eq!(
        ids_of(batch.events()),
        envelope_ids(&events[..3]),
        "a limit of 3 takes the 3 oldest"
    );
}

/// Marked rows never come back; rows of the batch that were not marked are
/// released and claimable again.
pub async fn marked_rows_never_come_back(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let events: Vec<Envelope> = (0..4)
        .map(|_| user_registered(uuid::Uuid::now_v7()))
        .collect();
    append_committed(&store, &events).await;

    let batch = outbox.claim(10).await.expect("claim");
    assert_eq!(batch.events().len(), 4);
    let seqs: Vec<i64> = batch.events()[..3].iter().map(|e| e.seq).collect();
    batch.mark_sent(&seqs).await.expect("mark sent");

    let batch = outbox.claim(10).await.expect("claim");
    assert_eq!(
        ids_of(batch.events()),
        envelope_ids(&events[3..]),
        "only the unmarked row is left"
    );
    let last = batch.events()[0].seq;
    batch.mark_sent(&[last]).await.expect("mark sent");
    let batch = outbox.claim(10).await.expect("claim");
    assert!(
        batch.events().is_empty(),
        "everything was marked: {:?}",
        batch.events()
    );
    drop(batch);
    assert_eq!(outbox.backlog().await.unwrap().unsent, 0);

    // Marking an already marked row again (a relay that lost its answer and
    // retried) is harmless.
    let batch = outbox.claim(10).await.expect("claim");
    batch
        .mark_sent(&seqs)
        .await
        .expect("marking twice is a no-op");
    assert_eq!(outbox.backlog().await.unwrap().unsent, 0);
}

/// A batch dropped without marking (a relay that crashed or failed to
/// publish) leaves its rows unsent for the next claim.
pub async fn dropped_batch_leaves_rows_unsent(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let events: Vec<Envelope> = (0..3)
        .map(|_| user_registered(uuid::Uuid::now_v7()))
        .collect();
    append_committed(&store, &events).await;
    let batch = outbox.claim(10).await.expect("claim");
    assert_eq!(batch.events().len(), 3);
    drop(batch);
    assert_eq!(
        outbox.backlog().await.unwrap().unsent,
        3,
        "nothing was marked"
    );
    let batch = outbox.claim(10).await.expect("claim");
    assert_eq!(
        ids_of(batch.events()),
        envelope_ids(&events),
        "the dropped rows are claimable again, in order"
    );
}

/// Two live batches never hold the same row (PostgreSQL: `FOR UPDATE SKIP
/// LOCKED`), so several relays can run at once; a released claim makes its
/// rows claimable again.
pub async fn live_claims_do_not_overlap(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let events: Vec<Envelope> = (0..5)
        .map(|_| user_registered(uuid::Uuid::now_v7()))
        .collect();
    append_committed(&store, &events).await;

    let first = outbox.claim(2).await.expect("first claim");
    let second = tokio::time::timeout(Duration::from_secs(10), outbox.claim(10))
        .await
        .expect("a second claim must not wait for the first batch")
        .expect("second claim");
    assert_eq!(ids_of(first.events()), envelope_ids(&events[..2]));
    assert_eq!(
        ids_of(second.events()),
        envelope_ids(&events[2..]),
        "the second claim skips the rows the first holds"
    );
    let third = outbox.claim(10).await.expect("third claim");
    assert!(
        third.events().is_empty(),
        "every row is held: {:?}",
        third.events()
    );
    drop(third);
    drop(first);
    let again = outbox.claim(10).await.expect("claim after release");
    assert_eq!(
        ids_of(again.events()),
        envelope_ids(&events[..2]),
        "released rows come back"
    );
}

/// The backlog counts unsent rows and reports the age of the oldest one.
pub async fn backlog_counts_and_age(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let empty = outbox.backlog().await.expect("backlog");
    assert_eq!(empty.unsent, 0);
    assert_eq!(empty.oldest_age_seconds, 0.0, "no rows, no age");

    let events: Vec<Envelope> = (0..3)
        .map(|_| user_registered(uuid::Uuid::now_v7()))
        .collect();
    append_committed(&store, &events).await;
    // Deliberate: let the rows age measurably.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backlog = outbox.backlog().await.expect("backlog");
    assert_eq!(backlog.unsent, 3);
    assert!(
        (0.25..60.0).contains(&backlog.oldest_age_seconds),
        "the oldest row is about 0.3 s old, got {}",
        backlog.oldest_age_seconds
    );

    let batch = outbox.claim(10).await.expect("claim");
    assert_eq!(
        outbox.backlog().await.unwrap().unsent,
        3,
        "claimed but not marked rows are still backlog"
    );
    let first = batch.events()[0].seq;
    batch.mark_sent(&[first]).await.expect("mark");
    assert_eq!(outbox.backlog().await.unwrap().unsent, 2);
}

/// A broker stand-in that records the batches it acknowledged and fails the
/// next `fail_next` calls.
#[derive(Default)]
struct Recording {
    published: Mutex<Vec<OutboxEvent>>,
    fail_next: Mutex<u32>,
}

#[async_trait]
impl EventPublisher for Recording {
    async fn publish(&self, events: &[OutboxEvent]) -> LogResult<()> {
        {
            let mut fail = self.fail_next.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(LogError::Unavailable("broker stand-in told to fail".into()));
            }
        }
        self.published.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// The relay marks rows sent only after the publisher acknowledged them: a
/// failed publish leaves every row unsent, the next step publishes them, and
/// a drained outbox makes a step that relays nothing.
pub async fn relay_marks_only_after_ack(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let publisher = Arc::new(Recording::default());
    let relay = Relay::new(
        outbox.clone(),
        publisher.clone(),
        RelaySettings {
            batch_size: 3,
            ..RelaySettings::default()
        },
    );
    assert_eq!(relay.relay_once().await.expect("empty step"), 0);

    let events: Vec<Envelope> = (0..5)
        .map(|_| user_registered(uuid::Uuid::now_v7()))
        .collect();
    append_committed(&store, &events).await;

    *publisher.fail_next.lock().unwrap() = 1;
    relay
        .relay_once()
        .await
        .expect_err("a failed publish fails the step");
    assert_eq!(
        outbox.backlog().await.unwrap().unsent,
        5,
        "nothing is marked when the publish failed"
    );

    assert_eq!(relay.relay_once().await.expect("step"), 3, "a full batch");
    assert_eq!(outbox.backlog().await.unwrap().unsent, 2);
    assert_eq!(relay.relay_once().await.expect("step"), 2, "the rest");
    assert_eq!(relay.relay_once().await.expect("step"), 0, "drained");
    let backlog = relay.refresh_backlog().await.expect("backlog");
    assert_eq!(backlog.unsent, 0);
    assert_eq!(
        ids_of(&publisher.published.lock().unwrap()),
        envelope_ids(&events),
        "every row published once after the failure, in append order"
    );
}

/// Several relays keep each key's order: while one live batch holds rows of
/// a key, another claim skips every row of that key (a later event of a
/// shopper must not reach the log before an earlier one another relay is
/// still publishing).
pub async fn live_claims_keep_key_order(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>) {
    let (k, l) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let events = vec![
        user_registered(k),
        user_registered(k),
        user_registered(l),
        user_registered(k),
    ];
    for event in &events {
        append_committed(&store, std::slice::from_ref(event)).await;
    }

    let first = outbox.claim(1).await.expect("first claim");
    assert_eq!(ids_of(first.events()), envelope_ids(&events[..1]));
    let second = tokio::time::timeout(Duration::from_secs(10), outbox.claim(10))
        .await
        .expect("a second claim must not wait for the first batch")
        .expect("second claim");
    assert_eq!(
        ids_of(second.events()),
        envelope_ids(&events[2..3]),
        "the key held by the first batch is skipped entirely, other keys are not"
    );
    drop(first);
    let third = outbox.claim(10).await.expect("third claim");
    assert_eq!(
        ids_of(third.events()),
        vec![events[0].id, events[1].id, events[3].id],
        "once released, the key's rows come back in order"
    );
}

/// A broker stand-in whose acknowledgements wait until [`Gated::open`]: it
/// records which events a publish started with, so a test sees batches in
/// flight at the same time.
struct Gated {
    started: Mutex<Vec<uuid::Uuid>>,
    acknowledged: Mutex<Vec<uuid::Uuid>>,
    gate: tokio::sync::Semaphore,
}

impl Gated {
    fn new() -> Self {
        Self {
            started: Mutex::default(),
            acknowledged: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }

    fn open(&self) {
        // A closed semaphore makes every waiting and later acquire return.
        self.gate.close();
    }

    fn started(&self) -> Vec<uuid::Uuid> {
        self.started.lock().unwrap().clone()
    }
}

#[async_trait]
impl EventPublisher for Gated {
    async fn publish(&self, events: &[OutboxEvent]) -> LogResult<()> {
        self.started.lock().unwrap().extend(ids_of(events));
        let _ = self.gate.acquire().await;
        self.acknowledged.lock().unwrap().extend(ids_of(events));
        Ok(())
    }
}

/// Waits up to 10 s for `done`, then fails with `what`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running relay claims as soon as a unit of work commits (its idle look
/// is an hour away here, so only the outbox's signal can start the claim),
/// publishes another key's rows while an earlier batch still waits for the
/// broker, and holds back a key whose earlier row is in flight until that
/// batch is acknowledged.
pub async fn running_relay_claims_at_commit_with_batches_in_flight(
    store: Arc<dyn Store>,
    outbox: Arc<dyn Outbox>,
) {
    let publisher = Arc::new(Gated::new());
    let relay = Relay::new(
        outbox.clone(),
        publisher.clone(),
        RelaySettings {
            batch_size: 10,
            max_in_flight: 4,
            idle_wait: Duration::from_secs(3600),
            ..RelaySettings::default()
        },
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    let (k, l) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let k1 = user_registered(k);
    append_committed(&store, std::slice::from_ref(&k1)).await;
    eventually("the commit did not start a publish", || {
        publisher.started() == vec![k1.id]
    })
    .await;

    let (k2, l1) = (user_registered(k), user_registered(l));
    append_committed(&store, std::slice::from_ref(&k2)).await;
    append_committed(&store, std::slice::from_ref(&l1)).await;
    eventually(
        "another key's row was not published while the first batch was in flight",
        || publisher.started() == vec![k1.id, l1.id],
    )
    .await;
    // The key's later row waits for the batch holding its earlier one, also
    // in the claim a third key's commit starts (it reads k2 before m1).
    let m1 = user_registered(uuid::Uuid::now_v7());
    append_committed(&store, std::slice::from_ref(&m1)).await;
    eventually("a third key's commit did not start a claim", || {
        publisher.started().len() >= 3
    })
    .await;
    assert_eq!(
        publisher.started(),
        vec![k1.id, l1.id, m1.id],
        "a key's later row was published while its earlier row was in flight"
    );

    publisher.open();
    eventually("the held-back row was not published after the ack", || {
        publisher.started().len() == 4
    })
    .await;
    let mut drained = false;
    for _ in 0..1000 {
        if outbox.backlog().await.expect("backlog").unsent == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(drained, "acknowledged rows were not marked sent");
    shutdown.cancel();
    running.await.expect("the relay stops on shutdown");
    assert_eq!(
        publisher.started(),
        vec![k1.id, l1.id, m1.id, k2.id],
        "each row published once, the key's rows in order"
    );
    assert_eq!(publisher.acknowledged.lock().unwrap().len(), 4);
}
