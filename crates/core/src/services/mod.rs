//! Use cases, built only on [`crate::ports`].

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod effects;
pub mod live;
pub mod orders;
pub mod queries;
pub mod relay;
