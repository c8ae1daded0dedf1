//! The embedded event log on PostgreSQL: Kafka's model (topics, partitions,
//! offsets, consumer groups with committed offsets and partition assignment)
//! on five tables:
//!
//! - `event_log`: the events, appended by `PostgresTx`
//!   inside the producing transaction;
//! - `log_partitions`: the end offset of every partition. The appending
//!   transaction increments its partition's row and holds the row lock until
//!   it commits, so appends to one partition are serialised, offsets are
//!   gap-free (a rollback gives the offset back) and commit order equals
//!   offset order: a reader never sees offset n+1 without n;
//! - `consumer_offsets`: the next offset each group will read;
//! - `consumer_members` and `consumer_leases`: who is in each group, and
//!   which member may read which partition (below).
//!
//! # Assignment: members share partitions through leases
//!
//! A [`PostgresSubscription`] is one member of a group, with a fresh id
//! (UUID v7, so members sort by age). The partitions of its topics are
//! shared among the group's live members through leases in the database, so
//! a group scales across processes without Kafka:
//!
//! - **Membership.** A member's row in `consumer_members` lives until
//!   `expires_at`; every renewal pushes it `lease` further. Members whose row
//!   expired are dead: they are not counted, and the others delete their rows.
//! - **Fair share.** With `P` partitions (all topics of the subscription) and
//!   `N` live members, each member's share is `P / N`, and the `P % N` oldest
//!   members get one more, so the shares add up to `P` exactly. Members
//!   assume that every member of a group reads the same topics (the runtime
//!   subscribes each group to its fixed topics).
//! - **Renewal, acquisition, release.** Each member runs a *renewal* step: one
//!   transaction that heartbeats its member row, renews every lease it holds
//!   (`UPDATE … SET expires_at = now() + lease WHERE owner = me`, whose
//!   `RETURNING` is the authoritative list of what it holds), releases
//!   surplus partitions, and takes free ones (released, or whose lease
//!   expired) up to its share, with `FOR UPDATE SKIP LOCKED` so members
//!   taking at the same time never wait for or collide with each other. A
//!   partition it gains starts at the group's committed offset; a partition
//!   it no longer holds is dropped from memory with its read position.
//! - **Hand-over.** A member over its share (a member joined) stops
//!   delivering the surplus partitions at once, *drains* them (waits until
//!   every delivery it handed out from them is committed, or until `lease`
//!   has passed), then releases them (`owner = NULL`), and the newcomer takes
//!   them at its next step. A newcomer therefore starts exactly at the
//!   offsets the previous owner committed, and the events of one key are
//!   never handled by two members at once. A member that leaves cleanly (the
//!   subscription is dropped) deletes its row and releases everything at
//!   once. A member that dies (killed process) stops renewing: its leases
//!   expire after `lease`, and the others take them over, from the committed
//!   offsets (what was handed out but not committed is delivered again).
//! - **Fencing.** Two members never both believe they hold a partition: a
//!   member trusts a lease only until `lease` (less a safety margin) after
//!   the *start* of the transaction that last renewed or took it, which is
//!   before the server computed the expiry, while another member may take it
//!   only when the server's clock has passed that expiry. `poll` hands out
//!   deliveries only of partitions whose lease is trusted at that moment (and
//!   not draining), checked again after the read, so a read that raced with
//!   a loss or a renewal failure is thrown away. `commit` writes offsets in
//!   one statement that locks the lease rows (`FOR SHARE`) and writes only
//!   the partitions the member still owns in the database; a member that
//!   takes a partition waits for that lock and reads the offset after it. So
//!   a member that lost a partition can never move its offset, and offsets
//!   never move backwards (`GREATEST`).
//! - **Who renews.** A background task owned by the subscription runs the
//!   renewal step every `renew_every` (more often while the member is below
//!   its share or draining, and at once when a commit finishes a drain), so a
//!   member that is busy and neither polls nor commits for a while keeps its
//!   leases, and `poll` and `commit` never wait for a renewal. Dropping the
//!   subscription signals the task, which leaves cleanly; a later subscribe
//!   of the same group in this process waits (briefly) for that to finish.
//!   A member whose renewals fail (database unreachable) stops delivering
//!   when its leases run out, and keeps trying.
//!
//! Settings: [`LeaseSettings`] (default: 10 s lease, renewal every 3 s), set
//! with [`PostgresEventLog::with_leases`]. Who owns what:
//! [`PostgresEventLog::owners`].
//!
//! Reading: `poll` hands out deliveries after the member's read position per
//! partition (the committed offset when it gained the partition, then moved
//! by every delivery it returned), so it can be called again and again before
//! anything is committed. It is cancel-safe: positions move only after the
//! last await, in the same synchronous step that returns the deliveries.
//!
//! Waiting: an appending transaction issues `pg_notify`, which the server
//! delivers on commit to every process that `LISTEN`s. Each store runs one
//! LISTEN connection (started by the first subscription) that bumps the
//! store's wake-up channel; commits of this process bump it directly too.
//! The renewal task wakes waiting polls when the member gains partitions. A
//! notification lost while the LISTEN connection reconnects costs at most
//! `wait`: `poll` looks at the tables once more when its wait runs out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::log::{
    Delivery, EventLog, LogError, LogResult, PartitionLag, Subscription,
};
use sqlx::postgres::PgRow;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::{PostgresEngine, db_err};
use crate::sql::log::{Attempt, Look, Poller, Read, Wakers, read_deliveries};
use crate::sql::{Exec, SqlRow, count, log_err};

