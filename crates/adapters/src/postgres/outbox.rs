//! [`PostgresOutbox`]: the outbox table as relays see it (used when the event
//! log is Kafka and the store appends with
//! [`EventDestination::Outbox`](orderflow_core::ports::outbox::EventDestination)).
//!
//! A claim is an open transaction that has locked up to `n` unsent rows with
//! `SELECT … FOR UPDATE SKIP LOCKED`: another relay's claim skips them and
//! takes the next ones, so relays never publish the same row at the same
//! time. [`OutboxBatch::mark_sent`] sets `sent_at` and commits; dropping the
//! batch rolls back, which releases the rows unsent (as does a relay that
//! dies: its connection closes and the server rolls back).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::outbox::{Outbox, OutboxBacklog, OutboxBatch, OutboxEvent};
use orderflow_core::ports::store::{StoreError, StoreResult};
use sqlx::{Postgres, Transaction};

use super::{Inner, count, db_err, rows};

/// The outbox of a [`PostgresStore`](super::PostgresStore). Cheap to clone.
#[derive(Clone)]
pub struct PostgresOutbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox").finish_non_exhaustive()
    }
}

impl PostgresOutbox {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn claim(&self, limit: usize) -> StoreResult<Box<dyn OutboxBatch>> {
        count("begin");
        let mut tx = self.inner.pool.begin().await.map_err(db_err)?;
        count("claim_outbox");
        // Served by the partial index on unsent rows, in append order.
        let rows = sqlx::query(
            "SELECT seq, topic, key, payload, created_at FROM outbox
             WHERE sent_at IS NULL ORDER BY seq LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let events = rows
            .iter()
            .map(|row| {
                Ok(OutboxEvent {
                    seq: rows::int(row, "seq")?,
                    topic: rows::text(row, "topic")?,
                    key: rows::text(row, "key")?,
                    envelope: rows::envelope(row, "payload")?,
                    created_at: rows::time(row, "created_at")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Box::new(PostgresBatch { tx, events }))
    }

    async fn backlog(&self) -> StoreResult<OutboxBacklog> {
        count("outbox_backlog");
        let row = sqlx::query(
            "SELECT COUNT(*) AS unsent,
                    COALESCE(EXTRACT(EPOCH FROM (clock_timestamp() - MIN(created_at)))::float8, 0) AS oldest
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.inner.pool)
        .await
        .map_err(db_err)?;
        let oldest: f64 = sqlx::Row::try_get(&row, "oldest").map_err(db_err)?;
        Ok(OutboxBacklog {
            unsent: rows::int(&row, "unsent")?,
            // Clocks of different hosts can disagree a little; an age is
            // never negative.
            oldest_age_seconds: oldest.max(0.0),
        })
    }
}

/// A claimed batch: the transaction holding the row locks, and the rows.
pub struct PostgresBatch {
    tx: Transaction<'static, Postgres>,
    events: Vec<OutboxEvent>,
}

impl std::fmt::Debug for PostgresBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBatch")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl OutboxBatch for PostgresBatch {
    fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    /// Only rows of this batch can be marked: a `seq` the batch does not hold
    /// is an error (and nothing is marked), since marking a row another relay
    /// holds would lose it if that relay then failed to publish.
    async fn mark_sent(self: Box<Self>, seqs: &[i64]) -> StoreResult<()> {
        let PostgresBatch { mut tx, events } = *self;
        let held: BTreeSet<i64> = events.iter().map(|e| e.seq).collect();
        if let Some(foreign) = seqs.iter().find(|seq| !held.contains(seq)) {
            return Err(StoreError::Database(format!(
                "outbox row {foreign} is not part of this claimed batch"
            )));
        }
        if !seqs.is_empty() {
            count("mark_outbox_sent");
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1)")
                .bind(seqs)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        count("commit");
        tx.commit().await.map_err(db_err)
    }
}
