//! `spawn_app()` and the typed test client.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use orderflow::App;
use orderflow::cli::Cli;
use orderflow_api::routes::auth::{TokenPairView, UserView};
use orderflow_api::routes::orders::OrderView;
use orderflow_api::routes::products::{ProductPageView, ProductView};
use orderflow_workers::Consumer;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD};

/// A running app with its own data dir, and the consumer groups, which the
/// test steps itself.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub app: Arc<App>,
    consumers: Mutex<Vec<Consumer>>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data_dir: tempfile::TempDir,
}

/// Settings for a test: instant simulated providers, fast retries, no rate
/// limits (tests that check limits turn them on with `extra`; a later flag
/// overrides an earlier one).
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = data_dir.path().to_str().unwrap().to_owned();
    let mut args: Vec<String> = crate::support::test_args(&dir)
        .into_iter()
        .chain(crate::support::INSTANT_PROVIDERS)
        .chain([
            "--retry-max-attempts",
            "3",
            "--retry-base-ms",
            "1",
            "--retry-max-ms",
            "2",
        ])
        .map(str::to_owned)
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("serve".into());
    let cli = Cli::try_parse_from(args).expect("test settings parse");
    let app = Arc::new(App::build(cli.settings).await.expect("app builds"));
    let listener = app.bind().await.expect("bind port 0");
    let address = format!("http://{}", listener.local_addr().unwrap());
    let consumers = app
        .workers
        .all_consumers()
        .await
        .expect("consumers subscribe");
    let shutdown = CancellationToken::new();
    let server = {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.run(listener, false, shutdown).await })
    };
    TestApp {
        address,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        app,
        consumers: Mutex::new(consumers),
        shutdown,
        server: Some(server),
        _data_dir: data_dir,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A registered, logged-in shopper.
pub struct Shopper {
    pub id: uuid::Uuid,
    pub email: String,
    pub token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `GET {path}` with no token, whatever the answer.
    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// `GET {path}` as `token`, whatever the answer.
    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Stops this app's member of every consumer group (on PostgreSQL their
    /// leases go), as `orderflow rebuild` wants; [`Self::rejoin`] starts new
    /// ones.
    pub async fn leave_groups(&self) {
        self.consumers.lock().await.clear();
    }

    /// A new member of every consumer group, after [`Self::leave_groups`].
    pub async fn rejoin(&self) {
        *self.consumers.lock().await = self
            .app
            .workers
            .all_consumers()
            .await
            .expect("consumers subscribe");
    }

    /// Steps every consumer group until a whole round handles nothing: the
    /// deterministic replacement for "wait until the workers are done".
    pub async fn drain(&self) {
        drain_consumers(&mut self.consumers.lock().await).await;
    }

    /// Steps only the named groups until they handle nothing: the others'
    /// events wait on the log, as behind a slow or stopped group.
    pub async fn drain_groups(&self, groups: &[&str]) {
        let mut consumers = self.consumers.lock().await;
        let mut chosen: Vec<Consumer> = Vec::new();
        let mut others = Vec::new();
        for consumer in consumers.drain(..) {
            if groups.contains(&consumer.group()) {
                chosen.push(consumer);
            } else {
                others.push(consumer);
            }
        }
        drain_consumers(&mut chosen).await;
        consumers.extend(chosen);
        consumers.extend(others);
    }

    /// Stops the server (graceful) and checks it exited cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    // --- auth ---

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Response {
        self.http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": password, "name": name}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str, device: Option<&str>) -> Response {
        self.http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password, "device": device}))
            .send()
            .await
            .unwrap()
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.http
            .post(self.url("/api/v1/auth/refresh"))
            .json(&json!({"refresh_token": refresh_token}))
            .send()
            .await
            .unwrap()
    }

    /// A refresh with `refresh_token`, which must answer a token pair.
    pub async fn refreshed(&self, refresh_token: &str) -> TokenPairView {
        self.refresh(refresh_token).await.json().await.unwrap()
    }

    /// A refresh with `refresh_token` is refused: a 401 problem.
    pub async fn assert_refresh_refused(&self, refresh_token: &str) {
        assert_problem(self.refresh(refresh_token).await, 401, "unauthorized").await;
    }

    pub async fn logout(&self, token: &str) -> Response {
        self.http
            .post(self.url("/api/v1/auth/logout"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Registers and logs in a new shopper with a unique e-mail.
    pub async fn shopper(&self, name: &str) -> Shopper {
        let email = format!(
            "{}-{}@example.com",
            name.to_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let response = self.register(&email, PASSWORD, name).await;
        assert_eq!(response.status(), StatusCode::CREATED, "register {email}");
        let user: UserView = response.json().await.unwrap();
        let pair = self.tokens(&email, PASSWORD).await;
        Shopper {
            id: user.id,
            email,
            token: pair.access_token,
            refresh_token: pair.refresh_token,
        }
    }

    pub async fn tokens(&self, email: &str, password: &str) -> TokenPairView {
        let response = self.login(email, password, Some("test")).await;
        assert_eq!(response.status(), StatusCode::OK, "login {email}");
        response.json().await.unwrap()
    }

    pub async fn admin_token(&self) -> String {
        self.tokens(ADMIN_EMAIL, ADMIN_PASSWORD).await.access_token
    }

    // --- catalog ---

    pub async fn products(
        &self,
        limit: Option<u32>,
        cursor: Option<uuid::Uuid>,
    ) -> ProductPageView {
        let mut request = self.http.get(self.url("/api/v1/products"));
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit.to_string())]);
        }
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor.to_string())]);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn get_product(&self, id: uuid::Uuid, if_none_match: Option<&str>) -> Response {
        let mut request = self.http.get(self.url(&format!("/api/v1/products/{id}")));
        if let Some(etag) = if_none_match {
            request = request.header("if-none-match", etag);
        }
        request.send().await.unwrap()
    }

    pub async fn product(&self, id: uuid::Uuid) -> ProductView {
        let response = self.get_product(id, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn post_product(&self, token: &str, body: &Value) -> Response {
        self.http
            .post(self.url("/api/v1/products"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_product(&self, token: &str, id: uuid::Uuid, body: &Value) -> Response {
        self.http
            .put(self.url(&format!("/api/v1/products/{id}")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a product as admin and returns it.
    pub async fn create_product(&self, sku: &str, price_cents: i64, stock: i64) -> ProductView {
        let admin = self.admin_token().await;
        let response = self
            .post_product(&admin, &json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": "EUR", "stock": stock}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    // --- orders ---

    pub async fn place_order(&self, token: &str, key: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .http
            .post(self.url("/api/v1/orders"))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    /// Places a one-line order and expects 201.
    pub async fn order_one(
        &self,
        shopper: &Shopper,
        product_id: uuid::Uuid,
        quantity: i64,
    ) -> OrderView {
        let response = self
            .place_order(
                &shopper.token,
                None,
                &json!({"items": [{"product_id": product_id, "quantity": quantity}]}),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        response.json().await.unwrap()
    }

    pub async fn get_order(&self, token: &str, id: uuid::Uuid) -> Response {
        self.http
            .get(self.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn cancel_order(&self, token: &str, id: uuid::Uuid) -> Response {
        self.http
            .post(self.url(&format!("/api/v1/orders/{id}/cancel")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn order(&self, token: &str, id: uuid::Uuid) -> OrderView {
        let response = self.get_order(token, id).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// The statuses an order went through, oldest first.
    pub async fn history(&self, token: &str, id: uuid::Uuid) -> Vec<String> {
        let order = self.order(token, id).await;
        order
            .history
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.status)
            .collect()
    }

    /// The stock as the database has it (the API's view may be cached).
    pub async fn stock(&self, product_id: uuid::Uuid) -> i64 {
        self.app
            .store
            .product(product_id)
            .await
            .unwrap()
            .expect("product exists")
            .stock
    }

    pub async fn orders(&self, token: &str) -> Value {
        self.get_json(token, "/api/v1/orders").await
    }

    // --- me, leaderboard, admin ---

    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let response = self.get_as(token, path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn notifications(&self, token: &str) -> Vec<Value> {
        self.get_json(token, "/api/v1/me/notifications").await["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// `channel:kind` of the shopper's notifications about one order, sorted.
    pub async fn notified(&self, token: &str, order_id: uuid::Uuid) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .notifications(token)
            .await
            .iter()
            .filter(|n| n["order_id"] == order_id.to_string())
            .map(|n| {
                format!(
                    "{}:{}",
                    n["channel"].as_str().unwrap(),
                    n["kind"].as_str().unwrap()
                )
            })
            .collect();
        kinds.sort();
        kinds
    }

    pub async fn points(&self, token: &str) -> Value {
        self.get_json(token, "/api/v1/me/points").await
    }

    pub async fn leaderboard(&self) -> Value {
        self.http
            .get(self.url("/api/v1/leaderboard?limit=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn dead_letters(&self, admin: &str) -> Vec<Value> {
        self.get_json(admin, "/api/v1/admin/dlq").await["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn replay(&self, admin: &str, id: &str) -> Response {
        self.http
            .post(self.url(&format!("/api/v1/admin/dlq/{id}/replay")))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        crate::support::metrics_of(&self.http, &self.address).await
    }
}

/// Asserts a problem+json answer with the given status and `type` slug.
pub async fn assert_problem(response: Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "content type"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        format!("https://orderflow.dev/problems/{slug}"),
        "problem type in {body}"
    );
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "title and detail in {body}"
    );
    body
}

/// Steps consumers until a whole round handles nothing.
pub async fn drain_consumers(consumers: &mut [Consumer]) {
    for _round in 0..100 {
        let mut progressed = false;
        for consumer in consumers.iter_mut() {
            let report = consumer
                .process_batch(Duration::ZERO)
                .await
                .expect("consumer batch");
            progressed |= !report.is_idle();
        }
        if !progressed {
            return;
        }
    }
    panic!("consumers still busy after 100 rounds");
}