fn sql_err(error: sqlx::Error) -> LogError {
    log_err(db_err(error))
}

/// How the members of a consumer group share its partitions (see the module
/// docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease (and a membership) lasts without renewal: how long
    /// the partitions of a killed member wait before the others take them
    /// over, and the longest a surplus partition drains before it is
    /// released anyway.
    pub lease: Duration,
    /// How often a member renews its leases and looks at its share. At most
    /// half of `lease`, so one late or failed renewal does not cost the
    /// leases.
    pub renew_every: Duration,
}

impl LeaseSettings {
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
    pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(3);
    /// The shortest lease accepted: the server's and this process's view of
    /// time must not be a noticeable part of it.
    pub const MIN_LEASE: Duration = Duration::from_millis(500);

    /// Whether the settings make sense: a lease of at least
    /// [`MIN_LEASE`](Self::MIN_LEASE), renewed at least twice per lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease < Self::MIN_LEASE {
            return Err(format!(
                "the consumer lease must be at least {:?}, got {:?}",
                Self::MIN_LEASE,
                self.lease
            ));
        }
        if self.renew_every.is_zero() || self.renew_every > self.lease / 2 {
            return Err(format!(
                "consumer leases must be renewed at least twice per lease ({:?}), got every {:?}",
                self.lease, self.renew_every
            ));
        }
        Ok(())
    }

    /// The nearest valid settings (see [`validate`](Self::validate)).
    fn sanitized(self) -> Self {
        let lease = self.lease.max(Self::MIN_LEASE);
        let renew_every = self.renew_every.clamp(Duration::from_millis(10), lease / 2);
        Self { lease, renew_every }
    }

    /// How long before the server's expiry a member stops trusting a lease:
    /// room for the two clocks to run at slightly different rates.
    fn margin(&self) -> Duration {
        self.lease / 10
    }

    /// The pause between renewal steps while the member is not settled
    /// (below its share, or draining).
    fn retry(&self) -> Duration {
        (self.renew_every / 4).max(Duration::from_millis(20))
    }

    fn lease_millis(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            lease: Self::DEFAULT_LEASE,
            renew_every: Self::DEFAULT_RENEW_EVERY,
        }
    }
}

/// Who holds one partition of a group, as [`PostgresEventLog::owners`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    pub topic: String,
    pub partition: i32,
    /// The member holding an unexpired lease; `None` when the partition is
    /// free (released, or its owner's lease ran out).
    pub owner: Option<Uuid>,
    /// The owner's `host pid`, when it is a live member.
    pub client: Option<String>,
}

/// The embedded event log on PostgreSQL. Made by
/// `PostgresStore::event_log`; cheap to
/// clone.
#[derive(Clone)]
pub struct PostgresEventLog {
    inner: Arc<PostgresEngine>,
    leases: LeaseSettings,
}

impl std::fmt::Debug for PostgresEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventLog")
            .field("partitions", &self.inner.core.partitions)
            .field("leases", &self.leases)
            .finish_non_exhaustive()
    }
}

impl PostgresEventLog {
    pub(crate) fn new(inner: Arc<PostgresEngine>) -> Self {
        Self {
            inner,
            leases: LeaseSettings::default(),
        }
    }

    /// Lease time and renewal interval for the members this log makes.
    /// Invalid settings are replaced by the nearest valid ones (with a
    /// warning); check them with [`LeaseSettings::validate`] first.
    pub fn with_leases(mut self, settings: LeaseSettings) -> Self {
        if let Err(problem) = settings.validate() {
            let sanitized = settings.sanitized();
            tracing::warn!(%problem, ?sanitized, "adjusted the consumer lease settings");
            self.leases = sanitized;
        } else {
            self.leases = settings;
        }
        self
    }

    pub fn lease_settings(&self) -> LeaseSettings {
        self.leases
    }

