//! The embedded event log on PostgreSQL: Kafka's model (topics, partitions,
//! offsets, consumer groups with committed offsets) on three tables, exactly
//! as in [`crate::sqlite::log`]:
//!
//! - `event_log`: the events, appended by [`PostgresTx`](super::PostgresTx)
//!   inside the producing transaction;
//! - `log_partitions`: the end offset of every partition. The appending
//!   transaction increments its partition's row and holds the row lock until
//!   it commits, so appends to one partition are serialised, offsets are
//!   gap-free (a rollback gives the offset back) and commit order equals
//!   offset order: a reader never sees offset n+1 without n;
//! - `consumer_offsets`: the next offset each group will read.
//!
//! A [`PostgresSubscription`] is one member of a group. As with SQLite there
//! is no partition assignment: two live members of one group each receive
//! every event from the committed offsets on, and handlers are idempotent
//! through `mark_processed`. (With several worker processes per group, use
//! Kafka, which assigns partitions.)
//!
//! Waiting: an appending transaction issues `pg_notify`, which the server
//! delivers on commit to every process that `LISTEN`s. Each store runs one
//! LISTEN connection (started by the first subscription) that bumps the
//! store's wake-up channel; commits of this process bump it directly too.
//! A notification lost while the LISTEN connection reconnects costs at most
//! `wait`: `poll` looks at the tables once more when its wait runs out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::log::{
    Delivery, EventLog, LogError, LogResult, PartitionLag, Subscription,
};
use orderflow_core::ports::store::StoreError;
use sqlx::postgres::PgRow;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, count, db_err, rows};

fn log_err(error: StoreError) -> LogError {
    match error {
        StoreError::Unavailable(message) => LogError::Unavailable(message),
        other => LogError::Backend(other.to_string()),
    }
}

fn sql_err(error: sqlx::Error) -> LogError {
    log_err(db_err(error))
}

/// The embedded event log on PostgreSQL. Made by
/// [`PostgresStore::event_log`](super::PostgresStore::event_log); cheap to
/// clone.
#[derive(Clone)]
pub struct PostgresEventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventLog")
            .field("partitions", &self.inner.partitions)
            .finish_non_exhaustive()
    }
}

