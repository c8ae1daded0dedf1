//! Retention: what orderflow deletes so its tables stay bounded, on a timer
//! in the processes that run consumers and on demand (`orderflow prune`).
//!
//! Each kind of row has its own horizon ([`Retention`]), and is deleted in
//! small batches (one short background transaction each, with a pause
//! between them), so pruning never holds the writer long and requests go
//! first. Exactly-once survives pruning because processed marks outlive the
//! events: an event can only be delivered again while the log still holds
//! it, and [`Retention::check`] refuses marks that would go first.

use std::sync::Arc;
use std::time::Duration;

use crate::CoreError;
use crate::ports::carts::CART_LIFETIME;
use crate::ports::store::{Prunable, Store};

/// How long each kind of bookkeeping row is kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Events of the embedded log, once every group reading them is past
    /// them.
    pub events: Duration,
    /// Processed marks: longer than `events`, and on Kafka longer than the
    /// topics' `retention.ms` (the broker's side of the same rule).
    pub processed_marks: Duration,
    /// Idempotency keys: a client retrying after this gets a new order.
    pub idempotency_keys: Duration,
    /// Outbox rows already published.
    pub sent_outbox: Duration,
    /// Dead letters already replayed.
    pub replayed_dead_letters: Duration,
    /// Minute windows: sales (a read spans a week of them at most) and
    /// product views (trending reads a day at most); also the exact unique
    /// viewers of each day.
    pub minute_windows: Duration,
    /// The fraud check's remembered orders: at least a window and its
    /// grace (the settings refuse less).
    pub fraud_orders: Duration,
    /// Rows one batch deletes at most.
    pub batch: u32,
    /// The pause between two batches.
    pub pause: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            events: Duration::from_secs(7 * 24 * 3600),
            processed_marks: Duration::from_secs(14 * 24 * 3600),
            // The IETF idempotency-key draft's suggestion.
            idempotency_keys: Duration::from_secs(24 * 3600),
            sent_outbox: Duration::from_secs(24 * 3600),
            replayed_dead_letters: Duration::from_secs(30 * 24 * 3600),
            minute_windows: Duration::from_secs(8 * 24 * 3600),
            fraud_orders: Duration::from_secs(3600),
            batch: 1000,
            pause: Duration::from_millis(20),
        }
    }
}

impl Retention {
    /// Refuses horizons that would break exactly-once: a processed mark
    /// deleted while its event can still be delivered lets the event take
    /// effect twice.
    pub fn check(&self) -> Result<(), String> {
        if self.processed_marks <= self.events {
            return Err(format!(
                "processed marks must be kept longer than events ({:?} <= {:?}): \
                 a redelivered event would take effect twice",
                self.processed_marks, self.events
            ));
        }
        if self.batch == 0 {
            return Err("the prune batch must be at least 1".into());
        }
        Ok(())
    }
}

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub events: u64,
    pub processed_marks: u64,
    pub idempotency_keys: u64,
    pub sent_outbox: u64,
    pub replayed_dead_letters: u64,
    pub minute_windows: u64,
    pub fraud_orders: u64,
    pub product_viewers: u64,
    pub viewer_salts: u64,
    pub carts: u64,
}

impl PruneReport {
    pub fn total(&self) -> u64 {
        self.events
            + self.processed_marks
            + self.idempotency_keys
            + self.sent_outbox
            + self.replayed_dead_letters
            + self.minute_windows
            + self.fraud_orders
            + self.product_viewers
            + self.viewer_salts
            + self.carts
    }
}

/// Deletes everything `retention` lets go, batch by batch, until a batch
/// comes back short. `subscriptions`: which topics each consumer group
/// reads (events stay until all of a topic's readers are past them).
pub async fn prune(
    store: &Arc<dyn Store>,
    retention: &Retention,
    subscriptions: &[(&str, &[&str])],
) -> Result<PruneReport, CoreError> {
    retention
        .check()
        .map_err(|why| CoreError::Internal(format!("retention settings: {why}")))?;
    let now = chrono::Utc::now();
    let before = |horizon: Duration| {
        now - chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX)
    };
    let mut report = PruneReport::default();
    let kinds = [
        (Prunable::Events { subscriptions }, retention.events),
        (Prunable::ProcessedMarks, retention.processed_marks),
        (Prunable::IdempotencyKeys, retention.idempotency_keys),
        (Prunable::SentOutbox, retention.sent_outbox),
        (
            Prunable::ReplayedDeadLetters,
            retention.replayed_dead_letters,
        ),
        (Prunable::MinuteWindows, retention.minute_windows),
        (Prunable::FraudOrders, retention.fraud_orders),
        (Prunable::ProductViewers, retention.minute_windows),
        // A day's salt goes as soon as the day is over (see
        // `CatalogService::record_view`).
        (Prunable::ViewerSalts, Duration::ZERO),
        (Prunable::Carts, CART_LIFETIME),
    ];
    for (what, horizon) in kinds {
        let cut_off = before(horizon);
        let mut deleted = 0;
        loop {
            let batch = store.prune(what, cut_off, retention.batch).await?;
            deleted += batch;
            // Events are deleted up to a batch per partition: only an empty
            // pass means there is nothing left.
            let done = match what {
                Prunable::Events { .. } => batch == 0,
                _ => batch < u64::from(retention.batch),
            };
            if done {
                break;
            }
            tokio::time::sleep(retention.pause).await;
        }
        let (label, slot) = match what {
            Prunable::Events { .. } => ("events", &mut report.events),
            Prunable::ProcessedMarks => ("processed_marks", &mut report.processed_marks),
            Prunable::IdempotencyKeys => ("idempotency_keys", &mut report.idempotency_keys),
            Prunable::SentOutbox => ("sent_outbox", &mut report.sent_outbox),
            Prunable::ReplayedDeadLetters => {
                ("replayed_dead_letters", &mut report.replayed_dead_letters)
            }
            Prunable::MinuteWindows => ("minute_windows", &mut report.minute_windows),
            Prunable::FraudOrders => ("fraud_orders", &mut report.fraud_orders),
            Prunable::ProductViewers => ("product_viewers", &mut report.product_viewers),
            Prunable::ViewerSalts => ("viewer_salts", &mut report.viewer_salts),
            Prunable::Carts => ("carts", &mut report.carts),
        };
        *slot = deleted;
        metrics::counter!("orderflow_pruned_rows_total", "kind" => label).increment(deleted);
    }
    Ok(report)
}
