//! [`SqliteOutbox`]: the `outbox` table as the relay sees it
//! ([`Outbox`] port).
//!
//! When the event log is Kafka, units of work append their events here
//! instead of to `event_log` (`SqliteStore::with_event_destination`),
//! in the same transaction as the effect that caused them. A relay claims a
//! batch, publishes it, and marks it sent, which *deletes* the rows: once the
//! broker has acknowledged an event, Kafka is its record, and the table holds
//! exactly the backlog.
//!
//! How claims work, and why. PostgreSQL holds a claim with `FOR UPDATE SKIP
//! LOCKED` in an open transaction. SQLite has no row locks: holding its one
//! write lock from claim to mark would stop every order from being placed
//! while the relay waits for the broker. So a claim here is a plain read
//! (WAL: it never blocks writers, and sees only committed rows) plus an entry
//! in an in-process set of held `seq`s that every clone of the store shares;
//! later claims skip the held rows, and dropping the batch releases them.
//! Several relays in one process therefore never publish the same row twice.
//! They also keep each key's order: a claim skips every row whose key has
//! rows in another live batch, so a shopper's later events cannot overtake
//! earlier ones that another relay is still publishing (consumers apply an
//! order's events in order, and ignore one that does not fit the state).
//! Relays in *different* processes on one SQLite file do not see each
//! other's claims and may both publish a row: harmless, since consumers skip
//! a redelivered event by id, and running several relays only makes sense
//! with PostgreSQL anyway.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderflow_core::ports::outbox::{Outbox, OutboxBacklog, OutboxBatch, OutboxEvent};
use orderflow_core::ports::store::StoreResult;
use tokio::sync::watch;

use super::{SqliteEngine, WritePriority, micros};
use crate::sql::log::OUTBOX_SIGNAL;
use crate::sql::{Engine, Exec, SqlRow, rows, stmt};

/// The outbox of one SQLite database. Made by
/// `SqliteStore::outbox`; cheap to clone.
#[derive(Clone)]
pub struct SqliteOutbox {
    inner: Arc<SqliteEngine>,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox").finish_non_exhaustive()
    }
}

impl SqliteOutbox {
    pub(crate) fn new(inner: Arc<SqliteEngine>) -> Self {
        Self { inner }
    }
}

/// What the live batches of this process hold.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    seqs: BTreeSet<i64>,
    /// Rows held per key.
    keys: HashMap<String, usize>,
}

impl Claims {
    fn hold(&mut self, event: &OutboxEvent) {
        self.seqs.insert(event.seq);
        *self.keys.entry(event.key.clone()).or_default() += 1;
    }

    fn release(&mut self, event: &OutboxEvent) {
        if self.seqs.remove(&event.seq)
            && let Some(count) = self.keys.get_mut(&event.key)
        {
            *count -= 1;
            if *count == 0 {
                self.keys.remove(&event.key);
            }
        }
    }
}

/// Locks the claims. A panic while holding the lock cannot leave them
/// inconsistent (no update panics half-way), so a poisoned lock is simply
/// taken over.
fn held(claimed: &Mutex<Claims>) -> std::sync::MutexGuard<'_, Claims> {
    claimed
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn claim(&self, limit: usize) -> StoreResult<Box<dyn OutboxBatch>> {
        let skip: Vec<i64> = held(&self.inner.claimed).seqs.iter().copied().collect();
        let found = self
            .inner
            .read()
            .await?
            .query_all(stmt(
                "outbox_claim",
                r#"SELECT seq, topic, key, payload, created_at FROM outbox
                       WHERE seq NOT IN (SELECT value FROM json_each($1))
                       ORDER BY seq LIMIT $2"#,
                (skip, i64::try_from(limit).unwrap_or(i64::MAX)),
            ))
            .await?;

        let mut events = found
            .iter()
            .map(rows::outbox_event)
            .collect::<StoreResult<Vec<_>>>()?;
        // Keep only rows no other live batch holds, and whose key no other
        // live batch holds (checked now, under the lock: another relay may
        // have claimed between our read and here). Once a key is skipped,
        // its later rows are skipped too, so each key stays in order.
        {
            let mut claimed = held(&self.inner.claimed);
            let mut blocked: HashSet<String> = HashSet::new();
            events.retain(|event| {
                let taken =
                    claimed.seqs.contains(&event.seq) || claimed.keys.contains_key(&event.key);
                if taken || blocked.contains(&event.key) {
                    blocked.insert(event.key.clone());
                    return false;
                }
                true
            });
            for event in &events {
                claimed.hold(event);
            }
        }
        Ok(Box::new(SqliteOutboxBatch {
            inner: self.inner.clone(),
            events,
        }))
    }

    async fn backlog(&self) -> StoreResult<OutboxBacklog> {
        let row = self
            .inner
            .read()
            .await?
            .query_one(stmt(
                "outbox_backlog",
                "SELECT COUNT(*) AS unsent, MIN(created_at) AS oldest FROM outbox",
                (),
            ))
            .await?;
        let unsent = row.int("unsent")?;
        let oldest = row.opt_int("oldest")?;
        let oldest_age_seconds = match oldest {
            Some(oldest) => {
                let age = micros(chrono::Utc::now()).saturating_sub(oldest);
                (age.max(0) as f64) / 1e6
            }
            None => 0.0,
        };
        Ok(OutboxBacklog {
            unsent,
            oldest_age_seconds,
        })
    }

    async fn appended(&self) -> StoreResult<watch::Receiver<u64>> {
        // This process's commits only: another process's relay on the same
        // file finds the rows at its next look.
        Ok(self.inner.core.wakes.subscribe(OUTBOX_SIGNAL))
    }
}

/// Rows held by one relay until it marks them sent or drops the batch.
struct SqliteOutboxBatch {
    inner: Arc<SqliteEngine>,
    events: Vec<OutboxEvent>,
}

impl Drop for SqliteOutboxBatch {
    fn drop(&mut self) {
        let mut claimed = held(&self.inner.claimed);
        for event in &self.events {
            claimed.release(event);
        }
    }
}

#[async_trait]
impl OutboxBatch for SqliteOutboxBatch {
    fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    async fn mark_sent(self: Box<Self>, seqs: &[i64]) -> StoreResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        // One statement: the writer lock alone makes it atomic (see the
        // module docs of `sqlite`). Deleting a row that is already gone (a
        // retried mark) deletes nothing, which is what marking twice means.
        self.inner
            .lease(WritePriority::Background)
            .await?
            .exec(stmt(
                "outbox_mark_sent",
                "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each($1))",
                (seqs.to_vec(),),
            ))
            .await?;
        // Dropping `self` releases the claim.
        Ok(())
    }
}
