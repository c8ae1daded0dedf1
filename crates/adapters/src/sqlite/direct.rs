//! The store's SQLite connections, driven in place: a [`DirectConn`] runs
//! each statement on the task that issues it. One of them is the writer
//! ([`WriteLease`], [`Writer`] for a transaction on it); the others are
//! readers ([`ReadPool`]).
//!
//! Why not through sqlx, like the reads: sqlx runs each SQLite connection on
//! a thread of its own, and every statement is a message to that thread and
//! an answer back (a channel send, a futex wake-up on each side). On the
//! 2-core machine that hop cost far more than SQLite's work for an insert,
//! and a profile of the embedded pipeline under load showed the process
//! mostly waiting on it (docs/benchmarks.md). Reads pay the hop in parallel
//! on a pool of connections; writes paid it one statement after the other on
//! the single writer, which capped the whole pipeline; and the hops of the
//! reads (every poll of every consumer group) still took a quarter of the
//! CPU. Here the connections are rusqlite's: a statement is a call, and
//! prepared statements are cached per connection.
//!
//! Running SQLite on an async task blocks the task's thread for as long as
//! the statement runs: microseconds for orderflow's statements, since the
//! writer queue guarantees this process never waits for its own lock and a
//! read in WAL mode never waits for a writer. Two things can take longer: another *process* holding the database's write
//! lock (SQLite's busy timeout waits for it), and the WAL checkpoint a
//! commit runs now and then (a few milliseconds, with `synchronous=NORMAL`
//! the only fsync).
//!
//! Values are bound and read in the same encoding as the reads through sqlx
//! (see the module docs of `sqlite`): [`Stored`](super::Stored) for binding,
//! the same column conversions for reading.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use orderflow_core::ports::store::{StoreError, StoreResult};
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{OpenFlags, ToSql};
use tokio::sync::OwnedMutexGuard;

use super::writer::{Chain, WritePriority, WriterQueue, WriterTurn};
use super::{BUSY_TIMEOUT, Stored, unique_columns};
use crate::sql::{Arg, Dialect, Exec, SqlRow, Stmt, WriteTx, count};

/// Prepared statements kept per connection: every statement text the store
/// writes with, with room to spare (a multi-row insert of another row count
/// is another text).
const STATEMENT_CACHE: usize = 512;

/// The writer connection.
pub struct DirectConn(rusqlite::Connection);

impl std::fmt::Debug for DirectConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectConn").finish_non_exhaustive()
    }
}

