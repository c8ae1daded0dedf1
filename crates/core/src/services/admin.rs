//! Operator use cases: consumer lag and the dead-letter queue.

use std::sync::Arc;

use crate::CoreError;
use crate::ports::log::{EventLog, PartitionLag};
use crate::ports::store::{DeadLetter, Store};

pub struct Operations {
    store: Arc<dyn Store>,
    log: Arc<dyn EventLog>,
}

impl Operations {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn EventLog>) -> Self {
        Self { store, log }
    }

    /// Committed offset, end offset and lag of every group on every partition.
    pub async fn consumer_lag(&self) -> Result<Vec<PartitionLag>, CoreError> {
        let mut lag = self.log.lag().await?;
        lag.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        Ok(lag)
    }

    pub async fn dead_letters(
        &self,
        limit: Option<u32>,
        include_replayed: bool,
    ) -> Result<Vec<DeadLetter>, CoreError> {
        Ok(self
            .store
            .dead_letters(limit.unwrap_or(50).clamp(1, 500), include_replayed)
            .await?)
    }

    pub async fn dead_letter(&self, id: uuid::Uuid) -> Result<DeadLetter, CoreError> {
        self.store
            .dead_letter(id)
            .await?
            .ok_or(CoreError::NotFound("dead letter"))
    }

    /// Puts a dead letter's original event back on its topic.
    ///
    /// The event keeps its id: groups that handled it already skip it (their
    /// processed mark), and the group that gave up on it gets another chance.
    /// Marking and re-publishing commit together, so a replay happens once.
    pub async fn replay(&self, id: uuid::Uuid) -> Result<DeadLetter, CoreError> {
        let dead_letter = self.dead_letter(id).await?;
        let mut tx = self.store.begin().await?;
        if !tx.mark_dead_letter_replayed(id, chrono::Utc::now()).await? {
            return Err(CoreError::Conflict(
                "this dead letter was already replayed".into(),
            ));
        }
        tx.append(std::slice::from_ref(&dead_letter.event)).await?;
        tx.commit().await?;
        metrics::counter!("orderflow_dead_letters_replayed_total", "group" => dead_letter.group.clone()).increment(1);
        tracing::info!(%id, group = %dead_letter.group, event_id = %dead_letter.event.id, "dead letter replayed");
        Ok(dead_letter)
    }
}
