//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::problem::{problem_response, status_problem};

/// The process is up and serving.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Response {
    // A fixed answer: building a JSON value and serialising it was a tenth
    // of a liveness probe's cost.
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

/// Every dependency (database, event log) answers.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "health", responses(
    (status = 200, description = "ready")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = state.store.ping().await;
    let log = state.log.ping().await;
    if database.is_ok() && log.is_ok() {
        return Json(
            json!({ "status": "ready", "checks": { "database": "ok", "event_log": "ok" } }),
        )
        .into_response();
    }
    let describe = |ok: bool| if ok { "ok" } else { "down" };
    let detail = format!(
        "database: {}, event log: {}",
        describe(database.is_ok()),
        describe(log.is_ok())
    );
    problem_response(&status_problem(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        detail,
    ))
}
