//! [`WorkerError`], the one error type of the consumer layer.
//!
//! The runtime branches on three questions only, so they are methods here
//! rather than knowledge spread over the handlers: is the store down (stop
//! the batch, keep the offsets, back off: [`WorkerError::is_store_unavailable`]),
//! is the provider's circuit breaker open (wait for it, keep the offsets:
//! [`WorkerError::circuit_open_for`]), and is another attempt worth it
//! ([`WorkerError::is_retryable`]).

use orderflow_core::ports::log::LogError;
use orderflow_core::ports::providers::ProviderError;
use orderflow_core::ports::read_models::ReadModelError;
use orderflow_core::ports::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// An outside provider (payment, e-mail, SMS, push) failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The shared store of the viewer sketches (Redis) failed: retried like
    /// a provider call (adding a visitor id again changes nothing).
    #[error(transparent)]
    Sketches(#[from] ReadModelError),
    /// The event names something the database does not have (an order, a
    /// user). Retrying cannot help: the event goes to the dead-letter queue.
    #[error("{0} not found")]
    Missing(String),
    /// The event cannot be acted on as it is (for example an invalid currency).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The handler panicked (a bug): not retried, the event is dead-lettered
    /// with the panic message.
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// `worker GROUP` was given a name that is not one of [`crate::GROUPS`].
    #[error("unknown consumer group `{0}`; expected one of {groups}", groups = crate::GROUPS.join(", "))]
    UnknownGroup(String),
}

impl WorkerError {
    /// The database cannot be reached: the consumer must not dead-letter (the
    /// dead letter could not be written either, and the event is fine), but
    /// stop, keep its offsets and try again later; redelivery is safe.
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, WorkerError::Store(StoreError::Unavailable(_)))
    }

    /// How long the provider this delivery needs still refuses calls (its
    /// circuit breaker is open): the delivery waits that long without
    /// spending an attempt, so an outage dead-letters nothing.
    pub fn circuit_open_for(&self) -> Option<std::time::Duration> {
        match self {
            WorkerError::Provider(error) => error.circuit_open_for,
            _ => None,
        }
    }

    /// Whether another attempt may succeed. Permanent provider errors (a 4xx,
    /// a bad address), missing rows and malformed events go straight to the
    /// dead-letter queue instead of burning the retry budget.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Provider(error) => error.retryable,
            WorkerError::Store(StoreError::Corrupt(_)) => false,
            WorkerError::Store(_) | WorkerError::Log(_) | WorkerError::Sketches(_) => true,
            WorkerError::Missing(_)
            | WorkerError::InvalidEvent(_)
            | WorkerError::Panicked(_)
            | WorkerError::UnknownGroup(_) => false,
        }
    }
}