impl DirectConn {
    /// Opens the database file (created and switched to WAL by the pool
    /// already) with the pool's settings. Three settings of its own, all for
    /// a database that is written all the time:
    /// - no automatic checkpoints: a commit that crosses the WAL threshold
    ///   would copy pages and fsync on the async task that commits, stalling
    ///   every request on that worker thread; the [`Checkpointer`] does it;
    /// - the database file memory-mapped (up to 256 MiB): a reader's page
    ///   cache is discarded whenever another connection committed, which
    ///   under load is always, so reads fetch pages from the OS; mapped,
    ///   that is a memory access instead of a `pread` call;
    /// - temporary storage in memory: a savepoint (each effect of a group
    ///   commit that needs one, each transaction joined to a [`Chain`], each
    ///   reservation) copies the pages it changes into a statement journal,
    ///   which SQLite otherwise spills into a temporary file past 64 KiB.
    ///   Under load those file writes were 5% of the process's CPU
    ///   (docs/benchmarks.md); in memory they are a copy.
    pub(crate) fn open(path: &Path) -> StoreResult<Self> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(write_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(write_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0; PRAGMA mmap_size = 268435456;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(write_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self(conn))
    }

    /// Opens a reader: `query_only`, so a write sent to it by mistake fails
    /// loudly instead of bypassing the writer queue.
    fn open_reader(path: &Path) -> StoreResult<Self> {
        let conn = Self::open(path)?;
        conn.0
            .execute_batch("PRAGMA query_only = ON;")
            .map_err(write_err)?;
        Ok(conn)
    }

    /// Runs `stmt` to the end; the first `keep` rows it returned, and how
    /// many rows it changed. Always stepped to the end: SQLite does a
    /// `RETURNING` statement's writes at the first step, but a statement
    /// left half-stepped would hold its read of the database.
    fn run(&mut self, stmt: Stmt, keep: usize) -> StoreResult<(Vec<StoredRow>, u64)> {
        count(stmt.op);
        let started = Instant::now();
        let sql = stmt.sql.text(Dialect::Sqlite);
        let mut prepared = self.0.prepare_cached(sql).map_err(write_err)?;
        bind(&mut prepared, stmt.op, stmt.args)?;
        // Named once per statement, and only if a row is kept (most writes
        // keep none).
        let columns: Option<Arc<[String]>> = (keep > 0).then(|| {
            prepared
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect()
        });
        let mut found = Vec::new();
        let mut rows = prepared.raw_query();
        while let Some(row) = rows.next().map_err(write_err)? {
            if let Some(columns) = columns.as_ref().filter(|_| found.len() < keep) {
                let values = (0..columns.len())
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(write_err)?;
                found.push(StoredRow {
                    columns: columns.clone(),
                    values,
                });
            }
        }
        drop(rows);
        statement_done(sql, started);
        Ok((found, self.0.changes()))
    }

    /// Runs SQL without values (transaction control).
    fn control(&mut self, op: &'static str, sql: &str) -> StoreResult<()> {
        count(op);
        let started = Instant::now();
        self.0.execute_batch(sql).map_err(write_err)?;
        statement_done(sql, started);
        Ok(())
    }
}

/// The event every statement ends with, with the fields of sqlx's own
/// (`summary`, `elapsed_secs`), so the binary's telemetry turns both into the
/// same query-duration histogram and client spans.
fn statement_done(sql: &str, started: Instant) {
    tracing::debug!(
        target: "orderflow::db",
        summary = sql.trim_start(),
        elapsed_secs = started.elapsed().as_secs_f64(),
        "statement done"
    );
}

/// Binds `args` to the statement's `$n` placeholders. SQLite numbers named
/// parameters by first appearance, so each is looked up by its name: `$3`
/// is the third value wherever it first appears.
fn bind(prepared: &mut rusqlite::Statement<'_>, op: &str, args: Vec<Arg>) -> StoreResult<()> {
    let values: Vec<Stored> = args.into_iter().map(Stored::from).collect();
    for index in 1..=prepared.parameter_count() {
        let number = prepared
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(index);
        let value = values.get(number - 1).ok_or_else(|| {
            StoreError::Database(format!(
                "{op}: placeholder ${number} has no value ({} given)",
                values.len()
            ))
        })?;
        prepared
            .raw_bind_parameter(index, value)
            .map_err(write_err)?;
    }
    Ok(())
}

impl ToSql for Stored {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Stored::Text(text) => text.to_sql(),
            Stored::Integer(n) => n.to_sql(),
            Stored::Bool(b) => b.to_sql(),
        }
    }
}

#[async_trait]
impl Exec for DirectConn {
    type Row = StoredRow;
    const DIALECT: Dialect = Dialect::Sqlite;

    async fn query_all(&mut self, stmt: Stmt) -> StoreResult<Vec<StoredRow>> {
        Ok(self.run(stmt, usize::MAX)?.0)
    }

    async fn query_opt(&mut self, stmt: Stmt) -> StoreResult<Option<StoredRow>> {
        Ok(self.run(stmt, 1)?.0.pop())
    }

    async fn exec(&mut self, stmt: Stmt) -> StoreResult<u64> {
        Ok(self.run(stmt, 0)?.1)
    }
}

