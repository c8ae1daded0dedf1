//! The port contract scenarios (`orderflow_core::contract`) against the
//! embedded SQLite adapter: every scenario gets a fresh database file in its
//! own temporary directory. A few SQLite-specific checks follow at the end.

use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::sqlite::SqliteStore;
use orderflow_core::contract;
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::outbox::{EventDestination, Outbox};
use orderflow_core::ports::store::Store;
use orderflow_domain::events::topics;
use tempfile::TempDir;

#[macro_use]
mod sql_contract;

/// A migrated store on a new file. Keep the `TempDir` alive for the test.
async fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
    let store = SqliteStore::connect(&url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    (dir, store)
}

sql_contract_tests!(fresh);

/// A store of another process on `fresh`'s file: its own connections and
/// its own wake-ups and log tail, so this process learns of its appends only
/// from the table.
async fn another_process(dir: &TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
    Arc::new(
        SqliteStore::connect(&url, 2)
            .await
            .expect("second connection"),
    )
}

// --- SQLite-specific ------------------------------------------------------

/// With the outbox as destination, appended events go to the outbox and not
/// to the embedded log (and the reverse by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_destination_bypasses_the_embedded_log() {
    let (_dir, store) = fresh().await;
    let kafka_mode: Arc<dyn Store> = Arc::new(
        store
            .clone()
            .with_event_destination(EventDestination::Outbox),
    );
    let embedded: Arc<dyn Store> = Arc::new(store.clone());
    let event = contract::user_registered(uuid::Uuid::now_v7());
    contract::append_committed(&kafka_mode, std::slice::from_ref(&event)).await;
    let in_log: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_log")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(in_log, 0, "outbox mode must not write the embedded log");
    assert_eq!(store.outbox().backlog().await.unwrap().unsent, 1);

    contract::append_committed(
        &embedded,
        &[contract::user_registered(uuid::Uuid::now_v7())],
    )
    .await;
    let in_log: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_log")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(in_log, 1, "the default store appends to the embedded log");
    assert_eq!(
        store.outbox().backlog().await.unwrap().unsent,
        1,
        "and not to the outbox"
    );
}

/// Another process (here: a second pool with its own wake-up channel) appends;
/// nothing signals this process, but a poll still sees the event once its
/// wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_sees_other_processes_after_wait() {
    let (dir, store) = fresh().await;
    let other = another_process(&dir).await;

    let mut sub = store
        .event_log()
        .subscribe("far", &[topics::USER_EVENTS])
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { sub.poll(10, Duration::from_millis(500)).await });
    let event = contract::user_registered(uuid::Uuid::now_v7());
    contract::append_committed(&other, std::slice::from_ref(&event)).await;
    let batch = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("poll returns after its wait")
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.len(),
        1,
        "the other process's event is found at the end of the wait"
    );
    assert_eq!(batch[0].envelope.id, event.id);
}

/// A poll is answered from the log's tail (the events this process
/// appended, in memory) only while the tail holds every event from the
/// member's position on: an event another process appended in between is
/// read from the table, in offset order with this process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_another_process_appended_in_between_is_not_skipped() {
    let (dir, store) = fresh().await;
    let other = another_process(&dir).await;
    let here: Arc<dyn Store> = Arc::new(store.clone());
    let mut sub = store
        .event_log()
        .subscribe("between", &[topics::USER_EVENTS])
        .await
        .unwrap();
    // One shopper: one partition.
    let ann = uuid::Uuid::now_v7();
    let [first, between, last] = [(); 3].map(|()| contract::user_registered(ann));

    contract::append_committed(&here, std::slice::from_ref(&first)).await;
    let batch = sub.poll(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(batch.len(), 1);
    sub.commit(&batch).await.unwrap();
    contract::append_committed(&other, std::slice::from_ref(&between)).await;
    contract::append_committed(&here, std::slice::from_ref(&last)).await;

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = sub.poll(10, Duration::from_secs(5)).await.unwrap();
        assert!(!batch.is_empty(), "both events arrive: {seen:?}");
        seen.extend(batch.iter().map(|d| (d.offset, d.envelope.id)));
    }
    assert_eq!(seen, [(1, between.id), (2, last.id)]);
}

partitions_test!({
    let dir = tempfile::tempdir().unwrap();
    move |partitions| {
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        async move { SqliteStore::connect_with(&url, 4, partitions).await }
    }
});

/// The database file is created on first connect, in WAL mode.
#[tokio::test]
async fn creates_the_file_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    assert!(path.exists(), "the file is created when missing");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fks: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fks, 1);
}
