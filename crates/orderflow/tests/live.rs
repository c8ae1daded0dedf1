//! Live channels across processes (issue 13), with real `orderflow`
//! processes: two `api` processes and a `worker` on PostgreSQL + Redis. A
//! shopper connected to API 1 follows an order placed through API 0 and
//! moved on by the worker, and the product whose stock the worker
//! reserves; the hubs ring each other over Redis pub/sub.
//! API 1's metrics show it heard the others' rings; API 0's health channel
//! counts the connections of both processes. Then Redis stops while
//! a second order goes through, and starts again: the rings sent meanwhile
//! are lost, and the client still gets every message of that order, in
//! order, once the hubs' subscriptions are back (or at the latest at the
//! database recheck, 10 s here).
//!
//! PostgreSQL is shared per test binary (a fresh database); Redis is this
//! test's own, since the test stops it.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

mod support;
use support::process::{http_process, orderflow, processes_environment, work_dir};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Client, PASSWORD};

/// How long a message that must come may take (Redis coming back and the
/// subscriptions reconnecting included).
const PATIENCE: Duration = Duration::from_secs(30);

type Events = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// `GET /api/v1/live?channels=…` on `client` as `token`: its events.
async fn follow(client: &Client, token: &str, channels: &str) -> Events {
    let response = client
        .http
        .get(format!("{}/api/v1/live", client.base))
        .query(&[("channels", channels)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes_stream().eventsource().boxed()
}

/// Places one order of `product` as `token`; its id.
async fn place(client: &Client, token: &str, product: &str) -> String {
    let placed = client
        .http
        .post(format!("{}/api/v1/orders", client.base))
        .bearer_auth(token)
        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
        .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);
    placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits (bounded) until the order is confirmed.
async fn until_confirmed(client: &Client, token: &str, order: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = client.get(&format!("/orders/{order}"), token).await["status"].clone();
        if status == "confirmed" {
            return;
        }
        assert!(Instant::now() < deadline, "order {order} stuck at {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two `api` processes (and optionally a `worker`) on a fresh PostgreSQL
/// database and the Redis at `redis_url`, with an admin, a product and a
/// registered shopper.
struct Stack {
    _work: tempfile::TempDir,
    env: Vec<(String, String)>,
    logs: std::path::PathBuf,
    api0: support::process::Process,
    first: Client,
    api1: support::process::Process,
    second: Client,
    admin: String,
    product: String,
    user: String,
    email: String,
    token: String,
}

impl Stack {
    async fn start(redis_url: &str, recheck_ms: &str, sku: &str) -> Stack {
        let database_url = orderflow_testkit::postgres::fresh_database()
            .await
            .expect("a fresh PostgreSQL database");
        let (work, logs) = work_dir();
        let env = processes_environment(
            &work.path().join("data"),
            &[
                ("ORDERFLOW_DATABASE_URL", &database_url),
                ("ORDERFLOW_REDIS_URL", redis_url),
                ("ORDERFLOW_LIVE_RECHECK_MS", recheck_ms),
            ],
        );
        orderflow(&["migrate"], &env).await;
        let (api0, first) = http_process("api-0", "api", &env, &logs).await;
        let (api1, second) = http_process("api-1", "api", &env, &logs).await;
        let admin = first.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        let product = first.product(&admin, sku, 300, 20).await;
        let email = format!("{}@example.com", sku.to_lowercase());
        let (user, token) = first.registered_shopper(&email).await;
        Stack {
            _work: work,
            env,
            logs,
            api0,
            first,
            api1,
            second,
            admin,
            product,
            user,
            email,
            token,
        }
    }

    fn worker(&self) -> support::process::Process {
        support::process::Process::start("worker", &["worker"], &self.env, &self.logs)
    }

    async fn stop(mut self) {
        for process in [&mut self.api0, &mut self.api1] {
            process.assert_running();
            process.stop().await;
        }
    }
}

/// Waits (bounded) for an `admin:health` message whose `live` part passes
/// `check`; fails with the last one seen.
async fn until_presence(health: &mut Events, check: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let event = tokio::time::timeout(PATIENCE, health.next())
            .await
            .expect("a health event in time")
            .expect("the stream is open")
            .expect("a well-formed event");
        if event.event != "message" {
            continue;
        }
        let message: Value = serde_json::from_str(&event.data).unwrap();
        let live = &message["data"]["live"];
        if check(live) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "presence across the processes: {live}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_on_one_api_process_hears_changes_made_by_others_and_a_redis_restart_loses_nothing()
 {
    let mut redis = orderflow_testkit::redis::RedisServer::start().expect("redis-server");
    let stack = Stack::start(&redis.url(), "10000", "LIVE-X").await;
    let mut worker = stack.worker();
    let (first, second) = (&stack.first, &stack.second);
    let (admin, product, user, token) = (&stack.admin, &stack.product, &stack.user, &stack.token);
    let channel = format!("orders:{user}");

    let mut events = follow(second, token, &channel).await;
    let mut next = async || -> Value {
        loop {
            let event = tokio::time::timeout(PATIENCE, events.next())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .expect("a well-formed event");
            if event.event != "subscribed" {
                return serde_json::from_str(&event.data).unwrap();
            }
        }
    };

    // The product, followed on API 1 too: the worker reserves its stock.
    let mut product_events = follow(second, token, &format!("product:{product}")).await;

    // Placed through API 0, moved on by the worker; heard on API 1.
    let order = place(first, token, product).await;
    let mut last = 0;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let message = next().await;
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["data"]["order_id"], order);
        let position = message["position"].as_i64().unwrap();
        assert!(position > last, "{position} after {last}");
        last = position;
        statuses.push(message["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["pending", "reserved", "paid", "confirmed"]);
    let stock = loop {
        let event = tokio::time::timeout(PATIENCE, product_events.next())
            .await
            .expect("a product event in time")
            .expect("the stream is open")
            .expect("a well-formed event");
        if event.event == "message" {
            let message: Value = serde_json::from_str(&event.data).unwrap();
            break message["data"]["stock"].clone();
        }
    };
    assert_eq!(stock, 19, "the reservation the worker committed");
    let metrics = second
        .http
        .get(format!("{}/metrics", second.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rings: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("orderflow_live_bus_rings_total "))
        .expect("API 1 heard rings from the other processes")
        .trim()
        .parse()
        .unwrap();
    assert!(rings >= 1.0, "API 1 heard {rings} rings");

    // A second device of the shopper, connected to API 1, logged out
    // through API 0: API 1 hears of it over the bus and closes that stream
    // at once (its own recheck is 10 s away); the first device stays.
    let device = first.login(&stack.email, PASSWORD).await;
    let mut on_device = follow(second, &device, &channel).await;
    let subscribed = tokio::time::timeout(PATIENCE, on_device.next())
        .await
        .expect("subscribed in time")
        .unwrap()
        .unwrap();
    assert_eq!(subscribed.event, "subscribed");
    let logged_out = Instant::now();
    let answer = first
        .http
        .post(format!("{}/api/v1/auth/logout", first.base))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "logout: {}", answer.status());
    let closing = tokio::time::timeout(Duration::from_secs(5), on_device.next())
        .await
        .expect("the logged-out device's stream closes within 5 s, not at the 10 s recheck")
        .expect("a closing event")
        .unwrap();
    assert_eq!(closing.event, "closing", "{closing:?}");
    assert!(closing.data.contains("logged_out"), "{}", closing.data);
    eprintln!(
        "the other device's stream closed {} ms after the logout on the other process",
        logged_out.elapsed().as_millis()
    );

    // Presence counts every process's connections: the shopper has two on
    // API 1 (orders and product) and one more on API 0, the admin one on
    // API 0; each process reports to Redis and API 0's health channel sums
    // them, the shopper once.
    let _on_first = follow(first, token, &channel).await;
    let mut health = follow(first, admin, "admin:health").await;
    let expected = json!({
        "connections": 4, "users_online": 2, "processes": 2,
        "users_by_devices": {"1": 1, "3": 1},
    });
    let took = until_presence(&mut health, |live| *live == expected).await;
    eprintln!(
        "presence over both processes counted within {} ms",
        took.as_millis()
    );
    drop(health);

    // Redis goes away while a second order goes all the way: every ring
    // of it is lost.
    redis.stop();
    let order = place(first, token, product).await;
    until_confirmed(first, token, &order).await;
    redis.restart().expect("redis-server starts again");
    let restarted = Instant::now();

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let message = next().await;
        assert_eq!(message["data"]["order_id"], order, "{message}");
        let position = message["position"].as_i64().unwrap();
        assert!(
            position > last,
            "no duplicate, no reorder: {position} after {last}"
        );
        last = position;
        statuses.push(message["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["pending", "reserved", "paid", "confirmed"]);
    eprintln!(
        "the second order's messages came {} ms after Redis restarted",
        restarted.elapsed().as_millis()
    );

    worker.assert_running();
    worker.stop().await;
    stack.stop().await;
}

/// The same across processes on a Redis Cluster: the hubs ring each other
/// over sharded channels (`SSUBSCRIBE`, spread over the nodes, no classic
/// subscription anywhere), fast enough that a shopper on API 1 hears an
/// order placed through API 0 long before the database recheck (60 s
/// here), and presence is summed over both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_processes_on_a_redis_cluster_ring_each_other_over_sharded_channels() {
    let cluster = orderflow_testkit::redis::RedisCluster::start().expect("a Redis cluster");
    let stack = Stack::start(&cluster.url(), "60000", "LIVE-C").await;
    let (first, second) = (&stack.first, &stack.second);
    let (admin, product, user, token) = (&stack.admin, &stack.product, &stack.user, &stack.token);
    let mut events = follow(second, token, &format!("orders:{user}")).await;
    let subscribed = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("subscribed in time")
        .unwrap()
        .unwrap();
    assert_eq!(subscribed.event, "subscribed");

    let placed = Instant::now();
    let order = place(first, token, product).await;
    let message = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the ring over the cluster, not the 60 s recheck")
        .unwrap()
        .unwrap();
    let message: Value = serde_json::from_str(&message.data).unwrap();
    assert_eq!(message["data"]["order_id"], order, "{message}");
    assert_eq!(message["data"]["status"], "pending");
    eprintln!(
        "API 1 sent API 0's order {} ms after it was placed",
        placed.elapsed().as_millis()
    );

    // Each API process holds its bus subscriptions as sharded channels.
    let mut sharded = 0;
    for node in cluster.nodes() {
        let shard_channels = node.cli(&["PUBSUB", "SHARDCHANNELS", "*"]).unwrap();
        sharded += shard_channels
            .lines()
            .filter(|line| line.contains("channel:live:"))
            .count();
        let classic = node.cli(&["PUBSUB", "CHANNELS", "*"]).unwrap();
        assert!(
            !classic.contains("live"),
            "no classic live channel: {classic}"
        );
    }
    assert_eq!(sharded, 16, "the 16 bus channels, each on one shard");

    let mut health = follow(first, admin, "admin:health").await;
    until_presence(&mut health, |live| {
        live["processes"] == 2 && live["connections"] == 2
    })
    .await;

    stack.stop().await;
}