/// A row the writer read, with its values owned (rusqlite's rows borrow
/// their statement).
#[derive(Debug, Clone)]
pub struct StoredRow {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl StoredRow {
    fn value(&self, column: &str) -> StoreResult<&Value> {
        self.columns
            .iter()
            .position(|name| name == column)
            .map(|i| &self.values[i])
            .ok_or_else(|| StoreError::Database(format!("no column {column} in the row")))
    }

    fn opt<T>(
        &self,
        column: &str,
        read: impl FnOnce(&Value) -> Option<T>,
        expected: &str,
    ) -> StoreResult<Option<T>> {
        match self.value(column)? {
            Value::Null => Ok(None),
            value => read(value).map(Some).ok_or_else(|| {
                StoreError::Corrupt(format!("column {column} holds {value:?}, not {expected}"))
            }),
        }
    }
}

fn not_null<T>(column: &str, value: Option<T>) -> StoreResult<T> {
    value.ok_or_else(|| StoreError::Corrupt(format!("column {column} is NULL")))
}

impl SqlRow for StoredRow {
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
        self.opt(
            column,
            |value| match value {
                Value::Text(text) => Some(text.clone()),
                _ => None,
            },
            "text",
        )
    }

    fn text(&self, column: &str) -> StoreResult<String> {
        not_null(column, self.opt_text(column)?)
    }

    fn opt_int(&self, column: &str) -> StoreResult<Option<i64>> {
        self.opt(
            column,
            |value| match value {
                Value::Integer(n) => Some(*n),
                _ => None,
            },
            "an integer",
        )
    }

    fn int(&self, column: &str) -> StoreResult<i64> {
        not_null(column, self.opt_int(column)?)
    }

    fn bool(&self, column: &str) -> StoreResult<bool> {
        Ok(self.int(column)? != 0)
    }

    // Encoded as the module docs of `sqlite` say: UUIDs, JSON and dates as
    // TEXT, times as INTEGER unix microseconds.
    fn uuid(&self, column: &str) -> StoreResult<uuid::Uuid> {
        let value = self.text(column)?;
        value
            .parse()
            .map_err(|_| super::corrupt_uuid(column, &value))
    }

    fn opt_uuid(&self, column: &str) -> StoreResult<Option<uuid::Uuid>> {
        self.opt_text(column)?
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| super::corrupt_uuid(column, &value))
            })
            .transpose()
    }

    fn time(&self, column: &str) -> StoreResult<orderflow_domain::Timestamp> {
        super::from_micros(self.int(column)?)
    }

    fn opt_time(&self, column: &str) -> StoreResult<Option<orderflow_domain::Timestamp>> {
        self.opt_int(column)?.map(super::from_micros).transpose()
    }

    fn opt_json(&self, column: &str) -> StoreResult<Option<serde_json::Value>> {
        self.opt_text(column)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
            })
            .transpose()
    }

    fn date(&self, column: &str) -> StoreResult<chrono::NaiveDate> {
        let value = self.text(column)?;
        value.parse().map_err(|_| {
            StoreError::Corrupt(format!("column {column} holds {value:?}, not a date"))
        })
    }
}

/// Maps rusqlite's errors onto the port's, as `db_err` does sqlx's:
/// unique violations are `Conflict` naming the columns, a busy or locked
/// database is `Unavailable`.
pub(crate) fn write_err(error: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let message = message.unwrap_or_else(|| failure.to_string());
            match failure.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    StoreError::Conflict(unique_columns(&message))
                }
                code if matches!(code & 0xff, ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED) => {
                    StoreError::Unavailable(message)
                }
                _ => StoreError::Database(message),
            }
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// The writer connection, held: for one single-statement write outside a
/// transaction (SQLite runs a statement atomically), or under a
/// [`Writer`]. Field order matters: the connection goes back before the turn
/// passes to the next writer.
pub struct WriteLease {
    pub(crate) conn: OwnedMutexGuard<DirectConn>,
    pub(crate) _turn: WriterTurn,
}

