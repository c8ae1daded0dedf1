//! [`PostgresOutbox`]: the outbox table as relays see it (used when the event
//! log is Kafka and the store appends with
//! [`EventDestination::Outbox`](orderflow_core::ports::outbox::EventDestination)).
//!
//! A claim is an open transaction that has locked up to `n` unsent rows with
//! `SELECT … FOR UPDATE SKIP LOCKED`: another relay's claim skips them and
//! takes the next ones, so relays never publish the same row at the same
//! time. It also holds an advisory lock per event key, and skips every row
//! of a key another claim holds, so each shopper's events still leave in
//! order when several relays run. [`OutboxBatch::mark_sent`] sets `sent_at` and commits; dropping the
//! batch rolls back, which releases the rows unsent (as does a relay that
//! dies: its connection closes and the server rolls back).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::outbox::{Outbox, OutboxBacklog, OutboxBatch, OutboxEvent};
use orderflow_core::ports::store::StoreResult;
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;

use super::{PostgresEngine, db_err};
use crate::sql::log::OUTBOX_SIGNAL;
use crate::sql::{SqlRow, count, rows};

/// First key of the advisory locks a claim holds per event key (the second
/// is a hash of the key); distinct from the stock locks' first key.
const OUTBOX_KEY_LOCK: i32 = 0x0_0B0C;

/// The outbox of a [`PostgresStore`](super::PostgresStore). Cheap to clone.
#[derive(Clone)]
pub struct PostgresOutbox {
    inner: Arc<PostgresEngine>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox").finish_non_exhaustive()
    }
}

impl PostgresOutbox {
    pub(crate) fn new(inner: Arc<PostgresEngine>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn claim(&self, limit: usize) -> StoreResult<Box<dyn OutboxBatch>> {
        // Let the rollbacks of batches this process dropped reach the server
        // first, or their rows would still be locked and skipped.
        let pending = std::mem::take(
            &mut *self
                .inner
                .outbox_rollbacks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for rollback in pending {
            // A failed rollback task means the connection is gone, and with it
            // the server-side transaction: the rows are free either way.
            let _ = rollback.await;
        }
        count("begin");
        let mut tx = self.inner.core.pool.begin().await.map_err(db_err)?;
        // Three steps, so that each shopper's events still leave in order
        // when several relays run (row locks alone would let a second relay
        // publish a later event of a key while the first holds an earlier
        // one): (1) the oldest unsent rows no other batch holds, locked only
        // inside a savepoint that is rolled back at once (which releases
        // those row locks); (2) a transaction-scoped advisory lock per
        // distinct key of those rows, keeping the keys no other live batch
        // holds; (3) the rows of those keys, row-locked for the batch and
        // re-checked as unsent. Whoever holds a row of a key holds its
        // advisory lock, so a key's rows are claimed by one batch at a time,
        // oldest first.
        count("claim_outbox");
        sqlx::query("SAVEPOINT outbox_candidates")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let candidates: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, key FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("ROLLBACK TO SAVEPOINT outbox_candidates")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let keys: Vec<&str> = candidates
            .iter()
            .map(|(_, key)| key.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        count("lock_outbox_keys");
        let held: BTreeSet<String> = sqlx::query_scalar(
            "SELECT k FROM unnest($2::text[]) AS k WHERE pg_try_advisory_xact_lock($1,
                hashtext(k))",
        )
        .bind(OUTBOX_KEY_LOCK)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .into_iter()
        .collect();
        let seqs: Vec<i64> = candidates
            .iter()
            .filter(|(_, key)| held.contains(key))
            .map(|(seq, _)| *seq)
            .collect();
        count("claim_outbox_rows");
        let rows = sqlx::query(
            "SELECT seq, topic, key, payload, created_at FROM outbox
             WHERE seq = ANY($1) AND sent_at IS NULL ORDER BY seq
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&seqs)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let events = rows
            .iter()
            .map(rows::outbox_event)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Box::new(PostgresBatch {
            tx: Some(tx),
            events,
            inner: self.inner.clone(),
        }))
    }

    async fn backlog(&self) -> StoreResult<OutboxBacklog> {
        count("outbox_backlog");
        let row = sqlx::query(
            "SELECT COUNT(*) AS unsent,
                    COALESCE(EXTRACT(EPOCH FROM (clock_timestamp() - MIN(created_at)))::float8, 0) AS oldest
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.inner.core.pool)
        .await
        .map_err(db_err)?;
        let oldest: f64 = sqlx::Row::try_get(&row, "oldest").map_err(db_err)?;
        Ok(OutboxBacklog {
            unsent: row.int("unsent")?,
            // Clocks of different hosts can disagree a little; an age is
            // never negative.
            oldest_age_seconds: oldest.max(0.0),
        })
    }

    async fn appended(&self) -> StoreResult<watch::Receiver<u64>> {
        // Other processes' appends arrive through the store's LISTEN task.
        self.inner.ensure_listener().await?;
        Ok(self.inner.core.wakes.subscribe(OUTBOX_SIGNAL))
    }
}

/// A claimed batch: the transaction holding the row locks, and the rows.
pub struct PostgresBatch {
    /// `None` only once `mark_sent` took it.
    tx: Option<Transaction<'static, Postgres>>,
    events: Vec<OutboxEvent>,
    inner: Arc<PostgresEngine>,
}

/// Dropping a sqlx transaction only queues its `ROLLBACK` on the connection;
/// the row locks stay until that connection is next used. So a dropped batch
/// rolls back in a task of its own, which the store's next claim waits for.
/// (Outside a runtime the queued rollback is all there is; it runs when the
/// pool reuses or closes the connection.)
impl Drop for PostgresBatch {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        count("rollback_outbox_claim");
        let rollback = runtime.spawn(async move {
            if let Err(error) = tx.rollback().await {
                tracing::warn!(%error, "rolling back a dropped outbox claim failed");
            }
        });
        self.inner
            .outbox_rollbacks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(rollback);
    }
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

    /// Marks the rows of this batch among `seqs`. Other `seq`s are ignored:
    /// a row marked before (a relay retrying after a lost answer) stays
    /// marked, and a row another relay holds is not touched (marking it
    /// here would lose it if that relay then failed to publish; it would
    /// also wait for that relay's lock).
    async fn mark_sent(self: Box<Self>, seqs: &[i64]) -> StoreResult<()> {
        let mut batch = self;
        let Some(mut tx) = batch.tx.take() else {
            return Ok(());
        };
        let held: BTreeSet<i64> = batch.events.iter().map(|e| e.seq).collect();
        let seqs: Vec<i64> = seqs
            .iter()
            .copied()
            .filter(|seq| held.contains(seq))
            .collect();
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
