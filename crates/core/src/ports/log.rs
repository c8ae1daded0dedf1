//! The event-log port, as consumer groups see it.
//!
//! Producing is not here: events are appended to the outbox inside a
//! [`StoreTx`](crate::ports::store::StoreTx), and reach the log either directly
//! (the embedded log is a table in the same database) or through the relay
//! (Kafka). A [`Subscription`] is one member of a consumer group: it polls
//! deliveries in partition order and commits offsets only after the effects
//! are durable, so a crash redelivers instead of losing.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::events::Envelope;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("event log error: {0}")]
    Backend(String),
    /// The group has running members: its offsets cannot be moved under
    /// them (`orderflow rebuild`).
    #[error("consumer group {0} has running members; stop them first")]
    GroupActive(String),
    /// This log cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
}

pub type LogResult<T> = Result<T, LogError>;

/// One event as delivered to a group member, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub envelope: Envelope,
}

/// Committed position vs end of one partition for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read (Kafka semantics).
    pub committed: i64,
    /// The offset the next appended event will get.
    pub end: i64,
    pub lag: i64,
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Joins `group` for `topics`. A group that never committed starts at the
    /// beginning of each partition, so no event published before its first
    /// start is missed.
    async fn subscribe(&self, group: &str, topics: &[&str]) -> LogResult<Box<dyn Subscription>>;
    /// Lag of every known group on every partition of its topics.
    async fn lag(&self) -> LogResult<Vec<PartitionLag>>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> LogResult<()>;
    /// Moves `group`'s committed offsets on every partition of `topics`
    /// back to the beginning (the oldest event the log still holds), so its
    /// next member replays them: `orderflow rebuild`. Refused with
    /// [`LogError::GroupActive`] where the log can tell that a member is
    /// running (PostgreSQL's leases, Kafka's group membership); on SQLite
    /// the caller must make sure none is (a member keeps its positions in
    /// memory and would not see the move). `force` skips that check: for a
    /// member known to be gone that the log still lists (a lease not yet
    /// expired, a broker that does not expire members, as the test broker
    /// tansu).
    ///
    /// `from`: back only to each partition's first event appended at or
    /// after that time (never forward: a group behind it stays where it
    /// is, so nothing it has not read is skipped); `None`: to the oldest.
    async fn rewind(
        &self,
        group: &str,
        topics: &[&str],
        force: bool,
        from: Option<orderflow_domain::Timestamp>,
    ) -> LogResult<()>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` deliveries after the committed (or already polled)
    /// positions, in offset order per partition. Waits at most `wait` for the
    /// first one; returns an empty batch when none arrived. The embedded log
    /// wakes as soon as a transaction appends, so `wait` is an upper bound,
    /// not a polling delay.
    async fn poll(&mut self, max: usize, wait: Duration) -> LogResult<Vec<Delivery>>;
    /// Commits, for each partition in `deliveries`, the offset after the
    /// highest delivery. Call only after every effect of those deliveries is
    /// durable.
    async fn commit(&mut self, deliveries: &[Delivery]) -> LogResult<()>;
}