impl std::ops::Deref for WriteLease {
    type Target = DirectConn;
    fn deref(&self) -> &DirectConn {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteLease {
    fn deref_mut(&mut self) -> &mut DirectConn {
        &mut self.conn
    }
}

/// A write transaction on the held writer connection: `BEGIN IMMEDIATE`,
/// or, handed an open [`Chain`], a savepoint of the chain's transaction.
/// Dropped without [`WriteTx::commit`], it rolls back at once (a chained
/// one only its savepoint, and carries the chain on).
pub struct Writer {
    /// `None` once handed on with the chain.
    lease: Option<WriteLease>,
    open: bool,
    /// The chain it was handed, or the one it began; `None` once handed on.
    chain: Option<Chain>,
    /// Continues a chain another writer began (inside a savepoint).
    joined: bool,
}

/// The savepoint a chained transaction writes in.
const CHAINED: &str = "orderflow_chained";

impl Writer {
    /// Begins a transaction of its own, which later transactions may join.
    pub(crate) fn begin(mut lease: WriteLease) -> StoreResult<Self> {
        lease.control("begin", "BEGIN IMMEDIATE")?;
        Ok(Self {
            lease: Some(lease),
            open: true,
            chain: Some(Chain::new()),
            joined: false,
        })
    }

    /// Continues the open transaction of `chain`, in a savepoint.
    pub(crate) fn join(mut lease: WriteLease, chain: Chain) -> StoreResult<Self> {
        let joined = lease.control("savepoint", &format!("SAVEPOINT {CHAINED}"));
        let mut writer = Self {
            lease: Some(lease),
            open: true,
            chain: Some(chain),
            joined: true,
        };
        if let Err(error) = joined {
            // Nothing of ours to undo; the chain goes on without us.
            writer.open = false;
            writer.carry_on();
            return Err(error);
        }
        Ok(writer)
    }

    fn lease(&mut self) -> &mut WriteLease {
        self.lease
            .as_mut()
            .expect("held until committed or dropped")
    }

    /// Hands the chain (with the connection) to the next waiting writer if
    /// it may continue it, else commits it; either way this writer is
    /// done with the connection.
    fn carry_on(&mut self) {
        let (
            Some(WriteLease {
                conn,
                _turn: mut turn,
            }),
            Some(mut chain),
        ) = (self.lease.take(), self.chain.take())
        else {
            return;
        };
        chain.conn = Some(conn);
        if let Err(mut chain) = turn.pass(chain) {
            let mut conn = chain.conn.take().expect("put in above");
            // Its result reaches every joined transaction.
            let _ = chain.commit(&mut conn);
            // The connection goes back before the turn passes on.
            drop(conn);
        }
        drop(turn);
    }
}

impl std::ops::Deref for Writer {
    type Target = DirectConn;
    fn deref(&self) -> &DirectConn {
        self.lease
            .as_ref()
            .expect("held until committed or dropped")
    }
}

impl std::ops::DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut DirectConn {
        self.lease()
    }
}

#[async_trait]
impl WriteTx for Writer {
    async fn commit(self) -> StoreResult<()> {
        self.commit_then(|| ()).await
    }

    /// `committed` runs before the writer is handed on (after the chain's
    /// `COMMIT`, in the order the transactions joined, for a chained one).
    async fn commit_then<F: FnOnce() + Send + 'static>(mut self, committed: F) -> StoreResult<()> {
        // A failed COMMIT (another process holding the database past the
        // busy timeout) rolls the chain back and reaches every joined one.
        let mut chain = self
            .chain
            .take()
            .expect("every writer holds a chain until done");
        if self.joined
            && let Err(error) = self
                .lease()
                .control("release", &format!("RELEASE SAVEPOINT {CHAINED}"))
        {
            self.chain = Some(chain);
            return Err(error);
        }
        self.open = false;
        let done = chain.join(Box::new(committed));
        self.chain = Some(chain);
        self.carry_on();
        done.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the chained transaction was dropped before its commit".into(),
            ))
        })
    }
}

