//! The SQL store, written once for SQLite and PostgreSQL.
//!
//! Both engines run the same store methods, row mappings and error handling;
//! only what truly differs between them is written per engine, in
//! [`crate::sqlite`] and [`crate::postgres`]:
//! - locking: SQLite's single writer (an in-process queue in front of
//!   `BEGIN IMMEDIATE`) against PostgreSQL's row and advisory locks;
//! - how an event is appended to the embedded log and how subscribers are
//!   woken (in-process wake-ups against `LISTEN/NOTIFY`);
//! - type encodings: SQLite keeps UUIDs as TEXT, times as INTEGER unix
//!   microseconds, JSON as TEXT and lists as JSON arrays; PostgreSQL has
//!   native UUID, TIMESTAMPTZ, JSONB and arrays;
//! - the few statements whose text differs (`FOR UPDATE`, `= ANY($1)`
//!   against `json_each($1)`), written side by side with [`per`].
//!
//! # Mechanism, and why
//! A statement is a [`Stmt`]: its SQL text (one text for both engines in
//! almost every case: both accept `$1`-style placeholders, `RETURNING`,
//! `ON CONFLICT … DO UPDATE` and window functions) and its values as
//! [`Arg`]s, which each engine binds in its own encoding ([`Exec`]). Columns
//! are read through [`SqlRow`], which each engine implements for its row
//! type, so the mappings in [`rows`] are generic. The store and the unit of
//! work are generic over an [`Engine`]: the handful of operations that
//! differ (taking the writer, locking one order's stock, appending to the
//! log, waking subscribers).
//!
//! Not `sqlx::Any`: it has no UUID, timestamp or JSON types, which is
//! exactly what the two schemas store differently. Not generic code over
//! `sqlx::Database` directly: every statement would carry `Encode`/`Decode`
//! bounds for each type, and the encodings differ anyway (a UUID is TEXT in
//! one schema and UUID in the other), so an enum of values bound in one
//! place per engine is both shorter and exact. Not a query builder: the SQL
//! stays readable as SQL, and there is almost nothing left to render.
//!
//! Adding a store method: write it once, in [`store`] (stand-alone) or
//! [`tx`] (inside a unit of work), with `per(sqlite, postgres)` only if the
//! statement text must differ; `StoreTx::mark_processed_many` was the first
//! added this way.
//!
//! Map of the module:
//! - this file: [`Engine`] and [`EngineCore`] (what each engine provides),
//!   [`Exec`], [`SqlRow`], [`Stmt`] and [`Arg`], [`SqlStore`] (what the two
//!   stores share: the engine and where events go), the savepoint steps
//!   and what a unit of work appended;
//! - [`rows`]: decoding rows into domain types;
//! - [`store`]: `impl Store for SqlStore<E>`;
//! - [`tx`]: `SqlTx`, the unit of work (`impl StoreTx`); it queues the
//!   writes nobody reads an answer from and sends them together (one round
//!   trip on SQLite) before the next read, savepoint step or commit;
//! - [`log`]: what both embedded event logs share: lag, reads of the log,
//!   per-topic wake-ups and the poll-and-wait loop;
//! - [`tail`]: the embedded log's newest events, kept in memory by the
//!   process that appended them (SQLite), so polls need not read them back.

pub(crate) mod carts;
pub(crate) mod log;
pub(crate) mod rows;
pub(crate) mod store;
pub(crate) mod tail;
pub(crate) mod tx;

use std::ops::DerefMut;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::outbox::EventDestination;
use orderflow_core::ports::store::{StoreError, StoreResult};
use orderflow_domain::Timestamp;
use orderflow_domain::{OrderId, UserId};

/// Which SQL engine a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Who is asking for a write: SQLite serves requests before background
/// writers (see [`crate::sqlite`]); PostgreSQL has no single writer and
/// ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePriority {
    /// A request is waiting for the answer: served first.
    Request,
    /// Consumers, offset commits, the relay: served when no request waits.
    Background,
}

impl WritePriority {
    /// The `priority` label of the writer metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WritePriority::Request => "request",
            WritePriority::Background => "background",
        }
    }
}

