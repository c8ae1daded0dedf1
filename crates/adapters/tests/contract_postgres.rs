//! The port contract scenarios (`orderflow_core::contract`) against the
//! PostgreSQL adapter, on a real PostgreSQL server started by the test
//! harness (one server per test binary, a fresh database per test). The
//! outbox scenarios run on a store that appends to the outbox. The
//! PostgreSQL-specific checks follow: two stores (two pools, as two
//! processes would have) racing for stock and idempotency keys, appends from
//! both keeping offsets gap-free, NOTIFY wake-ups across stores, and the
//! outbox as two relays see it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::postgres::{DEFAULT_PARTITIONS, PostgresStore, partition_for};
use orderflow_core::contract;
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::outbox::{EventDestination, Outbox};
use orderflow_core::ports::store::{
    IdempotencyClaim, NotificationRecord, Prunable, Reservation, Store, StoreError,
};
use orderflow_domain::events::topics;
use orderflow_domain::notification::{Channel, NotificationKind};
use tokio::sync::Barrier;

#[macro_use]
mod sql_contract;

/// A new, empty database on the shared test server.
async fn fresh_url() -> String {
    orderflow_testkit::postgres::fresh_database()
        .await
        .expect("a PostgreSQL test server (run scripts/test.sh to install PostgreSQL)")
}

async fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(url, 8, DEFAULT_PARTITIONS)
        .await
        .expect("connect")
}

/// A migrated store on a new database.
async fn fresh() -> PostgresStore {
    let store = connect(&fresh_url().await).await;
    store.migrate().await.expect("migrate");
    store
}

/// [`fresh`] for the shared scenarios: nothing to keep alive besides the
/// store (the server is shared by the whole binary).
async fn fresh_store() -> ((), PostgresStore) {
    ((), fresh().await)
}

sql_contract_tests!(fresh_store);

// --- PostgreSQL-specific ----------------------------------------------------

/// Two stores on one database: what two processes have.
async fn two_stores() -> (Arc<dyn Store>, Arc<dyn Store>, PostgresStore) {
    let url = fresh_url().await;
    let first = connect(&url).await;
    first.migrate().await.expect("migrate");
    let second = connect(&url).await;
    (Arc::new(first.clone()), Arc::new(second), first)
}

/// Orders placed through two processes race for the last units: row locks
/// (not a process-local lock) keep the stock from being oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_race_for_stock() {
    let (a, b, raw) = two_stores().await;
    let user = contract::given_user(&a, "Ann").await;
    let mug = contract::given_product(&a, 10).await;
    let cup = contract::given_product(&a, 25).await;
    let orders = 40;
    let mut order_ids = Vec::new();
    for _ in 0..orders {
        // Two lines each, so all-or-nothing matters: mugs run out first.
        order_ids.push(
            contract::given_order(&a, user.id, &[(&mug, 1), (&cup, 1)])
                .await
                .id,
        );
    }
    let barrier = Arc::new(Barrier::new(orders));
    let tasks: Vec<_> = order_ids
        .iter()
        .enumerate()
        .map(|(i, order_id)| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (barrier, order_id) = (barrier.clone(), *order_id);
            let lines = [(mug.id, 1), (cup.id, 1)];
            tokio::spawn(async move {
                barrier.wait().await;
                let mut tx = store.begin().await.expect("begin");
                let outcome = tx.reserve_stock(order_id, &lines).await.expect("reserve");
                tx.commit().await.expect("commit");
                outcome
            })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        match task.await.expect("task") {
            Reservation::Reserved { .. } => reserved += 1,
            Reservation::Insufficient { product_id, .. } => {
                assert_eq!(product_id, mug.id, "only mugs run out")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved, 10, "exactly the 10 mugs are sold");
    let mug_left = a.product(mug.id).await.unwrap().unwrap().stock;
    let cup_left = b.product(cup.id).await.unwrap().unwrap().stock;
    assert_eq!(
        (mug_left, cup_left),
        (0, 15),
        "all lines or none: rejected orders took no cups"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock_reservations")
        .fetch_one(raw.pool())
        .await
        .unwrap();
    assert_eq!(rows, 20, "two reservation rows per successful order");

    // The same order delivered to both processes at once reserves once.
    let order = contract::given_order(&a, user.id, &[(&cup, 2)]).await;
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut tx = store.begin().await.expect("begin");
                let outcome = tx
                    .reserve_stock(order.id, &[(cup.id, 2)])
                    .await
                    .expect("reserve");
                tx.commit().await.expect("commit");
                outcome
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let mut outcomes: Vec<&str> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Reservation::AlreadyReserved => "already reserved",
            Reservation::Reserved { .. } => "reserved",
            _ => "refused",
        })
        .collect();
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        vec!["already reserved", "reserved"],
        "a redelivery racing the first delivery does not take stock twice"
    );
    assert_eq!(a.product(cup.id).await.unwrap().unwrap().stock, 13);
}

/// Stock below zero is refused by the table itself, whatever the code does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_check_constraint() {
    let store = fresh().await;
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mug = contract::given_product(&shared, 1).await;
    let refused = sqlx::query("UPDATE products SET stock = stock - 2 WHERE id = $1")
        .bind(mug.id)
        .execute(store.pool())
        .await;
    assert!(
        refused.is_err(),
        "the CHECK constraint must refuse stock -1"
    );
    assert_eq!(shared.product(mug.id).await.unwrap().unwrap().stock, 1);
}

