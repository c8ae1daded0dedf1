//! SMS, push and payment over HTTP webhooks: the real adapters for providers
//! that are reached with a JSON `POST`.
//!
//! Most SMS and push services (and the glue in front of them) take a JSON
//! request; so do card gateways. Rather than bind orderflow to one vendor's
//! SDK, these adapters speak a small documented protocol to a URL the operator
//! configures, and a thin bridge (or the vendor, if it fits) answers it:
//!
//! - Notifications: `POST {url}` with the message (see [`NotificationPayload`]).
//!   Any 2xx means delivered.
//! - Charges: `POST {url}/charges` with `{idempotency_key, order_id, user_id,
//!   amount_cents, currency}`, answered `200 {"status":"approved","payment_id":..}`
//!   or `200 {"status":"declined","reason":..}` (a `402` with the declined body
//!   is accepted too).
//! - Refunds: `POST {url}/refunds` with `{payment_id, idempotency_key}`; any 2xx
//!   means refunded.
//!
//! Every request carries an `Idempotency-Key` header (the same key as in the
//! body), so the provider can drop the duplicate a redelivery causes, and an
//! optional bearer token.
//!
//! Failures: time-outs, connection errors, `5xx`, `408` and `429` are
//! retryable; any other `4xx` is permanent (the request itself is wrong, and
//! sending it again will not help). A `2xx` whose body cannot be read is
//! retryable too: the idempotency key makes asking again safe.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::providers::{
    ChargeOutcome, ChargeRequest, Notifier, OutgoingMessage, PaymentGateway, ProviderError,
};
use orderflow_domain::notification::Channel;
use orderflow_domain::{OrderId, UserId};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{PAYMENT, ProviderConfigError, channel_provider, instrumented};

/// How much of an error response's body goes into the error message.
const BODY_EXCERPT: usize = 200;

/// Where a webhook provider lives. The token is a [`SecretString`]: `Debug`
/// prints it as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// For notifications the URL posted to; for payments the base URL
    /// (`/charges` and `/refunds` are appended).
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub bearer_token: Option<SecretString>,
    /// For the whole request, connecting included.
    pub timeout: Duration,
}

impl WebhookSettings {
    /// No token, a 5-second timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            bearer_token: None,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn with_bearer_token(mut self, token: SecretString) -> Self {
        self.bearer_token = Some(token);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The body of a notification request: the message as the port has it
/// (its fields at the top level), and the channel to send it on.
#[derive(Debug, Serialize)]
pub struct NotificationPayload<'a> {
    pub channel: Channel,
    #[serde(flatten)]
    pub message: &'a OutgoingMessage,
}

/// The body of a charge request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargePayload {
    pub idempotency_key: String,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount_cents: i64,
    pub currency: String,
}

/// The body of a refund request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayload {
    pub payment_id: String,
    pub idempotency_key: String,
}

/// The answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChargeReply {
    Approved { payment_id: String },
    Declined { reason: String },
}

/// The HTTP client and settings shared by the webhook adapters.
#[derive(Clone)]
struct Endpoint {
    provider: &'static str,
    client: reqwest::Client,
    settings: WebhookSettings,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("provider", &self.provider)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(provider: &'static str, settings: WebhookSettings) -> Result<Self, ProviderConfigError> {
        let url = Url::parse(&settings.url)
            .map_err(|error| ProviderConfigError::new(provider, "url", format!("{error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ProviderConfigError::new(
                provider,
                "url",
                "must be http or https",
            ));
        }
        if settings.timeout.is_zero() {
            return Err(ProviderConfigError::new(
                provider,
                "timeout",
                "must be above zero",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("orderflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ProviderConfigError::new(provider, "client", format!("{error}")))?;
        Ok(Self {
            provider,
            client,
            settings,
        })
    }

    /// `{url}{suffix}`, without doubling a trailing slash.
    fn url(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            self.settings.url.clone()
        } else {
            format!("{}{suffix}", self.settings.url.trim_end_matches('/'))
        }
    }

    /// Posts `body` as JSON; returns the response when its status is 2xx
    /// (or one of `accept`), an error sorted by retryability otherwise.
    async fn post<B: Serialize + ?Sized>(
        &self,
        suffix: &str,
        idempotency_key: &str,
        body: &B,
        accept: &[StatusCode],
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request = self
            .client
            .post(self.url(suffix))
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        if let Some(token) = &self.settings.bearer_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.request_failed(&error))?;
        let status = response.status();
        if status.is_success() || accept.contains(&status) {
            return Ok(response);
        }
        let excerpt = body_excerpt(response).await;
        let message = format!("HTTP {status}: {excerpt}");
        if retryable_status(status) {
            Err(ProviderError::transient(self.provider, message))
        } else {
            Err(ProviderError::permanent(self.provider, message))
        }
    }

    /// A request that got no answer. Time-outs and connection problems are
    /// the textbook transient failure; a request reqwest could not even build
    /// (a header it refuses) will fail the same way next time.
    fn request_failed(&self, error: &reqwest::Error) -> ProviderError {
        let message = if error.is_timeout() {
            format!(
                "timed out after {:?}: {}",
                self.settings.timeout,
                with_causes(error)
            )
        } else {
            format!("request failed: {}", with_causes(error))
        };
        if error.is_builder() {
            ProviderError::permanent(self.provider, message)
        } else {
            ProviderError::transient(self.provider, message)
        }
    }
}

/// The error and its sources, `outer: inner: root`. reqwest's own message
/// ("error sending request") hides the part an operator needs ("connection
/// refused", "missing field `status`").
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// 5xx, 408 (request timeout) and 429 (too many requests) may pass.
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

async fn body_excerpt(response: reqwest::Response) -> String {
    excerpt(&response.text().await.unwrap_or_default())
}

/// The start of a response body, for an error message.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// SMS or push through a webhook.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    channel: Channel,
    endpoint: Endpoint,
}

impl WebhookNotifier {
    /// Fails when the URL is not an http(s) URL or the timeout is zero. Any
    /// channel works, though e-mail normally goes through [`SmtpNotifier`](super::SmtpNotifier).
    pub fn new(channel: Channel, settings: WebhookSettings) -> Result<Self, ProviderConfigError> {
        Ok(Self {
            channel,
            endpoint: Endpoint::new(channel_provider(channel), settings)?,
        })
    }

