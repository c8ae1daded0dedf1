//! One [`Handler`] per consumer group (DESIGN.md §4), and [`WorkerDeps`],
//! which builds them and their [`Consumer`]s.
//!
//! | group | topics | reacts to | effect |
//! | --- | --- | --- | --- |
//! | `fraud` | order.events | OrderPlaced | sliding windows per shopper → OrderCleared, or held + OrderHeld + FraudAlerted (fraud.alerts) |
//! | `inventory` | order.events | OrderCleared | reserve stock → StockReserved / StockRejected |
//! | `payment` | stock.events | StockReserved | charge → PaymentSucceeded / PaymentFailed |
//! | `orders` | stock.events, payment.events | stock and payment results | state machine; release stock on payment failure; OrderConfirmed / OrderRejected / OrderPaymentFailed |
//! | `email` | order.events, user.events | order held and outcomes, UserRegistered | e-mail + notification record |
//! | `sms`, `push` | order.events | order held and outcomes | SMS / push + notification record |
//! | `loyalty` | order.events | OrderConfirmed | points |
//! | `analytics` | order.events | OrderConfirmed | daily sales, product sales, revenue windows of a minute and a day (event time) |
//! | `trending` | product.views | ProductViewed | views per product and per minute (event time) |
//!
//! Catalog caches ([`WorkerDeps::with_catalog`]): after its transaction
//! commits, `inventory` tells the catalog which products' stock it reserved
//! and `orders` which it released, so every cache shows the new stock right
//! away (`CatalogService::products_changed`).
//!
//! Read models ([`WorkerDeps::with_read_models`], Redis in the scaled setup):
//! after its transaction commits, `loyalty` mirrors the shopper's new points
//! total, `analytics` the day's totals, the notifiers the shopper's recent
//! notifications and `orders` each new status (pub/sub). Values are read
//! from the database after the commit (absolute, so replays cannot double
//! count); a failure is logged and counted
//! (`orderflow_read_model_errors_total`) and never fails the consumer: the
//! database already holds the effect.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::providers::PaymentGateway;
use orderflow_core::ports::read_models::{ReadModels, ViewerSketches};
use orderflow_core::ports::store::Store;
use orderflow_core::services::catalog::CatalogService;
use orderflow_core::services::effects::{Notifiers, RetryPolicy};
use orderflow_core::services::live::LiveHub;
use orderflow_domain::events::topics;
use orderflow_domain::fraud::FraudRules;
use orderflow_domain::money::Currency;
use orderflow_domain::notification::Channel;

use crate::error::WorkerError;
use crate::runtime::{Consumer, ConsumerSettings, Handler};

mod analytics;
mod fraud;
mod inventory;
mod loyalty;
mod notify;
mod orders;
mod payment;
mod trending;

pub use analytics::AnalyticsHandler;
pub use fraud::FraudHandler;
pub use inventory::InventoryHandler;
pub use loyalty::LoyaltyHandler;
pub use notify::NotifyHandler;
pub use orders::OrdersHandler;
pub use payment::PaymentHandler;
pub use trending::TrendingHandler;

/// Every consumer group, in the order an order flows through them.
pub const GROUPS: [&str; 10] = [
    "fraud",
    "inventory",
    "payment",
    "orders",
    "email",
    "sms",
    "push",
    "loyalty",
    "analytics",
    "trending",
];

/// Which topics each group reads. The one table both the handlers and the
/// Kafka log use: the log reports lag for groups whose members run in other
/// processes, so it must know their topics without building their handlers.
pub const GROUP_TOPICS: [(&str, &[&str]); 10] = [
    ("fraud", &[topics::ORDER_EVENTS]),
    ("inventory", &[topics::ORDER_EVENTS]),
    ("payment", &[topics::STOCK_EVENTS, topics::PAYMENT_EVENTS]),
    ("orders", &[topics::STOCK_EVENTS, topics::PAYMENT_EVENTS]),
    ("email", &[topics::ORDER_EVENTS, topics::USER_EVENTS]),
    ("sms", &[topics::ORDER_EVENTS]),
    ("push", &[topics::ORDER_EVENTS]),
    ("loyalty", &[topics::ORDER_EVENTS]),
    ("analytics", &[topics::ORDER_EVENTS]),
    ("trending", &[topics::PRODUCT_VIEWS]),
];

