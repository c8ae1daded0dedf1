//! The embedded database: one SQLite file (sqlx, WAL) behind the
//! [`Store`](orderflow_core::ports::store::Store) port, and the embedded event
//! log, a table in the same file, behind
//! [`EventLog`](orderflow_core::ports::log::EventLog).
//!
//! Map of the module:
//! - this file: [`SqliteStore`] (connect, pool settings, the writer lock) and
//!   the helpers every query uses (error mapping, id and time encoding,
//!   metrics).
//! - [`store`]: `impl Store for SqliteStore`: stand-alone reads, plus the
//!   session, revocation and catalog writes the port keeps outside a unit of
//!   work.
//! - [`tx`]: [`SqliteTx`], the unit of work (`impl StoreTx`): users, orders,
//!   stock, idempotency, read models, the outbox append.
//! - [`log`]: [`SqliteEventLog`] and [`SqliteSubscription`]: consumer groups
//!   reading the `event_log` table, with in-process wake-ups on commit.
//! - [`outbox`]: [`SqliteOutbox`], the `outbox` table that units of work
//!   append to instead of `event_log` when the log is Kafka
//!   ([`SqliteStore::with_event_destination`]), drained by the relay.
//! - `rows`: decoding rows into domain types.
//!
//! Why the writes look the way they do: SQLite has a single writer. A
//! transaction that starts with a plain (deferred) `BEGIN`, reads, and then
//! writes can fail with `SQLITE_BUSY` when another connection wrote in
//! between, and the busy timeout cannot help it. So every unit of work starts
//! with `BEGIN IMMEDIATE`, which takes the write lock up front: read-then-write
//! sequences (idempotency claims, stock reservations, refresh-token rotation)
//! serialize instead of failing. In front of that, writers of one process
//! queue in tokio ([`writer`]) rather than in SQLite's sleep-and-retry busy
//! handler (which is unfair and slow under contention); the busy timeout is
//! then only needed against other processes. The queue has two priorities:
//! a request's write ([`Store::begin`](orderflow_core::ports::store::Store::begin),
//! the single-statement writes of the store) goes ahead of every queued
//! background write ([`Store::begin_group_commit`](orderflow_core::ports::store::Store::begin_group_commit):
//! consumer group commits, offset commits, the relay), so an order waits at
//! most for the one write that holds the lock. The lock is held for the
//! statements only: nobody calls a provider or waits for anything else while
//! holding a unit of work. Reads never take the lock: in WAL mode they see the
//! last committed state without blocking the writer.
//!
//! Durability: WAL with `synchronous=NORMAL`. A commit is durable against a
//! crash of the process (the WAL is in the OS's page cache); on power loss or
//! an OS crash the last transactions before the last WAL checkpoint's fsync
//! can be lost (never corrupted). `FULL` would fsync every commit.
//!
//! One consequence for callers: a task that holds a unit of work must not
//! call a *writing* `Store` method (or begin a second unit of work) before it
//! commits or drops the first; that call waits for the lock the task itself
//! holds, and fails with `Unavailable` after 30 s. Reads are fine.
//!
//! Encoding, the same in every table (see the migration): UUIDs are lower-case
//! hyphenated TEXT (UUID v7 ids sort by time as text), timestamps are INTEGER
//! unix microseconds, money is INTEGER cents.

pub mod log;
pub mod outbox;
mod rows;
pub mod store;
pub mod tx;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use orderflow_core::ports::outbox::EventDestination;
use orderflow_core::ports::store::{StoreError, StoreResult};
use orderflow_domain::Timestamp;
use orderflow_domain::events::topics;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::watch;

pub use log::{SqliteEventLog, SqliteSubscription, partition_for};
pub use outbox::SqliteOutbox;
pub use tx::SqliteTx;
pub use writer::WritePriority;
use writer::{WriterQueue, WriterTurn};

/// Partitions per topic when the caller does not choose.
pub const DEFAULT_PARTITIONS: i32 = 6;

