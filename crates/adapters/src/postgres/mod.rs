//! The scaled database: PostgreSQL (sqlx) behind the
//! [`Store`](orderflow_core::ports::store::Store) port, with two ways for the
//! events that units of work append to leave it: the embedded event log
//! (tables of the same database, behind
//! [`EventLog`](orderflow_core::ports::log::EventLog)) or the outbox that a
//! relay drains into Kafka (behind [`Outbox`](orderflow_core::ports::outbox::Outbox)).
//!
//! The store's queries, row mappings and unit of work are written once for
//! both engines in `sql`; this module holds what is PostgreSQL's
//! own.
//!
//! Map of the module:
//! - this file: [`PostgresEngine`] (connect, pool, the LISTEN task, the
//!   advisory locks, the embedded log's append, and `impl Engine`), and
//!   PostgreSQL's encodings: binding (`sql::Arg`), column reads
//!   (`sql::SqlRow`), error mapping.
//! - [`log`]: [`PostgresEventLog`] and [`PostgresSubscription`]: consumer
//!   groups on the `event_log` table, partitions shared among members by
//!   leases, woken across processes by `LISTEN/NOTIFY`.
//! - [`outbox`]: [`PostgresOutbox`]: relays claim unsent rows with
//!   `FOR UPDATE SKIP LOCKED`.
//!
//! Why the writes look the way they do: unlike SQLite, PostgreSQL has many
//! concurrent writers, possibly in many processes, so there is no writer lock
//! to lean on. Every read-then-write step that must not interleave takes a
//! row lock instead, at READ COMMITTED:
//! - stock: `UPDATE products SET stock = stock - n WHERE id = … AND stock >= n`.
//!   A concurrent reserver of the same product waits for the row, then
//!   re-checks `stock >= n` against the committed value, so stock never goes
//!   below zero (the CHECK constraint is the last line). Lines are taken in
//!   product-id order (no deadlocks between reservations) inside a savepoint,
//!   so a short line undoes the ones before it: all lines or none.
//! - one order's reservation and release: a transaction-scoped advisory lock
//!   on the order id, so a redelivered event cannot reserve twice.
//! - idempotency claims: `INSERT … ON CONFLICT DO NOTHING`; a claimer of a key
//!   another transaction holds uncommitted waits on the primary key, then
//!   sees the committed answer (or takes the key if the other rolled back).
//! - orders: `SELECT … FOR UPDATE` in `order_for_update`.
//! - a shopper's live messages (order history, notifications): an advisory
//!   lock per shopper, so their `seq` commits in order. A unit of work takes
//!   every shopper's turn at commit, in one statement sorted by key
//!   (`Engine::shopper_turns`): taken one effect at a time, two group
//!   commits deadlocked and PostgreSQL could abort an order placement
//!   queued behind them.
//! - refresh rotation: `SELECT … FOR UPDATE` on the session row; the loser of
//!   a race re-reads the row after the winner's commit, finds its token
//!   rotated away, and reports reuse.
//!
//! Deadlocks and serialization failures are reported as
//! [`StoreError::Unavailable`]: transient, the caller (a consumer's retry, a
//! client's retry of an idempotent request) tries again.
//!
//! Encoding: native types (UUID, TIMESTAMPTZ, BIGINT cents, DATE, BOOLEAN,
//! JSONB for events and saved bodies); see `migrations/postgres`.

pub mod log;
pub mod outbox;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::store::{StoreError, StoreResult};
use orderflow_domain::Timestamp;
use orderflow_domain::events::topics;
use orderflow_domain::{OrderId, UserId};
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgDatabaseError, PgListener, PgPoolOptions, PgRow,
};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::sql::log::TopicWakes;
use crate::sql::{
    Arg, Dialect, Engine, EngineCore, Exec, LogAppend, SqlRow, SqlStore, Stmt, WritePriority,
    WriteTx, check_partitions, count, stmt,
};

pub use crate::sqlite::partition_for;
pub use log::{LeaseSettings, PostgresEventLog, PostgresSubscription};
pub use outbox::{PostgresBatch, PostgresOutbox};

/// The PostgreSQL database: the SQL store on PostgreSQL. Cheap to clone:
/// clones share one pool, one LISTEN connection and one wake-up channel.
pub type PostgresStore = SqlStore<PostgresEngine>;

/// Partitions per topic when the caller does not choose (the same as SQLite
/// and the Kafka default).
pub const DEFAULT_PARTITIONS: i32 = crate::sqlite::DEFAULT_PARTITIONS;