    /// Joins `group` for `topics` as a new member; what
    /// [`EventLog::subscribe`] does, with the concrete type (which tells what
    /// the member holds). Returns after the member's first renewal step: a
    /// member alone in its group already holds every partition.
    pub async fn join(&self, group: &str, topics: &[&str]) -> LogResult<PostgresSubscription> {
        let mut topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        topics.sort();
        topics.dedup();

        // A member of this group that left a moment ago (in this process) is
        // still releasing its leases: let it finish, so this member does not
        // start by waiting for them.
        wait_for_leaving(group).await;

        // Listen before the first read, so no commit after it goes unnoticed.
        self.inner.ensure_listener().await.map_err(log_err)?;
        let wake: Vec<watch::Receiver<u64>> = topics
            .iter()
            .map(|topic| self.inner.core.wakes.subscribe(topic))
            .collect();

        // Register the group on every partition: an offset of 0 (unless it
        // has committed before), so it is listed by `lag` from its first
        // start and reads everything published before it; and a free lease.
        // One statement for all rows, in key order.
        let mut topic_list = Vec::new();
        let mut partition_list = Vec::new();
        for topic in &topics {
            for partition in 0..self.inner.core.partitions {
                topic_list.push(topic.clone());
                partition_list.push(partition);
            }
        }
        count("register_group");
        sqlx::query(
            r#"WITH parts AS (
                   SELECT topic, p FROM unnest($2::text[], $3::int[]) AS t(topic, p)
               ), offsets AS (
                   INSERT INTO consumer_offsets (group_name, topic, "partition", next_offset,
                       updated_at)
                   SELECT $1, topic, p, 0, now() FROM parts
                   ON CONFLICT (group_name, topic, "partition") DO NOTHING
               )
               INSERT INTO consumer_leases (group_name, topic, "partition", owner, expires_at)
               SELECT $1, topic, p, NULL::uuid, '-infinity'::timestamptz FROM parts
               ON CONFLICT (group_name, topic, "partition") DO NOTHING"#,
        )
        .bind(group)
        .bind(&topic_list)
        .bind(&partition_list)
        .execute(&self.inner.core.pool)
        .await
        .map_err(sql_err)?;

        let (gained, gained_rx) = watch::channel(0);
        let member = Arc::new(Member {
            inner: self.inner.clone(),
            group: group.to_owned(),
            id: Uuid::now_v7(),
            client: client_name(),
            total: topic_list.len(),
            topics,
            settings: self.leases,
            state: StdMutex::new(Assignment::default()),
            gained,
            nudge: Notify::new(),
            renewing: AtomicBool::new(true),
        });
        let settled = member.renew().await?;
        tracing::info!(
            group,
            member = %member.id,
            partitions = member.lock().owned.len(),
            "joined the consumer group"
        );
        let (leave, leave_rx) = oneshot::channel();
        let task = tokio::spawn(renew_loop(member.clone(), leave_rx, settled));
        Ok(PostgresSubscription {
            member,
            wakers: Wakers::new(wake.into_iter().chain([gained_rx])),
            leave: Some(leave),
            task: Some(task),
        })
    }

    /// Who holds each partition of `group` right now, in (topic, partition)
    /// order; for operators and tests.
    pub async fn owners(&self, group: &str) -> LogResult<Vec<PartitionOwner>> {
        count("lease_owners");
        let rows = sqlx::query(
            r#"SELECT l.topic, l."partition",
                      CASE WHEN l.expires_at > now() THEN l.owner END AS owner,
                      m.client
               FROM consumer_leases l
               LEFT JOIN consumer_members m
                 ON m.group_name = l.group_name AND m.member_id = l.owner
                AND l.expires_at > now() AND m.expires_at > now()
               WHERE l.group_name = $1
               ORDER BY l.topic, l."partition""#,
        )
        .bind(group)
        .fetch_all(&self.inner.core.pool)
        .await
        .map_err(sql_err)?;
        rows.iter()
            .map(|row| {
                let (topic, partition) = partition_key(row)?;
                Ok(PartitionOwner {
                    topic,
                    partition,
                    owner: row.opt_uuid("owner").map_err(log_err)?,
                    client: row.opt_text("client").map_err(log_err)?,
                })
            })
            .collect()
    }
}

fn int(row: &PgRow, column: &str) -> LogResult<i64> {
    row.int(column).map_err(log_err)
}

fn partition_key(row: &PgRow) -> LogResult<(String, i32)> {
    crate::sql::rows::partition_key(row).map_err(log_err)
}

/// `host pid`, so operators can tell members apart.
fn client_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{host} {}", std::process::id())
}

#[async_trait]
impl EventLog for PostgresEventLog {
    async fn subscribe(&self, group: &str, topics: &[&str]) -> LogResult<Box<dyn Subscription>> {
        Ok(Box::new(self.join(group, topics).await?))
    }

    async fn lag(&self) -> LogResult<Vec<PartitionLag>> {
        let mut conn = self.inner.core.pool.acquire().await.map_err(sql_err)?;
        crate::sql::log::lag(&mut *conn).await
    }

