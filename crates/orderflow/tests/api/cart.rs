//! The cart: lines in order, priced from the catalog at every read, checked
//! out once per key, never emptied when refilled since.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Shopper, TestApp, assert_problem, spawn_app};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    shopper: &Shopper,
    body: Option<Value>,
) -> Response {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&shopper.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn ok(response: Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn set(app: &TestApp, shopper: &Shopper, product: uuid::Uuid, quantity: i64) -> Value {
    let path = format!("/api/v1/cart/items/{product}");
    ok(call(
        app,
        reqwest::Method::PUT,
        &path,
        shopper,
        Some(json!({"quantity": quantity})),
    )
    .await)
    .await
}

async fn cart(app: &TestApp, shopper: &Shopper) -> Value {
    ok(call(app, reqwest::Method::GET, "/api/v1/cart", shopper, None).await).await
}

async fn checkout(app: &TestApp, shopper: &Shopper, key: Option<&str>) -> Response {
    let mut request = app
        .http
        .post(app.url("/api/v1/cart/checkout"))
        .bearer_auth(&shopper.token);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// `product_id × quantity` of each item.
fn lines(cart: &Value) -> Vec<(String, u64)> {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["product_id"].as_str().unwrap().to_owned(),
                item["quantity"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_cart_is_filled_priced_now_and_checked_out_once_per_key() {
    let app = spawn_app().await;
    let mug = app.create_product("CART-MUG", 1_200, 10).await;
    let cup = app.create_product("CART-CUP", 300, 10).await;
    let shopper = app.shopper("Carter").await;
    let (m, c) = (mug.id.to_string(), cup.id.to_string());

    let empty = cart(&app, &shopper).await;
    assert_eq!(empty["items"], json!([]));
    assert!(empty["token"].is_null() && empty["total_cents"].is_null());

    let first = set(&app, &shopper, mug.id, 2).await;
    assert_eq!(lines(&first), [(m.clone(), 2)]);
    assert_eq!(first["total_cents"], 2_400);
    assert_eq!(first["currency"], "EUR");
    let second = set(&app, &shopper, cup.id, 1).await;
    let third = set(&app, &shopper, mug.id, 3).await;
    assert_eq!(
        lines(&third),
        [(m.clone(), 3), (c.clone(), 1)],
        "the mug keeps its place"
    );
    assert_ne!(second["token"], third["token"], "a new token per change");
    assert_eq!(third["total_cents"], 3 * 1_200 + 300);

    // Prices are the catalog's now, not when the product was added.
    let admin = app.admin_token().await;
    let repriced = app
        .put_product(
            &admin,
            cup.id,
            &json!({"sku": "CART-CUP", "name": "Cup", "price_cents": 450,
            "currency": "EUR", "stock": 10}),
        )
        .await;
    assert_eq!(repriced.status(), StatusCode::OK);
    let now = cart(&app, &shopper).await;
    assert_eq!(now["items"][1]["unit_price_cents"], 450);
    assert_eq!(now["total_cents"], 3 * 1_200 + 450);

    let removed = ok(call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/cart/items/{c}"),
        &shopper,
        None,
    )
    .await)
    .await;
    assert_eq!(lines(&removed), [(m.clone(), 3)]);
    let replaced = ok(call(
        &app,
        reqwest::Method::PUT,
        "/api/v1/cart",
        &shopper,
        Some(
            json!({"items": [{"product_id": c, "quantity": 1}, {"product_id": m, "quantity": 1},
            {"product_id": c, "quantity": 1}]}),
        ),
    )
    .await)
    .await;
    assert_eq!(
        lines(&replaced),
        [(c.clone(), 2), (m.clone(), 1)],
        "merged, in order"
    );

    // The checkout places the cart, priced now, and empties it.
    let placed = checkout(&app, &shopper, Some("cart-1")).await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let order: Value = placed.json().await.unwrap();
    assert_eq!(order["total_cents"], 2 * 450 + 1_200);
    assert_eq!(order["items"].as_array().unwrap().len(), 2);
    assert_eq!(cart(&app, &shopper).await["items"], json!([]));

    // A retry gets the same order and empties nothing refilled since.
    let again = checkout(&app, &shopper, Some("cart-1")).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], order["id"]);
    set(&app, &shopper, mug.id, 1).await;
    let retried = checkout(&app, &shopper, Some("cart-1")).await;
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], order["id"]);
    assert_eq!(
        lines(&cart(&app, &shopper).await),
        [(m.clone(), 1)],
        "the refilled cart stays"
    );

    // Without a key the cart's token is the key: a second checkout of the
    // same cart is the same order.
    let unkeyed = checkout(&app, &shopper, None).await;
    assert_eq!(unkeyed.status(), StatusCode::CREATED);
    let second_order: Value = unkeyed.json().await.unwrap();
    assert_ne!(second_order["id"], order["id"]);
    assert_eq!(cart(&app, &shopper).await["items"], json!([]));
    let nothing = checkout(&app, &shopper, None).await;
    assert_problem(nothing, 409, "cart-empty").await;

    app.drain().await;
    for id in [&order["id"], &second_order["id"]] {
        let id: uuid::Uuid = id.as_str().unwrap().parse().unwrap();
        assert_eq!(app.order(&shopper.token, id).await.status, "confirmed");
    }
    assert_eq!(app.stock(mug.id).await, 10 - 1 - 1);
    assert_eq!(app.stock(cup.id).await, 10 - 2);
}