impl Dialect {
    /// What a `SELECT` appends to lock the rows it reads until the
    /// transaction ends: `FOR UPDATE` on PostgreSQL; nothing on SQLite, whose
    /// write transaction holds the whole database already.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// The text of a statement.
#[derive(Debug, Clone)]
pub enum Sql {
    /// The same text on both engines (almost every statement).
    Same(&'static str),
    /// Text that differs per engine.
    Per {
        sqlite: &'static str,
        postgres: &'static str,
    },
    /// Assembled at run time (a multi-row `VALUES` list).
    Built(String),
}

impl Sql {
    pub(crate) fn text(&self, dialect: Dialect) -> &str {
        match (self, dialect) {
            (Sql::Same(sql), _) => sql,
            (Sql::Per { sqlite, .. }, Dialect::Sqlite) => sqlite,
            (Sql::Per { postgres, .. }, Dialect::Postgres) => postgres,
            (Sql::Built(sql), _) => sql,
        }
    }
}

impl From<&'static str> for Sql {
    fn from(sql: &'static str) -> Self {
        Sql::Same(sql)
    }
}

impl From<String> for Sql {
    fn from(sql: String) -> Self {
        Sql::Built(sql)
    }
}

/// A statement whose text differs per engine.
pub(crate) const fn per(sqlite: &'static str, postgres: &'static str) -> Sql {
    Sql::Per { sqlite, postgres }
}

/// A value to bind, in the store's terms; each engine encodes it its own way
/// (see the module docs).
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Int4(i32),
    Bool(bool),
    Uuid(uuid::Uuid),
    OptUuid(Option<uuid::Uuid>),
    Time(Timestamp),
    OptTime(Option<Timestamp>),
    Json(serde_json::Value),
    Date(chrono::NaiveDate),
    /// A list, for `= ANY($n)` (PostgreSQL) or `json_each($n)` (SQLite).
    Texts(Vec<String>),
    Uuids(Vec<uuid::Uuid>),
    Int4s(Vec<i32>),
    Ints(Vec<i64>),
}

macro_rules! arg_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for Arg {
            fn from(value: $ty) -> Self {
                Arg::$variant(value)
            }
        })*
    };
}

arg_from!(
    String => Text,
    Option<String> => OptText,
    i64 => Int,
    i32 => Int4,
    bool => Bool,
    uuid::Uuid => Uuid,
    Option<uuid::Uuid> => OptUuid,
    Timestamp => Time,
    Option<Timestamp> => OptTime,
    serde_json::Value => Json,
    chrono::NaiveDate => Date,
    Vec<String> => Texts,
    Vec<uuid::Uuid> => Uuids,
    Vec<i32> => Int4s,
    Vec<i64> => Ints,
);

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(value.to_owned())
    }
}

impl From<&String> for Arg {
    fn from(value: &String) -> Self {
        Arg::Text(value.clone())
    }
}

/// One statement with its values, and the `op` label it is counted under in
/// `orderflow_db_queries_total`.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub op: &'static str,
    pub sql: Sql,
    pub args: Vec<Arg>,
}

/// A statement with its values, in placeholder order:
/// `stmt("user_by_id", "SELECT … WHERE id = $1", (id,))`.
pub(crate) fn stmt(op: &'static str, sql: impl Into<Sql>, args: impl Args) -> Stmt {
    Stmt {
        op,
        sql: sql.into(),
        args: args.into_args(),
    }
}

/// The values of a statement: a tuple of anything that converts to [`Arg`].
pub trait Args {
    fn into_args(self) -> Vec<Arg>;
}

macro_rules! tuple_args {
    ($($value:ident),*) => {
        impl<$($value: Into<Arg>),*> Args for ($($value,)*) {
            #[allow(non_snake_case)]
            fn into_args(self) -> Vec<Arg> {
                let ($($value,)*) = self;
                vec![$($value.into()),*]
            }
        }
    };
}

tuple_args!();
tuple_args!(A);
tuple_args!(A, B);
tuple_args!(A, B, C);
tuple_args!(A, B, C, D);
tuple_args!(A, B, C, D, E);
tuple_args!(A, B, C, D, E, F);
tuple_args!(A, B, C, D, E, F, G);
tuple_args!(A, B, C, D, E, F, G, H);
tuple_args!(A, B, C, D, E, F, G, H, I);
tuple_args!(A, B, C, D, E, F, G, H, I, J);
tuple_args!(A, B, C, D, E, F, G, H, I, J, K);

impl Stmt {
    /// Binds the next placeholder, for statements assembled in a loop.
    pub(crate) fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }
}

