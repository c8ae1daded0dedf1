//! The order flow through every consumer group (events mode), stepped by
//! the test with `drain()`.

use serde_json::json;

use crate::helpers::{assert_problem, drain_consumers, spawn_app, spawn_app_with};

fn kinds(notifications: &[serde_json::Value], order_id: uuid::Uuid) -> Vec<(String, String)> {
    let mut kinds: Vec<_> = notifications
        .iter()
        .filter(|n| n["order_id"] == order_id.to_string())
        .map(|n| {
            (
                n["channel"].as_str().unwrap().to_owned(),
                n["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn an_order_is_confirmed_with_three_notifications_stock_and_points() {
    let app = spawn_app().await;
    let product = app.create_product("FLOW-1", 2550, 10).await;
    let shopper = app.shopper("Hale").await;
    let order = app.order_one(&shopper, product.id, 2).await;
    assert_eq!(order.status, "pending");

    app.drain().await;

    let order = app.order(&shopper.token, order.id).await;
    assert_eq!(order.status, "confirmed");
    let history = app.history(&shopper.token, order.id).await;
    assert_eq!(history, ["pending", "reserved", "paid", "confirmed"]);
    assert_eq!(
        kinds(&app.notifications(&shopper.token).await, order.id),
        [
            ("email", "order_confirmed"),
            ("push", "order_confirmed"),
            ("sms", "order_confirmed")
        ]
        .map(|(c, k)| (c.to_owned(), k.to_owned()))
    );
    let all = app.notifications(&shopper.token).await;
    assert!(
        all.iter()
            .any(|n| n["kind"] == "welcome" && n["channel"] == "email"),
        "welcome e-mail: {all:?}"
    );
    assert_eq!(app.stock(product.id).await, 8, "stock decreased");
    assert_eq!(
        app.points(&shopper.token).await,
        json!({"points": 51, "rank": 1})
    );
    let board = app.leaderboard().await;
    assert_eq!(board["items"][0]["user_id"], shopper.id.to_string());
    assert_eq!(board["items"][0]["points"], 51);

    // Draining again changes nothing: every effect happened once.
    app.drain().await;
    assert_eq!(app.notifications(&shopper.token).await.len(), 4);
    assert_eq!(app.points(&shopper.token).await["points"], 51);
}

#[tokio::test]
async fn out_of_stock_is_rejected_and_stock_is_untouched() {
    let app = spawn_app().await;
    let product = app.create_product("FLOW-2", 100, 1).await;
    let shopper = app.shopper("Ilker").await;
    let order = app.order_one(&shopper, product.id, 2).await;
    app.drain().await;
    let order = app.order(&shopper.token, order.id).await;
    assert_eq!(order.status, "rejected");
    assert_eq!(app.stock(product.id).await, 1);
    assert_eq!(
        kinds(&app.notifications(&shopper.token).await, order.id).len(),
        3
    );
    assert!(
        kinds(&app.notifications(&shopper.token).await, order.id)
            .iter()
            .all(|(_, k)| k == "order_rejected")
    );
    assert_eq!(
        app.points(&shopper.token).await,
        json!({"points": 0, "rank": null})
    );
}

#[tokio::test]
async fn a_declined_payment_fails_the_order_and_releases_the_stock_once() {
    let app = spawn_app_with(&["--sim-payment-decline-above-cents", "10000"]).await;
    let product = app.create_product("FLOW-3", 6000, 5).await;
    let shopper = app.shopper("Jale").await;
    let order = app.order_one(&shopper, product.id, 2).await;
    app.drain().await;
    let order = app.order(&shopper.token, order.id).await;
    assert_eq!(order.status, "payment_failed");
    let history = app.history(&shopper.token, order.id).await;
    assert_eq!(history, ["pending", "reserved", "payment_failed"]);
    assert_eq!(app.stock(product.id).await, 5, "released");
    assert!(
        kinds(&app.notifications(&shopper.token).await, order.id)
            .iter()
            .all(|(_, k)| k == "payment_failed")
    );
}

#[tokio::test]
async fn a_failing_provider_is_retried_dead_lettered_and_replayed_to_success() {
    let app = spawn_app().await;
    let product = app.create_product("FLOW-4", 1000, 5).await;
    let shopper = app.shopper("Kemal").await;
    app.app.simulated.sms.controls().set_failure_rate(1.0);
    let order = app.order_one(&shopper, product.id, 1).await;
    app.drain().await;

    // The order is confirmed; only the SMS is missing.
    assert_eq!(
        app.order(&shopper.token, order.id).await.status,
        "confirmed"
    );
    let channels: Vec<_> = kinds(&app.notifications(&shopper.token).await, order.id)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(channels, ["email", "push"]);
    assert_eq!(
        app.app.simulated.sms.controls().calls(),
        3,
        "max_attempts calls"
    );

    let admin = app.admin_token().await;
    let dead = app.dead_letters(&admin).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["group"], "sms");
    assert_eq!(dead[0]["attempts"], 3);
    assert!(dead[0]["error"].as_str().unwrap().contains("simulated"));
    // The failure is also an event on failed.messages, for any tool that follows that topic.
    let mut audit = app
        .app
        .log
        .subscribe("dlq-audit", &["failed.messages"])
        .await
        .unwrap();
    let failed = audit.poll(10, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(failed.len(), 1);
    match &failed[0].envelope.data {
        orderflow_domain::events::EventData::MessageFailed {
            group,
            attempts,
            original,
            ..
        } => {
            assert_eq!((group.as_str(), *attempts), ("sms", 3));
            assert_eq!(original.type_name(), "orderflow.order.confirmed");
        }
        other => panic!("unexpected event on failed.messages: {other:?}"),
    }

    // The provider recovers; the operator replays.
    app.app.simulated.sms.controls().set_failure_rate(0.0);
    let id = dead[0]["id"].as_str().unwrap();
    assert_eq!(
        app.replay(&admin, id).await.status(),
        reqwest::StatusCode::OK
    );
    assert_eq!(
        app.replay(&admin, id).await.status(),
        reqwest::StatusCode::CONFLICT,
        "a replay happens once"
    );
    app.drain().await;

    let channels: Vec<_> = kinds(&app.notifications(&shopper.token).await, order.id)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(channels, ["email", "push", "sms"]);
    assert_eq!(
        app.dead_letters(&admin).await.len(),
        0,
        "replayed letters leave the default list"
    );
    // The replayed event reached every group again; the others skipped it.
    assert_eq!(app.points(&shopper.token).await["points"], 10);
}

#[tokio::test]
async fn concurrent_orders_for_the_last_units_never_oversell() {
    let app = spawn_app().await;
    let product = app.create_product("LAST-3", 500, 3).await;
    let mut shoppers = Vec::new();
    for i in 0..8 {
        shoppers.push(app.shopper(&format!("Buyer{i}")).await);
    }
    let orders =
        futures::future::join_all(shoppers.iter().map(|s| app.order_one(s, product.id, 1))).await;
    app.drain().await;
    let mut confirmed = 0;
    for (shopper, order) in shoppers.iter().zip(&orders) {
        match app.order(&shopper.token, order.id).await.status.as_str() {
            "confirmed" => confirmed += 1,
            "rejected" => {}
            other => panic!("unexpected final state {other}"),
        }
    }
    assert_eq!(confirmed, 3);
    assert_eq!(app.stock(product.id).await, 0);
}

#[tokio::test]
async fn consumer_lag_shows_work_waiting_and_drains_to_zero() {
    let app = spawn_app().await;
    let product = app.create_product("LAG-1", 100, 10).await;
    let shopper = app.shopper("Lale").await;
    app.order_one(&shopper, product.id, 1).await;
    let admin = app.admin_token().await;
    let before = app.get_json(&admin, "/api/v1/admin/consumers").await;
    let inventory = before["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "inventory")
        .unwrap();
    assert!(inventory["lag"].as_i64().unwrap() >= 1, "{inventory}");
    app.drain().await;
    let after = app.get_json(&admin, "/api/v1/admin/consumers").await;
    for group in after["groups"].as_array().unwrap() {
        assert_eq!(group["lag"], 0, "{group}");
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("orderflow_consumer_lag{"),
        "lag per partition is exported"
    );
    assert!(metrics.contains("orderflow_events_consumed_total{"));
    assert!(metrics.contains("orderflow_events_published_total{"));
}

#[tokio::test]
async fn the_server_with_its_workers_stops_cleanly_and_loses_nothing() {
    // Real background workers this time (no manual stepping).
    let dir = tempfile::tempdir().unwrap();
    use clap::Parser;
    let args = ["orderflow", "--data-dir", dir.path().to_str().unwrap()]
        .into_iter()
        .chain(["--listen", "127.0.0.1:0"])
        .chain(crate::support::INSTANT_PROVIDERS)
        .chain(["serve"]);
    let cli = orderflow::cli::Cli::try_parse_from(args).unwrap();
    let app = std::sync::Arc::new(orderflow::App::build(cli.settings.clone()).await.unwrap());
    let product = app
        .catalog
        .create(
            orderflow_domain::product::ProductDraft::new("STOP-1", "Stop", 100, "EUR", 50).unwrap(),
        )
        .await
        .unwrap();
    let user = app
        .auth
        .register("stop@example.com", "a long enough password", "Stop")
        .await
        .unwrap();
    let listener = app.bind().await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let (app, shutdown) = (app.clone(), shutdown.clone());
        async move { app.run(listener, true, shutdown).await }
    });
    let mut placed = Vec::new();
    for _ in 0..5 {
        let answer = app
            .orders
            .place(orderflow_core::services::orders::PlaceOrder {
                user_id: user.id,
                idempotency_key: None,
                lines: vec![orderflow_domain::order::RequestedLine {
                    product_id: product.id,
                    quantity: 1,
                }],
                traceparent: None,
                fingerprint: None,
                idempotency_scope: "",
            })
            .await
            .unwrap();
        placed.push(
            answer.body["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
    }
    shutdown.cancel();
    server.await.unwrap().unwrap();

    // Whatever the workers did not finish is still in the log, uncommitted:
    // a restarted process finishes every order.
    let restarted = orderflow::App::build(cli.settings).await.unwrap();
    drain_consumers(&mut restarted.workers.all_consumers().await.unwrap()).await;
    for id in placed {
        let (order, _) = restarted.store.order(id).await.unwrap().unwrap();
        assert_eq!(order.status.as_str(), "confirmed");
    }
}

/// Confirmed orders, and only those, are in the sales windows (minute and
/// day) and the top products; bad ranges get problems that say what is
/// wrong.
#[tokio::test]
async fn confirmed_orders_are_counted_in_sales_windows_and_top_products() {
    let app = spawn_app().await;
    let lamp = app.create_product("SALES-1", 2550, 10).await;
    let cup = app.create_product("SALES-2", 1000, 10).await;
    let (ayla, baris) = (app.shopper("Ayla").await, app.shopper("Baris").await);
    app.order_one(&ayla, lamp.id, 2).await;
    app.order_one(&baris, cup.id, 3).await;
    app.order_one(&ayla, cup.id, 1).await;
    app.order_one(&baris, lamp.id, 11).await; // more than the stock: rejected
    app.drain().await;

    let admin = app.admin_token().await;
    for granularity in ["minute", "day"] {
        let sales = app
            .get_json(
                &admin,
                &format!("/api/v1/admin/sales?granularity={granularity}"),
            )
            .await;
        assert_eq!(sales["granularity"], granularity, "{sales}");
        let windows = sales["windows"].as_array().unwrap();
        assert!(!windows.is_empty(), "{sales}");
        let sum = |field: &str| {
            windows
                .iter()
                .map(|w| w[field].as_i64().unwrap())
                .sum::<i64>()
        };
        // The orders may straddle a window boundary: the sums are exact.
        assert_eq!(
            (sum("orders"), sum("units"), sum("revenue_cents")),
            (3, 6, 2 * 2550 + 4 * 1000),
            "three confirmed orders, the rejected one left out: {sales}"
        );
        for window in windows {
            assert_eq!(window["currency"], "EUR");
            let start: chrono::DateTime<chrono::Utc> =
                window["window_start"].as_str().unwrap().parse().unwrap();
            let end: chrono::DateTime<chrono::Utc> =
                window["window_end"].as_str().unwrap().parse().unwrap();
            let width = if granularity == "day" { 86_400 } else { 60 };
            assert_eq!((end - start).num_seconds(), width, "{window}");
        }
    }

    let top = app
        .get_json(&admin, "/api/v1/admin/sales/products?granularity=day&top=5")
        .await;
    let products: Vec<(String, i64, i64, i64, i64)> = top["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["product_id"].as_str().unwrap().to_owned(),
                p["place"].as_i64().unwrap(),
                p["orders"].as_i64().unwrap(),
                p["units"].as_i64().unwrap(),
                p["revenue_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        products,
        [
            (lamp.id.to_string(), 1, 1, 2, 5100),
            (cup.id.to_string(), 2, 2, 4, 4000)
        ],
        "{top}"
    );
    let first = app
        .get_json(&admin, "/api/v1/admin/sales/products?granularity=day&top=1")
        .await;
    assert_eq!(first["products"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["products"][0]["name"], top["products"][0]["name"]);

    for (query, status, slug, field) in [
        (
            "/api/v1/admin/sales?granularity=hour",
            400,
            "malformed-query",
            None,
        ),
        (
            "/api/v1/admin/sales?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
            422,
            "validation",
            Some("from"),
        ),
        (
            "/api/v1/admin/sales?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
            422,
            "validation",
            Some("to"),
        ),
        (
            "/api/v1/admin/sales/products?top=0",
            422,
            "validation",
            Some("top"),
        ),
        (
            "/api/v1/admin/sales?from=yesterday",
            400,
            "malformed-query",
            None,
        ),
    ] {
        let response = app
            .http
            .get(app.url(query))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, status, slug).await;
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{query}: {problem}");
        }
    }
}