    async fn ping(&self) -> LogResult<()> {
        let mut conn = self.inner.core.pool.acquire().await.map_err(sql_err)?;
        crate::sql::log::ping(&mut *conn).await
    }

    /// Refused while the group has a member whose lease has not expired.
    /// Members of this process that were just dropped finish leaving first.
    async fn rewind(
        &self,
        group: &str,
        topics: &[&str],
        force: bool,
        from: Option<orderflow_domain::Timestamp>,
    ) -> LogResult<()> {
        wait_for_leaving(group).await;
        let mut tx = self.inner.core.pool.begin().await.map_err(sql_err)?;
        // Members join by inserting here: the lock makes a join wait for
        // the rewind (or the rewind see the member).
        tx.exec(crate::sql::stmt(
            "lock_members",
            "LOCK TABLE consumer_members IN SHARE ROW EXCLUSIVE MODE",
            (),
        ))
        .await
        .map_err(log_err)?;
        let live = tx
            .query_one(crate::sql::stmt(
                "live_members",
                "SELECT count(*) AS n FROM consumer_members
                 WHERE group_name = $1 AND expires_at > now()",
                (group,),
            ))
            .await
            .map_err(log_err)?
            .int("n")
            .map_err(log_err)?;
        if live > 0 && !force {
            return Err(LogError::GroupActive(format!(
                "{group} ({live} with a lease)"
            )));
        }
        for statement in crate::sql::log::rewind(group, topics, from) {
            tx.exec(statement).await.map_err(log_err)?;
        }
        tx.commit().await.map_err(sql_err)
    }
}

// --- members leaving --------------------------------------------------------

/// How long a new member waits for members of its group that left in this
/// process to release their leases. Past it, the new member joins anyway and
/// takes the partitions as they come free.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Renewal tasks of dropped subscriptions, which are releasing their leases,
/// with their groups.
type Leaving = Vec<(String, JoinHandle<()>)>;