/// `($1, $2, …), (…), …`: the `VALUES` list of a multi-row insert of `rows`
/// rows of `columns` values each, numbered from `$first`.
pub(crate) fn values_list(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let start = first + row * columns;
            let params: Vec<String> = (start..start + columns).map(|n| format!("${n}")).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Running statements on a connection of one engine: binds each [`Arg`] in
/// the engine's encoding and maps its errors onto [`StoreError`]. Counts
/// every statement in `orderflow_db_queries_total{op}`.
#[async_trait]
pub trait Exec: Send {
    type Row: SqlRow + Send + Sync;
    const DIALECT: Dialect;

    async fn query_all(&mut self, stmt: Stmt) -> StoreResult<Vec<Self::Row>>;

    async fn query_opt(&mut self, stmt: Stmt) -> StoreResult<Option<Self::Row>>;

    /// Runs the statement; how many rows it changed.
    async fn exec(&mut self, stmt: Stmt) -> StoreResult<u64>;

    async fn query_one(&mut self, stmt: Stmt) -> StoreResult<Self::Row> {
        let op = stmt.op;
        self.query_opt(stmt)
            .await?
            .ok_or_else(|| StoreError::Database(format!("{op}: the statement returned no row")))
    }
}

/// Implements [`Exec`] for an engine's connection type, given its row type,
/// its dialect, the function that binds a statement's [`Arg`]s in its
/// encoding (`fn(&str, Vec<Arg>) -> sqlx::query::Query<…>`) and its error
/// mapping: the three statement kinds are the same on every engine.
macro_rules! impl_exec {
    ($conn:ty, $row:ty, $dialect:expr, $bind:path, $err:path) => {
        #[async_trait::async_trait]
        impl $crate::sql::Exec for $conn {
            type Row = $row;
            const DIALECT: $crate::sql::Dialect = $dialect;

            async fn query_all(
                &mut self,
                stmt: $crate::sql::Stmt,
            ) -> orderflow_core::ports::store::StoreResult<Vec<$row>> {
                $crate::sql::count(stmt.op);
                $bind(stmt.sql.text($dialect), stmt.args)
                    .fetch_all(self)
                    .await
                    .map_err($err)
            }

            async fn query_opt(
                &mut self,
                stmt: $crate::sql::Stmt,
            ) -> orderflow_core::ports::store::StoreResult<Option<$row>> {
                $crate::sql::count(stmt.op);
                $bind(stmt.sql.text($dialect), stmt.args)
                    .fetch_optional(self)
                    .await
                    .map_err($err)
            }

            async fn exec(
                &mut self,
                stmt: $crate::sql::Stmt,
            ) -> orderflow_core::ports::store::StoreResult<u64> {
                $crate::sql::count(stmt.op);
                $bind(stmt.sql.text($dialect), stmt.args)
                    .execute(self)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err($err)
            }
        }
    };
}
pub(crate) use impl_exec;

/// The [`SqlRow`] methods an engine reads with a plain `try_get` (its sqlx
/// type is the store's type), each as `name: Type`.
macro_rules! plain_columns {
    ($err:path; $($name:ident: $ty:ty),* $(,)?) => {
        $(fn $name(&self, column: &str) -> orderflow_core::ports::store::StoreResult<$ty> {
            sqlx::Row::try_get(self, column).map_err($err)
        })*
    };
}
pub(crate) use plain_columns;

/// Reading typed columns by name, in the engine's encoding. Values that do
/// not decode are [`StoreError::Corrupt`].
pub trait SqlRow {
    fn text(&self, column: &str) -> StoreResult<String>;
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>>;
    /// An integer column of any width.
    fn int(&self, column: &str) -> StoreResult<i64>;
    fn opt_int(&self, column: &str) -> StoreResult<Option<i64>>;
    fn bool(&self, column: &str) -> StoreResult<bool>;
    fn uuid(&self, column: &str) -> StoreResult<uuid::Uuid>;
    fn opt_uuid(&self, column: &str) -> StoreResult<Option<uuid::Uuid>>;
    fn time(&self, column: &str) -> StoreResult<Timestamp>;
    fn opt_time(&self, column: &str) -> StoreResult<Option<Timestamp>>;
    fn opt_json(&self, column: &str) -> StoreResult<Option<serde_json::Value>>;
    fn date(&self, column: &str) -> StoreResult<chrono::NaiveDate>;

    fn json(&self, column: &str) -> StoreResult<serde_json::Value> {
        self.opt_json(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {column} is NULL")))
    }

    /// A 32-bit integer column (partitions, HTTP statuses).
    fn int4(&self, column: &str) -> StoreResult<i32> {
        let value = self.int(column)?;
        i32::try_from(value)
            .map_err(|_| StoreError::Corrupt(format!("column {column} holds {value}")))
    }
}

/// A write transaction of an engine: a connection to run statements on, and
/// its commit.
#[async_trait]
pub trait WriteTx: DerefMut + Send + Sized {
    async fn commit(self) -> StoreResult<()>;

    /// Commits, then runs `committed` before anyone else may write: on
    /// SQLite, still holding the one writer, so what it records about the
    /// commit is recorded in commit order.
    async fn commit_then<F: FnOnce() + Send + 'static>(self, committed: F) -> StoreResult<()> {
        self.commit().await?;
        committed();
        Ok(())
    }
}

/// What differs between the engines (see the module docs). Implemented by
/// the state one database's store, transactions and logs share.
#[async_trait]
pub trait Engine: Send + Sync + Sized + 'static {
    const DIALECT: Dialect;
    /// What `Debug` calls the store.
    const STORE_NAME: &'static str;
    type Database: sqlx::Database<Connection = Self::Conn>;
    /// The sqlx connection type (migrations; PostgreSQL's statements).
    type Conn: Send + sqlx::Connection + sqlx::migrate::Migrate;
    /// What reads run on, and a connection of it held (SQLite: rusqlite
    /// connections, see `sqlite::direct`; PostgreSQL: the sqlx pool's).
    type ReadConn: Exec + Send;
    type Read: DerefMut<Target = Self::ReadConn> + Send;
    /// What writes run on: SQLite's one writer connection (not sqlx's, see
    /// `sqlite::writer_conn`), a pooled connection on PostgreSQL.
    type WriteConn: Exec + Send;
    type Write: WriteTx + DerefMut<Target = Self::WriteConn>;
    /// Held for a single-statement write outside a unit of work.
    type SingleWrite: DerefMut<Target = Self::WriteConn> + Send;

    /// The pool, partitions and wake-ups every engine has.
    fn core(&self) -> &EngineCore<Self::Database>;

    /// The engine's mapping of sqlx errors onto the port's.
    fn db_err(error: sqlx::Error) -> StoreError;

    /// A pooled connection for reads.
    async fn read(&self) -> StoreResult<Self::Read>;

    /// Closes the engine's connections; later statements fail with
    /// `Unavailable`.
    async fn close(&self) {
        self.core().pool.close().await;
    }

    /// Starts a write transaction.
    async fn begin_write(&self, priority: WritePriority) -> StoreResult<Self::Write>;

    /// Starts a consumer group's group commit: one at a time per group.
    async fn begin_group_commit(&self, group: &str) -> StoreResult<Self::Write>;

    /// A connection for a single-statement write outside a unit of work
    /// (SQLite: the writer, in a request's turn; PostgreSQL: any pooled one).
    async fn single_write(&self) -> StoreResult<Self::SingleWrite>;

    /// The engine's migrations (they stay per engine: the types differ).
    fn migrator() -> &'static sqlx::migrate::Migrator;

    /// Registers every partition of every topic in `log_partitions`, so lag
    /// shows empty partitions too (append would create them lazily anyway).
    async fn register_partitions(&self) -> StoreResult<()>;

    async fn migrate(&self) -> StoreResult<()> {
        count("migrate");
        Self::migrator()
            .run(&self.core().pool)
            .await
            .map_err(migrate_err::<Self>)?;
        self.register_partitions().await
    }

    /// Serialises the reservation and release of one order until the
    /// transaction ends (a redelivered "order placed" must not take stock
    /// twice).
    async fn lock_order_stock(conn: &mut Self::WriteConn, order_id: OrderId) -> StoreResult<()>;

    /// How this engine appends to the embedded log.
    const LOG_APPEND: LogAppend;

    /// Statements that follow appends to the embedded log of `topics`, in
    /// the same unit of work (PostgreSQL's `NOTIFY`); none by default.
    fn append_notices(_topics: &[&'static str]) -> Vec<Stmt> {
        Vec::new()
    }

    /// A statement that makes this unit of work take its turn for every
    /// shopper it writes live messages for: the owners of `orders` (their
    /// history rows, the `orders:{user}` channel) and `users` (their
    /// notifications, the `notifications:{user}` channel). It runs at
    /// commit, right before those rows are written, so that one shopper's
    /// rows commit in `seq` order (see `OrderChange`). Taking every turn in
    /// one statement, in one order all units of work share, is what keeps
    /// it from deadlocking: a group commit that takes turns one delivery at
    /// a time, in delivery order, deadlocks with another doing the same in
    /// another order, and PostgreSQL may pick an order placement waiting
    /// behind them as the victim (a 503). None by default: SQLite's one
    /// writer already commits in `seq` order.
    fn shopper_turns(_orders: &[OrderId], _users: &[UserId]) -> Option<Stmt> {
        None
    }

    /// Runs statements whose results nobody reads, in order.
    async fn exec_batch(conn: &mut Self::WriteConn, batch: Vec<Stmt>) -> StoreResult<()> {
        for statement in batch {
            conn.exec(statement).await?;
        }
        Ok(())
    }

    /// Wakes this process's subscriptions of `topics` after a commit that
    /// appended to them.
    fn wake_subscribers(&self, topics: &[&'static str]) {
        self.core().wakes.wake(topics.iter().copied());
    }
}

/// A database behind the [`Store`](orderflow_core::ports::store::Store)
/// port: [`SqliteStore`](crate::sqlite::SqliteStore) or
/// [`PostgresStore`](crate::postgres::PostgresStore). Cheap to clone: clones
/// share the engine (pool, writer, wake-ups).
pub struct SqlStore<E> {
    pub(crate) engine: Arc<E>,
    /// Where units of work append events: the embedded log or the outbox.
    pub(crate) destination: EventDestination,
}

impl<E> Clone for SqlStore<E> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            destination: self.destination,
        }
    }
}

