//! What the contract tests (`fuzz.rs`, `contracts.rs`) share, and the API and
//! observability tests take their base settings from: an in-process
//! orderflow running every role on a free loopback port, a few HTTP calls to
//! set it up, and running an outside tool to completion.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod process;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orderflow::App;
use orderflow::cli::Cli;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const PASSWORD: &str = "a long enough password";

/// The command line every test app starts from: its own data dir, a free
/// loopback port, the test admin, and no rate limit (the tests' request
/// rates would trip them; limits have tests of their own).
pub fn test_args(data_dir: &str) -> Vec<&str> {
    vec![
        "orderflow",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
        "--auth-rate-per-sec",
        "0",
        "--rate-limits",
        "off",
    ]
}

/// Simulated providers that answer at once (their defaults wait 100 to
/// 300 ms per call, which tests only spend waiting).
pub const INSTANT_PROVIDERS: [&str; 8] = [
    "--sim-email-latency-ms",
    "0",
    "--sim-sms-latency-ms",
    "0",
    "--sim-push-latency-ms",
    "0",
    "--sim-payment-latency-ms",
    "0",
];

/// orderflow serving HTTP and running every consumer group (and the relay,
/// with Kafka), started from [`test_args`] and [`INSTANT_PROVIDERS`].
pub struct Server {
    pub client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _data_dir: tempfile::TempDir,
}

impl Server {
    /// Starts it; `extra` flags come after the defaults, so they override.
    pub async fn start(extra: &[&str]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        let mut args = test_args(data_dir.path().to_str().unwrap());
        args.extend(INSTANT_PROVIDERS);
        args.extend_from_slice(extra);
        args.push("serve");
        let cli = Cli::try_parse_from(args).unwrap();
        let app = Arc::new(App::build(cli.settings).await.unwrap());
        let listener = app.bind().await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { app.run(listener, true, shutdown).await })
        };
        Server {
            client: Client::new(base),
            shutdown,
            task,
            _data_dir: data_dir,
        }
    }

    /// Stops HTTP and the consumers, and waits for both.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

impl std::ops::Deref for Server {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The Prometheus exposition at `{base}/metrics`, read with `http`.
pub async fn metrics_of(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The few HTTP calls tests set things up with, against any orderflow (in
/// process, or a process of its own).
#[derive(Clone)]
pub struct Client {
    /// `http://127.0.0.1:port`
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: String) -> Client {
        Client {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// `POST /api/v1{path}` with a JSON body, as `token` when given.
    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// `GET /api/v1{path}` as `token`, as JSON.
    pub async fn get(&self, path: &str, token: &str) -> Value {
        let answer = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        answer.json().await.unwrap()
    }

    /// The Prometheus exposition at `/metrics`.
    pub async fn metrics(&self) -> String {
        metrics_of(&self.http, &self.base).await
    }

    /// Registers a shopper with [`PASSWORD`] and logs them in: a token.
    pub async fn shopper(&self, email: &str) -> String {
        self.registered_shopper(email).await.1
    }

    /// Registers a shopper with [`PASSWORD`] and logs them in: their user
    /// id and a token.
    pub async fn registered_shopper(&self, email: &str) -> (String, String) {
        let body = json!({"email": email, "password": PASSWORD, "name": "Shopper"});
        let registered = self.post("/auth/register", body, None).await;
        assert_eq!(registered.status(), 201);
        let registered: Value = registered.json().await.unwrap();
        let user = registered["id"].as_str().unwrap().to_owned();
        (user, self.login(email, PASSWORD).await)
    }

    /// An access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let body = json!({"email": email, "password": password, "device": "contract test"});
        let answer: Value = self
            .post("/auth/login", body, None)
            .await
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// Places an order of `quantity` × `product` as `token` and waits
    /// (bounded) until it reaches a final status; that status.
    pub async fn order_to_the_end(&self, token: &str, product: &str, quantity: u32) -> String {
        let placed = self
            .http
            .post(format!("{}/api/v1/orders", self.base))
            .bearer_auth(token)
            .header("idempotency-key", uuid::Uuid::now_v7().to_string())
            .json(&json!({"items": [{"product_id": product, "quantity": quantity}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 201);
        let id = placed.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let order = self.get(&format!("/orders/{id}"), token).await;
            let status = order["status"].as_str().unwrap().to_owned();
            if ["confirmed", "rejected", "payment_failed", "cancelled"].contains(&status.as_str()) {
                return status;
            }
            assert!(Instant::now() < deadline, "order {id} stuck at {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a product as `admin`; its id.
    pub async fn product(&self, admin: &str, sku: &str, price_cents: i64, stock: i64) -> String {
        let body = json!({"sku": sku, "name": "Mug", "price_cents": price_cents, "currency": "EUR", "stock": stock});
        let created = self.post("/products", body, Some(admin)).await;
        assert_eq!(created.status(), 201);
        let created: Value = created.json().await.unwrap();
        created["id"].as_str().unwrap().to_owned()
    }
}

/// Runs `command` to completion (at most `limit`; killed past it), prints
/// its output, and returns its stdout; panics when it fails, naming `what`.
pub async fn run(mut command: tokio::process::Command, what: &str, limit: Duration) -> String {
    let started = Instant::now();
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "{what} took {:.1?}\n{stdout}{}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed (exit {:?}); its output is above",
        output.status.code()
    );
    stdout
}

/// `program args…` run in `dir`, for [`run`].
pub fn command(program: &Path, args: &[&str], dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.args(args).current_dir(dir);
    command
}
