//! Caches that never lie (issue 11), proven with real `orderflow` processes:
//!
//! - two `api` processes and a `worker` on PostgreSQL + Redis (a plain
//!   standalone server, and a TLS-only cluster as the shipped ACL's user):
//!   an order's reservation, a payment failure's release, an admin edit and
//!   an `orderflow import` each show on both APIs (product and list), with
//!   the version the database gave the change;
//! - a Redis user whose ACL lacks a command stops orderflow at start-up;
//! - the write-behind view counters of `orderflow serve`: nothing lost on
//!   SIGTERM, at most the views since the last flush on SIGKILL.
//!
//! Servers are shared the way the other tests share them: one PostgreSQL per
//! test binary with a fresh database per test, the shared standalone Redis
//! with a fresh key prefix.

use std::path::Path;
use std::time::{Duration, Instant};

use orderflow_testkit::redis::{RedisSecurity, RedisServer};
use serde_json::{Value, json};
mod support;
use support::process::{Process, http_process, orderflow, processes_environment, tail, work_dir};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Client};

/// The simulated card limit: orders above it end `payment_failed`.
const DECLINE_ABOVE_CENTS: i64 = 1_000;

/// The settings every process of one test shares, with a card limit.
fn environment(data_dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let limit = DECLINE_ABOVE_CENTS.to_string();
    let mut extra = extra.to_vec();
    extra.push(("ORDERFLOW_SIM_PAYMENT_DECLINE_ABOVE_CENTS", &limit));
    processes_environment(data_dir, &extra)
}