fn lock_leaving() -> MutexGuard<'static, Leaving> {
    static LEAVING: OnceLock<StdMutex<Leaving>> = OnceLock::new();
    LEAVING
        .get_or_init(|| StdMutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn wait_for_leaving(group: &str) {
    let mine: Vec<JoinHandle<()>> = {
        let mut list = lock_leaving();
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
            .into_iter()
            .filter(|(_, task)| !task.is_finished())
            .partition(|(g, _)| g == group);
        *list = rest;
        mine.into_iter().map(|(_, task)| task).collect()
    };
    for task in mine {
        // Finished, cancelled with its runtime, or too slow: either way, go on.
        let _ = tokio::time::timeout(LEAVE_WAIT, task).await;
    }
}

// --- the member -------------------------------------------------------------

/// What the subscription and its renewal task share.
struct Member {
    inner: Arc<PostgresEngine>,
    group: String,
    id: Uuid,
    client: String,
    topics: Vec<String>,
    /// Partitions over all topics: what the group's members share.
    total: usize,
    settings: LeaseSettings,
    state: StdMutex<Assignment>,
    /// Bumped when partitions become deliverable (gained, renewed after a
    /// lapse, no longer draining), so a waiting poll looks at once.
    gained: watch::Sender<u64>,
    /// Wakes the renewal task before its time: a commit finished a drain.
    nudge: Notify,
    /// Cleared by [`PostgresSubscription::stop_renewing`].
    renewing: AtomicBool,
}

/// The partitions this member holds, as far as it knows.
#[derive(Default)]
struct Assignment {
    owned: BTreeMap<(String, i32), Lease>,
    /// Numbers each gain, so a read planned under one lease of a partition is
    /// never applied under a later one.
    next_epoch: u64,
}

struct Lease {
    epoch: u64,
    /// Until when this member may deliver the partition: the start of the
    /// renewal that last extended the lease, plus the lease, less a margin.
    trusted_until: Instant,
    /// The next offset to hand out.
    position: i64,
    /// The group's committed offset as this member knows it (read when it
    /// gained the partition, raised by its commits).
    committed: i64,
    /// Set while the partition is surplus: nothing more is delivered, and it
    /// is released once everything delivered is committed.
    draining_since: Option<Instant>,
}

impl Lease {
    fn deliverable(&self, now: Instant) -> bool {
        self.trusted_until > now && self.draining_since.is_none()
    }
}

/// One partition a poll reads, and under which lease.
struct PlannedRead {
    read: Read,
    epoch: u64,
}

/// The renewal task: a renewal step every `renew_every` (or sooner, see
/// [`LeaseSettings::retry`]) until the subscription is dropped, then a clean
/// leave.
async fn renew_loop(member: Arc<Member>, mut leave: oneshot::Receiver<()>, settled: bool) {
    let settings = member.settings;
    let pause = |settled: bool| {
        if settled {
            settings.renew_every
        } else {
            settings.retry()
        }
    };
    let mut next = Instant::now() + pause(settled);
    loop {
        tokio::select! {
            biased;
            _ = &mut leave => {
                if member.renewing.load(Ordering::SeqCst)
                    && let Err(error) = member.leave().await
                {
                    tracing::warn!(group = member.group, member = %member.id, %error,
                        "could not leave the consumer group cleanly; its leases expire instead");
                }
                return;
            }
            () = tokio::time::sleep_until(next) => {}
            () = member.nudge.notified() => {}
        }
        if !member.renewing.load(Ordering::SeqCst) {
            return;
        }
        let settled = match member.renew().await {
            Ok(settled) => settled,
            Err(error) => {
                tracing::warn!(group = member.group, member = %member.id, %error,
                    "renewing consumer leases failed; retrying");
                false
            }
        };
        next = Instant::now() + pause(settled);
    }
}

impl Member {
    fn lock(&self) -> MutexGuard<'_, Assignment> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump_gained(&self) {
        self.gained
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// This member's share of the group's partitions, given the live members
    /// in id order: `total / n`, one more for the `total % n` oldest.
    fn share(&self, members: &[Uuid]) -> usize {
        let n = members.len().max(1);
        let rank = members.iter().position(|m| *m == self.id).unwrap_or(n - 1);
        self.total / n + usize::from(rank < self.total % n)
    }

    /// One renewal step (see the module docs), in one transaction. Returns
    /// whether the member is settled: holding exactly its share, nothing
    /// draining.
    async fn renew(&self) -> LogResult<bool> {
        let lease_ms = self.settings.lease_millis();
        // Taken before the transaction starts, so before the server's `now()`
        // that every expiry below is computed from.
        let started = Instant::now();
        let mut tx = self.inner.core.pool.begin().await.map_err(sql_err)?;

        count("member_heartbeat");
        sqlx::query(
            r#"INSERT INTO consumer_members (group_name, member_id, client, joined_at, expires_at)
               VALUES ($1, $2, $3, now(), now() + $4::bigint * interval '1 millisecond')
               ON CONFLICT (group_name,
                   member_id) DO UPDATE SET expires_at = excluded.expires_at"#,
        )
        .bind(&self.group)
        .bind(self.id)
        .bind(&self.client)
        .bind(lease_ms)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;

        // Forget dead members (their leases expired with them). Rows another
        // member is deleting right now are skipped, not waited for.
        count("member_sweep");
        sqlx::query(
            r#"DELETE FROM consumer_members WHERE (group_name, member_id) IN (
                   SELECT group_name, member_id FROM consumer_members
                   WHERE group_name = $1 AND expires_at < now()
                   FOR UPDATE SKIP LOCKED)"#,
        )
        .bind(&self.group)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;

        count("member_list");
        let members: Vec<Uuid> = sqlx::query(
            r#"SELECT member_id FROM consumer_members
               WHERE group_name = $1 AND expires_at > now() ORDER BY member_id"#,
        )
        .bind(&self.group)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql_err)?
        .iter()
        .map(|row| row.uuid("member_id").map_err(log_err))
        .collect::<LogResult<_>>()?;
        let share = self.share(&members);

        // What this member holds, according to the database: every lease it
        // still owns, renewed (also one that ran out but nobody took: nobody
        // else held it meanwhile, so nothing was delivered twice).
        count("lease_renew");
        let held: BTreeSet<(String, i32)> = sqlx::query(
            r#"UPDATE consumer_leases SET expires_at = now() + $4::bigint * interval '1 millisecond'
               WHERE group_name = $1 AND owner = $2 AND topic = ANY($3)
               RETURNING topic, "partition""#,
        )
        .bind(&self.group)
        .bind(self.id)
        .bind(&self.topics)
        .bind(lease_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql_err)?
        .iter()
        .map(partition_key)
        .collect::<LogResult<_>>()?;

        let release = self.plan_release(&held, share);
        if !release.is_empty() {
            let (topics, partitions) = unzip_keys(&release);
            count("lease_release");
            sqlx::query(
                r#"UPDATE consumer_leases SET owner = NULL, expires_at = now(), acquired_at = NULL
                   WHERE group_name = $1 AND owner = $2
                     AND (topic, "partition") IN (SELECT * FROM unnest($3::text[], $4::int[]))"#,
            )
            .bind(&self.group)
            .bind(self.id)
            .bind(&topics)
            .bind(&partitions)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        }
        let kept: BTreeSet<(String, i32)> = held.difference(&release).cloned().collect();

        let mut gained: Vec<(String, i32)> = Vec::new();
        if kept.len() < share {
            let wanted = i64::try_from(share - kept.len()).unwrap_or(i64::MAX);
            count("lease_acquire");
            let rows = sqlx::query(
                r#"WITH free AS (
                       SELECT topic, "partition" FROM consumer_leases
                       WHERE group_name = $1 AND topic = ANY($2)
                         AND (owner IS NULL OR expires_at <= now())
                       ORDER BY topic, "partition"
                       LIMIT $3
                       FOR UPDATE SKIP LOCKED
                   )
                   UPDATE consumer_leases l
                   SET owner = $4, expires_at = now() + $5::bigint * interval '1 millisecond',
                       acquired_at = now()
                   FROM free
                   WHERE l.group_name = $1 AND l.topic = free.topic AND l."partition" = free."partition"
                   RETURNING l.topic, l."partition""#,
            )
            .bind(&self.group)
            .bind(&self.topics)
            .bind(wanted)
            .bind(self.id)
            .bind(lease_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(sql_err)?;
            for row in &rows {
                gained.push(partition_key(row)?);
            }
        }

        // Where the new partitions start: the group's committed offsets. The
        // lease rows are ours now, so no earlier owner's commit can still
        // land after this read (a commit locks the lease rows it writes).
        // Also read for partitions held in the database but not known here
        // (a step whose COMMIT succeeded but whose answer was lost).
        let unknown: Vec<(String, i32)> = {
            let state = self.lock();
            kept.iter()
                .filter(|key| !state.owned.contains_key(*key))
                .cloned()
                .collect()
        };
        let mut starts: HashMap<(String, i32), i64> = HashMap::new();
        let to_read: Vec<(String, i32)> = gained.iter().chain(&unknown).cloned().collect();
        if !to_read.is_empty() {
            let (topics, partitions) = unzip_keys(&to_read);
            count("committed_offsets");
            let rows = sqlx::query(
                r#"SELECT topic, "partition", next_offset FROM consumer_offsets
                   WHERE group_name = $1
                     AND (topic, "partition") IN (SELECT * FROM unnest($2::text[], $3::int[]))"#,
            )
            .bind(&self.group)
            .bind(&topics)
            .bind(&partitions)
            .fetch_all(&mut *tx)
            .await
            .map_err(sql_err)?;
            for row in &rows {
                starts.insert(partition_key(row)?, int(row, "next_offset")?);
            }
        }

        count("lease_commit");
        tx.commit().await.map_err(sql_err)?;

        // Apply what the database now says.
        let trusted_until = started + self.settings.lease - self.settings.margin();
        let now = Instant::now();
        let mut state = self.lock();
        let mut deliverable_again = false;
        let before = state.owned.len();
        state.owned.retain(|key, _| kept.contains(key));
        let lost = before - state.owned.len();
        for lease in state.owned.values_mut() {
            if !lease.deliverable(now) && lease.draining_since.is_none() {
                deliverable_again = true;
            }
            lease.trusted_until = trusted_until;
        }
        for key in gained.iter().chain(&unknown) {
            let start = starts.get(key).copied().unwrap_or(0);
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            state.owned.insert(
                key.clone(),
                Lease {
                    epoch,
                    trusted_until,
                    position: start,
                    committed: start,
                    draining_since: None,
                },
            );
            deliverable_again = true;
        }
        let held_now = state.owned.len();
        let draining = state
            .owned
            .values()
            .filter(|l| l.draining_since.is_some())
            .count();
        drop(state);

        if lost > 0 || !release.is_empty() || !gained.is_empty() {
            tracing::info!(
                group = self.group,
                member = %self.id,
                members = members.len(),
                share,
                held = held_now,
                gained = gained.len(),
                released = release.len(),
                lost,
                "consumer group assignment changed"
            );
        }
        if deliverable_again {
            self.bump_gained();
        }
        Ok(held_now == share && draining == 0)
    }

    /// Chooses the partitions to give up when `held` exceeds `share`: those
    /// already draining first, then those with the fewest deliveries in
    /// flight. The chosen ones stop being delivered at once (marked under the
    /// lock, so a poll's read that raced is thrown away); those of them with
    /// nothing in flight (or that drained for a whole lease) are returned, to
    /// be released now. Partitions no longer surplus stop draining.
    fn plan_release(
        &self,
        held: &BTreeSet<(String, i32)>,
        share: usize,
    ) -> BTreeSet<(String, i32)> {
        let now = Instant::now();
        let mut state = self.lock();
        let surplus = held.len().saturating_sub(share);
        let mut candidates: Vec<(bool, i64, &(String, i32))> = held
            .iter()
            .map(|key| match state.owned.get(key) {
                // Held but unknown here: nothing was delivered from it.
                None => (false, 0, key),
                Some(lease) => (
                    lease.draining_since.is_none(),
                    lease.position - lease.committed,
                    key,
                ),
            })
            .collect();
        candidates.sort();
        let chosen: BTreeSet<&(String, i32)> = candidates
            .iter()
            .take(surplus)
            .map(|(_, _, key)| *key)
            .collect();

        let mut release = BTreeSet::new();
        let mut undrained = false;
        for key in held {
            let surplus = chosen.contains(key);
            match state.owned.get_mut(key) {
                None => {
                    if surplus {
                        release.insert(key.clone());
                    }
                }
                Some(lease) if surplus => {
                    let since = *lease.draining_since.get_or_insert(now);
                    if lease.committed >= lease.position
                        || now.duration_since(since) >= self.settings.lease
                    {
                        release.insert(key.clone());
                    }
                }
                Some(lease) => undrained |= lease.draining_since.take().is_some(),
            }
        }
        drop(state);
        if undrained {
            self.bump_gained();
        }
        release
    }

    /// Leaves the group: deletes the member row and releases every lease, in
    /// one statement, so the others take the partitions over at once.
    async fn leave(&self) -> LogResult<()> {
        count("member_leave");
        sqlx::query(
            r#"WITH gone AS (
                   DELETE FROM consumer_members WHERE group_name = $1 AND member_id = $2
               )
               UPDATE consumer_leases SET owner = NULL, expires_at = now(), acquired_at = NULL
               WHERE group_name = $1 AND owner = $2"#,
        )
        .bind(&self.group)
        .bind(self.id)
        .execute(&self.inner.core.pool)
        .await
        .map_err(sql_err)?;
        self.lock().owned.clear();
        tracing::info!(group = self.group, member = %self.id, "left the consumer group");
        Ok(())
    }

    /// The partitions a poll may read now, with their positions.
    fn plan_reads(&self) -> Vec<PlannedRead> {
        let now = Instant::now();
        self.lock()
            .owned
            .iter()
            .filter(|(_, lease)| lease.deliverable(now))
            .map(|((topic, partition), lease)| PlannedRead {
                read: Read {
                    topic: topic.clone(),
                    partition: *partition,
                    from: lease.position,
                },
                epoch: lease.epoch,
            })
            .collect()
    }

    /// Keeps the deliveries of partitions that are still held under the same
    /// lease, at the same position, trusted and not draining, and moves their
    /// positions past them. Synchronous: nothing between this and returning
    /// the deliveries can be cancelled.
    fn accept(&self, reads: &[PlannedRead], batch: Vec<Delivery>) -> Vec<Delivery> {
        let now = Instant::now();
        let mut state = self.lock();
        let valid: BTreeSet<(&str, i32)> = reads
            .iter()
            .filter(|planned| {
                state
                    .owned
                    .get(&(planned.read.topic.clone(), planned.read.partition))
                    .is_some_and(|lease| {
                        lease.epoch == planned.epoch
                            && lease.position == planned.read.from
                            && lease.deliverable(now)
                    })
            })
            .map(|planned| (planned.read.topic.as_str(), planned.read.partition))
            .collect();
        let kept: Vec<Delivery> = batch
            .into_iter()
            .filter(|d| valid.contains(&(d.topic.as_str(), d.partition)))
            .collect();
        for delivery in &kept {
            if let Some(lease) = state
                .owned
                .get_mut(&(delivery.topic.clone(), delivery.partition))
            {
                lease.position = lease.position.max(delivery.offset + 1);
            }
        }
        kept
    }

    /// Up to `max` deliveries of the planned partitions past their
    /// positions, in append order.
    async fn fetch(&self, planned: &[PlannedRead], max: usize) -> LogResult<Vec<Delivery>> {
        let reads: Vec<Read> = planned.iter().map(|p| p.read.clone()).collect();
        let mut conn = self.inner.core.pool.acquire().await.map_err(sql_err)?;
        read_deliveries(&mut *conn, &self.topics, &reads, max).await
    }
}

