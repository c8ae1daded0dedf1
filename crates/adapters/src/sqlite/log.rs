//! The embedded event log: Kafka's model (topics, partitions, offsets,
//! consumer groups with committed offsets) on three tables of the same SQLite
//! database:
//!
//! - `event_log`: the events, appended by `SqliteTx`
//!   inside the producing transaction (so "outbox" and "log" are the same
//!   row, and no relay is needed);
//! - `log_partitions`: the end offset of every partition;
//! - `consumer_offsets`: the next offset each group will read.
//!
//! A [`SqliteSubscription`] is one member of a group. There is no partition
//! assignment: two live subscriptions of one group each receive every event
//! (both start from the committed offsets). Handlers are idempotent through
//! `mark_processed`, so that costs work, not correctness; run one worker per
//! group per database.
//!
//! Waiting: a commit that appended events bumps a `watch` channel shared by
//! the store and every log made from it, and a waiting `poll` wakes on it at
//! once. Writes from another process are not signalled; `poll` looks at the
//! table once more when `wait` runs out, so they are seen within `wait`.
//!
//! Reading: the events this process appended are handed, after their
//! commit, to the log's tail in memory (`sql::tail`), and a poll is answered
//! from there when the tail holds every partition from the member's
//! position on; otherwise, when `wait` ran out, and at least once a second
//! (for other processes' writes), it reads the table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::{EventLog, LogResult, PartitionLag, Subscription};
use tokio::time::Instant;

use super::{SqliteEngine, WritePriority};
use crate::sql::log::{Attempt, Look, Poller, Read, Wakers, read_deliveries};
use crate::sql::rows::partition_key;
use crate::sql::tail::TABLE_LOOK_EVERY;
use crate::sql::{Engine, Exec, SqlRow, WriteTx, log_err, stmt, values_list};

/// The partition of a key: FNV-1a (32 bit) of its UTF-8 bytes, modulo the
/// partition count. Deterministic across processes, builds and Rust versions
/// (unlike `std`'s randomly seeded hasher), which is the whole point: one
/// key must always land on the same partition to keep its events in order.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = key.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    });
    let partitions = partitions.max(1) as u32;
    (hash % partitions) as i32
}

/// The embedded event log. Made by
/// `SqliteStore::event_log`; cheap to clone.
#[derive(Clone)]
pub struct SqliteEventLog {
    inner: Arc<SqliteEngine>,
}

impl std::fmt::Debug for SqliteEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventLog")
            .field("partitions", &self.inner.core.partitions)
            .finish_non_exhaustive()
    }
}

impl SqliteEventLog {
    pub(crate) fn new(inner: Arc<SqliteEngine>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn subscribe(&self, group: &str, topics: &[&str]) -> LogResult<Box<dyn Subscription>> {
        let mut topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        topics.sort();
        topics.dedup();

        // Register the group on every partition at offset 0 (unless it has
        // committed before), so it is listed by `lag` from its first start and
        // reads everything published before it. One statement.
        let partitions = self.inner.core.partitions;
        let fresh: Vec<(&str, i32, i64)> = topics
            .iter()
            .flat_map(|topic| (0..partitions).map(move |partition| (topic.as_str(), partition, 0)))
            .collect();
        write_offsets(
            &self.inner,
            "register_group",
            group,
            fresh.into_iter(),
            "DO NOTHING",
        )
        .await?;

        let rows = self
            .inner
            .read()
            .await
            .map_err(log_err)?
            .query_all(stmt(
                "committed_offsets",
                r#"SELECT topic, "partition", next_offset FROM consumer_offsets
                       WHERE group_name = $1 AND topic IN (SELECT value FROM json_each($2))"#,
                (group, topics.clone()),
            ))
            .await
            .map_err(log_err)?;
        let mut positions = HashMap::with_capacity(rows.len());
        for row in &rows {
            positions.insert(
                partition_key(row).map_err(log_err)?,
                row.int("next_offset").map_err(log_err)?,
            );
        }

        let wakers = Wakers::new(
            topics
                .iter()
                .map(|topic| self.inner.core.wakes.subscribe(topic)),
        );
        Ok(Box::new(SqliteSubscription {
            inner: self.inner.clone(),
            group: group.to_owned(),
            topics,
            positions,
            wakers,
            table_look_at: Instant::now(),
        }))
    }

    async fn lag(&self) -> LogResult<Vec<PartitionLag>> {
        let mut conn = self.inner.read().await.map_err(log_err)?;
        crate::sql::log::lag(&mut *conn).await
    }

    async fn ping(&self) -> LogResult<()> {
        let mut conn = self.inner.read().await.map_err(log_err)?;
        crate::sql::log::ping(&mut *conn).await
    }

    /// Nothing records which members run (a member of another process
    /// keeps its positions in memory): the caller makes sure none does.
    async fn rewind(
        &self,
        group: &str,
        topics: &[&str],
        _force: bool,
        from: Option<orderflow_domain::Timestamp>,
    ) -> LogResult<()> {
        let mut w = self
            .inner
            .begin_write(WritePriority::Background)
            .await
            .map_err(log_err)?;
        for statement in crate::sql::log::rewind(group, topics, from) {
            w.exec(statement).await.map_err(log_err)?;
        }
        w.commit().await.map_err(log_err)
    }
}

/// One member of a consumer group on the embedded log.
pub struct SqliteSubscription {
    inner: Arc<SqliteEngine>,
    group: String,
    topics: Vec<String>,
    /// Next offset to hand out per (topic, partition): the committed offset,
    /// moved forward by every delivery this member returned. Deliveries
    /// returned but never committed come back only to a new subscription.
    positions: HashMap<(String, i32), i64>,
    wakers: Wakers,
    /// The next look reads the table, not the log's tail, from this time on.
    table_look_at: Instant,
}

impl std::fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscription")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Poller for SqliteSubscription {
    fn wakers(&mut self) -> &mut Wakers {
        &mut self.wakers
    }

