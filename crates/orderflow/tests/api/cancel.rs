//! A shopper cancels an order: before the reservation (nothing is taken),
//! while reserved or confirmed (the stock comes back; a charge is refunded
//! and a confirmed order's points are taken back), and when the charge
//! lands after the cancellation (refunded too). The shopper is told on
//! every channel; an order that ended otherwise cannot be cancelled.

use reqwest::StatusCode;

use crate::helpers::{TestApp, assert_problem, spawn_app};

async fn cancelled(app: &TestApp, token: &str, order_id: uuid::Uuid) -> serde_json::Value {
    let response = app.cancel_order(token, order_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled", "{body}");
    body
}

const CANCELLED_EVERYWHERE: [&str; 3] = [
    "email:order_cancelled",
    "push:order_cancelled",
    "sms:order_cancelled",
];

#[tokio::test]
async fn an_order_cancelled_before_its_reservation_takes_no_stock_and_charges_nothing() {
    let app = spawn_app().await;
    let mug = app.create_product("CANCEL-1", 1_500, 10).await;
    let shopper = app.shopper("Early").await;
    let order = app.order_one(&shopper, mug.id, 3).await;

    cancelled(&app, &shopper.token, order.id).await;
    app.drain().await;

    assert_eq!(
        app.order(&shopper.token, order.id).await.status,
        "cancelled"
    );
    assert_eq!(
        app.history(&shopper.token, order.id).await,
        ["pending", "cancelled"]
    );
    assert_eq!(app.stock(mug.id).await, 10, "the reservation came too late");
    assert_eq!(
        app.app.simulated.payment.controls().calls(),
        0,
        "nothing charged"
    );
    assert_eq!(
        app.notified(&shopper.token, order.id).await,
        CANCELLED_EVERYWHERE
    );

    // Twice is refused, and says why.
    let again = app.cancel_order(&shopper.token, order.id).await;
    let problem = assert_problem(again, 409, "order-not-cancellable").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("is cancelled"),
        "{problem}"
    );
    // Another shopper's order, or none, is not found.
    let other = app.shopper("Other").await;
    assert_problem(
        app.cancel_order(&other.token, order.id).await,
        404,
        "not-found",
    )
    .await;
    assert_problem(
        app.cancel_order(&other.token, uuid::Uuid::now_v7()).await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn a_confirmed_order_cancelled_is_refunded_and_its_points_taken_back() {
    let app = spawn_app().await;
    let mug = app.create_product("CANCEL-2", 2_500, 10).await;
    let shopper = app.shopper("Later").await;
    let order = app.order_one(&shopper, mug.id, 2).await;
    app.drain().await;
    assert_eq!(
        app.order(&shopper.token, order.id).await.status,
        "confirmed"
    );
    assert_eq!(app.stock(mug.id).await, 8);
    let earned = app.points(&shopper.token).await["points"].as_i64().unwrap();
    assert!(earned > 0, "points for the confirmed order");

    cancelled(&app, &shopper.token, order.id).await;
    assert_eq!(app.stock(mug.id).await, 10, "given back in the request");
    app.drain().await;

    assert_eq!(
        app.history(&shopper.token, order.id).await,
        ["pending", "reserved", "paid", "confirmed", "cancelled"]
    );
    let payment = app.app.simulated.payment.controls();
    assert_eq!(payment.calls(), 2, "one charge, one refund");
    assert_eq!(app.app.simulated.payment.refunds().len(), 1);
    assert_eq!(app.points(&shopper.token).await["points"], 0);
    let mut expected: Vec<String> = ["email", "push", "sms"]
        .iter()
        .flat_map(|c| {
            [
                format!("{c}:order_cancelled"),
                format!("{c}:order_confirmed"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(app.notified(&shopper.token, order.id).await, expected);
    assert_problem(
        app.cancel_order(&shopper.token, order.id).await,
        409,
        "order-not-cancellable",
    )
    .await;
}

#[tokio::test]
async fn a_charge_that_lands_after_the_cancellation_is_refunded() {
    let app = spawn_app().await;
    let mug = app.create_product("CANCEL-3", 4_000, 10).await;
    let shopper = app.shopper("Racing").await;
    let order = app.order_one(&shopper, mug.id, 1).await;
    // Reserved and charged, but the `orders` group has not moved the order
    // on yet: the shopper still sees it pending and cancels it.
    app.drain_groups(&["fraud", "inventory", "payment"]).await;
    assert_eq!(app.stock(mug.id).await, 9);
    assert_eq!(app.app.simulated.payment.charge_count(), 1);
    assert_eq!(app.order(&shopper.token, order.id).await.status, "pending");

    cancelled(&app, &shopper.token, order.id).await;
    assert_eq!(app.stock(mug.id).await, 10, "the reservation is released");
    app.drain().await;

    assert_eq!(
        app.history(&shopper.token, order.id).await,
        ["pending", "cancelled"],
        "the late stock and payment results move it no more"
    );
    assert_eq!(
        app.app.simulated.payment.refunds().len(),
        1,
        "the late charge is paid back"
    );
    assert_eq!(app.points(&shopper.token).await["points"], 0);
    assert_eq!(
        app.notified(&shopper.token, order.id).await,
        CANCELLED_EVERYWHERE
    );
}
