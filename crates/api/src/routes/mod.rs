//! Routes, one module per resource, and the middleware stack.

pub mod admin;
pub mod auth;
pub mod cart;
pub mod health;
pub mod live;
pub mod me;
pub mod orders;
pub mod products;

use axum::Router;
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::extract::resolve_client_ip;
use crate::observe::{metrics_endpoint, problem_fallback, rate_limit, track_requests};
use crate::openapi::ApiDoc;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/logout-all", post(auth::logout_all))
        .route("/products", get(products::list).post(products::create))
        .route("/products/trending", get(products::trending))
        .route("/products/search", get(products::search))
        .route("/products/{id}/image.svg", get(products::image))
        .route("/categories", get(products::categories))
        .route(
            "/products/{id}",
            get(products::get_one).put(products::update),
        )
        .route("/orders", get(orders::list).post(orders::place))
        .route("/orders/{id}", get(orders::get_one))
        .route("/orders/{id}/cancel", post(orders::cancel))
        .route(
            "/cart",
            get(cart::get).put(cart::replace).delete(cart::empty),
        )
        .route(
            "/cart/items/{product_id}",
            put(cart::set_item).delete(cart::remove_item),
        )
        .route("/cart/checkout", post(cart::checkout))
        .route("/me/notifications", get(me::notifications))
        .route("/me/points", get(me::points))
        .route("/me/sessions", get(me::sessions))
        .route("/me/sessions/{id}", axum::routing::delete(me::end_session))
        .route("/leaderboard", get(me::leaderboard))
        .route("/live", get(live::follow))
        .route("/live/ws", get(live::websocket))
        .route("/live/ticket", post(live::ticket))
        .route("/live/snapshot", get(live::snapshot))
        .route("/admin/consumers", get(admin::consumers))
        .route("/admin/dlq", get(admin::dead_letters))
        .route("/admin/sales", get(admin::sales))
        .route("/admin/sales/products", get(admin::top_products))
        .route("/admin/products/{id}/viewers", get(admin::unique_viewers))
        .route("/admin/dlq/{id}", get(admin::dead_letter))
        .route("/admin/dlq/{id}/replay", post(admin::replay))
        .route("/admin/orders/held", get(admin::held_orders))
        .route("/admin/orders/{id}/approve", post(admin::approve_order))
        .route("/admin/orders/{id}/reject", post(admin::reject_order));

    let limits = state.http_limits.clone();
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_endpoint))
        .route(
            "/asyncapi.json",
            get(|| async { axum::Json(crate::asyncapi::document()) }),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(crate::web::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            resolve_client_ip,
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::from_fn(problem_fallback))
        .layer(CatchPanicLayer::new())
        // Outermost, so every answer is measured and logged as sent: time-outs
        // (408), the problem fallback's answers and a panic's 500 included.
        .layer(axum::middleware::from_fn(track_requests))
        // A proxy's `X-Request-Id` is kept (one id from nginx's access log
        // to this process's trace), else one is made; the answer carries it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
