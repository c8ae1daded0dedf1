//! orderflow's consumer groups: the runtime that honours the consumer contract
//! (DESIGN.md §4) and one handler per group.
//!
//! Map of the crate:
//! - [`runtime`]: the [`Handler`] trait every group implements (prepare:
//!   reads and provider calls; its [`Effect`]: the writes), and [`Consumer`],
//!   one group member: a window of deliveries in flight with per-key order,
//!   bounded retries (backoff + jitter), dead letters (`failed.messages`),
//!   group commits (one transaction for many deliveries' effects, each in
//!   its savepoint), offsets committed up to the highest contiguous finished
//!   delivery. [`Consumer::process_batch`] is the single step tests drive;
//!   [`Consumer::run`] is the pipelined loop until a shutdown token is
//!   cancelled.
//! - [`handlers`]: the ten groups ([`GROUPS`]): fraud, inventory, payment,
//!   orders, email, sms, push, loyalty, analytics, trending; and [`WorkerDeps`], which
//!   builds their consumers from the store, the event log and the providers.
//! - [`rebuild`]: `orderflow rebuild GROUP`, a stream processor's state
//!   thrown away and replayed from the log.
//! - [`error`]: [`WorkerError`], the one error type of this layer.
//!
//! The pieces of logic the consumers share with the synchronous "inline" order
//! path (points, message texts, charge requests, [`RetryPolicy`]) live in
//! `orderflow_core::services::effects`, so both architectures behave the same.
//!
//! Typical use (`orderflow worker GROUP` or `orderflow serve`):
//!
//! ```no_run
//! # async fn example(deps: orderflow_workers::WorkerDeps) -> Result<(), orderflow_workers::WorkerError> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let consumers = deps.all_consumers().await?;
//! orderflow_workers::run_consumers(consumers, shutdown.clone()).await;
//! # Ok(()) }
//! ```

pub mod error;
pub mod handlers;
pub mod rebuild;
pub mod runtime;

pub use error::WorkerError;
pub use handlers::{GROUP_TOPICS, GROUPS, WorkerDeps, topics_of};
pub use orderflow_core::services::effects::{Notifiers, RetryPolicy};
pub use runtime::{
    Applied, BatchReport, Consumer, ConsumerSettings, Effect, Handled, Handler, Prepared,
};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs every consumer on its own task until `shutdown` is cancelled, then
/// waits for each to finish and commit the batch it holds.
pub async fn run_consumers(consumers: Vec<Consumer>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    for consumer in consumers {
        tracker.spawn(consumer.run(shutdown.clone()));
    }
    tracker.close();
    tracker.wait().await;
}
