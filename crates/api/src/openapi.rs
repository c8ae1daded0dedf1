//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

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
    components(schemas(ProblemDocument)),
    modifiers(&BearerAuth, &CommonProblems),
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

/// Documents the problems the middleware and extractors can answer on any
/// operation, so the document states every status a client can receive
/// (the fuzz run checks it):
/// - 400: a path or query parameter that does not parse;
/// - 401: an operation that needs a token, called without a valid one;
/// - 403: an admin operation called by a shopper;
/// - 413, 415, 422: a body over the size limit, not JSON, or not the JSON
///   the route expects (syntax, types, depth, string length);
/// - 429: a rate limit (every `/api/v1` operation can have one configured).
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        crate::problem::PROBLEM_JSON,
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description));
                };
                if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add("400", "a path or query parameter is not valid");
                }
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add("401", "no valid access token");
                }
                if operation.request_body.is_some() {
                    add("413", "the body is over the size limit");
                    add("415", "the body is not application/json");
                    add(
                        "422",
                        "the body is not the JSON this route expects, or over a depth or string limit",
                    );
                }
                if path.starts_with("/api/v1/admin/") {
                    add("403", "the caller is not an admin");
                }
                if path.starts_with("/api/v1/") {
                    add("429", "over a rate limit; see Retry-After");
                }
            }
        }
    }
}