impl<E> SqlStore<E> {
    pub(crate) fn new(engine: E) -> Self {
        Self {
            engine: Arc::new(engine),
            destination: EventDestination::default(),
        }
    }

    /// The same database with units of work appending events to
    /// `destination`: the embedded log (the default) or the outbox, which a
    /// relay drains to Kafka. Pool, writer and wake-ups stay shared.
    pub fn with_event_destination(mut self, destination: EventDestination) -> Self {
        self.destination = destination;
        self
    }

    /// Where this store's units of work append events.
    pub fn event_destination(&self) -> EventDestination {
        self.destination
    }
}

/// The items of an `impl Engine` that only name the engine's types: its
/// dialect, sqlx database and connection, what `Debug` calls its store,
/// where its [`EngineCore`] is (a field `core`) and its error mapping.
macro_rules! engine_types {
    ($dialect:expr, $db:ty, $conn:ty, $name:literal, $err:path) => {
        const DIALECT: $crate::sql::Dialect = $dialect;
        const STORE_NAME: &'static str = $name;
        type Database = $db;
        type Conn = $conn;

        fn core(&self) -> &$crate::sql::EngineCore<$db> {
            &self.core
        }

        fn db_err(error: sqlx::Error) -> orderflow_core::ports::store::StoreError {
            $err(error)
        }
    };
}
pub(crate) use engine_types;

