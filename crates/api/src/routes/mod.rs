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
use tower::Layer as _;
use tower::util::MapRequestLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::observe::{TrackRequestsLayer, metrics_endpoint, note_route};
use crate::openapi::ApiDoc;

pub fn router(state: AppState) -> impl HttpService {
    let api = Router::new()
        .route("/api/v1/auth/register", post(auth::register))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/refresh", post(auth::refresh))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/logout-all", post(auth::logout_all))
        .route(
            "/api/v1/products",
            get(products::list).post(products::create),
        )
        .route("/api/v1/products/trending", get(products::trending))
        .route("/api/v1/products/search", get(products::search))
        .route("/api/v1/products/{id}/image.svg", get(products::image))
        .route("/api/v1/categories", get(products::categories))
        .route(
            "/api/v1/products/{id}",
            get(products::get_one).put(products::update),
        )
        .route("/api/v1/orders", get(orders::list).post(orders::place))
        .route("/api/v1/orders/{id}", get(orders::get_one))
        .route("/api/v1/orders/{id}/cancel", post(orders::cancel))
        .route(
            "/api/v1/cart",
            get(cart::get).put(cart::replace).delete(cart::empty),
        )
        .route(
            "/api/v1/cart/items/{product_id}",
            put(cart::set_item).delete(cart::remove_item),
        )
        .route("/api/v1/cart/checkout", post(cart::checkout))
        .route("/api/v1/me/notifications", get(me::notifications))
        .route("/api/v1/me/points", get(me::points))
        .route("/api/v1/me/sessions", get(me::sessions))
        .route(
            "/api/v1/me/sessions/{id}",
            axum::routing::delete(me::end_session),
        )
        .route("/api/v1/leaderboard", get(me::leaderboard))
        .route("/api/v1/live", get(live::follow))
        .route("/api/v1/live/ws", get(live::websocket))
        .route("/api/v1/live/ticket", post(live::ticket))
        .route("/api/v1/live/snapshot", get(live::snapshot))
        .route("/api/v1/admin/consumers", get(admin::consumers))
        .route("/api/v1/admin/dlq", get(admin::dead_letters))
        .route("/api/v1/admin/sales", get(admin::sales))
        .route("/api/v1/admin/sales/products", get(admin::top_products))
        .route(
            "/api/v1/admin/products/{id}/viewers",
            get(admin::unique_viewers),
        )
        .route("/api/v1/admin/dlq/{id}", get(admin::dead_letter))
        .route("/api/v1/admin/dlq/{id}/replay", post(admin::replay))
        .route("/api/v1/admin/orders/held", get(admin::held_orders))
        .route(
            "/api/v1/admin/orders/{id}/approve",
            post(admin::approve_order),
        )
        .route(
            "/api/v1/admin/orders/{id}/reject",
            post(admin::reject_order),
        );

    // The API's routes carry their whole path rather than being nested under
    // `/api/v1`: a nested router is a second routing step on every request
    // (prefix stripped, a second match, a boxed service cloned).
    let routes = api
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_endpoint))
        .route(
            "/asyncapi.json",
            get(|| async { axum::Json(crate::asyncapi::document()) }),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(crate::web::router(state.clone()))
        // The one layer per route: the template the router matched, for
        // the request's span and metrics outside it.
        .route_layer(MapRequestLayer::new(note_route))
        .with_state(state.clone());

    // The middleware is one service around the whole router, not layers
    // around each route (`Router::layer`, where each layer is a boxed service
    // cloned and a boxed future made on every request) nor a stack of layers
    // (each one more future to move the request through): the body-size
    // limit and the panic guard are part of it too.
    TrackRequestsLayer(state).layer(routes)
}

/// The whole API as one service: what [`router`] returns and `serve`
/// serves. A trait, not a type: the stack's type names closures.
///
/// Always ready: its outermost layer ([`TrackRequestsLayer`]) asks the
/// stack inside for readiness per request, so a server may `call` a clone
/// without `poll_ready` first.
pub trait HttpService:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}
