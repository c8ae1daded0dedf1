//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use std::collections::BTreeMap;

use orderflow_core::error::{problem_type, slug};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::schema;

use crate::routes::{admin, auth, cart, health, live, me, orders, products};

#[derive(OpenApi)]
#[openapi(
    info(title = "orderflow", description = "Event-driven order platform. Every error is application/problem+json (RFC 9457) with a stable `type`."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::logout_all,
        products::list, products::get_one, products::trending, products::create, products::update,
        products::search, products::categories, products::image,
        orders::place, orders::get_one, orders::list, orders::cancel,
        cart::get, cart::replace, cart::empty, cart::set_item, cart::remove_item, cart::checkout,
        me::notifications, me::points, me::sessions, me::end_session, me::leaderboard,
        live::follow,
        live::websocket,
        live::ticket,
        live::snapshot,
        admin::consumers, admin::dead_letters, admin::dead_letter, admin::replay,
        admin::sales, admin::top_products, admin::unique_viewers, admin::held_orders, admin::approve_order, admin::reject_order,
        health::healthz, health::readyz,
    ),
    // OrderLineInput is named by `schema::order_lines`, not reached through a field type.
    components(schemas(ProblemDocument, orders::OrderLineInput, live::LiveFrameView, live::LiveCommandView, live::LiveTicket, live::LiveSnapshotView)),
    modifiers(&BearerAuth, &RequestRules, &Problems),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "catalog", description = "Products, served from a cache"),
        (name = "orders", description = "Placing and following orders"),
        (name = "cart", description = "The shopper's cart and its checkout"),
        (name = "me", description = "Notifications, loyalty points, leaderboard"),
        (name = "live", description = "Live channels (Server-Sent Events or WebSocket), resumable from the last position"),
        (name = "admin", description = "Consumers, the dead-letter queue and sales (admin role)"),
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

/// An RFC 9457 problem document, as every error is answered.
/// Documentation only: errors are rendered by `problem.rs`.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument {
    /// Stable URI of the problem kind, e.g. `https://orderflow.dev/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The offending input field, for validation problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Problems particular to one operation: `(method, path, status, slugs)`.
