//! The fraud check end to end, with the standard rules (more than 5 orders
//! or more than 10,000.00 EUR by one shopper in any 5 minutes): the order
//! that breaks a rule is held, an alert is on `fraud.alerts`, and an admin
//! approves (the order goes on to confirmed) or rejects it (the shopper is
//! told).

use reqwest::StatusCode;

use crate::helpers::{TestApp, assert_problem, spawn_app};
use orderflow_domain::events::EventData;

async fn review(
    app: &TestApp,
    admin: &str,
    order_id: uuid::Uuid,
    verdict: &str,
) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/api/v1/admin/orders/{order_id}/{verdict}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
}

/// Every `fraud.alerted` on the log so far.
async fn alerts(app: &TestApp) -> Vec<EventData> {
    let mut reader = app
        .app
        .log
        .subscribe(
            &format!("alerts-{}", uuid::Uuid::now_v7()),
            &["fraud.alerts"],
        )
        .await
        .unwrap();
    let mut all = Vec::new();
    loop {
        let batch = reader.poll(100, std::time::Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch.into_iter().map(|d| d.envelope.data));
    }
}

#[tokio::test]
async fn the_sixth_order_in_five_minutes_is_held_until_an_admin_approves_it() {
    let app = spawn_app().await;
    let mug = app.create_product("FRAUD-1", 1_000, 100).await;
    let shopper = app.shopper("Quick").await;
    let alerts_before = alerts_counted(&app).await;
    let mut orders = Vec::new();
    for _ in 0..6 {
        orders.push(app.order_one(&shopper, mug.id, 1).await);
    }
    app.drain().await;

    for order in &orders[..5] {
        assert_eq!(
            app.order(&shopper.token, order.id).await.status,
            "confirmed"
        );
    }
    let sixth = orders[5].id;
    assert_eq!(app.order(&shopper.token, sixth).await.status, "held");
    assert_eq!(
        app.history(&shopper.token, sixth).await,
        ["pending", "held"]
    );
    assert_eq!(
        app.stock(mug.id).await,
        95,
        "nothing taken for the held order"
    );
    assert_eq!(
        app.notified(&shopper.token, sixth).await,
        ["email:order_held", "push:order_held", "sms:order_held"]
    );
    let alerts = alerts(&app).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let EventData::FraudAlerted {
        user_id,
        rule,
        orders: in_window,
        window_start,
        window_end,
        total_cents,
        ..
    } = &alerts[0]
    else {
        panic!("not an alert: {:?}", alerts[0]);
    };
    assert_eq!(*user_id, shopper.id);
    assert_eq!(rule.as_str(), "orders_per_window");
    assert_eq!(
        in_window,
        &orders.iter().map(|o| o.id).collect::<Vec<_>>(),
        "the six orders, the held one last"
    );
    assert_eq!(*window_end - *window_start, chrono::TimeDelta::minutes(5));
    assert_eq!(*total_cents, 6_000);

    // A shopper cannot review; an admin approves, and the flow goes on.
    let refused = review(&app, &shopper.token, sixth, "approve").await;
    assert_problem(refused, 403, "forbidden").await;
    let admin = app.admin_token().await;
    let approved = review(&app, &admin, sixth, "approve").await;
    assert_eq!(approved.status(), StatusCode::OK);
    let approved: serde_json::Value = approved.json().await.unwrap();
    assert_eq!(approved["status"], "pending");
    app.drain().await;
    assert_eq!(app.order(&shopper.token, sixth).await.status, "confirmed");
    assert_eq!(
        app.history(&shopper.token, sixth).await,
        [
            "pending",
            "held",
            "pending",
            "reserved",
            "paid",
            "confirmed"
        ]
    );
    assert_eq!(app.stock(mug.id).await, 94);

    // A second click finds it no longer held.
    let again = review(&app, &admin, sixth, "reject").await;
    let problem = assert_problem(again, 409, "order-not-held").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("is confirmed"),
        "{problem}"
    );
    let unknown = review(&app, &admin, uuid::Uuid::now_v7(), "approve").await;
    assert_problem(unknown, 404, "not-found").await;
    // The recorder is the test process's, shared by the tests running
    // beside this one (some hold orders too): the counter rose by at least
    // this test's hold.
    assert!(
        alerts_counted(&app).await >= alerts_before + 1.0,
        "orderflow_fraud_alerts_total{{rule=\"orders_per_window\"}} did not count the hold"
    );
}

