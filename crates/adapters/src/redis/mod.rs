//! Redis adapters: the scaled setup's shared cache, rate limiter and
//! revocation list (DESIGN.md §3), on a standalone server or a cluster.
//!
//! Rule kept everywhere (from the notes): Redis may lose everything at any
//! moment. Nothing here is the source of truth; what must survive is in the
//! database, and every adapter keeps answering while Redis is down.
//!
//! Map:
//! - [`connection`]: [`RedisSettings`] and [`RedisConnection`], one handle
//!   for commands, Lua scripts and pub/sub, chosen by URL (`redis://`,
//!   `rediss://`, `redis+cluster://`), with a key prefix and short timeouts;
//!   [`RedisTls`] for a private CA and client certificates.
//! - [`permissions`]: the start-up check that the Redis user may run every
//!   command orderflow sends (the ACL in `deploy/redis/orderflow.acl`).
//! - [`sharded`]: a cluster's sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`),
//!   one RESP3 connection for every subscription of the process.
//! - [`cache`]: [`RedisSharedCache`], the catalog's L2 (values, locks for
//!   request collapsing across processes, invalidations over pub/sub).
//! - [`rate_limit`]: [`RedisRateLimiter`], each algorithm one atomic script.
//! - [`revocations`]: [`RedisRevocations`], revoked token ids with `PXAT`,
//!   backed by the database and rebuilt when Redis comes back empty.
//! - [`presence`]: [`RedisPresence`], live connections per user and API
//!   process, for the admin health channel.
//! - [`read_models`]: [`RedisReadModels`], leaderboard, daily sales, recent
//!   notifications and live order-status channels.
//! - [`sketches`]: [`RedisViewerSketches`], unique viewers per product and
//!   day as HyperLogLogs (the `trending` group's state with Redis).
//! - [`carts`]: [`RedisCarts`], a hash per shopper's cart with a time to
//!   live, each change and the checkout's compare-and-clear one script.

pub mod cache;
pub mod carts;
pub mod connection;
pub mod permissions;
pub mod presence;
pub mod rate_limit;
pub mod read_models;
pub mod revocations;
mod sharded;
pub mod sketches;

pub use cache::RedisSharedCache;
pub use carts::RedisCarts;
pub use connection::{RedisConfigError, RedisConnection, RedisSettings, RedisTls};
pub use permissions::RedisCheckError;
pub use presence::RedisPresence;
pub use rate_limit::RedisRateLimiter;
pub use read_models::RedisReadModels;
pub use revocations::{RebuildError, RedisRevocations};
pub use sketches::RedisViewerSketches;
