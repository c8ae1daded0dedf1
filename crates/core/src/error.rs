//! The core layer's error type. The HTTP layer maps each variant to a status
//! and a stable problem `type` in one place (`orderflow-api`'s `problem.rs`).

use orderflow_domain::ValidationError;

use crate::ports::cache::CacheError;
use crate::ports::carts::CartError;
use crate::ports::log::LogError;
use crate::ports::providers::ProviderError;
use crate::ports::read_models::ReadModelError;
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
    /// Too many failed attempts (logins): locked out for a while.
    #[error("too many failed attempts; retry after {} s", retry_after.as_secs_f64().ceil())]
    TooManyAttempts { retry_after: std::time::Duration },
    /// Not enough stock (inline mode answers this synchronously).
    #[error("product {product_id} has {available} left, {requested} requested")]
    OutOfStock {
        product_id: uuid::Uuid,
        available: i64,
        requested: u32,
    },
    /// Approve or reject asked of an order that is not held (any more).
    #[error("order {order_id} is {status}, not held")]
    OrderNotHeld {
        order_id: uuid::Uuid,
        status: orderflow_domain::order::OrderStatus,
    },
    /// A cancellation asked of an order that has ended otherwise (rejected,
    /// payment failed) or is cancelled already.
    #[error("order {order_id} is {status} and can no longer be cancelled")]
    OrderNotCancellable {
        order_id: uuid::Uuid,
        status: orderflow_domain::order::OrderStatus,
    },
    /// A checkout of an empty cart.
    #[error("the cart is empty: add a product first")]
    CartEmpty,
    /// The payment provider declined the charge (inline mode).
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
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
    /// The shared cache (where live tickets are kept) failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The shared store of derived counts (Redis: the unique-viewer
    /// sketches) failed.
    #[error(transparent)]
    ReadModel(#[from] ReadModelError),
    /// The cart store (Redis, or the database) failed.
    #[error(transparent)]
    Cart(#[from] CartError),
    /// Anything else that is our fault; never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An RFC 9457 problem: what the HTTP layer renders for an error. The `type`
/// slugs are part of the API contract and never change meaning.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Stable slug; rendered as `https://orderflow.dev/problems/{slug}`.
    pub slug: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The offending input field, for validation problems.
    pub field: Option<String>,
}

pub const PROBLEM_BASE: &str = "https://orderflow.dev/problems/";

/// Every problem `type` slug the API answers with, named once: the errors
/// below and in the HTTP layer use these, and the OpenAPI document lists,
/// per operation and status, which of them can come back.
pub mod slug {
    pub const VALIDATION: &str = "validation";
    pub const NOT_FOUND: &str = "not-found";
    pub const CONFLICT: &str = "conflict";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const RATE_LIMITED: &str = "rate-limited";
    pub const OUT_OF_STOCK: &str = "out-of-stock";
    pub const ORDER_NOT_HELD: &str = "order-not-held";
    pub const ORDER_NOT_CANCELLABLE: &str = "order-not-cancellable";
    pub const CART_EMPTY: &str = "cart-empty";
    pub const PAYMENT_DECLINED: &str = "payment-declined";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency-key-reused";
    pub const PROVIDER_FAILED: &str = "provider-failed";
    pub const PROVIDER_UNAVAILABLE: &str = "provider-unavailable";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INTERNAL: &str = "internal";
    pub const MALFORMED_BODY: &str = "malformed-body";
    pub const INPUT_LIMIT: &str = "input-limit";
    pub const MALFORMED_QUERY: &str = "malformed-query";
    pub const BAD_REQUEST: &str = "bad-request";
    pub const METHOD_NOT_ALLOWED: &str = "method-not-allowed";
    pub const PAYLOAD_TOO_LARGE: &str = "payload-too-large";
    pub const REQUEST_TIMEOUT: &str = "request-timeout";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported-media-type";
    pub const HTTP_ERROR: &str = "http-error";
}

/// The `type` URI of a slug.
pub fn problem_type(slug: &str) -> String {
    format!("{PROBLEM_BASE}{slug}")
}

impl Problem {
    /// The problem document as JSON (`application/problem+json`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": problem_type(self.slug),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        });
        if let Some(field) = &self.field {
            body["field"] = field.clone().into();
        }
        body
    }
}