impl PostgresEventLog {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

fn int(row: &PgRow, column: &str) -> LogResult<i64> {
    rows::int(row, column).map_err(log_err)
}

fn partition_key(row: &PgRow) -> LogResult<(String, i32)> {
    let topic = rows::text(row, "topic").map_err(log_err)?;
    let partition = rows::int4(row, "partition").map_err(log_err)?;
    Ok((topic, partition))
}

#[async_trait]
impl EventLog for PostgresEventLog {
    async fn subscribe(&self, group: &str, topics: &[&str]) -> LogResult<Box<dyn Subscription>> {
        let mut topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        topics.sort();
        topics.dedup();

        // Listen before the first read, so no commit after it goes unnoticed.
        self.inner.ensure_listener().await.map_err(log_err)?;
        let wake = self.inner.wake.subscribe();

        // Register the group on every partition at offset 0 (unless it has
        // committed before), so it is listed by `lag` from its first start and
        // reads everything published before it. One statement for all rows.
        let mut topic_list = Vec::new();
        let mut partition_list = Vec::new();
        for topic in &topics {
            for partition in 0..self.inner.partitions {
                topic_list.push(topic.clone());
                partition_list.push(partition);
            }
        }
        count("register_group");
        sqlx::query(
            r#"INSERT INTO consumer_offsets (group_name, topic, "partition", next_offset, updated_at)
               SELECT $1, topic, p, 0, now() FROM unnest($2::text[], $3::int[]) AS t(topic, p)
               ON CONFLICT (group_name, topic, "partition") DO NOTHING"#,
        )
        .bind(group)
        .bind(&topic_list)
        .bind(&partition_list)
        .execute(&self.inner.pool)
        .await
        .map_err(sql_err)?;

        count("committed_offsets");
        let rows = sqlx::query(
            r#"SELECT topic, "partition", next_offset FROM consumer_offsets
               WHERE group_name = $1 AND topic = ANY($2)"#,
        )
        .bind(group)
        .bind(&topics)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(sql_err)?;
        let mut positions = HashMap::with_capacity(rows.len());
        for row in &rows {
            positions.insert(partition_key(row)?, int(row, "next_offset")?);
        }

        Ok(Box::new(PostgresSubscription {
            inner: self.inner.clone(),
            group: group.to_owned(),
            topics,
            positions,
            wake,
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

/// One member of a consumer group on the PostgreSQL event log.
pub struct PostgresSubscription {
    inner: Arc<Inner>,
    group: String,
    topics: Vec<String>,
    /// Next offset to hand out per (topic, partition): the committed offset,
    /// moved forward by every delivery this member returned. Deliveries
    /// returned but never committed come back only to a new subscription.
    positions: HashMap<(String, i32), i64>,
    wake: watch::Receiver<u64>,
}

impl std::fmt::Debug for PostgresSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSubscription")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl PostgresSubscription {
    /// Up to `max` deliveries past `positions`, in append order (which, per
    /// partition, is offset order). Does not move the positions.
    async fn fetch(&self, max: usize) -> LogResult<Vec<Delivery>> {
        // Cheap check first: which partitions have anything past our position?
        // An idle poll costs this one small query.
        count("log_ends");
        let ends = sqlx::query(
            r#"SELECT topic, "partition", next_offset FROM log_partitions WHERE topic = ANY($1)"#,
        )
        .bind(&self.topics)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(sql_err)?;
        let mut ready_topics = Vec::new();
        let mut ready_partitions = Vec::new();
        let mut ready_from = Vec::new();
        for row in &ends {
            let (topic, partition) = partition_key(row)?;
            let end = int(row, "next_offset")?;
            let from = self
                .positions
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            if end > from {
                ready_topics.push(topic);
                ready_partitions.push(partition);
                ready_from.push(from);
            }
        }
        if ready_topics.is_empty() {
            return Ok(Vec::new());
        }

        // One range scan of the (topic, partition, offset) index per ready
        // partition, each capped at `max`, merged by `seq`. Within a
        // partition `seq` grows with the offset (appends to it are
        // serialised), so cutting the merged list at `max` keeps a prefix of
        // every partition, and positions can simply move to the last
        // delivered offset + 1.
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        count("log_read");
        let rows = sqlx::query(
            r#"SELECT e.seq, e.topic, e."partition", e."offset", e.payload
               FROM unnest($1::text[], $2::int[], $3::bigint[]) AS r(topic, part, from_offset)
               CROSS JOIN LATERAL (
                   SELECT seq, topic, "partition", "offset", payload FROM event_log
                   WHERE topic = r.topic AND "partition" = r.part AND "offset" >= r.from_offset
                   ORDER BY "offset" LIMIT $4
               ) AS e
               ORDER BY e.seq LIMIT $4"#,
        )
        .bind(&ready_topics)
        .bind(&ready_partitions)
        .bind(&ready_from)
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(sql_err)?;
        rows.iter()
            .map(|row| {
                let (topic, partition) = partition_key(row)?;
                let offset = int(row, "offset")?;
                let envelope = rows::envelope(row, "payload").map_err(|e| {
                    LogError::Backend(format!(
                        "event at {topic}/{partition}/{offset} cannot be decoded: {e}"
                    ))
                })?;
                Ok(Delivery {
                    topic,
                    partition,
                    offset,
                    envelope,
                })
            })
            .collect()
    }
}

#[async_trait]
impl Subscription for PostgresSubscription {
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
                // Something was committed (here or, through NOTIFY, in another
                // process): look again (it may be on topics we do not read;
                // then we wait again).
                Ok(Ok(())) => {}
                // The store is gone, so nothing will signal; sleep out the
                // wait and look a last time.
                Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
                // Time is up: one last look.
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
        let topics: Vec<&str> = next.keys().map(|(topic, _)| *topic).collect();
        let partitions: Vec<i32> = next.keys().map(|(_, partition)| *partition).collect();
        let offsets: Vec<i64> = next.values().copied().collect();
        // GREATEST: committing an older batch after a newer one (or the same
        // batch twice) never moves the group backwards. One statement, rows
        // in key order (no deadlock between members committing together).
        count("commit_offset");
        sqlx::query(
            r#"INSERT INTO consumer_offsets AS c (group_name, topic, "partition", next_offset, updated_at)
               SELECT $1, topic, p, o, now() FROM unnest($2::text[], $3::int[], $4::bigint[]) AS t(topic, p, o)
               ON CONFLICT (group_name, topic, "partition") DO UPDATE
               SET next_offset = GREATEST(c.next_offset, excluded.next_offset), updated_at = excluded.updated_at"#,
        )
        .bind(&self.group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&self.inner.pool)
        .await
        .map_err(sql_err)?;
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
