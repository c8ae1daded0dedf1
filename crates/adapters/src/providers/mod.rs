//! Outside providers: payment, e-mail, SMS and push (DESIGN.md §4, "External
//! providers").
//!
//! Every provider port ([`PaymentGateway`], [`Notifier`]) has two kinds of
//! adapter here:
//! - real ones that talk to an outside service: [`SmtpNotifier`] (e-mail over
//!   SMTP), [`WebhookNotifier`] (SMS and push over an HTTP webhook) and
//!   [`WebhookPayment`] (a payment gateway over HTTP);
//! - simulated ones ([`SimulatedNotifier`], [`SimulatedPayment`]) with a
//!   latency and a failure rate that can be changed while running, used by the
//!   demo and the benchmark, and by end-to-end tests that need a provider to
//!   fail on demand.
//!
//! All of them report the same metrics, recorded in one place (`instrumented`):
//! - `orderflow_provider_calls_total{provider, outcome}`, where `outcome` is
//!   `success`, `declined` (a payment the gateway refused), `transient_error`
//!   or `permanent_error`;
//! - `orderflow_provider_call_seconds{provider}`, a histogram of call latency.
//!
//! Every provider, real or simulated, runs behind a circuit breaker
//! ([`breaker`]) unless `ORDERFLOW_BREAKERS` switches it off.
//!
//! Errors follow the port's rule: a failure that may go away by itself
//! (time-out, connection refused, 5xx, SMTP 4xx) is `retryable`, so the
//! consumer retries it with backoff; one that will not (HTTP 4xx, SMTP 5xx, a
//! bad address) is permanent and goes straight to the dead-letter queue.
//!
//! [`PaymentGateway`]: orderflow_core::ports::providers::PaymentGateway
//! [`Notifier`]: orderflow_core::ports::providers::Notifier

use std::future::Future;

use orderflow_core::ports::providers::{ChargeOutcome, ProviderError};
use orderflow_domain::notification::Channel;

pub mod breaker;
pub mod simulated;
pub mod smtp;
pub mod webhook;

pub use breaker::{
    Breaker, BreakerSettings, BreakerSpec, DEFAULT_BREAKER_SPEC, WithBreaker,
    notifier_with_breaker, payment_with_breaker,
};
pub use simulated::{
    SimulatedControls, SimulatedNotifier, SimulatedPayment, SimulatedProviders, SimulationControls,
    SimulationSettings,
};
pub use smtp::{SmtpNotifier, SmtpSettings, SmtpTls};
pub use webhook::{WebhookNotifier, WebhookPayment, WebhookSettings};

pub use orderflow_core::ports::providers::PAYMENT;

/// The `provider` label (and [`ProviderError::provider`]) of a notification channel.
pub fn channel_provider(channel: Channel) -> &'static str {
    channel.as_str()
}

/// A provider adapter could not be built from its settings (a malformed URL or
/// address). Raised at start-up, so a bad configuration stops the process
/// instead of failing every call later.
#[derive(Debug, thiserror::Error)]
#[error("invalid {provider} provider setting `{setting}`: {reason}")]
pub struct ProviderConfigError {
    pub provider: &'static str,
    pub setting: &'static str,
    pub reason: String,
}

impl ProviderConfigError {
    pub(crate) fn new(
        provider: &'static str,
        setting: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            setting,
            reason: reason.into(),
        }
    }
}

/// How a successful call is labelled in `orderflow_provider_calls_total`.
pub(crate) trait CallOutcome {
    fn outcome(&self) -> &'static str;
}

impl CallOutcome for () {
    fn outcome(&self) -> &'static str {
        "success"
    }
}

impl CallOutcome for ChargeOutcome {
    fn outcome(&self) -> &'static str {
        match self {
            ChargeOutcome::Approved { .. } => "success",
            ChargeOutcome::Declined { .. } => "declined",
        }
    }
}

/// Runs one provider call and records its outcome and latency. Every adapter,
/// real or simulated, goes through here, so dashboards read the same series
/// whichever provider is configured.
///
/// The latency uses tokio's clock, so under paused time (tests) it measures
/// the simulated latency rather than nothing.
pub(crate) async fn instrumented<T: CallOutcome>(
    provider: &'static str,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    let started = tokio::time::Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(value) => value.outcome(),
        Err(error) if error.retryable => "transient_error",
        Err(_) => "permanent_error",
    };
    metrics::counter!("orderflow_provider_calls_total", "provider" => provider, "outcome" => outcome).increment(1);
    metrics::histogram!("orderflow_provider_call_seconds", "provider" => provider)
        .record(started.elapsed().as_secs_f64());
    // Debug, not warn: the consumer that made the call logs the retry or the
    // dead letter with the event's context; a simulated outage at rate 1.0
    // would otherwise log every call twice.
    if let Err(error) = &result {
        tracing::debug!(provider, retryable = error.retryable, message = %error.message, "provider call failed");
    }
    result
}
