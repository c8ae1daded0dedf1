//! The embedded database: one SQLite file (sqlx, WAL) behind the
//! [`Store`](orderflow_core::ports::store::Store) port, and the embedded event
//! log, a table in the same file, behind
//! [`EventLog`](orderflow_core::ports::log::EventLog).
//!
//! The store's queries, row mappings and unit of work are written once for
//! both engines in `sql`; this module holds what is SQLite's own.
//!
//! Map of the module:
//! - this file: [`SqliteEngine`] (connect, pool settings, the writer queue,
//!   the embedded log's append, and `impl Engine`), and SQLite's encodings:
//!   how a value is bound (`sql::Arg`), how a column is read
//!   (`sql::SqlRow`), how an error maps onto the port's.
//! - [`log`]: [`SqliteEventLog`] and [`SqliteSubscription`]: consumer groups
//!   reading the `event_log` table, with in-process wake-ups on commit.
//! - [`outbox`]: [`SqliteOutbox`], the `outbox` table that units of work
//!   append to instead of `event_log` when the log is Kafka
//!   (`SqliteStore::with_event_destination`), drained by the relay.
//! - `writer`: the two-priority queue in front of SQLite's one writer.
//! - [`direct`]: the connections the store runs its statements on:
//!   rusqlite connections driven in place (no thread hop per statement),
//!   the one writer with its transaction and a pool of readers. The sqlx
//!   pool remains for migrations and for tools that want raw SQL.
//!
//! Why the writes look the way they do: SQLite has a single writer. A
//! transaction that starts with a plain (deferred) `BEGIN`, reads, and then
//! writes can fail with `SQLITE_BUSY` when another connection wrote in
//! between, and the busy timeout cannot help it. So every unit of work starts
//! with `BEGIN IMMEDIATE`, which takes the write lock up front: read-then-write
//! sequences (idempotency claims, stock reservations, refresh-token rotation)
//! serialize instead of failing. In front of that, writers of one process
//! queue in tokio (`writer`) rather than in SQLite's sleep-and-retry busy
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

pub mod direct;
pub mod log;
pub mod outbox;
pub mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::store::{StoreError, StoreResult};
use orderflow_domain::OrderId;
use orderflow_domain::Timestamp;
use orderflow_domain::events::topics;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};

use crate::sql::{
    Arg, Dialect, Engine, EngineCore, Exec, LogAppend, SqlStore, WriteTx, check_partitions, stmt,
};

pub use crate::sql::WritePriority;
use direct::{Checkpointer, DirectConn, PooledRead, ReadPool, WriteLease, Writer};
pub use log::{SqliteEventLog, SqliteSubscription, partition_for};
pub use outbox::SqliteOutbox;
use writer::WriterQueue;

/// The embedded database: the SQL store on SQLite. Cheap to clone: every
/// clone shares one pool, one writer queue and one wake-up channel, so event
/// logs made from any clone are woken by commits made through any other.
pub type SqliteStore = SqlStore<SqliteEngine>;

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

/// What the store, its transactions and its event logs share: the engine
/// behind [`SqliteStore`].
pub struct SqliteEngine {
    pub(crate) core: EngineCore<Sqlite>,
    /// In-process writer queue, see the module docs and [`writer`].
    writer: WriterQueue,
    /// The one connection writes run on, taken in the queue's turn.
    writer_conn: Arc<tokio::sync::Mutex<DirectConn>>,
    /// Connections for reads, outside units of work.
    readers: Arc<ReadPool>,
    /// Set by [`Engine::close`]: the in-place connections refuse work.
    closed: std::sync::atomic::AtomicBool,
    /// Checkpoints the WAL off the async tasks, for as long as the engine lives.
    _checkpointer: Checkpointer,
    /// Outbox rows (and their keys) held by live relay batches of this
    /// process (see [`outbox`]); shared by every clone so that relays skip
    /// each other's rows and keys.
    pub(crate) claimed: std::sync::Mutex<outbox::Claims>,
}