/// One idempotency key presented through two processes at once: exactly one
/// claims it; the other waits for the winner's commit and sees its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_race_for_an_idempotency_key() {
    let (a, b, _) = two_stores().await;
    let user = contract::given_user(&a, "Ann").await;
    for round in 0..20 {
        let key = format!("key-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|store| {
                let (barrier, key) = (barrier.clone(), key.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut tx = store.begin().await.expect("begin");
                    let claim = tx
                        .claim_idempotency_key(user.id, &key, "hash")
                        .await
                        .expect("claim");
                    if claim == IdempotencyClaim::Claimed {
                        tx.complete_idempotency_key(
                            user.id,
                            &key,
                            201,
                            &serde_json::json!({ "key": key }),
                        )
                        .await
                        .expect("complete");
                    }
                    tx.commit().await.expect("commit");
                    claim
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let claimed = results
            .iter()
            .filter(|r| **r == IdempotencyClaim::Claimed)
            .count();
        assert_eq!(claimed, 1, "exactly one process claims {key}: {results:?}");
        assert!(
            results.iter().any(|r| matches!(
                r,
                IdempotencyClaim::Existing(rec)
                    if rec.response_status == 201 && rec.response_body == serde_json::json!({ "key": key })
            )),
            "the other sees the winner's answer: {results:?}"
        );
    }
}

/// Two group commits (two processes) notify the same two shoppers in
/// opposite orders, one effect savepoint per notification, each waiting for
/// the other between the two: both commit. Shoppers' turns are taken at
/// commit, all at once and sorted; taken per effect, in effect order, the
/// two waited for each other and PostgreSQL failed one (`deadlock
/// detected`), sometimes with an order placement queued behind them as the
/// victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commits_notifying_shoppers_in_opposite_orders_both_commit() {
    let (a, b, _) = two_stores().await;
    let ann = contract::given_user(&a, "Ann").await;
    let bob = contract::given_user(&a, "Bob").await;
    let reader = a.clone();
    let between = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = [(a, [ann.id, bob.id]), (b, [bob.id, ann.id])]
        .into_iter()
        .map(|(store, shoppers)| {
            let between = between.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await?;
                for (n, user_id) in shoppers.into_iter().enumerate() {
                    if n == 1 {
                        between.wait().await;
                    }
                    tx.savepoint().await?;
                    tx.record_notification(&NotificationRecord {
                        user_id,
                        channel: Channel::Email,
                        kind: NotificationKind::OrderConfirmed,
                        order_id: Some(uuid::Uuid::now_v7()),
                        sent_at: chrono::Utc::now(),
                    })
                    .await?;
                    tx.release_savepoint().await?;
                }
                tx.commit().await
            })
        })
        .collect();
    for task in tasks {
        let done = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the two group commits finish")
            .unwrap();
        done.expect("both group commits commit");
    }
    for user in [&ann, &bob] {
        let notes = reader.notifications_of_user(user.id, 10).await.unwrap();
        assert_eq!(notes.len(), 2, "{}'s two notifications", user.name);
    }
}

/// Two processes append to one partition at once: offsets stay gap-free and
/// unique, and a reader sees every event exactly once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_append_gap_free() {
    let (a, b, raw) = two_stores().await;
    let key = uuid::Uuid::now_v7();
    let per_store = 25;
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..per_store {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let event = contract::user_registered(key);
                contract::append_committed(&store, std::slice::from_ref(&event)).await;
                event.id
            }));
        }
    }
    let mut appended = BTreeSet::new();
    for task in tasks {
        appended.insert(task.await.unwrap());
    }

    let mut sub = raw
        .event_log()
        .subscribe("reader", &[topics::USER_EVENTS])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 * per_store {
        let batch = sub.poll(7, Duration::from_secs(10)).await.unwrap();
        assert!(!batch.is_empty(), "ran dry after {}", seen.len());
        seen.extend(batch);
    }
    let partition = partition_for(&key.to_string(), DEFAULT_PARTITIONS);
    assert!(seen.iter().all(|d| d.partition == partition));
    assert_eq!(
        seen.iter().map(|d| d.offset).collect::<Vec<_>>(),
        (0..2 * per_store as i64).collect::<Vec<_>>(),
        "gap-free offsets, delivered in order"
    );
    let delivered: BTreeSet<_> = seen.iter().map(|d| d.envelope.id).collect();
    assert_eq!(delivered, appended, "every event exactly once");
}

/// A commit in another process wakes a waiting poll through LISTEN/NOTIFY,
/// long before the poll's wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_pollers_in_other_processes() {
    let (_, other, raw) = two_stores().await;
    let mut sub = raw
        .event_log()
        .subscribe("far", &[topics::USER_EVENTS])
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let waiting = tokio::spawn(async move { sub.poll(10, Duration::from_secs(120)).await });
    // Deliberate: let the poll park on its wait, so the wake-up is tested.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let event = contract::user_registered(uuid::Uuid::now_v7());
    contract::append_committed(&other, std::slice::from_ref(&event)).await;
    let batch = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the NOTIFY from the other store must wake the poll before its 120 s wait")
        .unwrap()
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].envelope.id, event.id);
    assert!(started.elapsed() < Duration::from_secs(30));
}

partitions_test!({
    let url = fresh_url().await;
    move |partitions| {
        let url = url.clone();
        async move { PostgresStore::connect(&url, 4, partitions).await }
    }
});

/// A server that is not there is `Unavailable`, not a panic or a hang.
#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let port = orderflow_testkit::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    match PostgresStore::connect(&url, 2, DEFAULT_PARTITIONS).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("connect"), "says what failed: {message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

// --- the outbox ---------------------------------------------------------------

/// A store that appends to the outbox, and `count` committed events in it.
/// Also returns the database URL, for a second store (a second relay).
async fn outbox_with(count: usize) -> (String, PostgresStore, Vec<uuid::Uuid>) {
    let url = fresh_url().await;
    let store = connect(&url)
        .await
        .with_event_destination(EventDestination::Outbox);
    store.migrate().await.expect("migrate");
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mut ids = Vec::new();
    for chunk in 0..count.div_ceil(10) {
        let events: Vec<_> = (0..10.min(count - chunk * 10))
            .map(|_| contract::user_registered(uuid::Uuid::now_v7()))
            .collect();
        ids.extend(events.iter().map(|e| e.id));
        contract::append_committed(&shared, &events).await;
    }
    (url, store, ids)
}

