//! orderflow's domain: the types and rules of an online shop's orders, with no IO.
//!
//! Map of the crate:
//! - [`rules`]: input rules written once ([`rules::TextRule`], [`rules::IntRule`],
//!   [`rules::CountRule`]): validation runs them and the OpenAPI schema is built
//!   from them.
//! - [`money`]: integer cents and ISO currency codes; all arithmetic is checked.
//! - [`user`]: registration input rules (e-mail shape, password policy) and roles.
//! - [`product`]: catalog items and the rules for creating and updating them.
//! - [`order`]: order requests (validation, pricing), order states and the guarded
//!   state machine every consumer goes through.
//! - [`events`]: the CloudEvents-style envelope and the payloads carried on each topic.
//! - [`notification`]: channels and kinds of shopper notifications.
//! - [`fraud`]: the fraud rules over a sliding window of event time (too many
//!   orders, or too much money, from one shopper), exact and pure.
//! - [`sales`]: tumbling windows of event time (a minute, a day) for the
//!   revenue the `analytics` group keeps, and when an event counts as late.
//! - [`error`]: [`ValidationError`], the one error type of this layer: it names the
//!   offending field so the API can answer 422 with a useful message.
//!
//! Everything here is deterministic and cheap to unit-test; the use cases that
//! combine these rules with storage and the event log live in `orderflow-core`.

pub mod cart;
pub mod error;
pub mod events;
pub mod fraud;
pub mod money;
pub mod notification;
pub mod order;
pub mod product;
pub mod rules;
pub mod sales;
pub mod user;

pub use error::ValidationError;

/// Identifies a user (shopper or admin).
pub type UserId = uuid::Uuid;
/// Identifies a catalog product.
pub type ProductId = uuid::Uuid;
/// Identifies an order.
pub type OrderId = uuid::Uuid;
/// Identifies an event (UUID v7, so ids sort by creation time).
pub type EventId = uuid::Uuid;
/// Timestamps are always UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