/// The topics `group` reads (empty for an unknown group).
pub fn topics_of(group: &str) -> &'static [&'static str] {
    GROUP_TOPICS
        .iter()
        .find(|(name, _)| *name == group)
        .map_or(&[], |(_, topics)| topics)
}

/// What the consumer groups need: the database, the event log, the providers
/// and the retry policy. Cheap to clone.
#[derive(Clone)]
pub struct WorkerDeps {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    pub payment: Arc<dyn PaymentGateway>,
    pub notifiers: Notifiers,
    pub retry: RetryPolicy,
    /// Where handlers mirror read models after their commits; `None`: nowhere.
    pub read_models: Option<Arc<dyn ReadModels>>,
    /// The catalog whose caches hear of stock changes; `None`: nobody's.
    pub catalog: Option<Arc<CatalogService>>,
    /// This process's live hub, told of committed order changes; `None`:
    /// followers get them from the database rechecks only.
    pub live: Option<Arc<LiveHub>>,
    /// How each member paces itself (window, group commit size).
    pub consumer: ConsumerSettings,
    /// What the `fraud` group holds an order for.
    pub fraud: FraudRules,
    /// Where `trending` counts unique viewers (Redis HyperLogLogs); `None`:
    /// exactly, in the database.
    pub sketches: Option<Arc<dyn ViewerSketches>>,
}

impl std::fmt::Debug for WorkerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDeps")
            .field("notifiers", &self.notifiers)
            .field("retry", &self.retry)
            .field("consumer", &self.consumer)
            .field("fraud", &self.fraud)
            .finish_non_exhaustive()
    }
}

