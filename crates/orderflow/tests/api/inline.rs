//! Inline mode (the notes' version 1): the request does every side effect.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app_with};

#[tokio::test]
async fn inline_orders_are_confirmed_before_the_answer() {
    let app = spawn_app_with(&["--side-effects", "inline", "--cache", "off"]).await;
    let product = app.create_product("INL-1", 1999, 4).await;
    let shopper = app.shopper("Mert").await;
    let order = app.order_one(&shopper, product.id, 1).await;
    assert_eq!(order.status, "confirmed", "no consumer needed");
    let history = app.history(&shopper.token, order.id).await;
    assert_eq!(history, ["pending", "reserved", "paid", "confirmed"]);
    let notifications = app.notifications(&shopper.token).await;
    assert_eq!(
        notifications
            .iter()
            .filter(|n| n["order_id"] == order.id.to_string())
            .count(),
        3
    );
    assert_eq!(app.points(&shopper.token).await["points"], 19);
    assert_eq!(app.product(product.id).await.stock, 3);

    // Cancelled, it goes the events' way as in events mode: the stock at
    // once, then the refund and the points through the consumers.
    let cancel = app.cancel_order(&shopper.token, order.id).await;
    assert_eq!(cancel.status(), StatusCode::OK);
    assert_eq!(app.product(product.id).await.stock, 4);
    app.drain().await;
    assert_eq!(app.app.simulated.payment.refunds().len(), 1);
    assert_eq!(app.points(&shopper.token).await["points"], 0);
    assert_eq!(
        app.history(&shopper.token, order.id).await,
        ["pending", "reserved", "paid", "confirmed", "cancelled"]
    );
}

#[tokio::test]
async fn a_failing_provider_fails_the_inline_request_after_compensating() {
    let app = spawn_app_with(&["--side-effects", "inline", "--cache", "off"]).await;
    let product = app.create_product("INL-2", 500, 4).await;
    let shopper = app.shopper("Nur").await;
    app.app.simulated.sms.controls().set_failure_rate(1.0);
    let body = json!({"items": [{"product_id": product.id, "quantity": 2}]});
    let response = app
        .place_order(&shopper.token, Some("inline-key"), &body)
        .await;
    let problem = assert_problem(response, 502, "provider-failed").await;
    let order_id: uuid::Uuid = problem["order_id"].as_str().unwrap().parse().unwrap();

    let order = app.order(&shopper.token, order_id).await;
    assert_eq!(order.status, "cancelled");
    assert_eq!(app.product(product.id).await.stock, 4, "stock released");
    assert_eq!(
        app.app.simulated.payment.refunds().len(),
        1,
        "payment refunded"
    );
    assert_eq!(app.points(&shopper.token).await["points"], 0);

    // The same key gets the same failure back, and no second charge.
    let again = app
        .place_order(&shopper.token, Some("inline-key"), &body)
        .await;
    assert_eq!(again.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(app.app.simulated.payment.charge_count(), 1);
}

/// While a provider's circuit breaker is open, inline orders are refused up
/// front with 503 and `Retry-After`: nothing is reserved, charged or kept,
/// and the same key works once the breaker lets calls through again. The
/// order whose failure opened the breaker was made and undone: a final 502.
#[tokio::test]
async fn inline_orders_answer_503_while_a_providers_breaker_is_open() {
    let app = spawn_app_with(&[
        "--side-effects",
        "inline",
        "--cache",
        "off",
        "--breakers",
        "sms=consecutive:1,open:3s",
    ])
    .await;
    let product = app.create_product("INL-3", 500, 4).await;
    let shopper = app.shopper("Ece").await;
    let sms = app.app.simulated.sms.controls();
    sms.set_failure_rate(1.0);
    let body = json!({"items": [{"product_id": product.id, "quantity": 1}]});

    let first = app
        .place_order(&shopper.token, Some("breaker-1"), &body)
        .await;
    let problem = assert_problem(first, 502, "provider-failed").await;
    let order_id: uuid::Uuid = problem["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        app.order(&shopper.token, order_id).await.status,
        "cancelled"
    );
    assert_eq!(app.app.simulated.payment.refunds().len(), 1);

    let sms_calls = sms.calls();
    let refused = app
        .place_order(&shopper.token, Some("breaker-2"), &body)
        .await;
    let retry_after = retry_after_secs(&refused);
    let problem = assert_problem(refused, 503, "provider-unavailable").await;
    assert!((1..=3).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(
        problem.get("order_id").is_none(),
        "no order was made: {problem}"
    );
    assert_eq!(app.app.simulated.payment.charge_count(), 1, "not charged");
    assert_eq!(sms.calls(), sms_calls, "SMS not called");
    assert_eq!(app.product(product.id).await.stock, 4, "nothing reserved");

    // The provider is back; after Retry-After the same key places the order.
    sms.set_failure_rate(0.0);
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let again = app
        .place_order(&shopper.token, Some("breaker-2"), &body)
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let order: serde_json::Value = again.json().await.unwrap();
    assert_eq!(order["status"], "confirmed");
}

fn retry_after_secs(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn inline_out_of_stock_and_declines_answer_at_once() {
    let app = spawn_app_with(&[
        "--side-effects",
        "inline",
        "--sim-payment-decline-above-cents",
        "1000",
    ])
    .await;
    let product = app.create_product("INL-3", 600, 1).await;
    let shopper = app.shopper("Oya").await;
    let body = json!({"items": [{"product_id": product.id, "quantity": 2}]});
    assert_problem(
        app.place_order(&shopper.token, None, &body).await,
        409,
        "out-of-stock",
    )
    .await;
    let expensive = app.create_product("INL-4", 600, 5).await;
    let body = json!({"items": [{"product_id": expensive.id, "quantity": 2}]});
    let problem = assert_problem(
        app.place_order(&shopper.token, None, &body).await,
        402,
        "payment-declined",
    )
    .await;
    let order_id: uuid::Uuid = problem["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        app.order(&shopper.token, order_id).await.status,
        "payment_failed"
    );
    assert_eq!(app.stock(expensive.id).await, 5);
}