/// `GET /api/v1{path}`, anonymously, as JSON (a 200 is expected).
async fn read(client: &Client, path: &str) -> Value {
    let answer = client
        .http
        .get(format!("{}/api/v1{path}", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "GET {path}");
    answer.json().await.unwrap()
}

async fn product(client: &Client, id: &str) -> Value {
    read(client, &format!("/products/{id}")).await
}

/// The first page of the product list (all of this test's products).
async fn list(client: &Client) -> Vec<Value> {
    read(client, "/products?limit=100").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The product `id` as the list shows it.
async fn listed(client: &Client, id: &str) -> Value {
    list(client)
        .await
        .into_iter()
        .find(|item| item["id"] == id)
        .expect("the product is on the first page")
}

/// Reads `id` from `client` until `check` holds (bounded: pub/sub delivery
/// to another process is asynchronous). Timing is measured by the bench,
/// not here; the bound only keeps a broken build from hanging.
async fn eventually(client: &Client, id: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = product(client, id).await;
        if check(&seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} still shows {seen}",
            client.base
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_on_redis_show_every_change_of_stock_and_fields() {
    let redis_url = orderflow_testkit::redis::shared_standalone_url();
    let prefix = orderflow_testkit::redis::fresh_prefix();
    every_change_shows_on_both_apis(&[
        ("ORDERFLOW_REDIS_URL", &redis_url),
        ("ORDERFLOW_REDIS_KEY_PREFIX", &prefix),
    ])
    .await;
}

/// The settings for the secured Redis `url` (TLS, the shipped ACL's user):
/// its test CA, the client certificate it requires, a key prefix of the
/// test's own under `orderflow:` (the keys the ACL allows).
fn secured_redis(url: String, security: &RedisSecurity) -> Vec<(&'static str, String)> {
    let pki = security.pki();
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    vec![
        ("ORDERFLOW_REDIS_URL", url),
        ("ORDERFLOW_REDIS_CA_CERT", path(pki.ca_cert())),
        ("ORDERFLOW_REDIS_CLIENT_CERT", path(pki.client_cert())),
        ("ORDERFLOW_REDIS_CLIENT_KEY", path(pki.client_key())),
        (
            "ORDERFLOW_REDIS_KEY_PREFIX",
            format!("orderflow:{}", orderflow_testkit::redis::fresh_prefix()),
        ),
    ]
}

/// The same on a TLS-only Redis cluster, as the shipped ACL's `orderflow`
/// user: every process passes the start-up check, and the cache stays
/// coherent over sharded pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_on_a_tls_cluster_as_the_acl_user() {
    let cluster = orderflow_testkit::redis::shared_secured_cluster();
    let redis = secured_redis(cluster.url(), cluster.security().unwrap());
    let redis: Vec<(&str, &str)> = redis.iter().map(|(k, v)| (*k, v.as_str())).collect();
    every_change_shows_on_both_apis(&redis).await;
}

/// A Redis user whose ACL lacks a command orderflow sends (`LPOS`, only in
/// the notifications' Lua script): the process stops at start-up naming it,
/// instead of answering requests with a cache that quietly never fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_lacking_a_command_stops_orderflow_at_start_up() {
    let security = RedisSecurity::shipped()
        .and_then(|s| s.replacing("+lpos", ""))
        .unwrap();
    let server = RedisServer::start_secured(security.clone()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let redis = secured_redis(server.url(), &security);
    let redis: Vec<(&str, &str)> = redis.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let env = environment(&work.path().join("data"), &redis);
    let listen = format!("127.0.0.1:{}", orderflow_testkit::free_port());
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["--listen", &listen, "api"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("orderflow stops within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("may not run LPOS"),
        "the error names the command: {stderr}"
    );
}

/// Two `api` processes and a `worker` on PostgreSQL and the Redis of
/// `redis` (its `ORDERFLOW_REDIS_*` settings): every change shows on both.
async fn every_change_shows_on_both_apis(redis: &[(&str, &str)]) {
    let database_url = orderflow_testkit::postgres::fresh_database()
        .await
        .expect("a fresh PostgreSQL database");
    let (work, logs) = work_dir();
    let mut settings = vec![("ORDERFLOW_DATABASE_URL", database_url.as_str())];
    settings.extend_from_slice(redis);
    let env = environment(&work.path().join("data"), &settings);
    // Migrations and the shared signing keys, before the roles race for them.
    orderflow(&["migrate"], &env).await;
    let (mut api0, first) = http_process("api-0", "api", &env, &logs).await;
    let (mut api1, second) = http_process("api-1", "api", &env, &logs).await;
    let mut worker = Process::start("worker", &["worker"], &env, &logs);
    let apis = [&first, &second];

    let admin = first.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let id = first.product(&admin, "COHERENT-1", 300, 20).await;
    // Both APIs read it (twice: the second read is an L1 hit) and list it.
    for api in apis {
        for _ in 0..2 {
            let seen = product(api, &id).await;
            assert_eq!(
                (seen["stock"].as_i64(), seen["version"].as_i64()),
                (Some(20), Some(1))
            );
        }
        assert_eq!(listed(api, &id).await["stock"], 20);
    }

    // An order through the second API: reserved by the worker process,
    // which publishes the change right after its commit; both APIs then
    // answer the new stock, product and list alike. (The order's status
    // commits with the change, so a read may come a moment before the
    // message: hence `eventually`, bounded.)
    let shopper = first.shopper("coherent@example.com").await;
    assert_eq!(second.order_to_the_end(&shopper, &id, 2).await, "confirmed");
    for api in apis {
        eventually(api, &id, "reservation", |p| {
            p["stock"] == 18 && p["version"] == 2
        })
        .await;
        assert_eq!(listed(api, &id).await["stock"], 18, "{} list", api.base);
    }

    // A declined payment: reserved (version 3), then released (version 4).
    // A cache that missed either change would show another version.
    assert_eq!(
        first.order_to_the_end(&shopper, &id, 5).await,
        "payment_failed"
    );
    for api in apis {
        eventually(api, &id, "release", |p| {
            p["stock"] == 18 && p["version"] == 4
        })
        .await;
        assert_eq!(listed(api, &id).await["version"], 4, "{} list", api.base);
    }

    // An admin edit (write-through): the editing API at once, the other as
    // soon as the invalidation arrives.
    let edited = second
        .http
        .put(format!("{}/api/v1/products/{id}", second.base))
        .bearer_auth(&admin)
        .json(&json!({"sku": "COHERENT-1", "name": "Blue mug", "price_cents": 300, "currency": "EUR", "stock": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    let seen = product(&second, &id).await;
    assert_eq!(
        (seen["name"].as_str(), seen["stock"].as_i64()),
        (Some("Blue mug"), Some(50))
    );
    eventually(&first, &id, "admin edit", |p| {
        p["name"] == "Blue mug" && p["stock"] == 50
    })
    .await;
    assert_eq!(listed(&first, &id).await["name"], "Blue mug");

    // A bulk import in a process of its own (write-around): both APIs drop
    // what it replaced; a new SKU appears in both lists.
    let csv = work.path().join("catalog.csv");
    std::fs::write(
        &csv,
        "sku,name,price_cents,currency,stock\nCOHERENT-1,Blue mug,450,EUR,60\nCOHERENT-2,Teapot,1999,EUR,3\n",
    )
    .unwrap();
    let printed = orderflow(&["import", csv.to_str().unwrap()], &env).await;
    assert!(printed.contains("1 new, 1 updated"), "{printed}");
    for api in apis {
        eventually(api, &id, "import", |p| {
            p["price_cents"] == 450 && p["stock"] == 60
        })
        .await;
        assert!(
            list(api).await.iter().any(|p| p["sku"] == "COHERENT-2"),
            "{} lists the imported product",
            api.base
        );
    }

    for process in [&mut api0, &mut api1, &mut worker] {
        process.assert_running();
        process.stop().await;
    }
}

/// The views of `product` in the SQLite database at `url`.
async fn views_in_database(url: &str, product: &str) -> i64 {
    use sqlx::Row;
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let views = sqlx::query("SELECT views FROM product_views WHERE product_id = ?")
        .bind(product)
        .fetch_optional(&pool)
        .await
        .unwrap()
        .map_or(0, |row| row.get::<i64, _>("views"));
    pool.close().await;
    views
}

/// The views of `product` in the database at `url` once the `trending`
/// group has caught up (its lag, read as `admin`, is 0; at most 20 s).
async fn settled_views(client: &Client, admin: &str, url: &str, product: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let consumers = client.get("/admin/consumers", admin).await;
        let trending_lag = consumers["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|group| group["group"] == "trending")
            .map_or(-1, |group| group["lag"].as_i64().unwrap());
        if trending_lag == 0 || Instant::now() > deadline {
            return views_in_database(url, product).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_times(client: &Client, id: &str, times: usize) {
    for _ in 0..times {
        product(client, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn view_counts_survive_sigterm_and_sigkill_loses_at_most_one_interval() {
    let (work, logs) = work_dir();
    let data_dir = work.path().join("data");
    let database = format!("sqlite://{}", data_dir.join("orderflow.db").display());
    // A long interval, so the reads before the kill sit in one interval.
    let env = environment(&data_dir, &[("ORDERFLOW_VIEW_FLUSH_MS", "2000")]);
    let (mut serve, client) = http_process("serve", "serve", &env, &logs).await;
    let admin = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let id = client.product(&admin, "VIEWED-1", 300, 5).await;

    // SIGTERM: the last views are flushed to the log before the process
    // exits; the trending group adds them up after the restart.
    read_times(&client, &id, 50).await;
    serve.stop().await;
    serve.spawn();
    serve.wait_ready(&format!("{}/readyz", client.base)).await;
    assert_eq!(
        settled_views(&client, &admin, &database, &id).await,
        50,
        "a clean stop loses no view:\n{}",
        tail(&serve.log, 20)
    );

    // SIGKILL: views flushed before the kill survive; only those counted
    // since the last flush (at most one interval's) can be lost.
    read_times(&client, &id, 30).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while views_in_database(&database, &id).await < 80 {
        assert!(Instant::now() < deadline, "no flush within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    read_times(&client, &id, 20).await;
    serve.kill_hard().await;
    serve.spawn();
    serve.wait_ready(&format!("{}/readyz", client.base)).await;
    let after_kill = settled_views(&client, &admin, &database, &id).await;
    serve.stop().await;
    assert!(
        (80..=100).contains(&after_kill),
        "flushed views survive a SIGKILL, unflushed ones at most add up: {after_kill}"
    );
    eprintln!(
        "views after SIGKILL: {after_kill} of 100 (lost {})",
        100 - after_kill
    );
}
