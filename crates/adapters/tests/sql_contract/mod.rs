//! The port contract scenarios (`orderflow_core::contract`) for one engine of
//! the SQL store: one test per scenario of the store, the embedded log and
//! the outbox. A test binary defines `async fn fresh() -> (Guard, Store)`, a
//! migrated, empty store and whatever must live as long as it (a temporary
//! directory, or `()`), and calls `sql_contract_tests!(fresh)`.

macro_rules! sql_contract_tests {
    ($fresh:ident) => {
        mod store {
            use super::*;
            orderflow_core::store_scenarios!(store_test; $fresh);
        }

        mod log {
            use super::*;
            orderflow_core::log_scenarios!(log_test; $fresh);
            // The embedded log only: Kafka's retention is the broker's.
            log_test!($fresh; retention_keeps_events_until_every_reader_is_past_them);
        }

        mod outbox {
            use super::*;
            orderflow_core::outbox_scenarios!(outbox_test; $fresh);
        }

        mod carts {
            use super::*;
            orderflow_core::cart_scenarios!(cart_test; $fresh);

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn database_carts_expire() {
                let (_guard, store) = $fresh().await;
                let store = std::sync::Arc::new(store);
                orderflow_core::contract::carts::database_carts_expire(store.clone(), store).await;
            }
        }
    };
}

/// The store as the cart port (carts in the database).
macro_rules! cart_test {
    ($fresh:ident; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_guard, store) = $fresh().await;
            orderflow_core::contract::carts::$name(std::sync::Arc::new(store)).await;
        }
    )*};
}

macro_rules! store_test {
    ($fresh:ident; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_guard, store) = $fresh().await;
            orderflow_core::contract::store::$name(std::sync::Arc::new(store)).await;
        }
    )*};
}

macro_rules! log_test {
    ($fresh:ident; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_guard, store) = $fresh().await;
            let log: std::sync::Arc<dyn orderflow_core::ports::log::EventLog> =
                std::sync::Arc::new(store.event_log());
            orderflow_core::contract::log::$name(log, std::sync::Arc::new(store)).await;
        }
    )*};
}

/// On a store whose units of work append to the outbox.
macro_rules! outbox_test {
    ($fresh:ident; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_guard, store) = $fresh().await;
            let store = store
                .with_event_destination(orderflow_core::ports::outbox::EventDestination::Outbox);
            let outbox: std::sync::Arc<dyn orderflow_core::ports::outbox::Outbox> =
                std::sync::Arc::new(store.outbox());
            orderflow_core::contract::outbox::$name(std::sync::Arc::new(store), outbox).await;
        }
    )*};
}

/// `partitions_follow_the_store` for an engine, given
/// `|partitions| async { connect a store with that many partitions }`
/// (every call to the same database): the partition count is the store's,
/// events land in `0..partitions`, one key always in the same partition,
/// migrate registers every partition of every topic for lag from the start,
/// and zero partitions are refused.
macro_rules! partitions_test {
    ($connect:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn partitions_follow_the_store() {
            use orderflow_core::ports::log::EventLog as _;
            use orderflow_core::ports::store::Store;
            let connect = $connect;
            let store = connect(3).await.unwrap();
            store.migrate().await.unwrap();
            assert_eq!(store.partitions(), 3);
            let shared: std::sync::Arc<dyn Store> = std::sync::Arc::new(store.clone());
            let key = uuid::Uuid::now_v7();
            let events: Vec<_> = (0..4)
                .map(|_| orderflow_core::contract::user_registered(key))
                .collect();
            orderflow_core::contract::append_committed(&shared, &events).await;

            let log = store.event_log();
            let topic = orderflow_domain::events::topics::USER_EVENTS;
            let mut sub = log.subscribe("p", &[topic]).await.unwrap();
            let batch = sub
                .poll(10, std::time::Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(batch.len(), 4);
            let expected = orderflow_adapters::sqlite::partition_for(&key.to_string(), 3);
            assert!(
                batch.iter().all(|d| d.partition == expected),
                "one key, one partition"
            );
            assert_eq!(
                batch.iter().map(|d| d.offset).collect::<Vec<_>>(),
                vec![0, 1, 2, 3]
            );
            assert_eq!(
                log.lag().await.unwrap().len(),
                3,
                "one row per partition of the subscribed topic"
            );
            let ends: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log_partitions")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(
                ends,
                3 * orderflow_domain::events::topics::ALL.len() as i64,
                "migrate registers every topic's partitions"
            );
            assert!(connect(0).await.is_err(), "zero partitions are refused");
        }
    };
}