/// With the outbox destination, appended events go to the outbox (with
/// topic, key and the full envelope) and not to the embedded log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_destination_fills_the_outbox_only() {
    let (_, store, ids) = outbox_with(3).await;
    assert_eq!(store.event_destination(), EventDestination::Outbox);
    let in_log: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_log")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(in_log, 0, "nothing goes to the embedded log");
    let backlog = store.outbox().backlog().await.unwrap();
    assert_eq!(backlog.unsent, 3);
    assert!(backlog.oldest_age_seconds >= 0.0);

    let batch = store.outbox().claim(10).await.unwrap();
    let events = batch.events();
    assert_eq!(
        events.iter().map(|e| e.envelope.id).collect::<Vec<_>>(),
        ids,
        "oldest first, in append order"
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().all(|e| e.topic == topics::USER_EVENTS
        && e.key == e.envelope.key
        && e.envelope.topic() == topics::USER_EVENTS));
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    batch.mark_sent(&seqs).await.unwrap();
    let backlog = store.outbox().backlog().await.unwrap();
    assert_eq!((backlog.unsent, backlog.oldest_age_seconds), (0, 0.0));

    // A rolled-back unit of work leaves no outbox row.
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mut tx = shared.begin().await.unwrap();
    tx.append(&[contract::user_registered(uuid::Uuid::now_v7())])
        .await
        .unwrap();
    drop(tx);
    assert_eq!(store.outbox().backlog().await.unwrap().unsent, 0);

    // Retention: published rows go once they are older than the cut-off;
    // an unsent row never does.
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    contract::append_committed(&shared, &[contract::user_registered(uuid::Uuid::now_v7())]).await;
    let (long_ago, later) = (
        chrono::Utc::now() - chrono::Duration::hours(1),
        chrono::Utc::now() + chrono::Duration::minutes(1),
    );
    assert_eq!(
        shared
            .prune(Prunable::SentOutbox, long_ago, 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        shared.prune(Prunable::SentOutbox, later, 2).await.unwrap(),
        2
    );
    assert_eq!(
        shared.prune(Prunable::SentOutbox, later, 2).await.unwrap(),
        1
    );
    assert_eq!(store.outbox().backlog().await.unwrap().unsent, 1);
}

/// Two relays (two stores, two pools) claiming at the same time never get
/// the same row; together they drain the outbox, each row sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_claims_of_two_relays_never_overlap() {
    let (url, store, ids) = outbox_with(60).await;
    let other = connect(&url).await;

    // Both hold a claim at once: disjoint rows.
    let first = store.outbox().claim(10).await.unwrap();
    let second = other.outbox().claim(10).await.unwrap();
    let a: BTreeSet<i64> = first.events().iter().map(|e| e.seq).collect();
    let b: BTreeSet<i64> = second.events().iter().map(|e| e.seq).collect();
    assert_eq!((a.len(), b.len()), (10, 10));
    assert!(a.is_disjoint(&b), "SKIP LOCKED: claims never overlap");
    drop(first);
    drop(second);

    // Two relays drain concurrently. A relay stops once nothing is left
    // unsent, not at its first empty claim: a dropped claim's rollback runs
    // when its pooled connection is next used, and until then `SKIP LOCKED`
    // skips its rows (one CI run under load sent 21 of 60 rows when the
    // relays stopped at an empty claim).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let relay = |outbox: orderflow_adapters::postgres::PostgresOutbox| {
        tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let batch = outbox.claim(7).await.expect("claim");
                if batch.events().is_empty() {
                    drop(batch);
                    if outbox.backlog().await.expect("backlog").unsent == 0 {
                        return sent;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "rows stayed claimed for 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let seqs: Vec<i64> = batch.events().iter().map(|e| e.seq).collect();
                sent.extend(batch.events().iter().map(|e| e.envelope.id));
                batch.mark_sent(&seqs).await.expect("mark sent");
            }
        })
    };
    let (one, two) = (relay(store.outbox()), relay(other.outbox()));
    let mut sent = one.await.unwrap();
    sent.extend(two.await.unwrap());
    let unique: BTreeSet<_> = sent.iter().copied().collect();
    assert_eq!(sent.len(), unique.len(), "no row was sent twice");
    assert_eq!(unique, ids.into_iter().collect(), "every row was sent");
    assert_eq!(store.outbox().backlog().await.unwrap().unsent, 0);
}

/// A relay in another process (another store, another pool) hears of a
/// commit that appended to the outbox through `NOTIFY`, without looking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_commits_signal_relays_of_other_processes() {
    let (url, store, _) = outbox_with(0).await;
    let other = connect(&url).await;
    let mut appended = other.outbox().appended().await.expect("watch the outbox");
    appended.borrow_and_update();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    contract::append_committed(&shared, &[contract::user_registered(uuid::Uuid::now_v7())]).await;
    tokio::time::timeout(Duration::from_secs(10), appended.changed())
        .await
        .expect("the other process's relay was not signalled within 10 s")
        .expect("the signal stays open while the store lives");
}