/// What a 503 for an unavailable dependency (database, log, cache) tells
/// clients to wait: long enough not to hammer a restarting database, short
/// enough that a blip costs a shopper little.
pub const UNAVAILABLE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl CoreError {
    /// How long the client should wait before trying again (`Retry-After`):
    /// set for lockouts, open provider breakers and unavailable dependencies.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            CoreError::TooManyAttempts { retry_after } => Some(*retry_after),
            CoreError::Provider(e) => e.circuit_open_for,
            CoreError::Store(StoreError::Unavailable(_))
            | CoreError::Log(LogError::Unavailable(_))
            | CoreError::Cache(_)
            | CoreError::ReadModel(_)
            | CoreError::Cart(CartError::Unavailable(_)) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        }
    }

    /// The one place errors become problems. Internal details are logged by
    /// the caller and never put in the detail of a 5xx.
    pub fn problem(&self) -> Problem {
        let p = |slug, title, status, detail: String| Problem {
            slug,
            title,
            status,
            detail,
            field: None,
        };
        match self {
            CoreError::Validation(e) => Problem {
                slug: slug::VALIDATION,
                title: "Request is not valid",
                status: 422,
                detail: e.to_string(),
                field: Some(e.field.clone()),
            },
            CoreError::NotFound(what) => p(
                slug::NOT_FOUND,
                "Not found",
                404,
                format!("{what} not found"),
            ),
            CoreError::Conflict(detail) => p(slug::CONFLICT, "Conflict", 409, detail.clone()),
            CoreError::Unauthorized(detail) => p(
                slug::UNAUTHORIZED,
                "Authentication required",
                401,
                detail.clone(),
            ),
            CoreError::Forbidden(detail) => p(slug::FORBIDDEN, "Forbidden", 403, detail.clone()),
            CoreError::TooManyAttempts { .. } => p(
                slug::RATE_LIMITED,
                "Too many requests",
                429,
                self.to_string(),
            ),
            CoreError::OrderNotHeld { .. } => p(
                slug::ORDER_NOT_HELD,
                "Order is not held",
                409,
                self.to_string(),
            ),
            CoreError::CartEmpty => p(slug::CART_EMPTY, "The cart is empty", 409, self.to_string()),
            CoreError::OrderNotCancellable { .. } => p(
                slug::ORDER_NOT_CANCELLABLE,
                "Order cannot be cancelled",
                409,
                self.to_string(),
            ),
            CoreError::OutOfStock { .. } => {
                p(slug::OUT_OF_STOCK, "Out of stock", 409, self.to_string())
            }
            CoreError::PaymentDeclined(reason) => p(
                slug::PAYMENT_DECLINED,
                "Payment declined",
                402,
                format!("the payment was declined: {reason}"),
            ),
            CoreError::IdempotencyMismatch => Problem {
                slug: slug::IDEMPOTENCY_KEY_REUSED,
                title: "Idempotency-Key reused",
                status: 422,
                detail: self.to_string(),
                field: Some("Idempotency-Key".into()),
            },
            CoreError::Provider(e) if e.circuit_open_for.is_some() => p(
                slug::PROVIDER_UNAVAILABLE,
                "An outside provider is unavailable",
                503,
                format!(
                    "the {} provider is failing and is not called for a while; try again after Retry-After",
                    e.provider
                ),
            ),
            CoreError::Provider(e) => p(
                slug::PROVIDER_FAILED,
                "An outside provider failed",
                502,
                format!(
                    "the {} provider failed; nothing was charged or kept",
                    e.provider
                ),
            ),
            CoreError::Store(StoreError::Unavailable(_))
            | CoreError::Log(LogError::Unavailable(_))
            | CoreError::Cache(_)
            | CoreError::ReadModel(_)
            | CoreError::Cart(CartError::Unavailable(_)) => p(
                slug::UNAVAILABLE,
                "Service unavailable",
                503,
                "a dependency is unavailable; try again shortly".into(),
            ),
            CoreError::Store(_)
            | CoreError::Log(_)
            | CoreError::Cart(CartError::Corrupt(_))
            | CoreError::Internal(_) => p(
                slug::INTERNAL,
                "Internal error",
                500,
                "something went wrong on our side".into(),
            ),
        }
    }
}