/// How an engine appends an event to the embedded log: take the
/// partition's next offset (the row is created on first use) and insert the
/// event at it.
#[derive(Debug, Clone, Copy)]
pub enum LogAppend {
    /// One statement, queued with the unit of work's other writes (no
    /// answer awaited: a round trip saved per event on PostgreSQL). It
    /// takes (topic, partition, key, event id, payload, created at) as `$1`
    /// to `$6`.
    Queued(&'static str),
    /// The offset is read back ([`tx::TAKE_OFFSET`]; a call, not a round
    /// trip, on SQLite), then the insert is queued ([`tx::INSERT_EVENT_AT`]):
    /// knowing the offsets, the commit hands the events to the log's
    /// [`tail::LogTail`].
    OffsetReadBack,
}

/// What every engine holds (as its field `core`).
pub struct EngineCore<DB: sqlx::Database> {
    pub(crate) pool: sqlx::Pool<DB>,
    /// Partitions per topic of the embedded log; fixed for the life of the
    /// database, since an event's partition is derived from it.
    pub(crate) partitions: i32,
    /// Bumped per topic after every commit that appended events (on
    /// PostgreSQL also by the LISTEN task for other processes' commits);
    /// subscriptions wait on them instead of polling on a timer.
    pub(crate) wakes: Arc<log::TopicWakes>,
    /// The log's newest events, when the engine keeps them
    /// ([`LogAppend::OffsetReadBack`]).
    pub(crate) tail: Option<tail::LogTail>,
}

impl<DB: sqlx::Database> EngineCore<DB> {
    pub(crate) fn new(pool: sqlx::Pool<DB>, partitions: i32, append: LogAppend) -> Self {
        Self {
            pool,
            partitions,
            wakes: Arc::default(),
            tail: matches!(append, LogAppend::OffsetReadBack).then(tail::LogTail::default),
        }
    }
}

impl<E: Engine> SqlStore<E> {
    /// The connection pool, for tools and tests that need raw SQL.
    pub fn pool(&self) -> &sqlx::Pool<E::Database> {
        &self.engine.core().pool
    }