/// Together with [`common_problems`] this is every error answer an
/// operation can give; the fuzz run checks each answer's `type` against the
/// list (the document enumerates them), so a new error path that is not
/// listed here fails it.
const OPERATION_PROBLEMS: &[(&str, &str, u16, &[&str])] = &[
    ("post", "/api/v1/auth/register", 409, &[slug::CONFLICT]),
    ("post", "/api/v1/auth/register", 422, &[slug::VALIDATION]),
    ("post", "/api/v1/auth/login", 401, &[slug::UNAUTHORIZED]),
    ("post", "/api/v1/auth/login", 422, &[slug::VALIDATION]),
    ("post", "/api/v1/auth/refresh", 401, &[slug::UNAUTHORIZED]),
    ("post", "/api/v1/auth/refresh", 422, &[slug::VALIDATION]),
    ("get", "/api/v1/products/{id}", 404, &[slug::NOT_FOUND]),
    (
        "get",
        "/api/v1/products/{id}/image.svg",
        404,
        &[slug::NOT_FOUND],
    ),
    // A price out of range, an offset too deep, a text too long.
    ("get", "/api/v1/products/search", 422, &[slug::VALIDATION]),
    ("post", "/api/v1/products", 403, &[slug::FORBIDDEN]),
    ("post", "/api/v1/products", 409, &[slug::CONFLICT]),
    ("put", "/api/v1/products/{id}", 403, &[slug::FORBIDDEN]),
    ("post", "/api/v1/products", 422, &[slug::VALIDATION]),
    ("put", "/api/v1/products/{id}", 404, &[slug::NOT_FOUND]),
    ("put", "/api/v1/products/{id}", 409, &[slug::CONFLICT]),
    ("put", "/api/v1/products/{id}", 422, &[slug::VALIDATION]),
    // 402, 409 out-of-stock and 502 come back only in inline mode
    // (ORDERFLOW_SIDE_EFFECTS=inline); 409 conflict while the same key is
    // still being processed.
    ("post", "/api/v1/orders", 402, &[slug::PAYMENT_DECLINED]),
    (
        "post",
        "/api/v1/orders",
        409,
        &[slug::OUT_OF_STOCK, slug::CONFLICT],
    ),
    (
        "post",
        "/api/v1/orders",
        422,
        &[slug::VALIDATION, slug::IDEMPOTENCY_KEY_REUSED],
    ),
    ("post", "/api/v1/orders", 502, &[slug::PROVIDER_FAILED]),
    // Inline mode, while a provider's circuit breaker is open.
    ("post", "/api/v1/orders", 503, &[slug::PROVIDER_UNAVAILABLE]),
    ("get", "/api/v1/orders/{id}", 404, &[slug::NOT_FOUND]),
    (
        "delete",
        "/api/v1/me/sessions/{id}",
        404,
        &[slug::NOT_FOUND],
    ),
    ("get", "/api/v1/admin/dlq/{id}", 404, &[slug::NOT_FOUND]),
    (
        "get",
        "/api/v1/admin/products/{id}/viewers",
        404,
        &[slug::NOT_FOUND],
    ),
    // With Redis, while it is down.
    (
        "get",
        "/api/v1/admin/products/{id}/viewers",
        503,
        &[slug::UNAVAILABLE],
    ),
    // A range that is backwards or too wide; `top` out of range.
    ("get", "/api/v1/admin/sales", 422, &[slug::VALIDATION]),
    ("get", "/api/v1/products/trending", 422, &[slug::VALIDATION]),
    (
        "get",
        "/api/v1/admin/sales/products",
        422,
        &[slug::VALIDATION],
    ),
    ("get", "/api/v1/live/snapshot", 403, &[slug::FORBIDDEN]),
    ("get", "/api/v1/live/snapshot", 404, &[slug::NOT_FOUND]),
    ("get", "/api/v1/live/snapshot", 422, &[slug::VALIDATION]),
    (
        "post",
        "/api/v1/admin/dlq/{id}/replay",
        404,
        &[slug::NOT_FOUND],
    ),
    (
        "post",
        "/api/v1/admin/dlq/{id}/replay",
        409,
        &[slug::CONFLICT],
    ),
    (
        "post",
        "/api/v1/orders/{id}/cancel",
        404,
        &[slug::NOT_FOUND],
    ),
    (
        "post",
        "/api/v1/orders/{id}/cancel",
        409,
        &[slug::ORDER_NOT_CANCELLABLE],
    ),
    // An unknown product, a quantity out of range, too many products.
    ("put", "/api/v1/cart", 422, &[slug::VALIDATION]),
    (
        "put",
        "/api/v1/cart/items/{product_id}",
        422,
        &[slug::VALIDATION],
    ),
    // The checkout answers as `POST /orders` does, and 409 for an empty
    // cart.
    (
        "post",
        "/api/v1/cart/checkout",
        402,
        &[slug::PAYMENT_DECLINED],
    ),
    (
        "post",
        "/api/v1/cart/checkout",
        409,
        &[slug::OUT_OF_STOCK, slug::CONFLICT, slug::CART_EMPTY],
    ),
    (
        "post",
        "/api/v1/cart/checkout",
        422,
        &[slug::VALIDATION, slug::IDEMPOTENCY_KEY_REUSED],
    ),
    (
        "post",
        "/api/v1/cart/checkout",
        502,
        &[slug::PROVIDER_FAILED],
    ),
    (
        "post",
        "/api/v1/cart/checkout",
        503,
        &[slug::PROVIDER_UNAVAILABLE],
    ),
    (
        "post",
        "/api/v1/admin/orders/{id}/approve",
        404,
        &[slug::NOT_FOUND],
    ),
    (
        "post",
        "/api/v1/admin/orders/{id}/approve",
        409,
        &[slug::ORDER_NOT_HELD],
    ),
    (
        "post",
        "/api/v1/admin/orders/{id}/reject",
        404,
        &[slug::NOT_FOUND],
    ),
    (
        "post",
        "/api/v1/admin/orders/{id}/reject",
        409,
        &[slug::ORDER_NOT_HELD],
    ),
];

