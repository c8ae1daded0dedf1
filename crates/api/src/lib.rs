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
//!   rate-limit middleware (every policy that applies, per IP or per user;
//!   429 with `Retry-After`, `RateLimit-Policy` and `RateLimit` headers; a
//!   leaky bucket's queued requests wait here), all in the one middleware
//!   around the router, with the request's time-out (408), body-size limit
//!   (413) and panic guard (500).
//! - [`limits`]: rate-limit policies per route group, parsed from the
//!   compact `ORDERFLOW_RATE_LIMITS` spec.
//! - [`header_deadline`]: hyper's timer for the deadline of a request's
//!   line and headers, one alarm per connection rather than a timer per
//!   request.
//! - [`hostile`]: limits on hostile input that the body-size limit does not
//!   cover: JSON nesting depth and string length.
//! - [`routes`]: one module per resource: auth (incl. logout-all), products
//!   (search, categories, pictures), orders (incl. cancel), cart (and its
//!   checkout), me (notifications, points, sessions per device),
//!   leaderboard, live (the live channels over Server-Sent Events and
//!   WebSocket, and their tickets), admin, health.
//! - [`web`]: the browser front: the storefront at `/` and the operator
//!   console at `/console`, rendered on the server from the same use cases,
//!   with cookie sessions, CSRF tokens and embedded assets. Its errors are
//!   HTML pages, not problem documents: they answer people.
//! - [`schema`]: request schemas built from the domain's rules (the values
//!   the validation runs) and the decoding those schemas imply.
//! - [`asyncapi`]: the AsyncAPI 3 document of the event log (`/asyncapi.json`),
//!   built from the domain's event definitions.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json` and `/docs`,
//!   including the problems any operation can answer (400, 401, 403, 413,
//!   415, 422, 429), which the schemathesis fuzz run holds it to.

pub mod asyncapi;
pub mod extract;
pub mod header_deadline;
pub mod hostile;
pub mod limits;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod schema;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::providers::ProviderControls;
use orderflow_core::ports::rate_limit::RateLimiter;
use orderflow_core::ports::store::Store;
use orderflow_core::services::admin::Operations;
use orderflow_core::services::auth::AuthService;
use orderflow_core::services::carts::CartService;
use orderflow_core::services::catalog::CatalogService;
use orderflow_core::services::live::LiveHub;
use orderflow_core::services::orders::OrderService;
use orderflow_core::services::queries::ShopperQueries;

pub use problem::ApiError;
pub use routes::HttpService;

pub use limits::RateLimits;

/// HTTP-level limits against oversized, deeply nested or slow requests.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Deepest nesting of arrays and objects a JSON body may have.
    pub max_json_depth: usize,
    /// Longest string (in characters) a JSON body may hold, keys included.
    pub max_json_string_chars: usize,
    /// How long a client may take to send the request line and headers
    /// before the connection is closed (slow-loris).
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            max_json_depth: 32,
            max_json_string_chars: 4096,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a handler can reach: [`Services`] behind one `Arc`. axum
/// clones the state several times per request (each middleware with state,
/// each `State` extractor); with the services inline that was a dozen
/// reference counts up and down per clone, 5% of a product read's CPU.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services, ports and settings the handlers use.
pub struct Services {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    pub auth: Arc<AuthService>,
    pub catalog: Arc<CatalogService>,
    pub orders: Arc<OrderService>,
    pub carts: Arc<CartService>,
    /// The simulated providers' knobs (the console's controls), when any
    /// provider is simulated.
    pub provider_controls: Option<Arc<dyn ProviderControls>>,
    /// This process's live channels (`/api/v1/live`, `/api/v1/live/ws`).
    pub live: Arc<LiveHub>,
    pub queries: Arc<ShopperQueries>,
    pub operations: Arc<Operations>,
    pub metrics: PrometheusHandle,
    pub limiter: Arc<dyn RateLimiter>,
    /// Shared: the middleware reads it on every request, and a clone of
    /// the state must stay a handful of reference counts.
    pub rate_limits: Arc<RateLimits>,
    pub http_limits: HttpLimits,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: extract::TrustedProxies,
}

/// The whole API with its middleware.
pub fn router(state: AppState) -> impl HttpService {
    routes::router(state)
}