impl SqlStore<SqliteEngine> {
    /// Opens (creating if missing) the database file at `url` (`sqlite://path`
    /// or `sqlite:path`; not an in-memory database, which the writer
    /// connection could not share with the readers) with [`DEFAULT_PARTITIONS`]
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
        check_partitions(partitions)?;
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?;
        let path = options.get_filename().to_owned();
        if path.to_string_lossy().starts_with("file:sqlx-in-memory") {
            return Err(StoreError::Unavailable(format!(
                "{url}: the embedded database needs a file (an in-memory database cannot be shared by the writer and the readers)"
            )));
        }
        let options = options
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
        let writer_conn = Arc::new(tokio::sync::Mutex::new(DirectConn::open(&path)?));
        let writer = WriterQueue::default();
        Ok(SqlStore::new(SqliteEngine {
            core: EngineCore::new(pool, partitions, SqliteEngine::LOG_APPEND),
            closed: std::sync::atomic::AtomicBool::new(false),
            _checkpointer: Checkpointer::start(&path, writer.clone(), writer_conn.clone())?,
            writer,
            writer_conn,
            readers: Arc::new(ReadPool::new(path, max_connections.max(2) as usize)),
            claimed: std::sync::Mutex::default(),
        }))
    }

    /// The outbox of this database, as the relay sees it.
    pub fn outbox(&self) -> SqliteOutbox {
        SqliteOutbox::new(self.engine.clone())
    }

    /// How long a background write (a group commit, an offset commit)
    /// waits at most for SQLite's writer while requests go first; `None`:
    /// requests always go first. The default,
    /// [`writer::DEFAULT_BACKGROUND_WAIT`], keeps the consumer groups
    /// writing under a steady stream of requests; see [`writer`] for what
    /// each choice costs.
    pub fn with_background_wait(self, bound: Option<std::time::Duration>) -> Self {
        self.engine.writer.set_background_wait(bound);
        self
    }

    /// The embedded event log over the same database, pool and wake-ups. It
    /// uses the store's partition count (set at connect time), so it takes no
    /// argument: a second count could only disagree with the one `append` uses.
    pub fn event_log(&self) -> SqliteEventLog {
        SqliteEventLog::new(self.engine.clone())
    }
}

fn writer_lock_timed_out() -> StoreError {
    StoreError::Unavailable("timed out waiting for the database writer lock".into())
}

impl SqliteEngine {
    /// Waits for this process's writer lock, and takes the writer
    /// connection. Enough on its own for a write that is a single statement
    /// (SQLite runs it atomically), which saves the `BEGIN`/`COMMIT`.
    pub(crate) async fn lease(&self, priority: WritePriority) -> StoreResult<WriteLease> {
        self.check_open()?;
        let turn = tokio::time::timeout(WRITER_LOCK_TIMEOUT, self.writer.acquire(priority))
            .await
            .map_err(|_| writer_lock_timed_out())?;
        // Free at once: whoever held it held the turn, and gave both back.
        let conn = self.writer_conn.clone().lock_owned().await;
        Ok(WriteLease { conn, _turn: turn })
    }

    fn check_open(&self) -> StoreResult<()> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Unavailable("the database is closed".into()));
        }
        Ok(())
    }

    /// Starts a write transaction: waits for this process's writer lock, then
    /// `BEGIN IMMEDIATE` (see the module docs for why both).
    ///
    /// It may instead be handed another's open transaction to continue (see
    /// [`writer::Chain`]): then it writes in a savepoint of that one, and
    /// commits with it.
    pub(crate) async fn begin_writer(&self, priority: WritePriority) -> StoreResult<Writer> {
        self.check_open()?;
        let (turn, handover) = tokio::time::timeout(
            WRITER_LOCK_TIMEOUT,
            self.writer.acquire_joining(priority, true),
        )
        .await
        .map_err(|_| writer_lock_timed_out())?;
        match handover {
            Some(mut chain) => {
                let conn = chain.conn.take().expect("a chain carries the connection");
                Writer::join(WriteLease { conn, _turn: turn }, chain)
            }
            None => {
                // Free at once: whoever held it held the turn, and gave both back.
                let conn = self.writer_conn.clone().lock_owned().await;
                Writer::begin(WriteLease { conn, _turn: turn })
            }
        }
    }

    /// Makes sure every topic has its partitions in `log_partitions`, so lag
    /// shows empty partitions too (append would create them lazily anyway).
    async fn ensure_partitions(&self) -> StoreResult<()> {
        let mut w = self.begin_writer(WritePriority::Request).await?;
        for topic in topics::ALL {
            w.exec(stmt(
                "ensure_partition",
                r#"INSERT INTO log_partitions (topic, "partition", next_offset)
                       SELECT $1, value, 0 FROM json_each($2) WHERE true
                       ON CONFLICT (topic, "partition") DO NOTHING"#,
                (topic, (0..self.core.partitions).collect::<Vec<i32>>()),
            ))
            .await?;
        }
        w.commit().await
    }
}