impl WorkerDeps {
    pub fn new(
        store: Arc<dyn Store>,
        log: Arc<dyn EventLog>,
        payment: Arc<dyn PaymentGateway>,
        notifiers: Notifiers,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            store,
            log,
            payment,
            notifiers,
            retry,
            read_models: None,
            catalog: None,
            live: None,
            consumer: ConsumerSettings::default(),
            fraud: FraudRules::standard(Currency::parse("EUR").expect("a valid currency")),
            sketches: None,
        }
    }

    /// Judges orders by `rules` instead of the standard ones (more than 5
    /// orders or 10,000.00 EUR in any 5 minutes).
    pub fn with_fraud_rules(mut self, rules: FraudRules) -> Self {
        self.fraud = rules;
        self
    }

    /// Makes `trending` count unique viewers in `sketches`.
    pub fn with_sketches(mut self, sketches: Arc<dyn ViewerSketches>) -> Self {
        self.sketches = Some(sketches);
        self
    }

    /// Paces every member with `settings` instead of the defaults.
    pub fn with_consumer_settings(mut self, settings: ConsumerSettings) -> Self {
        self.consumer = settings;
        self
    }

    /// Makes the handlers mirror their read models into `read_models` after
    /// each commit (see the module docs).
    pub fn with_read_models(mut self, read_models: Arc<dyn ReadModels>) -> Self {
        self.read_models = Some(read_models);
        self
    }

    /// Makes `inventory` and `orders` tell `catalog` which products' stock
    /// they changed, after each commit (see the module docs).
    pub fn with_catalog(mut self, catalog: Arc<CatalogService>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Makes `orders` hand each committed status change to `hub`, and the
    /// notification groups each notification.
    pub fn with_live(mut self, hub: Arc<LiveHub>) -> Self {
        self.live = Some(hub);
        self
    }

    /// The handler of one group; [`WorkerError::UnknownGroup`] for a name not
    /// in [`GROUPS`].
    pub fn handler(&self, group: &str) -> Result<Arc<dyn Handler>, WorkerError> {
        let store = self.store.clone();
        let read_models = self.read_models.clone();
        let notify = |channel: Channel| -> Arc<dyn Handler> {
            Arc::new(
                NotifyHandler::new(channel, store.clone(), self.notifiers.get(channel).clone())
                    .with_read_models(read_models.clone())
                    .with_live(self.live.clone()),
            )
        };
        Ok(match group {
            "fraud" => {
                Arc::new(FraudHandler::new(store, self.fraud.clone()).with_live(self.live.clone()))
            }
            "inventory" => Arc::new(InventoryHandler::new().with_catalog(self.catalog.clone())),
            "payment" => Arc::new(PaymentHandler::new(self.payment.clone())),
            "orders" => Arc::new(
                OrdersHandler::new(store)
                    .with_read_models(read_models)
                    .with_live(self.live.clone())
                    .with_catalog(self.catalog.clone()),
            ),
            "email" => notify(Channel::Email),
            "sms" => notify(Channel::Sms),
            "push" => notify(Channel::Push),
            "loyalty" => Arc::new(LoyaltyHandler::new(store).with_read_models(read_models)),
            "analytics" => Arc::new(AnalyticsHandler::new(store).with_read_models(read_models)),
            "trending" => Arc::new(TrendingHandler::new().with_sketches(self.sketches.clone())),
            other => return Err(WorkerError::UnknownGroup(other.to_owned())),
        })
    }

    /// A member of one group, subscribed (`orderflow worker GROUP`).
    pub async fn consumer(&self, group: &str) -> Result<Consumer, WorkerError> {
        let handler = self.handler(group)?;
        Ok(
            Consumer::subscribe(handler, self.store.clone(), self.log.as_ref(), self.retry)
                .await?
                .with_settings(self.consumer),
        )
    }

    /// One member of every group, in [`GROUPS`] order (`orderflow serve`).
    pub async fn all_consumers(&self) -> Result<Vec<Consumer>, WorkerError> {
        self.consumers(GROUPS).await
    }

    /// A member of each of `groups`, in that order. They join side by side:
    /// on Kafka each join waits for the group's rebalance (about 3 s on the
    /// test broker), so joining eight groups one after another left the last
    /// one idle for over 20 s after start-up while its events piled up.
    pub async fn consumers(
        &self,
        groups: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Consumer>, WorkerError> {
        futures::future::try_join_all(
            groups
                .into_iter()
                .map(|group| async move { self.consumer(group.as_ref()).await }),
        )
        .await
    }
}

/// How long after its one-minute window ends an event still counts as on
/// time: past it, readers of that window (the sales and trending routes)
/// may have taken it as final.
pub const LATE_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// A windowed group's newest event time seen, by which it counts events
/// that come past their window's grace ([`LATE_AFTER`]) in
/// `orderflow_stream_late_events_total{group}`. They are still added: a
/// late count is a number to watch, never a loss.
struct LatenessWatch {
    group: &'static str,
    /// Milliseconds since the epoch.
    watermark_ms: AtomicI64,
}

impl LatenessWatch {
    fn new(group: &'static str) -> Self {
        Self {
            group,
            watermark_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Moves the watermark to `at` if it is newer; counts `at` if late.
    fn observe(&self, at: orderflow_domain::Timestamp) {
        let watermark_ms = self
            .watermark_ms
            .fetch_max(at.timestamp_millis(), Ordering::Relaxed);
        if let Some(watermark) = chrono::DateTime::from_timestamp_millis(watermark_ms)
            && orderflow_domain::sales::is_late(at, watermark, LATE_AFTER)
        {
            metrics::counter!("orderflow_stream_late_events_total", "group" => self.group)
                .increment(1);
        }
    }
}

/// A read model could not be mirrored after a commit: logged and counted,
/// never returned (the database already holds the effect). Database reads made
/// for the mirror count here too.
///
/// The warning is logged at most once a second, with how many were left
/// out: while Redis is away every effect fails to mirror (about seven per
/// order), which flooded the log with a thousand identical lines in six
/// seconds; the counter still counts each.
fn mirror_failed(operation: &'static str, error: &dyn std::fmt::Display) {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static LAST_WARNED_MS: AtomicU64 = AtomicU64::new(0);
    static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("orderflow_read_model_errors_total", "operation" => operation).increment(1);
    // Milliseconds since the first failure, plus one so the first one warns.
    let now_ms = STARTED
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1_001;
    let last = LAST_WARNED_MS.load(Ordering::Relaxed);
    let due = now_ms.saturating_sub(last) >= 1_000
        && LAST_WARNED_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    if due {
        let left_out = LEFT_OUT.swap(0, Ordering::Relaxed);
        tracing::warn!(operation, %error, left_out, "read model not updated; readers fall back to the database");
    } else {
        LEFT_OUT.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(operation, %error, "read model not updated; readers fall back to the database");
    }
}