/// A dropped batch (a relay that failed to publish, or died) leaves its rows
/// unsent, and the next claim gets them again; a batch marks only its own
/// rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_outbox_batch_leaves_rows_unsent() {
    let (_, store, _) = outbox_with(5).await;
    let outbox = store.outbox();
    let batch = outbox.claim(3).await.unwrap();
    let claimed: Vec<i64> = batch.events().iter().map(|e| e.seq).collect();
    drop(batch);
    assert_eq!(
        outbox.backlog().await.unwrap().unsent,
        5,
        "nothing was sent"
    );
    let again = outbox.claim(3).await.unwrap();
    assert_eq!(
        again.events().iter().map(|e| e.seq).collect::<Vec<_>>(),
        claimed,
        "the released rows come back first"
    );
    // A row another relay holds is not marked by this batch.
    let other = store.outbox().claim(1).await.unwrap();
    let foreign = other.events()[0].seq;
    assert!(!claimed.contains(&foreign));
    again.mark_sent(&[claimed[0], foreign]).await.unwrap();
    drop(other);
    assert_eq!(
        outbox.backlog().await.unwrap().unsent,
        4,
        "only the batch's own row was marked"
    );

    // Partially sent: only the acknowledged rows are marked.
    let batch = outbox.claim(3).await.unwrap();
    let seqs: Vec<i64> = batch.events().iter().map(|e| e.seq).collect();
    batch.mark_sent(&seqs[..1]).await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap().unsent, 3);
}

// --- consumer groups across processes: partitions shared by leases -----------

mod groups {
    //! Members of one group on separate stores (separate pools, as separate
    //! processes have) share the partitions through leases: an even split,
    //! hand-over to a newcomer, take-over from a dead member, fencing of a
    //! member whose lease ran out, and per-key order through all of it.
    //! Every wait is a bounded loop with a generous limit; no sleep asserts
    //! speed.

    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::fmt::Display;

    use futures::FutureExt;
    use orderflow_adapters::postgres::log::{
        LeaseSettings, PostgresEventLog, PostgresSubscription,
    };
    use orderflow_core::ports::log::{Delivery, Subscription};
    use orderflow_domain::events::Envelope;
    use tokio::time::Instant;

    use super::*;

    /// Short leases, so that a take-over after a death takes seconds.
    fn short_leases() -> LeaseSettings {
        LeaseSettings {
            lease: Duration::from_secs(3),
            renew_every: Duration::from_millis(300),
        }
    }

    const GROUP: &str = "shared";
    const PARTITIONS: usize = DEFAULT_PARTITIONS as usize;
    /// How long any bounded wait below may take before the test fails.
    const PATIENCE: Duration = Duration::from_secs(60);
    /// A poll's wait in the driving loops: short, so every member gets turns.
    const TURN: Duration = Duration::from_millis(100);

    /// The end of a bounded wait: PATIENCE after it started.
    struct Deadline(Instant);

    impl Deadline {
        fn start() -> Self {
            Self(Instant::now() + PATIENCE)
        }

        /// Fails the test with `waiting_for` once the wait is over.
        #[track_caller]
        fn check(&self, waiting_for: impl Display) {
            assert!(Instant::now() < self.0, "{waiting_for}");
        }
    }

    /// A fresh database and `n` stores on it (one per "process"), each with
    /// an event log with `leases`.
    async fn processes(n: usize, leases: LeaseSettings) -> (Arc<dyn Store>, Vec<PostgresEventLog>) {
        let url = fresh_url().await;
        let first = connect(&url).await;
        first.migrate().await.expect("migrate");
        let mut logs = vec![first.event_log().with_leases(leases)];
        for _ in 1..n {
            logs.push(connect(&url).await.event_log().with_leases(leases));
        }
        (Arc::new(first), logs)
    }

    async fn join(log: &PostgresEventLog) -> PostgresSubscription {
        log.join(GROUP, &[topics::USER_EVENTS]).await.expect("join")
    }

    /// Members a and b, joined on the first two stores, once they hold three
    /// partitions each.
    async fn a_and_b(logs: &[PostgresEventLog]) -> (PostgresSubscription, PostgresSubscription) {
        let mut a = join(&logs[0]).await;
        let mut b = join(&logs[1]).await;
        three_each(&mut a, &mut b).await;
        (a, b)
    }

    /// Drives a and b until they hold three partitions each.
    async fn three_each(a: &mut PostgresSubscription, b: &mut PostgresSubscription) {
        drive_until("a and b hold three partitions each", &mut [a, b], |m| {
            is_split(m, &[3, 3])
        })
        .await;
    }

    /// `per_partition` keys on every partition of `user.events`.
    fn keys(per_partition: usize) -> Vec<uuid::Uuid> {
        let mut count: HashMap<i32, usize> = HashMap::new();
        let mut keys = Vec::new();
        while keys.len() < per_partition * PARTITIONS {
            let key = uuid::Uuid::now_v7();
            let slot = count
                .entry(partition_for(&key.to_string(), DEFAULT_PARTITIONS))
                .or_default();
            if *slot < per_partition {
                *slot += 1;
                keys.push(key);
            }
        }
        keys
    }

    /// One event per key, in one unit of work; returns them in append order.
    async fn append_round(store: &Arc<dyn Store>, keys: &[uuid::Uuid]) -> Vec<Envelope> {
        let events: Vec<Envelope> = keys.iter().map(|k| contract::user_registered(*k)).collect();
        contract::append_committed(store, &events).await;
        events
    }

    fn partition_of(d: &Delivery) -> (String, i32) {
        (d.topic.clone(), d.partition)
    }

    /// The ids of the events appended.
    fn ids(events: &[Envelope]) -> HashSet<uuid::Uuid> {
        events.iter().map(|e| e.id).collect()
    }

