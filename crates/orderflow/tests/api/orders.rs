//! Placing orders: validation, idempotency, ownership, listing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn an_order_is_accepted_pending_with_its_lines_and_total() {
    let app = spawn_app().await;
    let mug = app.create_product("MUG-1", 1250, 10).await;
    let pen = app.create_product("PEN-1", 199, 10).await;
    let shopper = app.shopper("Ayse").await;
    let response = app
        .place_order(
            &shopper.token,
            None,
            &json!({"items": [
                {"product_id": mug.id, "quantity": 2},
                {"product_id": pen.id, "quantity": 3},
            ]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "pending");
    assert_eq!(order["total_cents"], 2 * 1250 + 3 * 199);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["items"].as_array().unwrap().len(), 2);
    assert_eq!(order["items"][0]["line_total_cents"], 2500);
    assert!(order["created_at"].is_string() && order["id"].is_string());

    let id: uuid::Uuid = order["id"].as_str().unwrap().parse().unwrap();
    let read = app.order(&shopper.token, id).await;
    assert_eq!(read.status, "pending");
    let history = read.history.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, "pending");
}

#[tokio::test]
async fn invalid_orders_are_422_naming_what_is_wrong() {
    let app = spawn_app().await;
    let product = app.create_product("VAL-1", 100, 10).await;
    let shopper = app.shopper("Burak").await;
    let line = |quantity: i64| json!({"product_id": product.id, "quantity": quantity});
    let cases = [
        (json!({"items": []}), "items"),
        (json!({"items": [line(0)]}), "items[0].quantity"),
        (json!({"items": [line(101)]}), "items[0].quantity"),
        (
            json!({"items": [{"product_id": uuid::Uuid::now_v7(), "quantity": 1}]}),
            "items[0].product_id",
        ),
        (
            json!({"items": (0..51).map(|_| json!({"product_id": uuid::Uuid::now_v7(), "quantity": 1})).collect::<Vec<_>>()}),
            "items",
        ),
    ];
    for (body, field) in cases {
        let problem = assert_problem(
            app.place_order(&shopper.token, None, &body).await,
            422,
            "validation",
        )
        .await;
        assert_eq!(problem["field"], field, "{body}");
    }
    let malformed = assert_problem(
        app.place_order(&shopper.token, None, &json!({"items": "many"}))
            .await,
        422,
        "malformed-body",
    )
    .await;
    assert!(malformed["detail"].as_str().unwrap().contains("items"));
    assert_eq!(
        app.orders(&shopper.token).await["items"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was stored"
    );
    assert_eq!(app.product(product.id).await.stock, 10);
}

#[tokio::test]
async fn idempotency_key_replays_the_saved_answer_and_refuses_another_body() {
    let app = spawn_app().await;
    let product = app.create_product("IDEM-1", 300, 10).await;
    let shopper = app.shopper("Can").await;
    let body = json!({"items": [{"product_id": product.id, "quantity": 1}]});

    let first = app.place_order(&shopper.token, Some("key-1"), &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = app.place_order(&shopper.token, Some("key-1"), &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        first,
        "the same answer"
    );

    let other = json!({"items": [{"product_id": product.id, "quantity": 2}]});
    let problem = assert_problem(
        app.place_order(&shopper.token, Some("key-1"), &other).await,
        422,
        "idempotency-key-reused",
    )
    .await;
    assert_eq!(problem["field"], "Idempotency-Key");

    // Keys belong to a shopper: another shopper's same key is a new order.
    let other_shopper = app.shopper("Deniz").await;
    let theirs = app
        .place_order(&other_shopper.token, Some("key-1"), &body)
        .await;
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert_ne!(theirs.json::<Value>().await.unwrap()["id"], first["id"]);

    assert_eq!(
        app.orders(&shopper.token).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad_key = app
        .place_order(&shopper.token, Some(&"k".repeat(300)), &body)
        .await;
    assert_problem(bad_key, 422, "validation").await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_order() {
    let app = spawn_app().await;
    let product = app.create_product("IDEM-2", 300, 100).await;
    let shopper = app.shopper("Ece").await;
    let body = json!({"items": [{"product_id": product.id, "quantity": 1}]});
    let requests = (0..8).map(|_| app.place_order(&shopper.token, Some("same-key"), &body));
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.insert(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "one order for one key");
    assert_eq!(
        app.orders(&shopper.token).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn shoppers_see_only_their_own_orders_newest_first() {
    let app = spawn_app().await;
    let product = app.create_product("OWN-1", 100, 100).await;
    let owner = app.shopper("Fikret").await;
    let stranger = app.shopper("Gizem").await;
    let first = app.order_one(&owner, product.id, 1).await;
    let second = app.order_one(&owner, product.id, 2).await;

    assert_problem(
        app.get_order(&stranger.token, first.id).await,
        404,
        "not-found",
    )
    .await;
    assert_eq!(
        app.orders(&stranger.token).await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let list = app.orders(&owner.token).await;
    let ids: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![second.id.to_string(), first.id.to_string()]);

    let page = app.get_json(&owner.token, "/api/v1/orders?limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next_cursor"].as_str().unwrap();
    let older = app
        .get_json(
            &owner.token,
            &format!("/api/v1/orders?limit=1&before={next}"),
        )
        .await;
    assert_eq!(older["items"][0]["id"], first.id.to_string());
}