/// The problems the middleware and extractors can answer, by what the
/// operation has:
/// - parameters: 400 (a path parameter or query string that does not parse);
/// - a token: 401; an admin route: 403;
/// - a body: 413 (over the size limit), 415 (not JSON), 422 (not the JSON
///   the route expects, or over a depth or string limit);
/// - under `/api/v1`: 429 (every group can have a rate limit configured);
/// - every operation: 408 (not done in time), 500 (never with details) and
///   503 (a dependency is down).
fn common_problems(path: &str, operation: &Operation) -> Vec<(u16, &'static str)> {
    let mut problems = vec![
        (408, slug::REQUEST_TIMEOUT),
        (500, slug::INTERNAL),
        (503, slug::UNAVAILABLE),
    ];
    if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
        problems.extend([(400, slug::BAD_REQUEST), (400, slug::MALFORMED_QUERY)]);
    }
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        problems.push((401, slug::UNAUTHORIZED));
    }
    if path.starts_with("/api/v1/admin/") {
        problems.push((403, slug::FORBIDDEN));
    }
    if operation.request_body.is_some() {
        problems.extend([
            (413, slug::PAYLOAD_TOO_LARGE),
            (415, slug::UNSUPPORTED_MEDIA_TYPE),
            (422, slug::MALFORMED_BODY),
            (422, slug::INPUT_LIMIT),
        ]);
    }
    if path.starts_with("/api/v1/") {
        problems.push((429, slug::RATE_LIMITED));
    }
    problems
}

/// Adds every error answer to every operation: a problem document whose
/// `type` is one of the listed URIs and whose `status` is the status.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
                let specific = OPERATION_PROBLEMS
                    .iter()
                    .filter(|(m, p, ..)| *m == method && p == path)
                    .flat_map(|(_, _, status, slugs)| slugs.iter().map(|s| (*status, *s)));
                for (status, slug) in common_problems(path, operation).into_iter().chain(specific) {
                    let slugs = by_status.entry(status).or_default();
                    if !slugs.contains(&slug) {
                        slugs.push(slug);
                    }
                }
                for (status, slugs) in by_status {
                    operation
                        .responses
                        .responses
                        .insert(status.to_string(), problem_response(status, &slugs));
                }
            }
        }
    }
}

/// The operations of a path item, with their method in lower case.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
}

/// A problem+json response of `status` whose `type` is one of `slugs`.
fn problem_response(status: u16, slugs: &[&str]) -> RefOr<Response> {
    let types: Vec<String> = slugs.iter().map(|s| problem_type(s)).collect();
    let narrowed = ObjectBuilder::new()
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(types.clone())),
        )
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("Problem"))
        .item(narrowed);
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error");
    RefOr::T(
        ResponseBuilder::new()
            .description(format!("{reason}: a problem of type {}", types.join(", ")))
            .content(
                crate::problem::PROBLEM_JSON,
                ContentBuilder::new().schema(Some(schema)).build(),
            )
            .build(),
    )
}

/// Request details utoipa's attributes cannot take from code: the
/// `Idempotency-Key` header's schema comes from the rule the use case
/// checks it with.
struct RequestRules;

impl Modify for RequestRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for (_, operation) in operations(item) {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.name == "Idempotency-Key" {
                        parameter.schema = Some(schema::idempotency_key().into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_answer_lists_its_problem_types() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut errors = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if !status.starts_with(['4', '5']) {
                        continue;
                    }
                    errors += 1;
                    let schema = &response["content"]["application/problem+json"]["schema"];
                    let types = schema["allOf"][1]["properties"]["type"]["enum"]
                        .as_array()
                        .unwrap_or_else(|| panic!("{method} {path} {status}: no type list"));
                    assert!(!types.is_empty(), "{method} {path} {status}");
                }
            }
        }
        assert!(errors > 100, "{errors} error answers");
        for (method, path, ..) in OPERATION_PROBLEMS {
            assert!(
                doc["paths"][path][method].is_object(),
                "OPERATION_PROBLEMS names {method} {path}, which does not exist"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| operation["operationId"].as_str().unwrap())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    #[test]
    fn request_bodies_refuse_unknown_properties() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for name in [
            "RegisterRequest",
            "LoginRequest",
            "RefreshRequest",
            "ProductInput",
            "PlaceOrderRequest",
            "OrderLineInput",
        ] {
            assert_eq!(
                doc["components"]["schemas"][name]["additionalProperties"], false,
                "{name}"
            );
        }
    }
}
