//! Outside providers: payment, e-mail, SMS, push.
//!
//! Each has a real adapter (SMTP, HTTP webhooks) and a simulated one with a
//! configurable latency and failure rate, used by the demo and the benchmark.
//! Calls carry an idempotency key (derived from the event id) so a provider
//! can drop the duplicate a redelivery causes.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::{OrderId, UserId};

/// The `provider` name of the payment gateway (in errors and metrics); a
/// notification channel's is the channel's name.
pub const PAYMENT: &str = "payment";

/// A provider call failed. `retryable` tells transient failures (time-outs,
/// 5xx, connection refused) from permanent ones (a 4xx, a bad address).
/// `circuit_open_for` is set when the provider's circuit breaker is open:
/// the call was refused without being made (or its failure opened the
/// breaker), and calling again before that much time has passed is useless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} provider failed: {message}")]
pub struct ProviderError {
    pub provider: &'static str,
    pub message: String,
    pub retryable: bool,
    pub circuit_open_for: Option<Duration>,
}

impl ProviderError {
    pub fn transient(provider: &'static str, message: impl Into<String>) -> Self {
        Self {
            provider,
            message: message.into(),
            retryable: true,
            circuit_open_for: None,
        }
    }

    pub fn permanent(provider: &'static str, message: impl Into<String>) -> Self {
        Self {
            provider,
            message: message.into(),
            retryable: false,
            circuit_open_for: None,
        }
    }

    /// The provider's circuit breaker is open for `wait` more.
    pub fn circuit_open(
        provider: &'static str,
        wait: Duration,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            message: message.into(),
            retryable: true,
            circuit_open_for: Some(wait),
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
    /// How long the gateway's circuit breaker still refuses calls; `None`
    /// while calls go through. Inline orders ask before they start.
    fn circuit_open_for(&self) -> Option<Duration> {
        None
    }
}

/// One message to one shopper on one channel. Serialized as the webhook
/// provider sends it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    /// How long the provider's circuit breaker still refuses calls; `None`
    /// while calls go through.
    fn circuit_open_for(&self) -> Option<Duration> {
        None
    }
}

/// One simulated provider's knobs, as the console shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedProvider {
    /// `email`, `sms`, `push` or `payment`.
    pub name: &'static str,
    pub latency: Duration,
    /// 0.0 to 1.0: the share of calls that fail.
    pub failure_rate: f64,
}

/// The simulated providers in use, for the operator console: a demo makes
/// SMS fail and watches the retries and the dead-letter queue. Absent when
/// every provider is a real one.
pub trait ProviderControls: Send + Sync + 'static {
    fn providers(&self) -> Vec<SimulatedProvider>;
    /// Changes one provider's latency and failure rate (clamped to 0..=1);
    /// false for a name that is not a simulated provider in use.
    fn set(&self, name: &str, latency: Duration, failure_rate: f64) -> bool;
}