#[tokio::test]
async fn a_checkout_cut_off_before_the_cart_was_emptied_empties_it_on_retry() {
    let app = spawn_app().await;
    let mug = app.create_product("CART-CUT", 1_000, 10).await;
    let shopper = app.shopper("Cut").await;
    let filled = set(&app, &shopper, mug.id, 2).await;
    let token = filled["token"].as_str().unwrap().to_owned();
    // What a checkout does before it empties the cart: the order, placed
    // under the key with the cart's token, and then the process is gone.
    let answer = app
        .app
        .orders
        .place(orderflow_core::services::orders::PlaceOrder {
            user_id: shopper.id,
            idempotency_key: Some("cut-1".into()),
            lines: vec![orderflow_domain::order::RequestedLine {
                product_id: mug.id,
                quantity: 2,
            }],
            traceparent: None,
            fingerprint: Some(token),
            idempotency_scope: orderflow_core::services::orders::CHECKOUT_SCOPE,
        })
        .await
        .unwrap();
    assert_eq!(answer.status, 201);
    assert_eq!(lines(&cart(&app, &shopper).await).len(), 1, "still full");

    let retried = checkout(&app, &shopper, Some("cut-1")).await;
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(
        retried.json::<Value>().await.unwrap()["id"],
        answer.body["id"]
    );
    assert_eq!(
        cart(&app, &shopper).await["items"],
        json!([]),
        "emptied by the retry"
    );
}

#[tokio::test]
async fn bad_cart_changes_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let mug = app.create_product("CART-BAD", 500, 10).await;
    let shopper = app.shopper("Wrong").await;
    set(&app, &shopper, mug.id, 1).await;
    let unknown = uuid::Uuid::now_v7();
    for (path, body, field) in [
        (
            format!("/api/v1/cart/items/{unknown}"),
            json!({"quantity": 1}),
            "product_id",
        ),
        (
            format!("/api/v1/cart/items/{}", mug.id),
            json!({"quantity": 101}),
            "quantity",
        ),
        (
            format!("/api/v1/cart/items/{}", mug.id),
            json!({"quantity": -1}),
            "quantity",
        ),
        (
            "/api/v1/cart".to_owned(),
            json!({"items": [{"product_id": unknown, "quantity": 1}]}),
            "items",
        ),
    ] {
        let response = call(&app, reqwest::Method::PUT, &path, &shopper, Some(body)).await;
        let problem = assert_problem(response, 422, "validation").await;
        assert!(
            problem["field"].as_str().unwrap().starts_with(field),
            "{path}: {problem}"
        );
    }
    assert_eq!(
        lines(&cart(&app, &shopper).await),
        [(mug.id.to_string(), 1)]
    );

    // At most 50 products, as in an order: the 51st is refused.
    let mut many = vec![json!({"product_id": mug.id, "quantity": 1})];
    for i in 0..50 {
        let product = app.create_product(&format!("CART-MANY-{i}"), 100, 5).await;
        many.push(json!({"product_id": product.id, "quantity": 1}));
    }
    let too_many = call(
        &app,
        reqwest::Method::PUT,
        "/api/v1/cart",
        &shopper,
        Some(json!({"items": many})),
    )
    .await;
    assert_problem(too_many, 422, "validation").await;
    let fifty: Vec<Value> = many[..50].to_vec();
    let full = ok(call(
        &app,
        reqwest::Method::PUT,
        "/api/v1/cart",
        &shopper,
        Some(json!({"items": fifty})),
    )
    .await)
    .await;
    assert_eq!(full["items"].as_array().unwrap().len(), 50);
    let last: uuid::Uuid = many[50]["product_id"].as_str().unwrap().parse().unwrap();
    let fifty_first = call(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/cart/items/{last}"),
        &shopper,
        Some(json!({"quantity": 1})),
    )
    .await;
    let problem = assert_problem(fifty_first, 422, "validation").await;
    assert_eq!(problem["field"], "items");
    let anonymous = app.http.get(app.url("/api/v1/cart")).send().await.unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;
}
