//! The embedded event log: Kafka's model (topics, partitions, offsets,
//! consumer groups with committed offsets) on three tables of the same SQLite
//! database:
//!
//! - `event_log`: the events, appended by [`SqliteTx`](super::SqliteTx)
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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::log::{
    Delivery, EventLog, LogError, LogResult, PartitionLag, Subscription,
};
use orderflow_core::ports::store::StoreError;
use sqlx::sqlite::SqliteRow;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, WritePriority, count, db_err, micros, rows};

/// Most partitions one `poll` statement reads; keeps the `UNION ALL` well
/// below SQLite's limit of 500 terms in a compound `SELECT`.
const PARTITIONS_PER_STATEMENT: usize = 100;

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

fn log_err(error: StoreError) -> LogError {
    match error {
        StoreError::Unavailable(message) => LogError::Unavailable(message),
        other => LogError::Backend(other.to_string()),
    }
}

fn sql_err(error: sqlx::Error) -> LogError {
    log_err(db_err(error))
}

/// The embedded event log. Made by
/// [`SqliteStore::event_log`](super::SqliteStore::event_log); cheap to clone.
#[derive(Clone)]
pub struct SqliteEventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventLog")
            .field("partitions", &self.inner.partitions)
            .finish_non_exhaustive()
    }
}

impl SqliteEventLog {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
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
        // reads everything published before it.
        let now = micros(chrono::Utc::now());
        let mut w = self
            .inner
            .begin_write(WritePriority::Background)
            .await
            .map_err(log_err)?;
        for topic in &topics {
            for partition in 0..self.inner.partitions {
                count("register_group");
                sqlx::query(
                    r#"INSERT INTO consumer_offsets (group_name, topic, "partition", next_offset, updated_at)
                       VALUES (?, ?, ?, 0, ?)
                       ON CONFLICT (group_name, topic, "partition") DO NOTHING"#,
                )
                .bind(group)
                .bind(topic)
                .bind(partition)
                .bind(now)
                .execute(&mut *w.tx)
                .await
                .map_err(sql_err)?;
            }
        }
        w.commit().await.map_err(log_err)?;

        let topics_json = serde_json::Value::from(topics.clone()).to_string();
        count("committed_offsets");
        let rows = sqlx::query(
            r#"SELECT topic, "partition", next_offset FROM consumer_offsets
               WHERE group_name = ? AND topic IN (SELECT value FROM json_each(?))"#,
        )
        .bind(group)
        .bind(&topics_json)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(sql_err)?;
        let mut positions = HashMap::with_capacity(rows.len());
        for row in &rows {
            positions.insert(partition_key(row)?, int(row, "next_offset")?);
        }

        Ok(Box::new(SqliteSubscription {
            inner: self.inner.clone(),
            group: group.to_owned(),
            topics_json,
            positions,
            wake: self.inner.wake.subscribe(),
        }))
    }

    async fn lag(&self) -> LogResult<Vec<PartitionLag>> {
        count("lag");
        let rows = sqlx::query(
            r#"SELECT c.group_name, c.topic, c."partition", c.next_offset AS committed,
                      COALESCE(l.next_offset, 0) AS "end"
               FROM consumer_offsets c
               LEFT JOIN log_partitions l ON l.topic = c.topic AND l."partition" = c."partition"
               ORDER BY c.group_name, c.topic, c."partition""#,
        )
        .fetch_all(&self.inner.pool)
        .await
        .map_err(sql_err)?;
        rows.iter()
            .map(|row| {
                let (topic, partition) = partition_key(row)?;
                let committed = int(row, "committed")?;
                let end = int(row, "end")?;
                Ok(PartitionLag {
                    group: rows::text(row, "group_name").map_err(log_err)?,
                    topic,
                    partition,
                    committed,
                    end,
                    lag: (end - committed).max(0),
                })
            })
            .collect()
    }

    async fn ping(&self) -> LogResult<()> {
        count("ping");
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map_err(sql_err)?;
        Ok(())
    }
}

/// One member of a consumer group on the embedded log.
pub struct SqliteSubscription {
    inner: Arc<Inner>,
    group: String,
    /// The subscribed topics as a JSON array, for `json_each`.
    topics_json: String,
    /// Next offset to hand out per (topic, partition): the committed offset,
    /// moved forward by every delivery this member returned. Deliveries
    /// returned but never committed come back only to a new subscription.
    positions: HashMap<(String, i32), i64>,
    wake: watch::Receiver<u64>,
}

impl std::fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscription")
            .field("group", &self.group)
            .field("topics", &self.topics_json)
            .finish_non_exhaustive()
    }
}

fn int(row: &SqliteRow, column: &str) -> LogResult<i64> {
    rows::int(row, column).map_err(log_err)
}

