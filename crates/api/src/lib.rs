//! orderflow's HTTP API (axum).
//!
//! Map of the crate:
//! - [`AppState`]: the use cases a request can reach, built by the binary.
//! - [`router`]: every route, the middleware stack and the OpenAPI document.
//! - [`problem`]: [`ApiError`], the one error type of this layer; every error
//!   leaves as `application/problem+json` (RFC 9457) with a stable `type`.
//! - [`extract`]: extractors: the authenticated caller ([`extract::Caller`],
//!   [`extract::AdminCaller`]), JSON bodies and query strings whose rejections
//!   are problems too, and the client IP.
//! - [`observe`]: request metrics (per route template), `/metrics`, and the
//!   rate-limit middleware.
//! - [`routes`]: one module per resource: auth, products, orders, me
//!   (notifications, points), leaderboard, admin, health.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json` and `/docs`.

pub mod extract;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::rate_limit::{RateLimiter, RatePolicy};
use orderflow_core::ports::store::Store;
use orderflow_core::services::admin::Operations;
use orderflow_core::services::auth::AuthService;
use orderflow_core::services::catalog::CatalogService;
use orderflow_core::services::orders::OrderService;
use orderflow_core::services::queries::ShopperQueries;

pub use problem::ApiError;

/// Rate-limit policies applied per client IP; `None` switches a limit off.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    /// Login, register, refresh: the routes attackers guess passwords on.
    pub auth: Option<RatePolicy>,
    /// Everything else.
    pub general: Option<RatePolicy>,
}

/// HTTP-level limits against oversized or slow requests.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a handler can reach. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    pub auth: Arc<AuthService>,
    pub catalog: Arc<CatalogService>,
    pub orders: Arc<OrderService>,
    pub queries: Arc<ShopperQueries>,
    pub operations: Arc<Operations>,
    pub metrics: PrometheusHandle,
    pub limiter: Arc<dyn RateLimiter>,
    pub rate_limits: RateLimits,
    pub http_limits: HttpLimits,
}

/// The whole API with its middleware.
pub fn router(state: AppState) -> Router {
    routes::router(state)
}
