//! The outbox, as the relay sees it (only used when the event log is Kafka).
//!
//! Use cases and consumers append events inside their own transaction
//! ([`StoreTx::append`](crate::ports::store::StoreTx::append)). With the
//! embedded log those rows *are* the log. With Kafka they wait in the outbox
//! table until a relay publishes them: the relay claims a batch of unsent rows
//! (rows another relay holds are skipped, so several relays may run at once),
//! publishes them, and marks them sent only after the broker acknowledged
//! every one. A relay killed in between leaves the rows unsent; the next one
//! publishes them again, and consumers skip the duplicates by event id.

use async_trait::async_trait;
use orderflow_domain::Timestamp;
use orderflow_domain::events::Envelope;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ports::log::LogResult;
use crate::ports::store::StoreResult;

/// Where a store puts the events that units of work append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventDestination {
    /// Into the embedded log (a table of the same database): appended rows
    /// are the log, consumers read them directly. The zero-setup default.
    #[default]
    EmbeddedLog,
    /// Into the outbox table, for a relay to publish to Kafka.
    Outbox,
}

/// One unsent outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Append order (a database sequence): relays publish in this order.
    pub seq: i64,
    pub topic: String,
    /// The partition key (the user id for order events).
    pub key: String,
    pub envelope: Envelope,
    pub created_at: Timestamp,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct OutboxBacklog {
    /// Rows not yet acknowledged by the broker.
    pub unsent: i64,
    /// Age of the oldest unsent row in seconds (0 when none).
    pub oldest_age_seconds: f64,
}

#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Claims up to `limit` unsent rows, oldest first. Rows claimed by another
    /// live batch are skipped (PostgreSQL: `FOR UPDATE SKIP LOCKED`). The claim
    /// lasts until the batch is marked sent or dropped.
    async fn claim(&self, limit: usize) -> StoreResult<Box<dyn OutboxBatch>>;
    async fn backlog(&self) -> StoreResult<OutboxBacklog>;
    /// A signal that changes after a unit of work committed outbox rows: of
    /// this process, and on PostgreSQL of every process (`LISTEN/NOTIFY`),
    /// so a relay can claim at once instead of looking on a timer. Signals
    /// can be missed (another process on SQLite, a LISTEN connection that
    /// reconnects), so a relay still looks now and then without one.
    async fn appended(&self) -> StoreResult<watch::Receiver<u64>>;
}

/// A claimed batch. Dropping it without [`OutboxBatch::mark_sent`] releases
/// the rows unsent.
#[async_trait]
pub trait OutboxBatch: Send {
    fn events(&self) -> &[OutboxEvent];
    /// Marks the rows with these `seq`s sent and releases the claim.
    async fn mark_sent(self: Box<Self>, seqs: &[i64]) -> StoreResult<()>;
}

/// Where the relay sends claimed rows: the event log's producing side (Kafka
/// in production). Kept apart from [`EventLog`](crate::ports::log::EventLog),
/// which is the consuming side, so the core never sees a Kafka type.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes `events` (to `event.topic`, keyed by `event.key`, in the
    /// given order per key) and returns only once the log acknowledged every
    /// one of them durably. Any failure fails the whole call: the relay then
    /// marks nothing, and the rows are published again later (consumers skip
    /// the copies that did arrive, by event id).
    async fn publish(&self, events: &[OutboxEvent]) -> LogResult<()>;
}