    /// Closes the database for every clone of this store: statements from
    /// now on fail with `Unavailable`, as when the database is gone.
    pub async fn close(&self) {
        self.engine.close().await;
    }

    /// Partitions per topic of the embedded log.
    pub fn partitions(&self) -> i32 {
        self.engine.core().partitions
    }

    /// Sets `orderflow_db_pool_connections{state="in_use"|"idle"}` and
    /// `orderflow_db_pool_max_connections` from the pool (read at scrape
    /// time: keeping them current on every checkout would cost more); the
    /// same gauges for both engines, so one dashboard serves both.
    pub fn export_pool_gauges(&self) {
        let pool = self.pool();
        let idle = pool.num_idle() as f64;
        let size = f64::from(pool.size());
        metrics::gauge!("orderflow_db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("orderflow_db_pool_connections", "state" => "in_use")
            .set((size - idle).max(0.0));
        metrics::gauge!("orderflow_db_pool_max_connections")
            .set(f64::from(pool.options().get_max_connections()));
    }
}

impl<E: Engine> std::fmt::Debug for SqlStore<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(E::STORE_NAME)
            .field("partitions", &self.partitions())
            .field("destination", &self.destination)
            .field("pool_size", &self.pool().size())
            .finish_non_exhaustive()
    }
}

/// The port's error for a migration that failed: the database's own error
/// when a statement failed, else what sqlx found wrong.
pub(crate) fn migrate_err<E: Engine>(error: sqlx::migrate::MigrateError) -> StoreError {
    match error {
        sqlx::migrate::MigrateError::Execute(e) => E::db_err(e),
        other => StoreError::Database(format!("migration failed: {other}")),
    }
}

/// The partition count a store is opened with: at least one per topic.
pub(crate) fn check_partitions(partitions: i32) -> StoreResult<()> {
    if partitions < 1 {
        return Err(StoreError::Database(format!(
            "the event log needs at least one partition per topic, got {partitions}"
        )));
    }
    Ok(())
}

/// Counts one query in `orderflow_db_queries_total{op}`. Called right before
/// each statement, so "queries per request" in the benchmark is exact; the
/// same metric and operation names on both engines, so dashboards serve both.
pub(crate) fn count(op: &'static str) {
    metrics::counter!("orderflow_db_queries_total", "op" => op).increment(1);
}

/// A store error as the event log reports it.
pub(crate) fn log_err(error: StoreError) -> orderflow_core::ports::log::LogError {
    use orderflow_core::ports::log::LogError;
    match error {
        StoreError::Unavailable(message) => LogError::Unavailable(message),
        other => LogError::Backend(other.to_string()),
    }
}

/// One step of the savepoint a group commit wraps around each effect
/// ([`StoreTx::savepoint`](orderflow_core::ports::store::StoreTx::savepoint)
/// and its siblings): the same SQL on SQLite and PostgreSQL. The name is
/// fixed, since the API opens one savepoint at a time; PostgreSQL's stock
/// reservation nests its own savepoint inside it, which both engines allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointStep {
    Open,
    Release,
    RollBack,
}

impl SavepointStep {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            SavepointStep::Open => "SAVEPOINT orderflow_effect",
            SavepointStep::Release => "RELEASE SAVEPOINT orderflow_effect",
            SavepointStep::RollBack => "ROLLBACK TO SAVEPOINT orderflow_effect",
        }
    }

    /// The `op` label of `orderflow_db_queries_total`.
    pub(crate) fn op(self) -> &'static str {
        match self {
            SavepointStep::Open => "savepoint",
            SavepointStep::Release => "release_savepoint",
            SavepointStep::RollBack => "rollback_to_savepoint",
        }
    }
}

