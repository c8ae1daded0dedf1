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
        }

        mod outbox {
            use super::*;
            orderflow_core::outbox_scenarios!(outbox_test; $fresh);
        }
    };
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
