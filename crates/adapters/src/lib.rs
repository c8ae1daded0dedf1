//! Adapters: the technologies behind orderflow's ports (`orderflow_core::ports`).
//!
//! Map of the crate:
//! - [`sql`]: the store written once for both SQL engines: every query, row
//!   mapping and the unit of work, generic over a small `Engine` trait for
//!   what truly differs (locking, the log's append, wake-ups, encodings);
//!   the module docs say why this shape and not `sqlx::Any` or a query
//!   builder.
//! - [`sqlite`]: the embedded database (sqlx, WAL): SQLite's engine (its
//!   writer queue, encodings, errors), the embedded event log (a table in
//!   the same database) implementing
//!   [`EventLog`](orderflow_core::ports::log::EventLog), and the outbox the
//!   Kafka relay reads when the log is Kafka.
//! - [`postgres`]: PostgreSQL's engine (row and advisory locks where SQLite
//!   locks the file); its event log (partitions shared by leases,
//!   LISTEN/NOTIFY wake-ups) and its outbox (`FOR UPDATE SKIP LOCKED`,
//!   several relays).
//! - [`kafka`]: Kafka (rdkafka) as the event log: topic creation, the
//!   idempotent producer the relay publishes through, consumer-group members
//!   with manual commits and cooperative rebalancing, lag from watermarks.
//! - [`redis`]: Redis (standalone, TLS or cluster): the shared L2 catalog
//!   cache with pub/sub invalidation and cross-process request collapsing,
//!   the rate limiter (one Lua script per algorithm) and revocations, all
//!   backed by the database or harmless to lose.
//! - [`memory`]: in-process adapters: the revocation list (backed by the
//!   database), the rate limiter and the shared-cache stand-in.
//! - [`providers`]: payment, e-mail, SMS and push: real adapters (SMTP, HTTP
//!   webhooks) and the simulated provider with configurable latency and failure rate.

pub mod kafka;
pub mod memory;
pub mod postgres;
pub mod providers;
pub mod redis;
pub mod sql;
pub mod sqlite;

/// Sets `orderflow_db_pool_connections{state="in_use"|"idle"}` and
/// `orderflow_db_pool_max_connections` from a sqlx pool: the same gauges for
/// every database adapter, so one dashboard serves both.
pub(crate) fn export_pool_gauges<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    let idle = pool.num_idle() as f64;
    let size = f64::from(pool.size());
    metrics::gauge!("orderflow_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("orderflow_db_pool_connections", "state" => "in_use")
        .set((size - idle).max(0.0));
    metrics::gauge!("orderflow_db_pool_max_connections")
        .set(f64::from(pool.options().get_max_connections()));
}

/// Maps the sqlx errors that are not the database's answer (the pool, the
/// connection, decoding) onto the port's error, the same on both engines:
/// anything transient is `Unavailable` (503); a value that does not decode
/// is `Corrupt`.
pub(crate) fn transport_err(error: sqlx::Error) -> orderflow_core::ports::store::StoreError {
    use orderflow_core::ports::store::StoreError;
    match error {
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

/// One step of the savepoint a group commit wraps around each effect
/// ([`StoreTx::savepoint`](orderflow_core::ports::store::StoreTx::savepoint)
/// and its siblings): the same SQL on SQLite and PostgreSQL. The name is
/// fixed, since the API opens one savepoint at a time; PostgreSQL's stock
/// reservation nests its own savepoint inside it, which both engines allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SavepointStep {
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

/// The topics a unit of work appended events to, for after its commit (they
/// count as published, subscribers are woken), kept right across the effect
/// savepoint: events appended after a savepoint that is rolled back are gone.
#[derive(Debug, Default)]
pub(crate) struct AppendedTopics {
    topics: Vec<&'static str>,
    /// How many topics there were when the open savepoint was taken.
    at_savepoint: Option<usize>,
}

impl AppendedTopics {
    pub(crate) fn push(&mut self, topic: &'static str) {
        self.topics.push(topic);
    }

    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }

    /// Follows a savepoint step that succeeded.
    pub(crate) fn after(&mut self, step: SavepointStep) {
        match step {
            SavepointStep::Open => self.at_savepoint = Some(self.topics.len()),
            SavepointStep::Release => self.at_savepoint = None,
            SavepointStep::RollBack => {
                if let Some(kept) = self.at_savepoint.take() {
                    self.topics.truncate(kept);
                }
            }
        }
    }

    /// The topics, once the transaction committed.
    pub(crate) fn into_topics(self) -> Vec<&'static str> {
        self.topics
    }
}
