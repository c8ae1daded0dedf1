//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, auth, health, me, orders, products};

#[derive(OpenApi)]
#[openapi(
    info(title = "orderflow", description = "Event-driven order platform. Every error is application/problem+json (RFC 9457) with a stable `type`."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::logout_all,
        products::list, products::get_one, products::create, products::update,
        orders::place, orders::get_one, orders::list,
        me::notifications, me::points, me::sessions, me::end_session, me::leaderboard,
        admin::consumers, admin::dead_letters, admin::dead_letter, admin::replay,
        health::healthz, health::readyz,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "catalog", description = "Products, served from a cache"),
        (name = "orders", description = "Placing and following orders"),
        (name = "me", description = "Notifications, loyalty points, leaderboard"),
        (name = "admin", description = "Consumers and the dead-letter queue (admin role)"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
