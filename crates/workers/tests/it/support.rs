//! Shared set-up: a fresh SQLite database per test, instant simulated
//! providers, seeding helpers, and `drain`, which runs every consumer until a
//! full round makes no progress.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::providers::{SimulatedProviders, SimulationSettings};
use orderflow_adapters::sqlite::{SqliteEventLog, SqliteStore};
use orderflow_core::ports::log::{Delivery, EventLog};
use orderflow_core::ports::store::{Store, UserRecord};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::order::{Order, OrderStatus};
use orderflow_domain::product::{Product, ProductDraft};
use orderflow_domain::user::Role;
use orderflow_workers::{BatchReport, Consumer, Notifiers, RetryPolicy, WorkerDeps};

/// Retries that cost (almost) no time: 1 ms waits.
pub fn tiny_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        max_attempts,
        Duration::from_millis(1),
        Duration::from_millis(1),
    )
}

pub struct Harness {
    // Kept alive for the database file; dropped last.
    _dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub log: Arc<SqliteEventLog>,
    pub providers: SimulatedProviders,
    pub deps: WorkerDeps,
}

impl Harness {
    /// A fresh database, instant providers that never fail, and the payment
    /// gateway declining charges above `decline_above_cents`.
    pub async fn new(decline_above_cents: Option<i64>, retry: RetryPolicy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
        let store = Arc::new(SqliteStore::connect(&url, 4).await.unwrap());
        store.migrate().await.unwrap();
        let log = Arc::new(store.event_log());
        let providers =
            SimulatedProviders::uniform(SimulationSettings::instant(), decline_above_cents);
        let notifiers = Notifiers::new(
            providers.email.clone(),
            providers.sms.clone(),
            providers.push.clone(),
        );
        let deps = WorkerDeps::new(
            store.clone(),
            log.clone(),
            providers.payment.clone(),
            notifiers,
            retry,
        );
        Self {
            _dir: dir,
            store,
            log,
            providers,
            deps,
        }
    }

    pub async fn consumers(&self) -> Vec<Consumer> {
        self.deps.all_consumers().await.unwrap()
    }

    pub async fn user(&self, name: &str) -> UserRecord {
        let user = UserRecord {
            id: uuid::Uuid::now_v7(),
            email: format!(
                "{}-{}@example.com",
                name.to_lowercase(),
                uuid::Uuid::now_v7().simple()
            ),
            name: name.to_owned(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            role: Role::Shopper,
            created_at: chrono::Utc::now(),
        };
        let mut tx = self.store.begin().await.unwrap();
        tx.insert_user(&user).await.unwrap();
        tx.commit().await.unwrap();
        user
    }

    pub async fn product(&self, price_cents: i64, stock: i64) -> Product {
        let id = uuid::Uuid::now_v7();
        let sku = format!("SKU-{}", id.simple());
        let draft = ProductDraft::new(&sku, "Mug", price_cents, "EUR", stock).unwrap();
        self.store
            .insert_product(id, &draft, chrono::Utc::now())
            .await
            .unwrap()
    }

    pub async fn stock(&self, product: &Product) -> i64 {
        self.store.product(product.id).await.unwrap().unwrap().stock
    }

    /// Places an order the way the API does: the order and its OrderPlaced
    /// event in one transaction. Returns the order and the event.
    pub async fn place_order(
        &self,
        user: &UserRecord,
        lines: &[(&Product, u32)],
    ) -> (Order, Envelope) {
        let catalog: HashMap<_, _> = lines.iter().map(|(p, _)| (p.id, (*p).clone())).collect();
        let wanted: Vec<_> = lines.iter().map(|(p, q)| (p.id, *q)).collect();
        let (items, total) = orderflow_domain::order::price(&wanted, &catalog).unwrap();
        let now = chrono::Utc::now();
        let order = Order {
            id: uuid::Uuid::now_v7(),
            user_id: user.id,
            status: OrderStatus::Pending,
            total_cents: total.cents,
            currency: total.currency.clone(),
            items: items.clone(),
            created_at: now,
            updated_at: now,
        };
        let event = Envelope::new(
            EventData::OrderPlaced {
                order_id: order.id,
                user_id: user.id,
                items,
                total_cents: total.cents,
                currency: total.currency.to_string(),
            },
            None,
        );
        let mut tx = self.store.begin().await.unwrap();
        tx.insert_order(&order).await.unwrap();
        tx.append(std::slice::from_ref(&event)).await.unwrap();
        tx.commit().await.unwrap();
        (order, event)
    }

    /// Appends events again, as a redelivery or a replay would.
    pub async fn append(&self, events: &[Envelope]) {
        let mut tx = self.store.begin().await.unwrap();
        tx.append(events).await.unwrap();
        tx.commit().await.unwrap();
    }

    pub async fn status(&self, order: &Order) -> OrderStatus {
        self.store.order(order.id).await.unwrap().unwrap().0.status
    }

    /// Every event on `topic` so far, read by a throw-away group.
    pub async fn events_on(&self, topic: &str) -> Vec<Delivery> {
        let group = format!("test-reader-{}", uuid::Uuid::now_v7().simple());
        let mut subscription = self.log.subscribe(&group, &[topic]).await.unwrap();
        let mut all = Vec::new();
        loop {
            let batch = subscription.poll(1000, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }

    /// Total lag of a group over all its partitions.
    pub async fn lag(&self, group: &str) -> i64 {
        self.log
            .lag()
            .await
            .unwrap()
            .iter()
            .filter(|l| l.group == group)
            .map(|l| l.lag)
            .sum()
    }
}

/// Runs every consumer's `process_batch(0)` round after round until a full
/// round finishes nothing. Returns the reports summed per group.
pub async fn drain(consumers: &mut [Consumer]) -> HashMap<&'static str, BatchReport> {
    let mut totals: HashMap<&'static str, BatchReport> = HashMap::new();
    for _round in 0..100 {
        let mut progress = false;
        for consumer in consumers.iter_mut() {
            let report = consumer.process_batch(Duration::ZERO).await.unwrap();
            progress |= !report.is_idle();
            *totals.entry(consumer.group()).or_default() += report;
        }
        if !progress {
            return totals;
        }
    }
    panic!("consumers still busy after 100 rounds: {totals:?}");
}