/// What a unit of work appended to the embedded log, for after its commit
/// (the events count as published, subscribers are woken, the log's tail
/// gets them), kept right across the effect savepoint: events appended
/// after a savepoint that is rolled back are gone.
#[derive(Debug, Default)]
pub(crate) struct Appended {
    /// The topic of every event.
    topics: Vec<&'static str>,
    /// The events with their offsets, when the engine read them back.
    events: Vec<tail::TailEvent>,
    /// How many of each there were when the open savepoint was taken.
    at_savepoint: Option<(usize, usize)>,
}

impl Appended {
    pub(crate) fn push(&mut self, topic: &'static str, event: Option<tail::TailEvent>) {
        self.topics.push(topic);
        self.events.extend(event);
    }

    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }

    /// Follows a savepoint step that succeeded.
    pub(crate) fn after(&mut self, step: SavepointStep) {
        match step {
            SavepointStep::Open => {
                self.at_savepoint = Some((self.topics.len(), self.events.len()));
            }
            SavepointStep::Release => self.at_savepoint = None,
            SavepointStep::RollBack => {
                if let Some((topics, events)) = self.at_savepoint.take() {
                    self.topics.truncate(topics);
                    self.events.truncate(events);
                }
            }
        }
    }

    /// The topics and the events, once the transaction committed.
    pub(crate) fn into_parts(self) -> (Vec<&'static str>, Vec<tail::TailEvent>) {
        (self.topics, self.events)
    }
}

/// The writes of a unit of work that take a shopper's turn (see
/// [`Engine::shopper_turns`]): held back until its commit, when the turns
/// are taken all at once and then these run. Kept right across the effect
/// savepoint, like [`Appended`]: writes issued after a savepoint that is
/// rolled back are gone.
#[derive(Debug, Default)]
pub(crate) struct ShopperWrites {
    /// Orders whose owner's turn is needed (history rows).
    orders: Vec<OrderId>,
    /// Shoppers whose turn is needed (notifications).
    users: Vec<UserId>,
    writes: Vec<Stmt>,
    /// How many of each there were when the open savepoint was taken.
    at_savepoint: Option<(usize, usize, usize)>,
}

impl ShopperWrites {
    /// A write of the history of `order`.
    pub(crate) fn of_order(&mut self, order: OrderId, write: Stmt) {
        self.orders.push(order);
        self.writes.push(write);
    }

    /// A write of a live message of `user`.
    pub(crate) fn of_user(&mut self, user: UserId, write: Stmt) {
        self.users.push(user);
        self.writes.push(write);
    }

    /// Follows a savepoint step that succeeded.
    pub(crate) fn after(&mut self, step: SavepointStep) {
        match step {
            SavepointStep::Open => {
                self.at_savepoint = Some((self.orders.len(), self.users.len(), self.writes.len()));
            }
            SavepointStep::Release => self.at_savepoint = None,
            SavepointStep::RollBack => {
                if let Some((orders, users, writes)) = self.at_savepoint.take() {
                    self.orders.truncate(orders);
                    self.users.truncate(users);
                    self.writes.truncate(writes);
                }
            }
        }
    }

    /// What runs at commit: the turns (when the engine takes any), then the
    /// writes in the order they were issued.
    pub(crate) fn into_statements<E: Engine>(self) -> Vec<Stmt> {
        if self.writes.is_empty() {
            return Vec::new();
        }
        let mut statements = Vec::with_capacity(self.writes.len() + 1);
        statements.extend(E::shopper_turns(&self.orders, &self.users));
        statements.extend(self.writes);
        statements
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lists_number_rows_after_each_other() {
        assert_eq!(values_list(2, 3, 2), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(values_list(1, 1, 1), "($1)");
        assert_eq!(values_list(0, 4, 1), "");
    }

    #[test]
    fn per_engine_text_is_picked_by_dialect() {
        let sql = per("a", "b");
        assert_eq!(sql.text(Dialect::Sqlite), "a");
        assert_eq!(sql.text(Dialect::Postgres), "b");
        assert_eq!(Sql::from("c").text(Dialect::Postgres), "c");
    }
}
