//! The core layer's error type. The HTTP layer maps each variant to a status
//! and a stable problem `type` in one place (`orderflow-api`'s `problem.rs`).

use orderflow_domain::ValidationError;

use crate::ports::log::LogError;
use crate::ports::providers::ProviderError;
use crate::ports::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Input breaks a rule; names the field.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The thing does not exist, or the caller may not know that it does.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique value is taken (e-mail, SKU).
    #[error("{0}")]
    Conflict(String),
    /// Credentials or token missing, wrong, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The same idempotency key was used with a different request body.
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// An outside provider failed while the request waited for it (inline mode).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// Anything else that is our fault; never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}
