//! What the two embedded event logs (SQLite's and PostgreSQL's) share: the
//! log tables' reads (partition ends, deliveries past a position, lag) and
//! the poll-and-wait loop every subscription runs.
//!
//! The tables are the same on both engines: `event_log` (the events, with a
//! global `seq` in append order), `log_partitions` (each partition's end
//! offset) and `consumer_offsets` (each group's committed offsets). What
//! differs is who may read what (SQLite: every member reads every partition;
//! PostgreSQL: members share partitions through leases) and how a commit
//! elsewhere wakes a waiting poll (an in-process channel; `LISTEN/NOTIFY`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::select_all;
use orderflow_core::ports::log::{Delivery, LogError, LogResult, PartitionLag};
use tokio::sync::watch;
use tokio::time::Instant;

use super::rows::{self, partition_key};
use super::{Dialect, Exec, Sql, SqlRow, log_err, per, stmt};

/// Most partitions one read statement covers; keeps the `UNION ALL` well
/// below SQLite's limit of 500 terms in a compound `SELECT`.
const PARTITIONS_PER_STATEMENT: usize = 100;

/// One partition a poll reads, from which offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) from: i64,
}

/// The statements that set `group`'s committed offsets on `topics` back to
/// 0 (its next member reads from the oldest event each partition still
/// holds), or with `from` back to each partition's first event appended at
/// or after it, never forward.
pub(crate) fn rewind(
    group: &str,
    topics: &[&str],
    from: Option<orderflow_domain::Timestamp>,
) -> Vec<super::Stmt> {
    let now = chrono::Utc::now();
    topics
        .iter()
        .map(|topic| match from {
            None => stmt(
                "rewind_group",
                "UPDATE consumer_offsets SET next_offset = 0, updated_at = $3
                 WHERE group_name = $1 AND topic = $2",
                (group, *topic, now),
            ),
            // The first offset appended since `from`, when it is below the
            // committed one: back, never forward.
            Some(from) => stmt(
                "rewind_group_from",
                r#"UPDATE consumer_offsets SET updated_at = $3, next_offset = COALESCE(
                     (SELECT MIN(e."offset") FROM event_log e
                      WHERE e.topic = consumer_offsets.topic
                        AND e."partition" = consumer_offsets."partition"
                        AND e.created_at >= $4
                        AND e."offset" < consumer_offsets.next_offset),
                     next_offset)
                   WHERE group_name = $1 AND topic = $2"#,
                (group, *topic, now, from),
            ),
        })
        .collect()
}

/// Lag of every group on every partition it registered, in (group, topic,
/// partition) order.
pub(crate) async fn lag<C: Exec + ?Sized>(conn: &mut C) -> LogResult<Vec<PartitionLag>> {
    let rows = conn
        .query_all(stmt(
            "lag",
            r#"SELECT c.group_name, c.topic, c."partition", c.next_offset AS committed,
                      COALESCE(l.next_offset, 0) AS "end"
               FROM consumer_offsets c
               LEFT JOIN log_partitions l ON l.topic = c.topic AND l."partition" = c."partition"
               ORDER BY c.group_name, c.topic, c."partition""#,
            (),
        ))
        .await
        .map_err(log_err)?;
    rows.iter()
        .map(|row| {
            let (topic, partition) = partition_key(row).map_err(log_err)?;
            let committed = row.int("committed").map_err(log_err)?;
            let end = row.int("end").map_err(log_err)?;
            Ok(PartitionLag {
                group: row.text("group_name").map_err(log_err)?,
                topic,
                partition,
                committed,
                end,
                lag: (end - committed).max(0),
            })
        })
        .collect()
}

pub(crate) async fn ping<C: Exec + ?Sized>(conn: &mut C) -> LogResult<()> {
    conn.exec(stmt("ping", "SELECT 1", ()))
        .await
        .map_err(log_err)?;
    Ok(())
}

/// The end offset of every partition of `topics` that has one.
async fn partition_ends<C: Exec + ?Sized>(
    conn: &mut C,
    topics: &[String],
) -> LogResult<HashMap<(String, i32), i64>> {
    let rows = conn
        .query_all(stmt(
            "log_ends",
            per(
                r#"SELECT topic, "partition", next_offset FROM log_partitions
                       WHERE topic IN (SELECT value FROM json_each($1))"#,
                r#"SELECT topic, "partition", next_offset FROM log_partitions
                       WHERE topic = ANY($1)"#,
            ),
            (topics.to_vec(),),
        ))
        .await
        .map_err(log_err)?;
    rows.iter()
        .map(|row| {
            Ok((
                partition_key(row).map_err(log_err)?,
                row.int("next_offset").map_err(log_err)?,
            ))
        })
        .collect()
}

