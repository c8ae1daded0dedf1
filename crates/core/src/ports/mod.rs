//! Ports: the traits the core talks to. Each has an embedded adapter (the
//! zero-setup default) and, later, a scaled one; `crate::contract` holds the
//! scenarios every adapter of a port must pass.

pub mod cache;
pub mod carts;
pub mod log;
pub mod outbox;
pub mod presence;
pub mod providers;
pub mod rate_limit;
pub mod read_models;
pub mod revocations;
pub mod store;