fn unzip_keys<'a>(keys: impl IntoIterator<Item = &'a (String, i32)>) -> (Vec<String>, Vec<i32>) {
    keys.into_iter()
        .map(|(topic, partition)| (topic.clone(), *partition))
        .unzip()
}

// --- the subscription -------------------------------------------------------

/// One member of a consumer group on the PostgreSQL event log. It delivers
/// only the partitions it holds leases on (see the module docs); dropping it
/// leaves the group and releases them.
pub struct PostgresSubscription {
    member: Arc<Member>,
    /// Commits (here, or through NOTIFY in another process) and the member
    /// gaining partitions.
    wakers: Wakers,
    /// Dropped with the subscription: tells the renewal task to leave.
    leave: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSubscription")
            .field("group", &self.member.group)
            .field("member", &self.member.id)
            .field("topics", &self.member.topics)
            .finish_non_exhaustive()
    }
}

impl PostgresSubscription {
    /// This member's id (the `owner` of its leases).
    pub fn member_id(&self) -> Uuid {
        self.member.id
    }

    /// The partitions this member delivers right now: held under a lease it
    /// trusts, and not being handed over.
    pub fn assigned(&self) -> BTreeSet<(String, i32)> {
        let now = Instant::now();
        self.member
            .lock()
            .owned
            .iter()
            .filter(|(_, lease)| lease.deliverable(now))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Stops renewing, as a member whose process froze or was killed would:
    /// its leases run out after the lease time (it stops delivering then,
    /// and its commits of partitions taken over are refused), and dropping
    /// it afterwards releases nothing. For tests of hand-over and fencing.
    #[doc(hidden)]
    pub fn stop_renewing(&mut self) {
        self.member.renewing.store(false, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for PostgresSubscription {
    fn drop(&mut self) {
        // The renewal task sees the sender go and leaves the group; the next
        // subscription of this group in this process waits for it.
        drop(self.leave.take());
        if let Some(task) = self.task.take() {
            let mut list = lock_leaving();
            list.retain(|(_, task)| !task.is_finished());
            list.push((self.member.group.clone(), task));
        }
    }
}

#[async_trait]
impl Poller for PostgresSubscription {
    fn wakers(&mut self) -> &mut Wakers {
        &mut self.wakers
    }

    /// The partitions this member may deliver now; what was read is kept
    /// only if they are still held under the same lease (see the module docs).
    async fn attempt(&mut self, max: usize, _look: Look) -> LogResult<Attempt> {
        let planned = self.member.plan_reads();
        if planned.is_empty() {
            return Ok(Attempt::Nothing);
        }
        let batch = self.member.fetch(&planned, max).await?;
        if batch.is_empty() {
            return Ok(Attempt::Nothing);
        }
        let batch = self.member.accept(&planned, batch);
        if batch.is_empty() {
            // Everything read belonged to partitions lost or moved meanwhile:
            // plan again.
            return Ok(Attempt::Again);
        }
        Ok(Attempt::Found(batch))
    }
}

crate::sql::log::impl_subscription!(PostgresSubscription);

impl PostgresSubscription {
    /// Commits `next` (the offset to commit per partition, never empty).
    async fn commit_offsets(&mut self, next: BTreeMap<(&str, i32), i64>) -> LogResult<()> {
        let topics: Vec<&str> = next.keys().map(|(topic, _)| *topic).collect();
        let partitions: Vec<i32> = next.keys().map(|(_, partition)| *partition).collect();
        let offsets: Vec<i64> = next.values().copied().collect();
        // Only partitions this member still owns in the database, whose lease
        // rows the statement locks (FOR SHARE) in key order: a member taking
        // one over waits for this statement and reads the offset after it,
        // and once it has taken it, this statement finds another owner and
        // writes nothing for it. GREATEST: committing an older batch after a
        // newer one (or the same batch twice) never moves the group
        // backwards.
        count("commit_offset");
        let written = sqlx::query(
            r#"WITH wanted AS (
                   SELECT * FROM unnest($3::text[], $4::int[], $5::bigint[]) AS w(topic, part,
                       next_offset)
               ), owned AS (
                   SELECT l.topic, l."partition", w.next_offset
                   FROM consumer_leases l
                   JOIN wanted w ON l.topic = w.topic AND l."partition" = w.part
                   WHERE l.group_name = $1 AND l.owner = $2
                   ORDER BY l.topic, l."partition"
                   FOR SHARE OF l
               )
               INSERT INTO consumer_offsets AS c (group_name, topic, "partition", next_offset,
                   updated_at)
               SELECT $1, topic, "partition", next_offset, now() FROM owned
               ON CONFLICT (group_name, topic, "partition") DO UPDATE
               SET next_offset = GREATEST(c.next_offset, excluded.next_offset),
                   updated_at = excluded.updated_at
               RETURNING c.topic, c."partition", c.next_offset"#,
        )
        .bind(&self.member.group)
        .bind(self.member.id)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(&self.member.inner.core.pool)
        .await
        .map_err(sql_err)?;

        let mut drained = false;
        let mut committed: BTreeSet<(String, i32)> = BTreeSet::new();
        {
            let mut state = self.member.lock();
            for row in &written {
                let key = partition_key(row)?;
                let offset = int(row, "next_offset")?;
                if let Some(lease) = state.owned.get_mut(&key) {
                    lease.committed = lease.committed.max(offset);
                    lease.position = lease.position.max(offset);
                    drained |= lease.draining_since.is_some() && lease.committed >= lease.position;
                }
                committed.insert(key);
            }
        }
        for (topic, partition) in next.keys() {
            if !committed.contains(&((*topic).to_owned(), *partition)) {
                tracing::debug!(
                    group = self.member.group,
                    topic,
                    partition,
                    "not committing a partition that moved to another member"
                );
            }
        }
        if drained {
            // A surplus partition is fully committed: hand it over now.
            self.member.nudge.notify_one();
        }
        Ok(())
    }
}