/// How long SQLite itself retries when another *process* holds the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unit of work may wait for the in-process writer lock before the
/// store reports itself unavailable. Generous: under a load spike writers
/// legitimately queue, and failing them early would only turn waits into 503s.
const WRITER_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a query may wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded database. Cheap to clone: every clone shares one pool, one
/// writer lock and one wake-up channel, so event logs made from any clone are
/// woken by commits made through any other.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// What the store, its transactions and its event logs share.
pub(crate) struct Inner {
    pub(crate) pool: SqlitePool,
    /// Partitions per topic of the embedded log; fixed for the life of the
    /// database, since an event's partition is derived from it.
    pub(crate) partitions: i32,
    /// In-process writer queue, see the module docs and [`writer`].
    writer: WriterQueue,
    /// Bumped after every commit that appended events; subscriptions wait on
    /// it instead of polling the table on a timer.
    pub(crate) wake: watch::Sender<u64>,
    /// Where units of work append events: the `event_log` table (the
    /// embedded log) or the `outbox` table (for the Kafka relay).
    pub(crate) destination: EventDestination,
    /// Outbox rows (and their keys) held by live relay batches of this
    /// process (see [`outbox`]); shared by every clone so that relays skip
    /// each other's rows and keys.
    pub(crate) claimed: Arc<std::sync::Mutex<outbox::Claims>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("partitions", &self.inner.partitions)
            .field("pool_size", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`,
    /// `sqlite:path` or `sqlite::memory:`) with [`DEFAULT_PARTITIONS`]
    /// partitions per topic. Call [`Store::migrate`](orderflow_core::ports::store::Store::migrate)
    /// before use.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<SqliteStore> {
        Self::connect_with(url, max_connections, DEFAULT_PARTITIONS).await
    }

    /// Like [`SqliteStore::connect`], choosing the number of partitions per
    /// topic of the embedded log. Keep it fixed for a database: events of one
    /// key stay in order only while the key maps to the same partition.
    ///
    /// `max_connections` is raised to at least 2, so that a read made while a
    /// unit of work holds a connection never waits for that unit of work.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        partitions: i32,
    ) -> StoreResult<SqliteStore> {
        if partitions < 1 {
            return Err(StoreError::Database(format!(
                "the event log needs at least one partition per topic, got {partitions}"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode and only
            // risks the last transactions on power loss; FULL costs an fsync
            // per commit.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        let (wake, _) = watch::channel(0);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                pool,
                partitions,
                writer: WriterQueue::default(),
                wake,
                destination: EventDestination::default(),
                claimed: Arc::default(),
            }),
        })
    }

    /// The same database with units of work appending events to
    /// `destination`: the embedded log (the default) or the outbox, which a
    /// relay drains to Kafka. The pool, writer lock and wake-ups stay shared
    /// with `self`'s other clones.
    pub fn with_event_destination(self, destination: EventDestination) -> Self {
        let inner = Inner {
            pool: self.inner.pool.clone(),
            partitions: self.inner.partitions,
            writer: self.inner.writer.clone(),
            wake: self.inner.wake.clone(),
            destination,
            claimed: self.inner.claimed.clone(),
        };
        SqliteStore {
            inner: Arc::new(inner),
        }
    }

    /// Where this store's units of work append events.
    pub fn event_destination(&self) -> EventDestination {
        self.inner.destination
    }

    /// The outbox of this database, as the relay sees it.
    pub fn outbox(&self) -> SqliteOutbox {
        SqliteOutbox::new(self.inner.clone())
    }

    /// The connection pool, for tools and tests that need raw SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Partitions per topic of the embedded log.
    pub fn partitions(&self) -> i32 {
        self.inner.partitions
    }

    /// The embedded event log over the same database, pool and wake-ups. It
    /// uses the store's partition count (set at connect time), so it takes no
    /// argument: a second count could only disagree with the one `append` uses.
    pub fn event_log(&self) -> SqliteEventLog {
        SqliteEventLog::new(self.inner.clone())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Inner {
    /// Waits for this process's writer lock. Enough on its own for a write
    /// that is a single statement (SQLite runs it atomically), which saves the
    /// `BEGIN`/`COMMIT` round trips.
    pub(crate) async fn write_lock(&self, priority: WritePriority) -> StoreResult<WriterTurn> {
        tokio::time::timeout(WRITER_LOCK_TIMEOUT, self.writer.acquire(priority))
            .await
            .map_err(|_| {
                StoreError::Unavailable("timed out waiting for the database writer lock".into())
            })
    }

    /// Starts a write transaction: waits for this process's writer lock, then
    /// `BEGIN IMMEDIATE` (see the module docs for why both).
    pub(crate) async fn begin_write(&self, priority: WritePriority) -> StoreResult<Writer> {
        let guard = self.write_lock(priority).await?;
        count("begin");
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        Ok(Writer { tx, _guard: guard })
    }

    /// Wakes every subscription of this process (after a commit that appended).
    pub(crate) fn wake_subscribers(&self) {
        self.wake
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Makes sure every topic has its partitions in `log_partitions`, so lag
    /// shows empty partitions too (append would create them lazily anyway).
    async fn ensure_partitions(&self) -> StoreResult<()> {
        let mut w = self.begin_write(WritePriority::Request).await?;
        for topic in topics::ALL {
            for partition in 0..self.partitions {
                count("ensure_partition");
                sqlx::query(
                    r#"INSERT INTO log_partitions (topic, "partition", next_offset) VALUES (?, ?, 0)
                       ON CONFLICT (topic, "partition") DO NOTHING"#,
                )
                .bind(topic)
                .bind(partition)
                .execute(&mut *w.tx)
                .await
                .map_err(db_err)?;
            }
        }
        w.commit().await
    }

    pub(crate) async fn migrate(&self) -> StoreResult<()> {
        count("migrate");
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => db_err(e),
            other => StoreError::Database(format!("migration failed: {other}")),
        })?;
        self.ensure_partitions().await
    }
}

/// A write transaction holding the in-process writer lock. Field order
/// matters: the transaction drops (queuing its rollback) before the lock is
/// released.
pub(crate) struct Writer {
    pub(crate) tx: Transaction<'static, Sqlite>,
    _guard: WriterTurn,
}

impl Writer {
    pub(crate) async fn commit(self) -> StoreResult<()> {
        count("commit");
        self.tx.commit().await.map_err(db_err)
    }
}

impl SqliteStore {
    /// Sets `orderflow_db_pool_connections{state="in_use"|"idle"}` and
    /// `orderflow_db_pool_max_connections` from the pool (read at scrape
    /// time: keeping them current on every checkout would cost more).
    pub fn export_pool_gauges(&self) {
        crate::export_pool_gauges(&self.inner.pool);
    }
}

/// Counts one query in `orderflow_db_queries_total{op}`. Called right before
/// each statement, so "queries per request" in the benchmark is exact.
pub(crate) fn count(op: &'static str) {
    metrics::counter!("orderflow_db_queries_total", "op" => op).increment(1);
}

/// Maps sqlx errors onto the port's error. Unique violations become
/// `Conflict` naming the column ("email", "sku"), which is what callers turn
/// into a 409; waiting too long (pool, busy database) is `Unavailable` (503).
pub(crate) fn db_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                // SQLite says "UNIQUE constraint failed: users.email" (several
                // columns are listed comma-separated); keep the column names.
                let message = db.message();
                let columns = message
                    .split_once(':')
                    .map(|(_, cols)| {
                        cols.split(',')
                            .map(|c| c.trim().rsplit('.').next().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| message.to_owned());
                return StoreError::Conflict(columns);
            }
            // Primary result codes 5 (SQLITE_BUSY) and 6 (SQLITE_LOCKED): the
            // busy timeout ran out while another process held the database.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            if matches!(primary, Some(5 | 6)) {
                return StoreError::Unavailable(db.message().to_owned());
            }
            StoreError::Database(db.message().to_owned())
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => StoreError::Unavailable(error.to_string()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(error.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// Timestamps are stored as unix microseconds.
pub(crate) fn micros(at: Timestamp) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(value: i64) -> StoreResult<Timestamp> {
    chrono::DateTime::from_timestamp_micros(value)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp out of range: {value}")))
}

/// UUIDs are stored as lower-case hyphenated text.
pub(crate) fn uid(id: uuid::Uuid) -> uuid::fmt::Hyphenated {
    id.hyphenated()
}

/// A JSON array of ids, for `IN (SELECT value FROM json_each(?))`: one static
/// statement for any number of ids instead of building `IN (?, ?, …)`.
pub(crate) fn json_ids(ids: &[uuid::Uuid]) -> String {
    serde_json::Value::from(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()).to_string()
}