/// `orderflow_fraud_alerts_total{rule="orders_per_window"}` as the app
/// exports it (0 before the first alert).
async fn alerts_counted(app: &TestApp) -> f64 {
    app.metrics()
        .await
        .lines()
        .find_map(|line| {
            line.strip_prefix("orderflow_fraud_alerts_total{rule=\"orders_per_window\"} ")
        })
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_held_order_that_is_rejected_takes_nothing_and_its_shopper_is_told() {
    let app = spawn_app().await;
    // One order over 10,000.00 EUR breaks the money rule on its own.
    let ring = app.create_product("FRAUD-2", 1_000_001, 5).await;
    let shopper = app.shopper("Lavish").await;
    let order = app.order_one(&shopper, ring.id, 1).await;
    app.drain().await;
    assert_eq!(app.order(&shopper.token, order.id).await.status, "held");
    let alerts = alerts(&app).await;
    assert!(
        matches!(&alerts[..], [EventData::FraudAlerted { rule, total_cents: 1_000_001, .. }] if rule.as_str() == "total_per_window"),
        "{alerts:?}"
    );

    let admin = app.admin_token().await;
    let rejected = review(&app, &admin, order.id, "reject").await;
    assert_eq!(rejected.status(), StatusCode::OK);
    app.drain().await;
    assert_eq!(app.order(&shopper.token, order.id).await.status, "rejected");
    assert_eq!(
        app.history(&shopper.token, order.id).await,
        ["pending", "held", "rejected"]
    );
    assert_eq!(app.stock(ring.id).await, 5, "no stock taken");
    assert_eq!(
        app.notified(&shopper.token, order.id).await,
        [
            "email:order_held",
            "email:order_rejected",
            "push:order_held",
            "push:order_rejected",
            "sms:order_held",
            "sms:order_rejected"
        ]
    );
    assert_eq!(
        app.app.simulated.payment.controls().calls(),
        0,
        "nothing charged"
    );
}

/// The review queue: held orders, oldest first, paged with a cursor; an
/// order leaves it when reviewed; only admins read it.
#[tokio::test]
async fn held_orders_wait_in_a_queue_oldest_first() {
    let app = spawn_app().await;
    let mug = app.create_product("FRAUD-Q", 1_000, 100).await;
    let shopper = app.shopper("Queue").await;
    let mut orders = Vec::new();
    for _ in 0..8 {
        orders.push(app.order_one(&shopper, mug.id, 1).await.id);
    }
    app.drain().await;
    let held = &orders[5..];
    let admin = app.admin_token().await;
    let queue = |token: String, query: String| {
        let app = &app;
        async move {
            app.http
                .get(app.url(&format!("/api/v1/admin/orders/held{query}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let page = |query: &str| {
        let query = query.to_owned();
        let admin = admin.clone();
        async move {
            let response = queue(admin, query).await;
            assert_eq!(response.status(), StatusCode::OK);
            let body: serde_json::Value = response.json().await.unwrap();
            let ids: Vec<uuid::Uuid> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|order| {
                    assert_eq!(order["status"], "held");
                    order["id"].as_str().unwrap().parse().unwrap()
                })
                .collect();
            (ids, body["next_cursor"].as_str().map(str::to_owned))
        }
    };
    let (first, cursor) = page("?limit=2").await;
    assert_eq!(first, held[..2], "the two oldest held orders");
    let cursor = cursor.expect("a full page has a cursor");
    let (second, cursor) = page(&format!("?limit=2&after={cursor}")).await;
    assert_eq!(second, held[2..]);
    assert_eq!(cursor, None, "the last page");

    let approved = review(&app, &admin, held[0], "approve").await;
    assert_eq!(approved.status(), StatusCode::OK);
    assert_eq!(
        page("").await.0,
        held[1..],
        "reviewed orders leave the queue"
    );

    let refused = queue(shopper.token.clone(), String::new()).await;
    assert_problem(refused, 403, "forbidden").await;
}