#[async_trait]
impl Engine for SqliteEngine {
    crate::sql::engine_types!(
        Dialect::Sqlite,
        Sqlite,
        SqliteConnection,
        "SqliteStore",
        db_err
    );
    type ReadConn = DirectConn;
    type Read = PooledRead;
    type WriteConn = DirectConn;
    /// Two statements (SQLite has no `INSERT` inside `WITH`), each a call on
    /// the writer connection, not a round trip; reading the offset back
    /// costs nothing more, and lets polls be answered from the log's tail.
    const LOG_APPEND: LogAppend = LogAppend::OffsetReadBack;
    type Write = Writer;
    type SingleWrite = WriteLease;

    async fn begin_write(&self, priority: WritePriority) -> StoreResult<Writer> {
        self.begin_writer(priority).await
    }

    /// A background writer: one writer per database already, so the group
    /// needs no lock of its own.
    async fn begin_group_commit(&self, _group: &str) -> StoreResult<Writer> {
        self.begin_writer(WritePriority::Background).await
    }

    async fn read(&self) -> StoreResult<PooledRead> {
        self.check_open()?;
        self.readers.get()
    }

    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.core.pool.close().await;
    }

    async fn single_write(&self) -> StoreResult<WriteLease> {
        self.lease(WritePriority::Request).await
    }

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    async fn register_partitions(&self) -> StoreResult<()> {
        self.ensure_partitions().await
    }

    /// Nothing to take: the unit of work holds the database's only writer.
    async fn lock_order_stock(_conn: &mut DirectConn, _order: OrderId) -> StoreResult<()> {
        Ok(())
    }
}

/// A value as SQLite stores it (see the module docs): UUIDs, JSON, dates
/// and lists as TEXT, times as INTEGER unix microseconds.
pub(crate) enum Stored {
    Text(Option<String>),
    Integer(Option<i64>),
    Bool(bool),
}

fn json_list<T: Into<serde_json::Value>>(values: Vec<T>) -> Stored {
    Stored::Text(Some(serde_json::Value::from(values).to_string()))
}

impl From<Arg> for Stored {
    fn from(arg: Arg) -> Self {
        let uuid = |id: uuid::Uuid| id.hyphenated().to_string();
        match arg {
            Arg::Text(text) => Stored::Text(Some(text)),
            Arg::Int(n) => Stored::Integer(Some(n)),
            Arg::Int4(n) => Stored::Integer(Some(i64::from(n))),
            Arg::Bool(b) => Stored::Bool(b),
            Arg::Uuid(id) => Stored::Text(Some(uuid(id))),
            Arg::OptUuid(id) => Stored::Text(id.map(uuid)),
            Arg::OptText(text) => Stored::Text(text),
            Arg::Time(at) => Stored::Integer(Some(micros(at))),
            Arg::OptTime(at) => Stored::Integer(at.map(micros)),
            Arg::Json(value) => Stored::Text(Some(value.to_string())),
            Arg::Date(day) => Stored::Text(Some(day.format("%Y-%m-%d").to_string())),
            Arg::Texts(list) => json_list(list),
            Arg::Uuids(list) => json_list(list.into_iter().map(uuid).collect()),
            Arg::Int4s(list) => json_list(list),
            Arg::Ints(list) => json_list(list),
        }
    }
}

pub(crate) fn corrupt_uuid(column: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("column {column} holds {value:?}, not a UUID"))
}

/// The columns a unique violation names, from SQLite's message ("UNIQUE
/// constraint failed: users.email", several comma-separated): "email".
pub(crate) fn unique_columns(message: &str) -> String {
    message
        .split_once(':')
        .map(|(_, cols)| {
            cols.split(',')
                .map(|c| c.trim().rsplit('.').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| message.to_owned())
}

/// Maps sqlx errors onto the port's error. Unique violations become
/// `Conflict` naming the column ("email", "sku"), which is what callers turn
/// into a 409; waiting too long (pool, busy database) is `Unavailable` (503).
pub(crate) fn db_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                return StoreError::Conflict(unique_columns(db.message()));
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
        other => crate::transport_err(other),
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
