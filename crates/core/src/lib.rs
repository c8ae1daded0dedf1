//! orderflow's core: the ports (traits) the application talks to, and the use
//! cases built on them. Nothing here knows SQLite, PostgreSQL, Redis or Kafka;
//! adapters in `orderflow-adapters` implement the ports.
//!
//! Map of the crate:
//! - [`ports`]: the traits, one module per port.
//!   - [`ports::store`]: the database (users, sessions, products, orders, outbox,
//!     idempotency, processed events, read models) and its unit of work,
//!     [`ports::store::StoreTx`]: everything a use case or a consumer writes
//!     commits in one transaction, together with the events it causes.
//!   - [`ports::log`]: the event log as consumer groups see it (poll, commit, lag).
//!   - [`ports::providers`]: payment, e-mail, SMS and push providers.
//!   - [`ports::revocations`]: revoked access-token ids.
//!   - [`ports::rate_limit`]: rate-limit decisions.
//! - [`services`]: the use cases: [`services::auth`], [`services::catalog`] (the
//!   two-level cache kept coherent by product versions: read-through with
//!   request collapsing, write-through, write-around, write-behind view
//!   counters, refresh-ahead), [`services::orders`] (placement, both side-effect
//!   modes), [`services::effects`] (the side effects shared by the consumers and
//!   inline mode), [`services::queries`] (notifications, points, leaderboard),
//!   [`services::live`] (live channels: who may follow what, the per-process
//!   hub and its bus, followers that resume after a client's position, one
//!   connection per client with the reasons it is closed, tickets).
//!   The consumer groups themselves run in `orderflow-workers`.
//! - [`contract`]: port scenarios written once, run by every adapter's tests.
//! - [`audit`]: security events (lockouts, refresh-token reuse, revocations,
//!   key rotation, admin actions) as structured audit lines, never a secret.
//! - [`error`]: [`CoreError`], the one error type use cases return.
//! - [`trace`]: [`trace::join_remote_parent`], how a span continues a trace
//!   begun by an HTTP caller or carried by an event.
//! - [`wait`]: [`wait::or_never`], for `select!` branches that come and go.

pub mod audit;
pub mod contract;
pub mod error;
pub mod per_core;
pub mod ports;
pub mod services;
pub mod trace;
pub mod wait;

pub use error::CoreError;
