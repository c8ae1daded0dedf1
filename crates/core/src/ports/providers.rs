//! Outside providers: payment, e-mail, SMS, push.
//!
//! Each has a real adapter (SMTP, HTTP webhooks) and a simulated one with a
//! configurable latency and failure rate, used by the demo and the benchmark.
//! Calls carry an idempotency key (derived from the event id) so a provider
//! can drop the duplicate a redelivery causes.

use async_trait::async_trait;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::{OrderId, UserId};

/// A provider call failed. `retryable` tells transient failures (time-outs,
/// 5xx, connection refused) from permanent ones (a 4xx, a bad address).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} provider failed: {message}")]
pub struct ProviderError {
    pub provider: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl ProviderError {
    pub fn transient(provider: &'static str, message: impl Into<String>) -> Self {
        Self {
            provider,
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(provider: &'static str, message: impl Into<String>) -> Self {
        Self {
            provider,
            message: message.into(),
            retryable: false,
        }
    }
}

/// A request to charge a shopper for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount_cents: i64,
    pub currency: String,
}

/// The business answer of a charge. A decline is not an error: the order
/// moves to `payment_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved { payment_id: String },
    Declined { reason: String },
}

#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError>;
    /// Gives a captured payment back (inline mode compensates with it).
    async fn refund(&self, payment_id: &str, idempotency_key: &str) -> Result<(), ProviderError>;
}

/// One message to one shopper on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub idempotency_key: String,
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub kind: NotificationKind,
    pub order_id: Option<OrderId>,
    pub subject: String,
    pub body: String,
}

#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    fn channel(&self) -> Channel;
    async fn send(&self, message: &OutgoingMessage) -> Result<(), ProviderError>;
}