/// How long a query may wait for a pooled connection before the store
/// reports itself unavailable (a 503 with `Retry-After`). While PostgreSQL
/// is down, sqlx keeps trying to connect until this runs out, so it bounds
/// how long a request hangs in an outage; with the database up, waits for a
/// connection take milliseconds. It must stay well under the request
/// timeout (30 s), or clients get a 408 where a 503 was due.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The `NOTIFY` channel an appending transaction signals on commit; the
/// payload is the topic.
pub(crate) const NOTIFY_CHANNEL: &str = "orderflow_events";
/// Pause before the LISTEN task retries after an error (server restart).
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// First key of the advisory locks that serialise the reservation and
/// release of one order (the second key is a hash of the order id). An
/// arbitrary constant, so these locks cannot collide with other users of
/// advisory locks in the same database.
const ORDER_STOCK_LOCK: i32 = 0x0_5707;

/// First key of the advisory locks that serialise one consumer group's
/// group commits across processes (the second is a hash of the group name).
const GROUP_COMMIT_LOCK: i32 = 0x0_6C0D;

/// First key of the advisory locks that make one shopper's order history
/// and notifications commit in `seq` order (the second is a hash of the
/// user id).
const USER_HISTORY_LOCK: i32 = 0x0_0415;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// What the store, its transactions, its event logs and its outbox share:
/// the engine behind [`PostgresStore`].
pub struct PostgresEngine {
    pub(crate) core: EngineCore<Postgres>,
    /// The LISTEN task, started by the first subscription.
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Rollbacks of dropped outbox batches still on their way to the server
    /// (see [`outbox`]): the next claim waits for them, so rows a dropped
    /// batch held are not skipped as "locked" by this process's next claim.
    pub(crate) outbox_rollbacks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        if let Some(handle) = self.listener.get_mut().take() {
            handle.abort();
        }
    }
}