fn partition_key(row: &SqliteRow) -> LogResult<(String, i32)> {
    let topic = rows::text(row, "topic").map_err(log_err)?;
    let partition = int(row, "partition")?;
    let partition = i32::try_from(partition)
        .map_err(|_| LogError::Backend(format!("partition {partition} out of range")))?;
    Ok((topic, partition))
}

impl SqliteSubscription {
    /// Up to `max` deliveries past `positions`, in append order (which, per
    /// partition, is offset order). Does not move the positions.
    async fn fetch(&self, max: usize) -> LogResult<Vec<Delivery>> {
        // Cheap check first: which partitions have anything past our position?
        // An idle poll costs this one small query.
        count("log_ends");
        let ends = sqlx::query(
            r#"SELECT topic, "partition", next_offset FROM log_partitions
               WHERE topic IN (SELECT value FROM json_each(?))"#,
        )
        .bind(&self.topics_json)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(sql_err)?;
        let mut ready: Vec<(String, i32, i64)> = Vec::new();
        for row in &ends {
            let (topic, partition) = partition_key(row)?;
            let end = int(row, "next_offset")?;
            let from = self
                .positions
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            if end > from {
                ready.push((topic, partition, from));
            }
        }
        if ready.is_empty() {
            return Ok(Vec::new());
        }

        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut found: Vec<(i64, Delivery)> = Vec::new();
        for chunk in ready.chunks(PARTITIONS_PER_STATEMENT) {
            // One range scan of the (topic, partition, offset) index per ready
            // partition, each capped at `max` rows, merged by `seq`. Cutting
            // the merged list at `max` keeps a prefix of every partition, so
            // positions can simply move to the last delivered offset + 1.
            let one = r#"SELECT * FROM (SELECT seq, topic, "partition", "offset", payload FROM event_log
                          WHERE topic = ? AND "partition" = ? AND "offset" >= ?
                          ORDER BY "offset" LIMIT ?)"#;
            let sql = format!(
                "{} ORDER BY seq LIMIT ?",
                vec![one; chunk.len()].join(" UNION ALL ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (topic, partition, from) in chunk {
                query = query
                    .bind(topic.clone())
                    .bind(*partition)
                    .bind(*from)
                    .bind(limit);
            }
            count("log_read");
            let rows = query
                .bind(limit)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(sql_err)?;
            for row in &rows {
                let (topic, partition) = partition_key(row)?;
                let offset = int(row, "offset")?;
                let payload = rows::text(row, "payload").map_err(log_err)?;
                let envelope = rows::envelope(&payload).map_err(|e| {
                    LogError::Backend(format!(
                        "event at {topic}/{partition}/{offset} cannot be decoded: {e}"
                    ))
                })?;
                found.push((
                    int(row, "seq")?,
                    Delivery {
                        topic,
                        partition,
                        offset,
                        envelope,
                    },
                ));
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        found.truncate(max);
        Ok(found.into_iter().map(|(_, delivery)| delivery).collect())
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> LogResult<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Mark the current version seen *before* reading, so a commit that
            // lands between the read and the wait below still wakes us.
            self.wake.borrow_and_update();
            let batch = self.fetch(max).await?;
            if !batch.is_empty() {
                for delivery in &batch {
                    self.positions.insert(
                        (delivery.topic.clone(), delivery.partition),
                        delivery.offset + 1,
                    );
                }
                return Ok(batch);
            }
            if Instant::now() >= deadline {
                return Ok(batch);
            }
            match tokio::time::timeout_at(deadline, self.wake.changed()).await {
                // Something was committed in this process: look again (it may
                // be on topics we do not read; then we wait again).
                Ok(Ok(())) => {}
                // The store is gone, so nothing in this process will signal;
                // sleep out the wait and look a last time.
                Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
                // Time is up: one last look catches other processes' writes.
                Err(_) => {}
            }
        }
    }

    async fn commit(&mut self, deliveries: &[Delivery]) -> LogResult<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for delivery in deliveries {
            let entry = next
                .entry((delivery.topic.as_str(), delivery.partition))
                .or_insert(0);
            *entry = (*entry).max(delivery.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let now = micros(chrono::Utc::now());
        let mut w = self
            .inner
            .begin_write(WritePriority::Background)
            .await
            .map_err(log_err)?;
        for ((topic, partition), next_offset) in &next {
            // max(): committing an older batch after a newer one (or the same
            // batch twice) never moves the group backwards.
            count("commit_offset");
            sqlx::query(
                r#"INSERT INTO consumer_offsets (group_name, topic, "partition", next_offset, updated_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (group_name, topic, "partition") DO UPDATE
                   SET next_offset = max(next_offset, excluded.next_offset), updated_at = excluded.updated_at"#,
            )
            .bind(&self.group)
            .bind(*topic)
            .bind(*partition)
            .bind(*next_offset)
            .bind(now)
            .execute(&mut *w.tx)
            .await
            .map_err(sql_err)?;
        }
        w.commit().await.map_err(log_err)?;
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