impl DirectConn {
    /// `COMMIT`, or `ROLLBACK` if it failed; the `COMMIT`'s result.
    pub(crate) fn commit_or_roll_back(&mut self) -> StoreResult<()> {
        let committed = self.control("commit", "COMMIT");
        if committed.is_err() {
            self.roll_back("ROLLBACK");
        }
        committed
    }

    fn roll_back(&mut self, sql: &str) {
        if let Err(error) = self.0.execute_batch(sql) {
            // SQLite rolls back by itself after some errors (a full disk);
            // then there is nothing left to roll back.
            tracing::debug!(%error, sql, "rolling back on the SQLite writer failed");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let joined = self.joined;
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        if joined {
            lease.roll_back(&format!(
                "ROLLBACK TO SAVEPOINT {CHAINED}; RELEASE SAVEPOINT {CHAINED}"
            ));
            self.carry_on();
        } else {
            // A chain this writer began has nobody in it yet.
            lease.roll_back("ROLLBACK");
        }
    }
}

/// The readers: connections opened on demand, kept while idle up to a
/// bound. Statements run in place, so a connection is held only by a task
/// between its statements; there is no waiting for one.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<DirectConn>>,
    max_idle: usize,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, max_idle: usize) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<DirectConn>> {
        // Nothing panics while holding the lock; take over a poisoned one.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle reader, or a new one.
    pub(crate) fn get(self: &Arc<Self>) -> StoreResult<PooledRead> {
        let conn = match self.idle().pop() {
            Some(conn) => conn,
            None => DirectConn::open_reader(&self.path)?,
        };
        Ok(PooledRead {
            conn: Some(conn),
            pool: self.clone(),
        })
    }
}

/// A reader, back to the pool when dropped.
pub struct PooledRead {
    conn: Option<DirectConn>,
    pool: Arc<ReadPool>,
}

