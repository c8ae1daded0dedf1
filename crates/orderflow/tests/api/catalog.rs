//! The catalog: paging, conditional GET, admin writes, cache invalidation.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn products_are_paged_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_product(&format!("PAGE-{i}"), 100 + i, 10).await;
    }
    let first = app.products(Some(2), None).await;
    assert_eq!(first.items.len(), 2);
    let second = app.products(Some(2), first.next_cursor).await;
    let third = app.products(Some(2), second.next_cursor).await;
    assert_eq!(third.items.len(), 1);
    assert!(third.next_cursor.is_none(), "last page has no cursor");
    let mut ids: Vec<_> = [first.items, second.items, third.items]
        .concat()
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every product exactly once");

    let bad = app.get("/api/v1/products?limit=abc").await;
    assert_problem(bad, 400, "malformed-query").await;
}

#[tokio::test]
async fn product_has_etag_and_answers_304() {
    let app = spawn_app().await;
    let product = app.create_product("ETAG-1", 1299, 7).await;
    let response = app.get_product(product.id, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"id": product.id, "sku": "ETAG-1", "name": "Product ETAG-1", "price_cents": 1299,
            "currency": "EUR", "stock": 7, "description": "", "version": 1,
            "image_url": format!("/api/v1/products/{}/image.svg", product.id)})
    );

    let not_modified = app.get_product(product.id, Some(&etag)).await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        app.get_product(product.id, Some("\"other\""))
            .await
            .status(),
        StatusCode::OK
    );

    // A change of the product (here its stock) makes the old ETag stale:
    // the answer is the new body, under a new ETag, served from the cache.
    let admin = app.admin_token().await;
    let restock = json!({"sku": "ETAG-1", "name": "Product ETAG-1", "price_cents": 1299,
        "currency": "EUR", "stock": 8});
    assert_eq!(
        app.put_product(&admin, product.id, &restock).await.status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        let changed = app.get_product(product.id, Some(&etag)).await;
        assert_eq!(changed.status(), StatusCode::OK);
        let new_etag = changed.headers()["etag"].to_str().unwrap().to_owned();
        assert_ne!(new_etag, etag);
        let body: serde_json::Value = changed.json().await.unwrap();
        assert_eq!((&body["stock"], &body["version"]), (&json!(8), &json!(2)));
        assert_eq!(
            app.get_product(product.id, Some(&new_etag)).await.status(),
            StatusCode::NOT_MODIFIED
        );
    }

    assert_problem(
        app.get_product(uuid::Uuid::now_v7(), None).await,
        404,
        "not-found",
    )
    .await;
    let bad_id = app.get("/api/v1/products/not-a-uuid").await;
    assert_eq!(bad_id.status().as_u16() / 100, 4);
    assert_eq!(bad_id.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn catalog_writes_need_the_admin_role_and_invalidate_the_cache() {
    let app = spawn_app().await;
    let product = app.create_product("CACHE-1", 500, 3).await;
    // Warm the cache, then update: the next read sees the update.
    assert_eq!(app.product(product.id).await.name, "Product CACHE-1");
    let admin = app.admin_token().await;
    let update = json!({"sku": "CACHE-1", "name": "Renamed", "price_cents": 650, "currency": "EUR", "stock": 9});
    let response = app.put_product(&admin, product.id, &update).await;
    assert_eq!(response.status(), StatusCode::OK);
    let read = app.product(product.id).await;
    assert_eq!(
        (read.name.as_str(), read.price_cents, read.stock),
        ("Renamed", 650, 9)
    );

    let shopper = app.shopper("Hakan").await;
    assert_problem(
        app.post_product(&shopper.token, &update).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.put_product(&shopper.token, product.id, &update).await,
        403,
        "forbidden",
    )
    .await;
    let anonymous = app
        .http
        .post(app.url("/api/v1/products"))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;

    let duplicate = app.post_product(&admin, &update).await;
    assert_problem(duplicate, 409, "conflict").await;
    let negative =
        json!({"sku": "NEG", "name": "x", "price_cents": -1, "currency": "EUR", "stock": 1});
    let body = assert_problem(app.post_product(&admin, &negative).await, 422, "validation").await;
    assert_eq!(body["field"], "price_cents");
    assert_problem(
        app.put_product(&admin, uuid::Uuid::now_v7(), &update).await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn cached_stock_follows_every_reservation_at_once() {
    let app = spawn_app().await;
    let product = app.create_product("FRESH-1", 300, 20).await;
    let shopper = app.shopper("Derya").await;
    // Warm both cached views: the product and the page listing it.
    assert_eq!(app.product(product.id).await.stock, 20);
    let listed = |page: orderflow_api::routes::products::ProductPageView| {
        page.items
            .into_iter()
            .find(|p| p.id == product.id)
            .expect("listed")
    };
    assert_eq!(listed(app.products(Some(100), None).await).stock, 20);

    app.order_one(&shopper, product.id, 2).await;
    app.drain().await;
    assert_eq!(app.stock(product.id).await, 18, "the database");
    let read = app.product(product.id).await;
    assert_eq!(
        (read.stock, read.version),
        (18, 2),
        "the cached product, right after the reservation's commit"
    );
    let listed = listed(app.products(Some(100), None).await);
    assert_eq!((listed.stock, listed.version), (18, 2), "the cached page");

    // Every read of the product was counted; the flush puts them on the
    // log, and the trending group adds them up.
    app.app.catalog.flush_views().await.unwrap();
    app.drain().await;
    assert_eq!(app.app.store.product_views(product.id).await.unwrap(), 2);
}

/// Product reads count views; the trending list ranks products by the
/// views flushed in its window, most first; bad windows and sizes are
/// problems that name the parameter.
#[tokio::test]
async fn trending_ranks_products_by_their_views_in_the_window() {
    let app = spawn_app().await;
    let lamp = app.create_product("TREND-1", 300, 20).await;
    let cup = app.create_product("TREND-2", 300, 20).await;
    let quiet = app.create_product("TREND-3", 300, 20).await;
    for _ in 0..3 {
        app.product(cup.id).await;
    }
    app.product(lamp.id).await;
    app.app.catalog.flush_views().await.unwrap();
    app.drain().await;

    let get = |query: &'static str| {
        let app = &app;
        async move { app.get(&format!("/api/v1/products/trending{query}")).await }
    };
    let trending = |query: &'static str| async move {
        let response = get(query).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["product"]["id"].as_str().unwrap().to_owned(),
                    item["views"].as_i64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        trending("").await,
        [(cup.id.to_string(), 3), (lamp.id.to_string(), 1)],
        "the last hour by default; a product nobody read is not trending"
    );
    assert_eq!(
        trending("?window=24h").await,
        trending("").await,
        "every view of this test is within the last 5 minutes"
    );
    assert_eq!(
        trending("?window=5m&top=1").await,
        [(cup.id.to_string(), 3)]
    );
    assert!(
        !trending("")
            .await
            .iter()
            .any(|(id, _)| *id == quiet.id.to_string())
    );

    for query in ["?window=2d", "?window=30s", "?window=soon"] {
        let problem = assert_problem(get(query).await, 400, "malformed-query").await;
        assert!(
            problem["detail"].as_str().unwrap().contains("window"),
            "{query}: {problem}"
        );
    }
    for query in ["?top=0", "?top=51"] {
        let problem = assert_problem(get(query).await, 422, "validation").await;
        assert_eq!(problem["field"], "top", "{query}: {problem}");
    }
}

/// Unique viewers per product and day, exact in the embedded setup: readers
/// are told apart by address and User-Agent, a reader counts once however
/// often they read, the count is the admin's to read, and an unknown
/// product is a 404.
#[tokio::test]
async fn unique_viewers_count_each_reader_once_a_day() {
    let app = spawn_app().await;
    let mug = app.create_product("UNIQUE-1", 300, 20).await;
    let lamp = app.create_product("UNIQUE-2", 300, 20).await;
    let read = |id: uuid::Uuid, browser: &'static str| {
        let app = &app;
        async move {
            let response = app
                .http
                .get(app.url(&format!("/api/v1/products/{id}")))
                .header("user-agent", browser)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    for browser in ["Firefox/140", "Firefox/140", "Firefox/140", "Chromium/141"] {
        read(mug.id, browser).await;
    }
    read(lamp.id, "Firefox/140").await;
    app.app.catalog.flush_views().await.unwrap();
    app.drain().await;

    let admin = app.admin_token().await;
    let viewers = |id: uuid::Uuid, query: String| {
        let (app, admin) = (&app, admin.clone());
        async move {
            app.get_as(
                &admin,
                &format!("/api/v1/admin/products/{id}/viewers{query}"),
            )
            .await
        }
    };
    let today = chrono::Utc::now().date_naive();
    let body: serde_json::Value = viewers(mug.id, String::new()).await.json().await.unwrap();
    assert_eq!(body["unique_viewers"], 2, "{body}");
    assert_eq!(body["exact"], true);
    assert_eq!(body["relative_standard_error"], 0.0);
    assert_eq!(body["day"], today.to_string());
    let body: serde_json::Value = viewers(lamp.id, format!("?day={today}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["unique_viewers"], 1, "{body}");
    let yesterday = today.pred_opt().unwrap();
    let body: serde_json::Value = viewers(mug.id, format!("?day={yesterday}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["unique_viewers"], 0, "{body}");
    assert_eq!(app.app.store.product_views(mug.id).await.unwrap(), 4);

    assert_problem(
        viewers(uuid::Uuid::now_v7(), String::new()).await,
        404,
        "not-found",
    )
    .await;
    assert_problem(
        viewers(mug.id, "?day=yesterday".into()).await,
        400,
        "malformed-query",
    )
    .await;
    let shopper = app.shopper("Nosy").await;
    let refused = app
        .get_as(
            &shopper.token,
            &format!("/api/v1/admin/products/{}/viewers", mug.id),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

/// Search by words, category and price, in each order, a page at a time;
/// the categories; each product's picture.
#[tokio::test]
async fn products_are_searched_filtered_sorted_and_pictured() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let create = |sku: &str, name: &str, price: i64, description: &str, category: Option<&str>| {
        let body = json!({"sku": sku, "name": name, "price_cents": price, "currency": "EUR",
            "stock": 5, "description": description, "category": category});
        let (app, admin) = (&app, &admin);
        async move {
            let response = app.post_product(admin, &body).await;
            assert_eq!(response.status(), StatusCode::CREATED);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let mug = create(
        "S-MUG",
        "Blue <Coffee> Mug & Co",
        1_200,
        "Stoneware, 300 ml.",
        Some(" Kitchen "),
    )
    .await;
    let kettle = create(
        "S-KETTLE",
        "Kettle",
        4_500,
        "Boils water for coffee.",
        Some("Kitchen"),
    )
    .await;
    let lamp = create("S-LAMP", "Desk Lamp", 3_000, "Blue shade.", Some("Home")).await;
    create("S-PEN", "Pen", 800, "", None).await;
    assert_eq!(mug["category"], "Kitchen", "stored trimmed");
    assert_eq!(mug["description"], "Stoneware, 300 ml.");

    let names = |path: &str| {
        let app = &app;
        let path = path.to_owned();
        async move {
            let response = app.get(&path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let page: serde_json::Value = response.json().await.unwrap();
            let names: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            (names, page["next_offset"].clone())
        }
    };
    let (found, _) = names("/api/v1/products/search?q=COFF&sort=price_asc").await;
    assert_eq!(found, ["Blue <Coffee> Mug & Co", "Kettle"]);
    let (found, _) = names("/api/v1/products/search?q=blue%20mug").await;
    assert_eq!(found, ["Blue <Coffee> Mug & Co"]);
    let (found, _) = names("/api/v1/products/search?category=Kitchen&sort=price_desc").await;
    assert_eq!(found, ["Kettle", "Blue <Coffee> Mug & Co"]);
    let (found, _) =
        names("/api/v1/products/search?min_price_cents=1000&max_price_cents=3000&sort=name").await;
    assert_eq!(found, ["Blue <Coffee> Mug & Co", "Desk Lamp"]);
    let (first, next) = names("/api/v1/products/search?sort=price_asc&limit=3").await;
    assert_eq!(first, ["Pen", "Blue <Coffee> Mug & Co", "Desk Lamp"]);
    assert_eq!(next, 3);
    let (rest, next) = names("/api/v1/products/search?sort=price_asc&limit=3&offset=3").await;
    assert_eq!(rest, ["Kettle"]);
    assert!(next.is_null(), "the last page has no next offset");
    // Query syntax is only words: nothing leaks into the database's.
    let (found, _) = names("/api/v1/products/search?q=%22kettle%22%20OR%20*").await;
    assert!(found.is_empty(), "{found:?}");

    // An edit moves the product at once: out of its old category and into
    // the new one, found by its new name.
    let id = lamp["id"].as_str().unwrap();
    let edited = app
        .put_product(
            &admin,
            id.parse().unwrap(),
            &json!({"sku": "S-LAMP", "name": "Reading Light",
            "price_cents": 3_000, "currency": "EUR", "stock": 5, "category": "Kitchen"}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    let (found, _) = names("/api/v1/products/search?category=Kitchen&sort=name").await;
    assert_eq!(found, ["Blue <Coffee> Mug & Co", "Kettle", "Reading Light"]);
    let (found, _) = names("/api/v1/products/search?q=desk").await;
    assert!(found.is_empty());

    let categories: serde_json::Value = app.get("/api/v1/categories").await.json().await.unwrap();
    assert_eq!(
        categories,
        json!({"items": [{"name": "Kitchen", "products": 3}]})
    );

    // Bad input says what is wrong.
    for (query, field) in [
        ("offset=10001", "offset"),
        ("min_price_cents=-1", "min_price_cents"),
        (&*format!("q={}", "a".repeat(201)), "q"),
    ] {
        let response = app.get(&format!("/api/v1/products/search?{query}")).await;
        let problem = assert_problem(response, 422, "validation").await;
        assert_eq!(problem["field"], field, "{problem}");
    }
    let bad_sort = app.get("/api/v1/products/search?sort=cheapest").await;
    assert_problem(bad_sort, 400, "malformed-query").await;

    // The picture: an SVG with the name escaped, revalidated by its ETag.
    let url = app.url(mug["image_url"].as_str().unwrap());
    let picture = app.http.get(&url).send().await.unwrap();
    assert_eq!(picture.status(), StatusCode::OK);
    assert_eq!(picture.headers()["content-type"], "image/svg+xml");
    let etag = picture.headers()["etag"].to_str().unwrap().to_owned();
    let svg = picture.text().await.unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains(">Blue &#60;Coffee&#62; Mug &#38; Co<"),
        "{svg}"
    );
    assert!(!svg.contains("<Coffee>"));
    assert!(svg.contains(">BC<"), "initials: {svg}");
    let again = app
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let kettle_picture = app.get(kettle["image_url"].as_str().unwrap()).await;
    assert_ne!(kettle_picture.headers()["etag"].to_str().unwrap(), etag);
    let unknown = app
        .get(&format!(
            "/api/v1/products/{}/image.svg",
            uuid::Uuid::now_v7()
        ))
        .await;
    assert_problem(unknown, 404, "not-found").await;
}