/// Up to `max` deliveries of the `reads` partitions (of `topics`) past their
/// positions, in append order (which, per partition, is offset order).
///
/// On PostgreSQL, a cheap check first: which partitions have anything past
/// the position? An idle poll costs that one small query. Then one range scan of the (topic,
/// partition, offset) index per ready partition, each capped at `max` rows,
/// merged by `seq`. Within a partition `seq` grows with the offset (appends
/// to one partition are serialised), so cutting the merged list at `max`
/// keeps a prefix of every partition, and positions can simply move to the
/// last delivered offset + 1.
pub(crate) async fn read_deliveries<C: Exec + ?Sized>(
    conn: &mut C,
    topics: &[String],
    reads: &[Read],
    max: usize,
) -> LogResult<Vec<Delivery>> {
    let ready: Vec<&Read> = if C::DIALECT == Dialect::Sqlite {
        // A statement is a call here, not a round trip: the read itself is
        // as cheap as the check would be.
        reads.iter().collect()
    } else {
        let ends = partition_ends(conn, topics).await?;
        reads
            .iter()
            .filter(|read| {
                ends.get(&(read.topic.clone(), read.partition))
                    .is_some_and(|end| *end > read.from)
            })
            .collect()
    };
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    // The limit is written into the text, rounded up to a power of two (a
    // handful of texts, each prepared once): SQLite's planner uses a bound
    // LIMIT's value, and re-prepares a statement whenever such a value is
    // bound again, which made every poll compile its statement anew.
    let limit = max.next_power_of_two();
    let mut found: Vec<(i64, Delivery)> = Vec::new();
    for chunk in ready.chunks(PARTITIONS_PER_STATEMENT) {
        let one = |n: usize| {
            let p = 1 + n * 3;
            format!(
                r#"SELECT * FROM (SELECT seq, topic, "partition", "offset", payload FROM event_log
                   WHERE topic = ${} AND "partition" = ${} AND "offset" >= ${}
                   ORDER BY "offset" LIMIT {limit}) AS p{n}"#,
                p,
                p + 1,
                p + 2
            )
        };
        let sql = format!(
            "{} ORDER BY seq LIMIT {limit}",
            (0..chunk.len())
                .map(one)
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        );
        let mut read = stmt("log_read", Sql::Built(sql), ());
        for partition in chunk {
            read = read
                .bind(partition.topic.clone())
                .bind(partition.partition)
                .bind(partition.from);
        }
        for row in conn.query_all(read).await.map_err(log_err)? {
            let (topic, partition) = partition_key(&row).map_err(log_err)?;
            let offset = row.int("offset").map_err(log_err)?;
            let envelope = rows::envelope(&row, "payload").map_err(|e| {
                LogError::Backend(format!(
                    "event at {topic}/{partition}/{offset} cannot be decoded: {e}"
                ))
            })?;
            let seq = row.int("seq").map_err(log_err)?;
            found.push((
                seq,
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

/// The offset to commit per (topic, partition) for `deliveries`: one past
/// the highest delivered.
pub(crate) fn next_offsets(deliveries: &[Delivery]) -> BTreeMap<(&str, i32), i64> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for delivery in deliveries {
        let entry = next
            .entry((delivery.topic.as_str(), delivery.partition))
            .or_insert(0);
        *entry = (*entry).max(delivery.offset + 1);
    }
    next
}

/// The name outbox appends signal under, beside the topics in [`TopicWakes`]
/// (and as the `NOTIFY` payload on PostgreSQL): not a topic, so no
/// subscription of the embedded log ever waits on it.
pub(crate) const OUTBOX_SIGNAL: &str = "outbox";

/// Wake-ups per topic: a commit that appended to some topics wakes the
/// subscriptions of those topics only, not every consumer group of the
/// process (most groups read one or two of the five topics; waking all of
/// them on every commit made each poll a round trip to the database for
/// nothing). Shared by the store and every log made from it.
#[derive(Default)]
pub(crate) struct TopicWakes {
    senders: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl TopicWakes {
    fn senders(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Nothing panics while holding the lock; take over a poisoned one.
        self.senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver that changes whenever `topic` was appended to.
    pub(crate) fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        self.senders()
            .entry(topic.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub(crate) fn wake<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let senders = self.senders();
        for topic in topics {
            if let Some(sender) = senders.get(topic) {
                sender.send_modify(|version| *version = version.wrapping_add(1));
            }
        }
    }

    /// Every topic: after a lost notification, nobody knows what changed.
    pub(crate) fn wake_all(&self) {
        for sender in self.senders().values() {
            sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }
}

/// The signals that make a waiting poll look again: commits of this process
/// (and, on PostgreSQL, `NOTIFY` from others), and on PostgreSQL the member
/// gaining partitions. A closed signal is ignored from then on.
pub(crate) struct Wakers {
    signals: Vec<(watch::Receiver<u64>, bool)>,
    /// The last look found everything there was (fewer deliveries than it
    /// asked for): until a signal fires, looking again would find nothing.
    caught_up: bool,
}

impl Wakers {
    pub(crate) fn new(signals: impl IntoIterator<Item = watch::Receiver<u64>>) -> Self {
        Self {
            signals: signals.into_iter().map(|rx| (rx, true)).collect(),
            caught_up: false,
        }
    }

    /// Whether a look now could find anything this process knows of: the
    /// last look was cut short by its limit, or a signal fired since.
    fn worth_a_look(&self) -> bool {
        !self.caught_up
            || self
                .signals
                .iter()
                .any(|(signal, open)| *open && signal.has_changed().unwrap_or(false))
    }

    /// Marks every signal seen, *before* reading, so one that fires between
    /// the read and the wait still wakes the wait.
    fn mark_seen(&mut self) {
        for (signal, _) in &mut self.signals {
            signal.borrow_and_update();
        }
    }

    /// Waits for any open signal, or the deadline.
    async fn wait(&mut self, deadline: Instant) {
        let open: Vec<usize> = (0..self.signals.len())
            .filter(|i| self.signals[*i].1)
            .collect();
        if open.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        let changes = self
            .signals
            .iter_mut()
            .filter(|(_, open)| *open)
            .map(|(signal, _)| Box::pin(signal.changed()));
        let Ok((result, index, _)) = tokio::time::timeout_at(deadline, select_all(changes)).await
        else {
            return;
        };
        if result.is_err() {
            self.signals[open[index]].1 = false;
        } else {
            // `changed` marked the signal seen: remember that it fired.
            self.caught_up = false;
        }
    }
}

/// Why a poll looks at the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// A signal fired, or the last look was cut short by its limit.
    Signalled,
    /// The wait ran out: the look for what no signal reports (commits of
    /// other processes).
    WaitRanOut,
}

/// What one attempt of a poll found.
pub(crate) enum Attempt {
    /// Deliveries to hand out.
    Found(Vec<Delivery>),
    /// Something was read, but none of it may be handed out (partitions
    /// moved meanwhile): look again at once.
    Again,
    /// Nothing new: wait for a signal.
    Nothing,
}

/// A subscription of an embedded log, as the poll-and-wait loop drives it.
#[async_trait]
pub(crate) trait Poller: Send {
    fn wakers(&mut self) -> &mut Wakers;

    /// One look at the log for up to `max` deliveries. Positions move only
    /// in the same synchronous step that returns them (cancel safety).
    async fn attempt(&mut self, max: usize, look: Look) -> LogResult<Attempt>;
}

/// Implements [`Subscription`](orderflow_core::ports::log::Subscription)
/// for an embedded log's member type, which implements [`Poller`] and has
/// `async fn commit_offsets(&mut self, next: BTreeMap<(&str, i32), i64>)`:
/// `poll` is [`poll_and_wait`], `commit` commits one past the highest
/// delivered offset per partition.
macro_rules! impl_subscription {
    ($member:ty) => {
        #[async_trait::async_trait]
        impl orderflow_core::ports::log::Subscription for $member {
            async fn poll(
                &mut self,
                max: usize,
                wait: std::time::Duration,
            ) -> orderflow_core::ports::log::LogResult<Vec<orderflow_core::ports::log::Delivery>>
            {
                $crate::sql::log::poll_and_wait(self, max, wait).await
            }

            async fn commit(
                &mut self,
                deliveries: &[orderflow_core::ports::log::Delivery],
            ) -> orderflow_core::ports::log::LogResult<()> {
                let next = $crate::sql::log::next_offsets(deliveries);
                if next.is_empty() {
                    return Ok(());
                }
                self.commit_offsets(next).await
            }
        }
    };
}
pub(crate) use impl_subscription;

/// The poll loop of both embedded logs: look, and if nothing is there, wait
/// for a signal and look again, until `wait` has passed. A commit of another
/// process that no signal reports is seen at the last look, when `wait` ran
/// out.
pub(crate) async fn poll_and_wait<P: Poller + ?Sized>(
    poller: &mut P,
    max: usize,
    wait: Duration,
) -> LogResult<Vec<Delivery>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    loop {
        // A member polls again as soon as it has room, right after a look
        // that drained the log; skip that look when no signal fired since
        // (it found nothing every time: half the reads under load). The
        // last look, when `wait` ran out, is always made.
        let last = Instant::now() >= deadline;
        if poller.wakers().worth_a_look() || last {
            poller.wakers().mark_seen();
            let look = if last {
                Look::WaitRanOut
            } else {
                Look::Signalled
            };
            match poller.attempt(max, look).await? {
                Attempt::Found(batch) if !batch.is_empty() => {
                    poller.wakers().caught_up = batch.len() < max;
                    return Ok(batch);
                }
                Attempt::Again => continue,
                Attempt::Found(_) | Attempt::Nothing => poller.wakers().caught_up = true,
            }
        }
        if last {
            return Ok(Vec::new());
        }
        poller.wakers().wait(deadline).await;
    }
}