impl std::ops::Deref for PooledRead {
    type Target = DirectConn;
    fn deref(&self) -> &DirectConn {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for PooledRead {
    fn deref_mut(&mut self) -> &mut DirectConn {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for PooledRead {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.pool.idle();
            if idle.len() < self.pool.max_idle {
                idle.push(conn);
            }
        }
    }
}

/// Checkpoints the WAL, since the in-place connections never do (see
/// [`DirectConn::open`]), off the async workers, in two ways:
/// - every [`Checkpointer::INTERVAL`], a passive checkpoint on a connection
///   of its own (on the blocking pool), beside the commits: it copies what
///   no reader still needs into the database file and never blocks anyone;
/// - when the WAL holds more than [`Checkpointer::RESTART_FRAMES`] frames, one
///   passive checkpoint while holding the writer's turn (in the background
///   queue, so requests go first). With commits landing every millisecond a
///   checkpoint beside them never reaches the end of the WAL, and SQLite
///   only starts the WAL over, instead of growing it, after a checkpoint
///   that did.
///
/// The held checkpoint stops every write of the process for as long as it
/// copies what landed since the last checkpoint and syncs the WAL and then
/// the database file, and the order requests that arrive meanwhile queue
/// behind it. So it must be short and rare:
/// - short: SQLite syncs the database file only at the end of a checkpoint
///   that reached the end of the WAL, which beside the commits almost never
///   happens. Everything the checkpoints beside the commits copied stayed
///   unsynced until the held checkpoint's `fsync` wrote it all out under
///   the writer (one took 118 ms under `strace`; the held checkpoint took
///   160 to 210 ms with the WAL started over every 1 GiB). So the
///   checkpointer syncs the database file and the WAL itself, on the
///   blocking pool, before it asks for the writer ([`sync_files`]; it
///   cannot ask SQLite to sync its own descriptors without `unsafe`): the
///   held checkpoint then syncs only what landed since (36 to 52 ms);
/// - rare: see [`Checkpointer::RESTART_FRAMES`].
///
/// Under a lighter load, whenever a checkpoint beside the commits reaches
/// the end of the WAL, the WAL starts over without any pause.
///
/// Stops when dropped (with the engine).
pub(crate) struct Checkpointer {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Checkpointer {
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
    /// 262,144 pages of 4 KiB: the WAL grows to about 1 GiB under a load
    /// that never pauses, before one held checkpoint lets it start over.
    ///
    /// Why so large: the default bench writes about 18,000 WAL frames a
    /// second (an order changes some twenty pages across its commits). With
    /// 16,384 frames the held checkpoint came about once a second, about
    /// 63 ms each: the writer stood still 7% of the time, and those pauses,
    /// with the queue they left behind, were the order request's p99 (93 to
    /// 96 ms on the server over 40 s, against 48 to 51 ms with this value,
    /// where three pauses came instead; with 65,536 it still came every few
    /// seconds, and the p99 did not move;
    /// docs/benchmarks.md, "The held checkpoint, made rare"). A reader's
    /// look-up does not grow with the WAL: it searches only the frames
    /// after the last checkpoint beside the commits (every 150 ms or so under
    /// load; SQLite's WAL index skips the frames already copied). The
    /// costs are disk (the WAL file keeps the size it reached) and, after a
    /// crash, reading a longer WAL back at the next start.
    const RESTART_FRAMES: i64 = 262_144;

    pub(crate) fn start(
        path: &Path,
        writer: WriterQueue,
        writer_conn: Arc<tokio::sync::Mutex<DirectConn>>,
    ) -> StoreResult<Self> {
        let mut own = Some(DirectConn::open(path)?);
        let path = path.to_owned();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(Self::INTERVAL) => {}
                }
                let Some(conn) = own.take() else { return };
                let Ok((conn, frames)) = tokio::task::spawn_blocking(move || {
                    let frames = conn.checkpoint();
                    (conn, frames)
                })
                .await
                else {
                    return; // the runtime is shutting down
                };
                own = Some(conn);
                if frames.is_some_and(|frames| frames > Self::RESTART_FRAMES) {
                    let files = path.clone();
                    if tokio::task::spawn_blocking(move || sync_files(&files))
                        .await
                        .is_err()
                    {
                        return; // the runtime is shutting down
                    }
                    let turn = writer.acquire(WritePriority::Background).await;
                    let held = writer_conn.clone().lock_owned().await;
                    let done = tokio::task::spawn_blocking(move || held.checkpoint()).await;
                    drop(turn);
                    if done.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self { _stop: stop })
    }
}

/// Syncs the database file at `path` and its WAL (see [`Checkpointer`] for
/// why); a failure is logged, since the held checkpoint syncs both anyway.
fn sync_files(path: &Path) {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let synced = [
        database_file(path).and_then(|file| file.sync_data()),
        // SQLite takes no locks on the WAL file itself (they are on the
        // `-shm` file), so this descriptor may be closed again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .and_then(|file| file.sync_data()),
    ];
    for error in synced.into_iter().filter_map(Result::err) {
        tracing::warn!(%error, path = %path.display(), "syncing before the held checkpoint failed");
    }
}

/// A descriptor of the database file at `path` for [`sync_files`], opened
/// once per path and never closed.
///
/// Why never closed: closing any descriptor of a file drops every POSIX
/// lock the process holds on it, SQLite's included, and SQLite's shared
/// lock on the database file is what tells another process closing its
/// connection that it is not the last one (the last one checkpoints and
/// deletes the WAL).
fn database_file(path: &Path) -> std::io::Result<Arc<std::fs::File>> {
    static OPEN: std::sync::LazyLock<
        Mutex<std::collections::HashMap<PathBuf, Arc<std::fs::File>>>,
    > = std::sync::LazyLock::new(Mutex::default);
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = open.get(path) {
        return Ok(file.clone());
    }
    let file = Arc::new(std::fs::OpenOptions::new().write(true).open(path)?);
    open.insert(path.to_owned(), file.clone());
    Ok(file)
}

impl DirectConn {
    /// A passive checkpoint; the frames in the WAL (`None` if it failed,
    /// which is logged).
    fn checkpoint(&self) -> Option<i64> {
        match self
            .0
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(1)
            }) {
            Ok(frames) => Some(frames),
            Err(error) => {
                tracing::warn!(%error, "checkpointing the SQLite WAL failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::sql::{Exec, WriteTx, stmt};
    use crate::sqlite::SqliteStore;
    use crate::sqlite::writer::WritePriority;

    /// Transactions queued behind a request commit with it in one chain:
    /// the request's transaction goes on in a savepoint per queued one; one
    /// that is dropped unfinished is undone alone, and the others'
    /// `committed` steps run after the one `COMMIT`, in the order they
    /// joined (the order the queue serves: requests first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_transactions_commit_as_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chain.db").display());
        let store = SqliteStore::connect(&url, 2).await.unwrap();
        let engine = store.engine.clone();
        // A machine this busy may take long to wake the next writer.
        engine.writer.set_chain_held_max(Duration::from_secs(60));
        let mut setup = engine.begin_writer(WritePriority::Request).await.unwrap();
        setup
            .exec(stmt("test", "CREATE TABLE chained (x INTEGER)", ()))
            .await
            .unwrap();
        setup.commit().await.unwrap();

        let mut holder = engine.begin_writer(WritePriority::Request).await.unwrap();
        holder
            .exec(stmt("test", "INSERT INTO chained (x) VALUES (100)", ()))
            .await
            .unwrap();
        let committed = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        let priorities = [
            WritePriority::Background,
            WritePriority::Background,
            WritePriority::Background,
            WritePriority::Request,
        ];
        for (x, priority) in (0..4_i64).zip(priorities) {
            let (queued, committed) = (engine.clone(), committed.clone());
            writers.push(tokio::spawn(async move {
                let mut w = queued.begin_writer(priority).await?;
                let joined = w.joined;
                w.exec(stmt("test", "INSERT INTO chained (x) VALUES ($1)", (x,)))
                    .await?;
                if x == 2 {
                    drop(w); // failed: undone alone
                    return Ok::<_, crate::sqlite::StoreError>((joined, false));
                }
                w.commit_then(move || committed.lock().unwrap().push(x))
                    .await?;
                Ok((joined, true))
            }));
            let queued = || {
                let (requests, background) = engine.writer.waiting();
                requests + background
            };
            while queued() <= x as usize {
                tokio::task::yield_now().await;
            }
        }
        holder
            .commit_then({
                let committed = committed.clone();
                move || committed.lock().unwrap().push(100)
            })
            .await
            .unwrap();
        let mut outcomes = Vec::new();
        for writer in writers {
            outcomes.push(writer.await.unwrap().unwrap());
        }
        assert_eq!(
            outcomes,
            [(true, true), (true, true), (true, false), (true, true)],
            "every queued one joined the holder's transaction"
        );
        assert_eq!(
            *committed.lock().unwrap(),
            [100, 3, 0, 1],
            "committed in the order they joined: the queued request first"
        );
        let rows = engine
            .readers
            .get()
            .unwrap()
            .query_all(stmt("test", "SELECT x FROM chained ORDER BY x", ()))
            .await
            .unwrap();
        let xs: Vec<i64> = rows
            .iter()
            .map(|row| crate::sql::SqlRow::int(row, "x").unwrap())
            .collect();
        assert_eq!(xs, [0, 1, 3, 100], "the dropped one's row is undone alone");
        // The writer is free again.
        let again = tokio::time::timeout(
            Duration::from_secs(5),
            engine.begin_writer(WritePriority::Request),
        )
        .await;
        assert!(again.is_ok_and(|w| w.is_ok()), "the writer was lost");
    }
}