    /// Every partition of the subscribed topics, from this member's
    /// positions: from the log's tail when it holds them all (see
    /// `sql::tail`), else, and whenever a wait ran out or
    /// [`TABLE_LOOK_EVERY`] passed, from the table.
    async fn attempt(&mut self, max: usize, look: Look) -> LogResult<Attempt> {
        let reads: Vec<Read> = self
            .topics
            .iter()
            .flat_map(|topic| {
                (0..self.inner.core.partitions).map(|partition| Read {
                    topic: topic.clone(),
                    partition,
                    from: self
                        .positions
                        .get(&(topic.clone(), partition))
                        .copied()
                        .unwrap_or(0),
                })
            })
            .collect();
        let tail = self.inner.core.tail.as_ref();
        let table_look = look == Look::WaitRanOut || Instant::now() >= self.table_look_at;
        let from_tail = tail
            .filter(|_| !table_look)
            .and_then(|tail| tail.read(&reads, max));
        let batch = match from_tail {
            Some(batch) => batch,
            None => {
                let mut conn = self.inner.read().await.map_err(log_err)?;
                let batch = read_deliveries(&mut *conn, &self.topics, &reads, max).await?;
                self.table_look_at = Instant::now() + TABLE_LOOK_EVERY;
                if let Some(tail) = tail
                    && batch.len() < max
                {
                    // Not cut short: every partition ended where this read
                    // leaves its position.
                    let mut ends: HashMap<(&str, i32), i64> = reads
                        .iter()
                        .map(|read| ((read.topic.as_str(), read.partition), read.from))
                        .collect();
                    for delivery in &batch {
                        ends.insert(
                            (delivery.topic.as_str(), delivery.partition),
                            delivery.offset + 1,
                        );
                    }
                    for ((topic, partition), end) in ends {
                        tail.learn_end(topic, partition, end);
                    }
                }
                batch
            }
        };
        for delivery in &batch {
            self.positions.insert(
                (delivery.topic.clone(), delivery.partition),
                delivery.offset + 1,
            );
        }
        Ok(Attempt::Found(batch))
    }
}

crate::sql::log::impl_subscription!(SqliteSubscription);

impl SqliteSubscription {
    /// Commits `next` (the offset to commit per partition, never empty).
    async fn commit_offsets(&mut self, next: BTreeMap<(&str, i32), i64>) -> LogResult<()> {
        // The larger offset wins: committing an older batch after a newer one
        // (or the same batch twice) never moves the group backwards.
        let offsets = next
            .iter()
            .map(|((topic, partition), next_offset)| (*topic, *partition, *next_offset));
        write_offsets(
            &self.inner,
            "commit_offset",
            &self.group,
            offsets,
            "DO UPDATE SET next_offset = max(next_offset, excluded.next_offset),
                 updated_at = excluded.updated_at",
        )
        .await?;
        for ((topic, partition), next_offset) in next {
            let position = self
                .positions
                .entry((topic.to_owned(), partition))
                .or_insert(0);
            *position = (*position).max(next_offset);
        }
        Ok(())
    }
}

/// Writes `group`'s offsets (topic, partition, next offset) in one
/// statement of one background transaction; `on_conflict` says what an
/// offset already there does (keep it when registering, the larger one when
/// committing).
async fn write_offsets<'a>(
    inner: &SqliteEngine,
    label: &'static str,
    group: &str,
    offsets: impl ExactSizeIterator<Item = (&'a str, i32, i64)>,
    on_conflict: &str,
) -> LogResult<()> {
    let now = chrono::Utc::now();
    let mut upsert = stmt(
        label,
        format!(
            r#"INSERT INTO consumer_offsets (group_name, topic, "partition", next_offset,
                updated_at)
               VALUES {}
               ON CONFLICT (group_name, topic, "partition") {on_conflict}"#,
            values_list(offsets.len(), 5, 1)
        ),
        (),
    );
    for (topic, partition, next_offset) in offsets {
        upsert = upsert
            .bind(group)
            .bind(topic)
            .bind(partition)
            .bind(next_offset)
            .bind(now);
    }
    let mut w = inner
        .begin_write(WritePriority::Background)
        .await
        .map_err(log_err)?;
    w.exec(upsert).await.map_err(log_err)?;
    w.commit().await.map_err(log_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // FNV-1a 32-bit reference values: "" -> 0x811c9dc5, "a" -> 0xe40c292c,
        // "foobar" -> 0xbf9cf968. Modulo i32::MAX partitions shows the raw
        // hash (reduced the same way on both sides).
        assert_eq!(
            partition_for("", i32::MAX),
            (0x811c_9dc5_u32 % i32::MAX as u32) as i32
        );
        assert_eq!(
            partition_for("a", i32::MAX),
            (0xe40c_292c_u32 % i32::MAX as u32) as i32
        );
        assert_eq!(
            partition_for("foobar", i32::MAX),
            (0xbf9c_f968_u32 % i32::MAX as u32) as i32
        );
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        let key = "0190b9a4-7c1e-7a4e-9d43-1f2e3d4c5b6a";
        assert_eq!(partition_for(key, 6), partition_for(key, 6));
        for partitions in [1, 2, 6, 64] {
            for i in 0..1000 {
                let p = partition_for(&format!("user-{i}"), partitions);
                assert!((0..partitions).contains(&p));
            }
        }
        assert_eq!(
            partition_for("anything", 0),
            0,
            "a bad count degrades to one partition"
        );
    }
}
