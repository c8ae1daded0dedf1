//! In-process adapters: the embedded defaults of the ports that the scaled
//! setup serves from Redis (DESIGN.md §3).
//!
//! - [`DbBackedRevocations`]: revoked access-token ids, answered from memory
//!   and stored in the database, so a restart forgets nothing.
//! - [`InProcessRateLimiter`]: fixed-window, token-bucket and leaky-bucket
//!   limits per (policy, key), with bounded memory.
//!
//! With one process, memory is as good as a shared store, and costs no setup.

pub mod rate_limit;
pub mod revocations;

pub use rate_limit::InProcessRateLimiter;
pub use revocations::DbBackedRevocations;
