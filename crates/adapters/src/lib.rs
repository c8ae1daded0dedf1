//! Adapters: the technologies behind orderflow's ports (`orderflow_core::ports`).
//!
//! Map of the crate:
//! - [`sqlite`]: the embedded database (sqlx, WAL) implementing the
//!   [`Store`](orderflow_core::ports::store::Store) port, and the embedded event
//!   log (a table in the same database) implementing
//!   [`EventLog`](orderflow_core::ports::log::EventLog).
//! - [`memory`]: in-process adapters: the revocation list (backed by the
//!   database) and the rate limiter.
//! - [`providers`]: payment, e-mail, SMS and push: real adapters (SMTP, HTTP
//!   webhooks) and the simulated provider with configurable latency and failure rate.

pub mod kafka;
pub mod memory;
pub mod postgres;
pub mod providers;
pub mod redis;
pub mod sqlite;
