//! In-process adapters: the embedded defaults of the ports that the scaled
//! setup serves from Redis (DESIGN.md §3).
//!
//! - [`DbBackedRevocations`]: revoked access-token ids, answered from memory
//!   and stored in the database, so a restart forgets nothing.
//! - [`InProcessRateLimiter`]: fixed-window, token-bucket and leaky-bucket
//!   limits per (policy, key), with bounded memory.
//! - [`InProcessSharedCache`]: the shared-cache port (values, locks, pub/sub)
//!   within one process, so the cache contract has an embedded adapter.
//! - [`InProcessPresence`]: the live presence board, for one process.
//! - [`NoReadModels`]: read models off; reads fall back to the database.
//!
//! With one process, memory is as good as a shared store, and costs no setup.

pub mod cache;
pub mod presence;
pub mod rate_limit;
pub mod read_models;
pub mod revocations;

pub use cache::InProcessSharedCache;
pub use presence::InProcessPresence;
pub use rate_limit::InProcessRateLimiter;
pub use read_models::NoReadModels;
pub use revocations::DbBackedRevocations;