impl SqlStore<PostgresEngine> {
    /// Connects to `url` (`postgres://user:password@host:port/database`)
    /// with a pool of at most `max_connections` connections (raised to at
    /// least 2, so a read made while a unit of work holds a connection never
    /// waits for that unit of work), and `partitions` partitions per topic
    /// for the embedded log. Opens one connection right away, so a wrong URL
    /// or a server that is down fails here, as `Unavailable`. Call
    /// [`Store::migrate`](orderflow_core::ports::store::Store::migrate)
    /// before use.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        partitions: i32,
    ) -> StoreResult<PostgresStore> {
        check_partitions(partitions)?;
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        Ok(SqlStore::new(PostgresEngine {
            core: EngineCore::new(pool, partitions, PostgresEngine::LOG_APPEND),
            listener: Mutex::new(None),
            outbox_rollbacks: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// The embedded event log over the same database and pool. It reads what
    /// units of work append with
    /// [`EventDestination::EmbeddedLog`](orderflow_core::ports::outbox::EventDestination::EmbeddedLog).
    pub fn event_log(&self) -> PostgresEventLog {
        PostgresEventLog::new(self.engine.clone())
    }

    /// The outbox, as relays see it. It holds what units of work append with
    /// [`EventDestination::Outbox`](orderflow_core::ports::outbox::EventDestination::Outbox).
    pub fn outbox(&self) -> PostgresOutbox {
        PostgresOutbox::new(self.engine.clone())
    }
}

impl PostgresEngine {
    /// Starts the LISTEN task unless it runs already, and returns once the
    /// server confirmed the `LISTEN`: from then on, every commit that
    /// appends, in any process, wakes this process's subscriptions.
    pub(crate) async fn ensure_listener(&self) -> StoreResult<()> {
        let mut slot = self.listener.lock().await;
        if slot.as_ref().is_some_and(|handle| !handle.is_finished()) {
            return Ok(());
        }
        let mut listener = PgListener::connect_with(&self.core.pool)
            .await
            .map_err(db_err)?;
        listener.listen(NOTIFY_CHANNEL).await.map_err(db_err)?;
        *slot = Some(tokio::spawn(listen(listener, self.core.wakes.clone())));
        Ok(())
    }

    /// Takes `pg_advisory_xact_lock(first, hashtext(second))`, released with
    /// the transaction.
    async fn advisory_lock(
        conn: &mut PgConnection,
        op: &'static str,
        first: i32,
        second: String,
    ) -> StoreResult<()> {
        conn.exec(stmt(
            op,
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            (first, second),
        ))
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Engine for PostgresEngine {
    crate::sql::engine_types!(
        Dialect::Postgres,
        Postgres,
        PgConnection,
        "PostgresStore",
        db_err
    );
    type Write = Transaction<'static, Postgres>;
    type ReadConn = PgConnection;
    type Read = sqlx::pool::PoolConnection<Postgres>;
    type WriteConn = PgConnection;
    /// One statement, one round trip: the offset taken in a CTE.
    const LOG_APPEND: LogAppend = LogAppend::Queued(
        r#"WITH taken AS (
           INSERT INTO log_partitions AS l (topic, "partition", next_offset)
           VALUES ($1, $2, 1)
           ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = l.next_offset + 1
           RETURNING next_offset - 1 AS "offset")
       INSERT INTO event_log (topic, "partition", "offset", key, event_id, payload, created_at)
       SELECT $1, $2, "offset", $3, $4, $5, $6 FROM taken"#,
    );
    type SingleWrite = sqlx::pool::PoolConnection<Postgres>;

    async fn begin_write(&self, _priority: WritePriority) -> StoreResult<Self::Write> {
        count("begin");
        self.core.pool.begin().await.map_err(db_err)
    }

    /// Takes `pg_advisory_xact_lock(GROUP_COMMIT_LOCK, hashtext(group))`
    /// first, so the group commits of one group's members serialise (see the
    /// port); it is released with the transaction.
    async fn begin_group_commit(&self, group: &str) -> StoreResult<Self::Write> {
        let mut tx = self.begin_write(WritePriority::Background).await?;
        Self::advisory_lock(
            &mut tx,
            "group_commit_lock",
            GROUP_COMMIT_LOCK,
            group.to_owned(),
        )
        .await?;
        Ok(tx)
    }

    async fn read(&self) -> StoreResult<Self::Read> {
        self.core.pool.acquire().await.map_err(db_err)
    }

    async fn single_write(&self) -> StoreResult<Self::SingleWrite> {
        self.read().await
    }

    /// sqlx takes an advisory lock around the migration, so processes
    /// starting together migrate once.
    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    /// One statement for every topic and partition.
    async fn register_partitions(&self) -> StoreResult<()> {
        let mut topic_list = Vec::new();
        let mut partition_list = Vec::new();
        for topic in topics::ALL {
            for partition in 0..self.core.partitions {
                topic_list.push(topic.to_owned());
                partition_list.push(partition);
            }
        }
        self.read()
            .await?
            .exec(stmt(
                "ensure_partition",
                r#"INSERT INTO log_partitions (topic, "partition", next_offset)
                       SELECT topic, p, 0 FROM unnest($1::text[], $2::int[]) AS t(topic, p)
                       ON CONFLICT (topic, "partition") DO NOTHING"#,
                (topic_list, partition_list),
            ))
            .await?;
        Ok(())
    }

    /// Serialises reservation and release of one order across every
    /// connection, until this transaction ends. Without it, two deliveries of
    /// the same "order placed" could both find no reservation and both take
    /// stock.
    async fn lock_order_stock(conn: &mut PgConnection, order_id: OrderId) -> StoreResult<()> {
        Self::advisory_lock(
            conn,
            "lock_order_stock",
            ORDER_STOCK_LOCK,
            order_id.to_string(),
        )
        .await
    }

    /// A shopper's writers of live messages take turns until commit: an
    /// identity value is taken before commit, so without the turn a lower
    /// `seq` of the shopper could commit after a higher one that a live
    /// follower already sent, and be skipped. One advisory lock per shopper,
    /// taken in the order of its key (the subquery is sorted and the outer
    /// scan keeps that order), so two units of work never wait for each
    /// other's turns in a circle.
    fn shopper_turns(orders: &[OrderId], users: &[UserId]) -> Option<Stmt> {
        Some(stmt(
            "take_shopper_turns",
            "SELECT pg_advisory_xact_lock($1, turn) FROM (
                 SELECT hashtext(user_id::text) AS turn FROM orders WHERE id = ANY($2)
                 UNION
                 SELECT hashtext(id::text) FROM unnest($3::uuid[]) AS users(id)
                 ORDER BY turn) AS turns",
            (USER_HISTORY_LOCK, orders.to_vec(), users.to_vec()),
        ))
    }

    /// A `pg_notify` per topic, delivered by the server when (and only if)
    /// the transaction commits: it wakes the subscriptions of every process.
    fn append_notices(topics: &[&'static str]) -> Vec<Stmt> {
        topics
            .iter()
            .map(|topic| {
                stmt(
                    "notify",
                    "SELECT pg_notify($1, $2)",
                    (NOTIFY_CHANNEL, *topic),
                )
            })
            .collect()
    }
}

#[async_trait]
impl WriteTx for Transaction<'static, Postgres> {
    async fn commit(self) -> StoreResult<()> {
        count("commit");
        Transaction::commit(self).await.map_err(db_err)
    }
}

/// Binds `args` with PostgreSQL's native types.
fn bind_all(sql: &str, args: Vec<Arg>) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for arg in args {
        query = match arg {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Int4(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Uuid(v) => query.bind(v),
            Arg::OptUuid(v) => query.bind(v),
            Arg::OptText(v) => query.bind(v),
            Arg::Time(v) => query.bind(v),
            Arg::OptTime(v) => query.bind(v),
            Arg::Json(v) => query.bind(v),
            Arg::Date(v) => query.bind(v),
            Arg::Texts(v) => query.bind(v),
            Arg::Uuids(v) => query.bind(v),
            Arg::Int4s(v) => query.bind(v),
            Arg::Ints(v) => query.bind(v),
        };
    }
    query
}

crate::sql::impl_exec!(PgConnection, PgRow, Dialect::Postgres, bind_all, db_err);

/// Native types; an integer column may be INTEGER or BIGINT.
impl SqlRow for PgRow {
    crate::sql::plain_columns!(db_err;
        text: String, opt_text: Option<String>, bool: bool,
        uuid: uuid::Uuid, opt_uuid: Option<uuid::Uuid>,
        time: Timestamp, opt_time: Option<Timestamp>,
        opt_json: Option<serde_json::Value>, date: chrono::NaiveDate);

    fn int(&self, column: &str) -> StoreResult<i64> {
        self.opt_int(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {column} is NULL")))
    }

    fn opt_int(&self, column: &str) -> StoreResult<Option<i64>> {
        match self.try_get::<Option<i64>, _>(column) {
            Ok(value) => Ok(value),
            Err(sqlx::Error::ColumnDecode { .. }) => self
                .try_get::<Option<i32>, _>(column)
                .map(|value| value.map(i64::from))
                .map_err(db_err),
            Err(other) => Err(db_err(other)),
        }
    }
}

/// The LISTEN loop: every notification (its payload is the topic) wakes
/// that topic's subscriptions. A lost connection is re-established by
/// `PgListener` (it re-issues the `LISTEN`); notifications sent meanwhile
/// are lost, so the loop wakes every topic then, and the subscriptions
/// re-read the tables. Ends when the pool is closed (or the task is aborted
/// with the store).
async fn listen(mut listener: PgListener, wakes: Arc<TopicWakes>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => wakes.wake([notification.payload()]),
            Ok(None) => {
                tracing::warn!("the LISTEN connection to PostgreSQL was lost; reconnecting");
                wakes.wake_all();
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "LISTEN on PostgreSQL failed; retrying");
                wakes.wake_all();
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    }
}

/// Maps sqlx errors onto the port's error. Unique violations become
/// `Conflict` naming the columns ("email", "sku"), which callers turn into a
/// 409; anything transient (connection lost, pool exhausted, server shutting
/// down, deadlock, serialization failure) is `Unavailable` (503).
pub(crate) fn db_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) => {
            let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
                return StoreError::Database(db.message().to_owned());
            };
            let code = pg.code();
            if code == "23505" {
                return StoreError::Conflict(conflicting_columns(pg));
            }
            // 08: connection exceptions; 40001 serialization failure; 40P01
            // deadlock; 53: insufficient resources (too many connections);
            // 57P0x: the server is shutting down or restarting.
            if code.starts_with("08")
                || code.starts_with("53")
                || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03")
            {
                return StoreError::Unavailable(format!("{} ({code})", pg.message()));
            }
            StoreError::Database(format!("{} ({code})", pg.message()))
        }
        other => crate::transport_err(other),
    }
}

/// The columns of a unique violation, from its detail
/// (`Key (email)=(ann@example.com) already exists.` → `email`), falling back
/// to the constraint name.
fn conflicting_columns(error: &PgDatabaseError) -> String {
    error
        .detail()
        .and_then(|detail| detail.strip_prefix("Key ("))
        .and_then(|rest| rest.split_once(")="))
        .map(|(columns, _)| {
            columns
                .split(',')
                .map(|c| c.trim().trim_matches('"'))
                .collect::<Vec<_>>()
                .join(",")
        })
        .or_else(|| error.constraint().map(str::to_owned))
        .unwrap_or_else(|| error.message().to_owned())
}