    async fn deliver(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        let payload = NotificationPayload {
            channel: self.channel,
            message,
        };
        self.endpoint
            .post("", &message.idempotency_key, &payload, &[])
            .await
            .map(drop)
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn channel(&self) -> Channel {
        self.channel
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        instrumented(self.endpoint.provider, self.deliver(message)).await
    }
}

/// A payment gateway behind a webhook.
#[derive(Debug, Clone)]
pub struct WebhookPayment {
    endpoint: Endpoint,
}

impl WebhookPayment {
    /// `settings.url` is the base URL; fails when it is not http(s) or the
    /// timeout is zero.
    pub fn new(settings: WebhookSettings) -> Result<Self, ProviderConfigError> {
        Ok(Self {
            endpoint: Endpoint::new(PAYMENT, settings)?,
        })
    }

    async fn do_charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let payload = ChargePayload {
            idempotency_key: request.idempotency_key.clone(),
            order_id: request.order_id,
            user_id: request.user_id,
            amount_cents: request.amount_cents,
            currency: request.currency.clone(),
        };
        let response = self
            .endpoint
            .post(
                "/charges",
                &request.idempotency_key,
                &payload,
                &[StatusCode::PAYMENT_REQUIRED],
            )
            .await?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| {
            ProviderError::transient(
                PAYMENT,
                format!("reading the charge reply failed: {}", with_causes(&error)),
            )
        })?;
        match (status, serde_json::from_slice::<ChargeReply>(&body)) {
            (_, Ok(ChargeReply::Approved { payment_id })) if status.is_success() => {
                Ok(ChargeOutcome::Approved { payment_id })
            }
            (_, Ok(ChargeReply::Declined { reason })) => Ok(ChargeOutcome::Declined { reason }),
            (StatusCode::PAYMENT_REQUIRED, _) => Err(ProviderError::permanent(
                PAYMENT,
                "HTTP 402 without a declined reply",
            )),
            // The charge may have happened; asking again with the same key is
            // safe and will tell.
            (_, Err(error)) => Err(ProviderError::transient(
                PAYMENT,
                format!(
                    "unreadable charge reply ({error}): {}",
                    excerpt(&String::from_utf8_lossy(&body))
                ),
            )),
            (_, Ok(ChargeReply::Approved { .. })) => Err(ProviderError::permanent(
                PAYMENT,
                format!("HTTP {status} with an approved reply"),
            )),
        }
    }

    async fn do_refund(
        &self,
        payment_id: &str,
        idempotency_key: &str,
    ) -> Result<(), ProviderError> {
        let payload = RefundPayload {
            payment_id: payment_id.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        };
        self.endpoint
            .post("/refunds", idempotency_key, &payload, &[])
            .await
            .map(drop)
    }
}

#[async_trait]
impl PaymentGateway for WebhookPayment {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        instrumented(PAYMENT, self.do_charge(request)).await
    }

    async fn refund(&self, payment_id: &str, idempotency_key: &str) -> Result<(), ProviderError> {
        instrumented(PAYMENT, self.do_refund(payment_id, idempotency_key)).await
    }
}
