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
use orderflow_core::contract::{
    self, log as log_contract, outbox as outbox_contract, store as store_contract,
};
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::outbox::{EventDestination, Outbox};
use orderflow_core::ports::store::{IdempotencyClaim, Reservation, Store, StoreError};
use orderflow_domain::events::topics;
use tokio::sync::Barrier;

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

macro_rules! store_scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let store = fresh().await;
            store_contract::$name(Arc::new(store)).await;
        }
    )*};
}

macro_rules! log_scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let store = fresh().await;
            let log: Arc<dyn EventLog> = Arc::new(store.event_log());
            log_contract::$name(log, Arc::new(store)).await;
        }
    )*};
}

mod store {
    use super::*;

    store_scenario!(
        migrate_is_repeatable,
        users,
        refresh_rotation_and_reuse,
        revoke_sessions,
        token_revocations,
        products,
        orders,
        idempotency,
        concurrent_idempotency_claims,
        stock_reservation,
        concurrent_reservations,
        processed_marks,
        read_models,
        dead_letters,
    );
}

mod log {
    use super::*;

    log_scenario!(
        append_visible_only_after_commit,
        poll_order_commit_and_resume,
        groups_are_independent,
        lag,
        poll_wakes_on_commit,
        poll_waits_at_most_wait,
        ping,
    );
}

macro_rules! outbox_scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let store = fresh().await.with_event_destination(EventDestination::Outbox);
            let outbox: Arc<dyn Outbox> = Arc::new(store.outbox());
            outbox_contract::$name(Arc::new(store), outbox).await;
        }
    )*};
}

mod outbox {
    use super::*;

    outbox_scenario!(
        claim_sees_only_committed,
        claim_limit_takes_oldest,
        marked_rows_never_come_back,
        dropped_batch_leaves_rows_unsent,
        live_claims_do_not_overlap,
        live_claims_keep_key_order,
        backlog_counts_and_age,
        relay_marks_only_after_ack,
    );
}

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
            Reservation::Reserved => reserved += 1,
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
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        vec![Reservation::AlreadyReserved, Reservation::Reserved],
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

/// The partition count is the store's; migrate registers every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_follow_the_store() {
    let url = fresh_url().await;
    let store = PostgresStore::connect(&url, 4, 3).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.partitions(), 3);
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let key = uuid::Uuid::now_v7();
    let events: Vec<_> = (0..4).map(|_| contract::user_registered(key)).collect();
    contract::append_committed(&shared, &events).await;

    let log = store.event_log();
    let mut sub = log.subscribe("p", &[topics::USER_EVENTS]).await.unwrap();
    let batch = sub.poll(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(batch.len(), 4);
    let expected = partition_for(&key.to_string(), 3);
    assert!(batch.iter().all(|d| d.partition == expected));
    assert_eq!(
        batch.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(log.lag().await.unwrap().len(), 3);
    let ends: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log_partitions")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(ends, 3 * topics::ALL.len() as i64);
    assert!(
        PostgresStore::connect(&url, 4, 0).await.is_err(),
        "zero partitions are refused"
    );
}

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

    // Two relays drain concurrently.
    let relay = |outbox: orderflow_adapters::postgres::PostgresOutbox| {
        tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let batch = outbox.claim(7).await.expect("claim");
                if batch.events().is_empty() {
                    return sent;
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