    /// The ids of the events delivered, each once.
    fn delivered_ids<'a>(
        deliveries: impl IntoIterator<Item = &'a Delivery>,
    ) -> HashSet<uuid::Uuid> {
        deliveries.into_iter().map(|d| d.envelope.id).collect()
    }

    /// Assigned partition counts, when the members' assignments are disjoint
    /// and cover every partition of `user.events`; `None` otherwise.
    fn split(members: &[&mut PostgresSubscription]) -> Option<Vec<usize>> {
        let mut all = BTreeSet::new();
        let mut counts = Vec::new();
        for member in members {
            let mine = member.assigned();
            counts.push(mine.len());
            for key in mine {
                if !all.insert(key) {
                    return None;
                }
            }
        }
        (all.len() == PARTITIONS).then_some(counts)
    }

    fn is_split(members: &[&mut PostgresSubscription], want: &[usize]) -> bool {
        split(members).is_some_and(|counts| counts == want)
    }

    /// One turn of a member: a short poll, committed when `commit`.
    async fn turn(member: &mut PostgresSubscription, commit: bool) -> Vec<Delivery> {
        let batch = member.poll(100, TURN).await.expect("poll");
        if commit {
            member.commit(&batch).await.expect("commit");
        }
        batch
    }

    /// Gives every member a turn after another (committing each batch when
    /// `commit`) until `done` holds of the members and of what each received;
    /// fails with `waiting_for` (of what was received) once PATIENCE is over.
    /// Returns what each member received.
    async fn poll_until(
        members: &mut [&mut PostgresSubscription],
        commit: bool,
        mut done: impl FnMut(&[&mut PostgresSubscription], &[Vec<Delivery>]) -> bool,
        waiting_for: impl Fn(&[Vec<Delivery>]) -> String,
    ) -> Vec<Vec<Delivery>> {
        let deadline = Deadline::start();
        let mut got = vec![Vec::new(); members.len()];
        while !done(members, &got) {
            deadline.check(waiting_for(&got));
            for (member, got) in members.iter_mut().zip(&mut got) {
                got.extend(turn(member, commit).await);
            }
        }
        got
    }

    /// Polls every member in turn (committing what each got) until `done`
    /// holds; returns what each member received meanwhile.
    async fn drive_until(
        what: &str,
        members: &mut [&mut PostgresSubscription],
        mut done: impl FnMut(&[&mut PostgresSubscription]) -> bool,
    ) -> Vec<Vec<Delivery>> {
        poll_until(
            members,
            true,
            |members, _| done(members),
            |_| format!("timed out waiting until {what}"),
        )
        .await
    }

    /// Polls every member in turn until `count` deliveries arrived in all;
    /// commits each batch when `commit`. Returns what each member received.
    async fn receive(
        members: &mut [&mut PostgresSubscription],
        count: usize,
        commit: bool,
    ) -> Vec<Vec<Delivery>> {
        let total = |got: &[Vec<Delivery>]| got.iter().map(Vec::len).sum::<usize>();
        poll_until(
            members,
            commit,
            |_, got| total(got) >= count,
            |got| format!("expected {count} deliveries, got {}", total(got)),
        )
        .await
    }

    /// Committed offsets of the group per partition of `user.events`.
    async fn committed(log: &PostgresEventLog) -> BTreeMap<i32, i64> {
        log.lag()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.group == GROUP && l.topic == topics::USER_EVENTS)
            .map(|l| (l.partition, l.committed))
            .collect()
    }

    async fn total_lag(log: &PostgresEventLog) -> i64 {
        log.lag()
            .await
            .unwrap()
            .iter()
            .filter(|l| l.group == GROUP)
            .map(|l| l.lag)
            .sum()
    }

    /// Whether the database names `member` the owner of every lease.
    async fn owns_every_lease(log: &PostgresEventLog, member: &PostgresSubscription) -> bool {
        let owners = log.owners(GROUP).await.unwrap();
        owners.iter().all(|o| o.owner == Some(member.member_id()))
    }

    /// Per partition, the offset after the highest delivery.
    fn next_offsets<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) -> BTreeMap<i32, i64> {
        let mut next = BTreeMap::new();
        for d in deliveries {
            let entry = next.entry(d.partition).or_insert(0);
            *entry = (d.offset + 1).max(*entry);
        }
        next
    }

    #[test]
    fn lease_settings_are_checked() {
        assert_eq!(
            LeaseSettings::default(),
            LeaseSettings {
                lease: Duration::from_secs(10),
                renew_every: Duration::from_secs(3)
            }
        );
        assert!(LeaseSettings::default().validate().is_ok());
        assert!(short_leases().validate().is_ok());
        let too_rare = LeaseSettings {
            lease: Duration::from_secs(4),
            renew_every: Duration::from_secs(3),
        };
        assert!(
            too_rare.validate().is_err(),
            "a lease must be renewed at least twice per lease time"
        );
        let too_short = LeaseSettings {
            lease: Duration::from_millis(10),
            renew_every: Duration::from_millis(1),
        };
        assert!(too_short.validate().is_err());
    }

    /// Two members of one group on six partitions hold three each, and every
    /// event goes to exactly one of them, the owner of its partition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_members_split_the_partitions() {
        let (store, logs) = processes(2, short_leases()).await;
        let mut a = join(&logs[0]).await;
        assert_eq!(
            a.assigned().len(),
            PARTITIONS,
            "a member alone holds every partition from the start"
        );
        let mut b = join(&logs[1]).await;
        three_each(&mut a, &mut b).await;
        let (mine_a, mine_b) = (a.assigned(), b.assigned());

        // The database says the same.
        let owners = logs[0].owners(GROUP).await.unwrap();
        assert_eq!(owners.len(), PARTITIONS);
        for owner in &owners {
            let key = (owner.topic.clone(), owner.partition);
            let expected = if mine_a.contains(&key) {
                a.member_id()
            } else {
                b.member_id()
            };
            assert_eq!(owner.owner, Some(expected), "owner of {key:?}");
            assert!(owner.client.is_some(), "a live owner says who it is");
        }

        let appended = append_round(&store, &keys(10)).await;
        let got = receive(&mut [&mut a, &mut b], appended.len(), true).await;
        let (by_a, by_b) = (&got[0], &got[1]);
        assert!(
            by_a.iter().all(|d| mine_a.contains(&partition_of(d))),
            "a delivers only its partitions"
        );
        assert!(
            by_b.iter().all(|d| mine_b.contains(&partition_of(d))),
            "b delivers only its partitions"
        );
        assert_eq!(
            (by_a.len(), by_b.len()),
            (30, 30),
            "each owns three partitions of ten events"
        );
        let delivered = delivered_ids(by_a.iter().chain(by_b));
        assert_eq!(delivered.len(), appended.len(), "no event went to both");
        assert_eq!(delivered, ids(&appended));
        assert!(turn(&mut a, false).await.is_empty());
        assert!(turn(&mut b, false).await.is_empty());
        assert_eq!(total_lag(&logs[0]).await, 0);
    }

    /// A member that dies (stops renewing, never leaves) has its partitions
    /// taken over by the survivor after the lease time; the survivor resumes
    /// at the offsets the dead member committed: what it had not committed
    /// comes again, nothing it had committed does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_dead_members_partitions_are_taken_over() {
        let (store, logs) = processes(2, short_leases()).await;
        let (mut a, mut b) = a_and_b(&logs).await;
        let mine_a = a.assigned();
        let keys = keys(5);

        // Round 1: both handle and commit everything.
        let first = append_round(&store, &keys).await;
        receive(&mut [&mut a, &mut b], first.len(), true).await;

        // Round 2: b handles its share; a receives its share and commits
        // only the first two events of each of its partitions, then dies.
        append_round(&store, &keys).await;
        let got = receive(&mut [&mut a, &mut b], 30, false).await;
        let (by_a, by_b) = (&got[0], &got[1]);
        assert_eq!(by_a.len(), 15);
        b.commit(by_b).await.unwrap();
        let mut done = Vec::new();
        let mut uncommitted = BTreeSet::new();
        for (topic, partition) in &mine_a {
            let mut mine: Vec<&Delivery> = by_a
                .iter()
                .filter(|d| &d.topic == topic && d.partition == *partition)
                .collect();
            mine.sort_by_key(|d| d.offset);
            assert_eq!(mine.len(), 5, "five events per partition in round 2");
            done.extend(mine[..2].iter().map(|d| (*d).clone()));
            uncommitted.extend(mine[2..].iter().map(|d| (d.partition, d.offset)));
        }
        a.commit(&done).await.unwrap();
        let before = committed(&logs[0]).await;
        for (partition, next) in next_offsets(&done) {
            assert_eq!(
                before[&partition], next,
                "a's commit of partition {partition}"
            );
        }
        a.stop_renewing();
        drop(a);

        let got = poll_until(
            &mut [&mut b],
            true,
            |_, got| got[0].len() >= uncommitted.len(),
            |got| {
                format!(
                    "b did not take over a's partitions: got {} of {} events",
                    got[0].len(),
                    uncommitted.len()
                )
            },
        )
        .await;
        let redelivered = &got[0];
        assert_eq!(b.assigned().len(), PARTITIONS, "b holds every partition");
        let positions: BTreeSet<(i32, i64)> = redelivered
            .iter()
            .map(|d| (d.partition, d.offset))
            .collect();
        assert_eq!(positions.len(), redelivered.len(), "nothing twice");
        assert_eq!(
            positions, uncommitted,
            "b resumes at a's committed offsets: nothing lost, nothing committed comes again"
        );
        assert!(turn(&mut b, false).await.is_empty());

        // And the survivor carries on with everything.
        let third = append_round(&store, &keys).await;
        let got = receive(&mut [&mut b], third.len(), true).await;
        assert_eq!(delivered_ids(&got[0]), ids(&third));
        assert_eq!(total_lag(&logs[0]).await, 0);
        assert!(owns_every_lease(&logs[1], &b).await);
    }

    /// A member whose lease ran out (frozen, not dead) stops delivering, and
    /// its commits no longer move the offsets of the partitions another
    /// member took over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_member_whose_lease_ran_out_is_fenced() {
        let (store, logs) = processes(2, short_leases()).await;
        let (mut a, mut b) = a_and_b(&logs).await;
        let keys = keys(5);
        append_round(&store, &keys).await;
        let got = receive(&mut [&mut a, &mut b], 30, false).await;
        let by_a = got[0].clone();
        assert_eq!(by_a.len(), 15);

        // a freezes before committing; b takes its partitions over and gets
        // a's events again (never committed), without committing them yet.
        a.stop_renewing();
        let mut by_b = got[1].clone();
        let again = poll_until(
            &mut [&mut b],
            false,
            |b, again| by_b.len() + again[0].len() >= 30 && b[0].assigned().len() >= PARTITIONS,
            |_| "b did not take a's partitions over".into(),
        )
        .await;
        by_b.extend(again.into_iter().flatten());
        assert_eq!(by_b.len(), 30, "b gets a's uncommitted events once");

        assert!(
            a.assigned().is_empty(),
            "a stops trusting its leases before anyone else may take them"
        );
        append_round(&store, &keys).await;
        assert!(
            turn(&mut a, false).await.is_empty(),
            "a delivers nothing once its leases may have expired"
        );
        let before = committed(&logs[0]).await;
        a.commit(&by_a)
            .await
            .expect("committing lost partitions is not an error");
        assert_eq!(
            committed(&logs[0]).await,
            before,
            "a member that lost its partitions cannot move their offsets"
        );

        // The owner's commit does.
        b.commit(&by_b).await.unwrap();
        let after = committed(&logs[0]).await;
        for (partition, next) in next_offsets(&by_b) {
            assert_eq!(after[&partition], next);
        }
        drop(a);
        assert!(
            owns_every_lease(&logs[1], &b).await,
            "the frozen member's drop releases nothing it lost"
        );
    }

    /// A third member joining makes the split 2/2/2. The members over their
    /// share stop delivering a partition each at once, but hand it over only
    /// once what they delivered from it is committed, so the newcomer starts
    /// right after it: no event is delivered twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_third_member_gets_its_share() {
        // A lease long enough that no drain runs out during the test.
        let leases = LeaseSettings {
            lease: Duration::from_secs(20),
            renew_every: Duration::from_millis(300),
        };
        let (store, logs) = processes(3, leases).await;
        let (mut a, mut b) = a_and_b(&logs).await;
        let keys = keys(5);
        let first = append_round(&store, &keys).await;
        let in_flight = receive(&mut [&mut a, &mut b], first.len(), false).await;

        // Every partition has deliveries in flight: a and b stop delivering
        // their surplus, but nothing is handed to c yet.
        let mut c = join(&logs[2]).await;
        let deadline = Deadline::start();
        let mut extra_rounds = 5;
        while extra_rounds > 0 {
            deadline.check("a and b never noticed c");
            if a.assigned().len() == 2 && b.assigned().len() == 2 {
                extra_rounds -= 1;
            }
            for member in [&mut a, &mut b, &mut c] {
                let batch = turn(member, false).await;
                assert!(batch.is_empty(), "nothing new, nothing again: {batch:?}");
            }
            assert!(
                c.assigned().is_empty(),
                "partitions with uncommitted deliveries are not handed over"
            );
        }

        a.commit(&in_flight[0]).await.unwrap();
        b.commit(&in_flight[1]).await.unwrap();
        let moved = drive_until(
            "a, b and c hold two partitions each",
            &mut [&mut a, &mut b, &mut c],
            |m| is_split(m, &[2, 2, 2]),
        )
        .await;
        assert!(
            moved.iter().all(Vec::is_empty),
            "the hand-over delivers nothing again: {moved:?}"
        );

        let second = append_round(&store, &keys).await;
        let assigned = [a.assigned(), b.assigned(), c.assigned()];
        let got = receive(&mut [&mut a, &mut b, &mut c], second.len(), true).await;
        for (member, (got, mine)) in got.iter().zip(&assigned).enumerate() {
            assert_eq!(
                got.len(),
                10,
                "member {member} owns two partitions of five events"
            );
            assert!(got.iter().all(|d| mine.contains(&partition_of(d))));
        }
        assert_eq!(delivered_ids(got.iter().flatten()), ids(&second));
        assert_eq!(total_lag(&logs[0]).await, 0);
    }

    /// A member that is busy (neither polls nor commits for longer than a
    /// lease) keeps its partitions: its renewal task renews them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_busy_member_keeps_its_leases() {
        let leases = short_leases();
        let (_store, logs) = processes(2, leases).await;
        let (mut a, mut b) = a_and_b(&logs).await;
        let before = logs[0].owners(GROUP).await.unwrap();
        // Deliberate: let two lease times pass without a poll or a commit.
        tokio::time::sleep(leases.lease * 2).await;
        assert!(is_split(&[&mut a, &mut b], &[3, 3]), "both still deliver");
        assert_eq!(
            logs[0].owners(GROUP).await.unwrap(),
            before,
            "nothing moved"
        );
    }

    /// The runtime may drop a pending poll (it selects over it): a dropped
    /// poll loses no position, and whatever it had read comes with a later
    /// poll, once and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_dropped_poll_loses_nothing() {
        let (store, logs) = processes(1, short_leases()).await;
        let mut a = join(&logs[0]).await;
        let keys = keys(3);
        let mut appended = Vec::new();
        for _ in 0..4 {
            appended.extend(append_round(&store, &keys).await);
        }
        let mut got: Vec<Delivery> = Vec::new();
        let mut dropped = 0;
        let deadline = Deadline::start();
        for step in 0u64.. {
            if got.len() >= appended.len() {
                break;
            }
            deadline.check(format_args!("got {} of {}", got.len(), appended.len()));
            // Every fortieth poll is polled once and dropped (its query is
            // sent, its answer not read: certain to be dropped mid-read
            // however fast the database answers); the others get from a
            // tenth of a millisecond to a few, so many are dropped later in
            // their reads.
            let poll = a.poll(5, Duration::from_secs(10));
            let outcome = match step % 40 {
                0 => poll.now_or_never(),
                tenths => {
                    let budget = Duration::from_micros(100 * tenths);
                    tokio::time::timeout(budget, poll).await.ok()
                }
            };
            match outcome {
                Some(batch) => got.extend(batch.unwrap()),
                None => dropped += 1,
            }
        }
        assert!(dropped > 0, "some polls were dropped");
        let unique = delivered_ids(&got);
        assert_eq!(unique.len(), got.len(), "nothing twice");
        assert_eq!(unique, ids(&appended));
        let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for d in &got {
            per_partition.entry(d.partition).or_default().push(d.offset);
        }
        for (partition, offsets) in per_partition {
            assert_eq!(
                offsets,
                (0..offsets.len() as i64).collect::<Vec<_>>(),
                "partition {partition} in order, without gaps"
            );
        }
        assert!(a.poll(10, TURN).await.unwrap().is_empty());
    }

    /// A member that leaves cleanly (drops its subscription) releases its
    /// partitions: the other takes them over long before the leases (two
    /// minutes here) would have expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_member_that_leaves_hands_over_at_once() {
        let leases = LeaseSettings {
            lease: Duration::from_secs(120),
            renew_every: Duration::from_millis(500),
        };
        let (_store, logs) = processes(2, leases).await;
        let (a, mut b) = a_and_b(&logs).await;
        drop(a);
        drive_until(
            "b holds every partition (well within PATIENCE < the lease)",
            &mut [&mut b],
            |m| m[0].assigned().len() == PARTITIONS,
        )
        .await;
        assert!(
            PATIENCE < leases.lease,
            "the bound above proves a release, not an expiry"
        );
    }

    /// The events of one key are handled in append order while members join,
    /// split, hand partitions over, and one of them dies with deliveries it
    /// never committed. Handling is simulated as a handler does it: an event
    /// already handled (processed mark) is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn per_key_order_survives_hand_overs() {
        #[derive(Default)]
        struct Handled {
            ids: HashSet<uuid::Uuid>,
            per_key: HashMap<String, Vec<uuid::Uuid>>,
        }
        impl Handled {
            fn handle(&mut self, batch: &[Delivery]) {
                for d in batch {
                    if self.ids.insert(d.envelope.id) {
                        self.per_key
                            .entry(d.envelope.key.clone())
                            .or_default()
                            .push(d.envelope.id);
                    }
                }
            }
        }

        let (store, logs) = processes(3, short_leases()).await;
        let keys = keys(4);
        let mut appended: Vec<Envelope> = Vec::new();
        let mut handled = Handled::default();
        let mut a = join(&logs[0]).await;
        let mut b = join(&logs[1]).await;
        let mut c: Option<PostgresSubscription> = None;

        // Events keep coming in every phase: b joins, c joins, a dies.
        for phase in 0..3 {
            if phase == 1 {
                c = Some(join(&logs[2]).await);
            }
            let deadline = Deadline::start();
            loop {
                let mut members: Vec<&mut PostgresSubscription> = Vec::new();
                if phase < 2 {
                    members.push(&mut a);
                }
                members.push(&mut b);
                if let Some(c) = c.as_mut() {
                    members.push(c);
                }
                let want: &[usize] = match phase {
                    0 => &[3, 3],
                    1 => &[2, 2, 2],
                    _ => &[3, 3],
                };
                if is_split(&members, want) {
                    break;
                }
                deadline.check(format_args!("phase {phase} never settled"));
                appended.extend(append_round(&store, &keys).await);
                for member in members {
                    let batch = member.poll(50, TURN).await.unwrap();
                    handled.handle(&batch);
                    member.commit(&batch).await.unwrap();
                }
            }
            if phase == 1 {
                // a dies holding deliveries it handled but never committed.
                appended.extend(append_round(&store, &keys).await);
                let batch = a.poll(50, Duration::from_secs(10)).await.unwrap();
                assert!(!batch.is_empty());
                handled.handle(&batch);
                a.stop_renewing();
            }
        }
        drop(a);

        // Whatever is left goes to b and c.
        let mut c = c.expect("c joined");
        let deadline = Deadline::start();
        while handled.ids.len() < appended.len() {
            deadline.check(format_args!(
                "handled {} of {} events",
                handled.ids.len(),
                appended.len()
            ));
            for member in [&mut b, &mut c] {
                handled.handle(&turn(member, true).await);
            }
        }
        for key in &keys {
            let key = key.to_string();
            let sent: Vec<uuid::Uuid> = appended
                .iter()
                .filter(|e| e.key == key)
                .map(|e| e.id)
                .collect();
            assert_eq!(
                handled.per_key.get(&key),
                Some(&sent),
                "events of key {key} handled out of order or lost"
            );
        }
        assert_eq!(total_lag(&logs[0]).await, 0);
    }
}

