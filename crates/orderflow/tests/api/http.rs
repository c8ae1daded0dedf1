//! HTTP behaviour: problem+json everywhere, health, metrics, OpenAPI.

use reqwest::StatusCode;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn unknown_routes_wrong_methods_and_big_bodies_are_problems() {
    let app = spawn_app().await;
    assert_problem(app.get("/nope").await, 404, "not-found").await;
    let wrong_method = app
        .http
        .delete(app.url("/api/v1/products"))
        .send()
        .await
        .unwrap();
    assert_problem(wrong_method, 405, "method-not-allowed").await;
    let big = "x".repeat(200 * 1024);
    let response = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body(format!("{{\"email\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload-too-large").await;
    let not_json = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_problem(not_json, 415, "unsupported-media-type").await;
    let broken = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .unwrap();
    assert_problem(broken, 422, "malformed-body").await;
}

#[tokio::test]
async fn health_readiness_metrics_and_docs_answer() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["event_log"], "ok");

    app.products(None, None).await;
    // A route with an id in its path, and a path no route matches: the
    // middleware runs outside the router and learns the template from it.
    let missing = app
        .get(&format!("/api/v1/products/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let nowhere = app.get("/no/such/route").await;
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("route=\"/api/v1/products/{id}\",status=\"404\""),
        "labelled by the template the router matched, not the path: {metrics}"
    );
    assert!(
        metrics.contains("route=\"unmatched\",status=\"404\""),
        "a path no route matches is labelled `unmatched`"
    );
    assert!(
        metrics.contains("orderflow_http_requests_total{"),
        "request counter"
    );
    assert!(
        metrics.contains("route=\"/api/v1/products\""),
        "labelled by route template"
    );
    assert!(
        metrics.contains("orderflow_http_request_duration_seconds_bucket{"),
        "latency histogram"
    );
    assert!(
        metrics.contains("orderflow_db_queries_total{"),
        "database queries"
    );
    assert!(metrics.contains("orderflow_dead_letters "), "DLQ size");

    let openapi: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/orders",
        "/api/v1/products/{id}",
        "/api/v1/auth/login",
        "/api/v1/admin/dlq/{id}/replay",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }
    // Every `$ref` resolves (a parameter type with a schema of its own is
    // referenced, not inlined, unless it is registered or marked inline).
    fn refs<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(|r| r.as_str()) {
                    found.push(reference);
                }
                map.values().for_each(|v| refs(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&openapi, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference.trim_start_matches('#');
        assert!(
            openapi.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI is served"
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_role() {
    let app = spawn_app().await;
    let shopper = app.shopper("Pinar").await;
    for path in [
        "/api/v1/admin/consumers",
        "/api/v1/admin/dlq",
        "/api/v1/admin/sales",
        "/api/v1/admin/sales/products",
    ] {
        let response = app.get_as(&shopper.token, path).await;
        assert_problem(response, 403, "forbidden").await;
    }
    let admin = app.admin_token().await;
    let missing = app.replay(&admin, &uuid::Uuid::now_v7().to_string()).await;
    assert_problem(missing, 404, "not-found").await;
    app.stop().await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id_kept_from_the_caller_or_made() {
    let app = spawn_app().await;
    let kept = app
        .http
        .get(app.url("/api/v1/products"))
        .header("x-request-id", "from-the-proxy-42")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "from-the-proxy-42");
    let made = app.get("/nowhere").await;
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID, not {id:?}");
    assert_problem(made, 404, "not-found").await;
}
