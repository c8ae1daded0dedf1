//! Adapters: the technologies behind orderflow's ports (`orderflow_core::ports`).
//!
//! Map of the crate:
//! - `sql`: the store written once for both SQL engines: every query, row
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
//!   cache with version-conditional writes (a Lua compare-and-set), pub/sub
//!   invalidation and cross-process request collapsing,
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
pub(crate) mod sql;
pub mod sqlite;

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