/// The tables and columns of a migrated database, as `(table, column)`.
type Schema = BTreeSet<(String, String)>;

async fn postgres_schema(store: &PostgresStore) -> Schema {
    sqlx::query_as::<_, (String, String)>(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(store.pool())
    .await
    .expect("read the PostgreSQL schema")
    .into_iter()
    .collect()
}

async fn sqlite_schema() -> Schema {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("schema.db").display());
    let store = orderflow_adapters::sqlite::SqliteStore::connect(&url, 2)
        .await
        .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    sqlx::query_as::<_, (String, String)>(
        "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\'
           AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(store.pool())
    .await
    .expect("read the SQLite schema")
    .into_iter()
    .collect()
}

/// The migrations stay per engine (the types differ), but the store code is
/// written once for both, so both schemas must expose the same tables and
/// columns. The only differences allowed are the ones each engine's own code
/// uses, listed here with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_schemas_expose_the_same_tables_and_columns() {
    let postgres = postgres_schema(&fresh().await).await;
    let sqlite = sqlite_schema().await;
    // Members sharing partitions through leases exist only on PostgreSQL:
    // SQLite's log has one writer and no partition assignment. And
    // PostgreSQL's outbox marks a published row sent (relays claim rows with
    // row locks inside their transaction) where SQLite's deletes it (its
    // claims live in the process; see `sqlite::outbox`).
    // And product search is each engine's own full text: a generated
    // `tsvector` column on PostgreSQL, an FTS5 table (with its shadow
    // tables) on SQLite.
    let postgres_only: Schema = postgres
        .iter()
        .filter(|(table, column)| {
            table == "consumer_members"
                || table == "consumer_leases"
                || (table == "outbox" && column == "sent_at")
                || (table == "products" && column == "search")
        })
        .cloned()
        .collect();
    assert_eq!(
        postgres_only
            .iter()
            .map(|(table, _)| table.as_str())
            .collect::<BTreeSet<_>>(),
        ["consumer_leases", "consumer_members", "outbox", "products"].into(),
        "the lease tables, the outbox's sent mark or the search column are missing on PostgreSQL"
    );
    let (sqlite_only, sqlite): (Schema, Schema) = sqlite
        .into_iter()
        .partition(|(table, _)| table.starts_with("products_search"));
    assert!(
        sqlite_only.contains(&("products_search".to_owned(), "name".to_owned())),
        "the search table is missing on SQLite: {sqlite_only:?}"
    );
    let shared_postgres: Schema = postgres.difference(&postgres_only).cloned().collect();
    assert!(!sqlite.is_empty(), "SQLite reported no columns");
    assert_eq!(
        shared_postgres.difference(&sqlite).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "columns only PostgreSQL has"
    );
    assert_eq!(
        sqlite.difference(&shared_postgres).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "columns only SQLite has"
    );
}
