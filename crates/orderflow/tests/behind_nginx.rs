//! The shipped nginx configuration in front of a scaled orderflow (issue 15).
//!
//! Real nginx runs `deploy/nginx/orderflow.conf`, rewritten only for ports
//! and paths, in front of three `orderflow api` processes on PostgreSQL +
//! Redis + the Kafka-protocol broker, with the relay and a worker running
//! every consumer group. Shoppers read the catalog and place orders through
//! nginx the whole time, each order with an `Idempotency-Key` (a client
//! retries a failed POST with the same key), while:
//!
//! 1. one API process is SIGKILLed mid-load, and started again: no read
//!    fails, no order is lost, none is placed twice;
//! 2. all three are restarted one at a time with SIGTERM, each waited for
//!    before the next (a rolling deploy): no request fails at all, not even
//!    once before a client's retry;
//! 3. an SSE client follows one shopper's orders through nginx across both,
//!    reconnecting with its last position (`Last-Event-ID`) when its stream
//!    ends, and ends up with exactly that shopper's order history: every
//!    step, in order, none twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use orderflow_testkit::nginx::{self, Nginx};
use serde_json::{Value, json};

mod support;
use support::process::{Process, http_process, orderflow, processes_environment};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Client};

const SHOPPERS: usize = 6;
const PRODUCTS: usize = 4;
/// How often a client tries one order (the first try and its retries).
const ORDER_ATTEMPTS: usize = 8;

/// What the load saw in one phase.
#[derive(Debug, Default)]
struct Tally {
    reads: AtomicUsize,
    failed_reads: AtomicUsize,
    order_attempts: AtomicUsize,
    failed_order_attempts: AtomicUsize,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "{} reads ({} failed), {} order attempts ({} failed)",
            self.reads.load(Ordering::Relaxed),
            self.failed_reads.load(Ordering::Relaxed),
            self.order_attempts.load(Ordering::Relaxed),
            self.failed_order_attempts.load(Ordering::Relaxed)
        )
    }
}

/// The load: the phase it counts into, and the orders it placed.
struct Load {
    phase: Mutex<Arc<Tally>>,
    stop: AtomicBool,
    /// Idempotency key → the order it placed (`None`: every try failed).
    placed: Mutex<BTreeMap<String, Option<String>>>,
    /// Each key's shopper.
    shopper_of: Mutex<BTreeMap<String, usize>>,
    /// What failed, for the failure message.
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn tally(&self) -> Arc<Tally> {
        self.phase.lock().unwrap().clone()
    }

    fn next_phase(&self) -> Arc<Tally> {
        std::mem::replace(&mut self.phase.lock().unwrap(), Arc::new(Tally::default()))
    }

    fn failed(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// One shopper's loop: a product read, then an order (retried with the
/// same key until it is answered 201), again and again until stopped.
async fn shop(
    load: Arc<Load>,
    http: reqwest::Client,
    base: String,
    shopper: usize,
    token: String,
    products: Vec<String>,
) {
    let mut n = 0;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let product = &products[(shopper + n) % products.len()];
        let tally = load.tally();
        tally.reads.fetch_add(1, Ordering::Relaxed);
        match http
            .get(format!("{base}/api/v1/products/{product}"))
            .send()
            .await
        {
            Ok(answer) if answer.status() == 200 => {}
            Ok(answer) => {
                tally.failed_reads.fetch_add(1, Ordering::Relaxed);
                load.failed(format!("read: {}", answer.status()));
            }
            Err(error) => {
                tally.failed_reads.fetch_add(1, Ordering::Relaxed);
                load.failed(format!("read: {error}"));
            }
        }

        let key = uuid::Uuid::now_v7().to_string();
        load.shopper_of.lock().unwrap().insert(key.clone(), shopper);
        let mut order = None;
        for _ in 0..ORDER_ATTEMPTS {
            let tally = load.tally();
            tally.order_attempts.fetch_add(1, Ordering::Relaxed);
            let answer = http
                .post(format!("{base}/api/v1/orders"))
                .bearer_auth(&token)
                .header("idempotency-key", &key)
                .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status() == 201 => {
                    let body: Value = answer.json().await.unwrap();
                    order = Some(body["id"].as_str().unwrap().to_owned());
                    break;
                }
                Ok(answer) => {
                    let status = answer.status();
                    let body = answer.text().await.unwrap_or_default();
                    load.failed(format!("order {key}: {status} {body}"));
                }
                Err(error) => load.failed(format!("order {key}: {error}")),
            }
            tally.failed_order_attempts.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        load.placed.lock().unwrap().insert(key, order);
        // A bounded load: about 20 orders/s per shopper at most.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SSE client of `channel` through nginx that reconnects with its last
/// position whenever its stream ends: the `(position, order, status)` of
/// every message it got, and how often it connected.
async fn follow_forever(
    http: reqwest::Client,
    base: String,
    token: String,
    channel: String,
    got: Arc<Mutex<Vec<(i64, String, String)>>>,
    connects: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut last_id: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut request = http
            .get(format!("{base}/api/v1/live"))
            .query(&[("channels", channel.as_str())])
            .bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(response) if response.status() == 200 => response,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connects.fetch_add(1, Ordering::Relaxed);
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            if event.event == "message" {
                let message: Value = serde_json::from_str(&event.data).unwrap();
                got.lock().unwrap().push((
                    message["position"].as_i64().unwrap(),
                    message["data"]["order_id"].as_str().unwrap().to_owned(),
                    message["data"]["status"].as_str().unwrap().to_owned(),
                ));
            }
            if event.event == "closing" || stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_nginx_a_killed_api_and_a_rolling_restart_lose_nothing() {
    let started = Instant::now();
    let database_url = orderflow_testkit::postgres::fresh_database()
        .await
        .expect("a fresh PostgreSQL database");
    let redis = orderflow_testkit::redis::RedisServer::start().expect("redis-server starts");
    let kafka = orderflow_testkit::kafka::shared().expect("tansu starts");
    let prefix = orderflow_testkit::kafka::fresh_prefix();
    let work = tempfile::tempdir().unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let redis_url = redis.url();
    let bootstrap = kafka.bootstrap();
    let env = processes_environment(
        &work.path().join("data"),
        &[
            ("ORDERFLOW_DATABASE_URL", &database_url),
            ("ORDERFLOW_DATABASE_MAX_CONNECTIONS", "4"),
            ("ORDERFLOW_REDIS_URL", &redis_url),
            ("ORDERFLOW_REDIS_KEY_PREFIX", &prefix),
            ("ORDERFLOW_KAFKA_BROKERS", &bootstrap),
            ("ORDERFLOW_KAFKA_TOPIC_PREFIX", &prefix),
            // See scaled.rs: tansu 0.6 needs one record per batch.
            (
                "ORDERFLOW_KAFKA_CONFIG",
                "session.timeout.ms=6000;heartbeat.interval.ms=1000;batch.num.messages=1",
            ),
            // nginx connects from loopback.
            ("ORDERFLOW_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    orderflow(&["migrate"], &env).await;
    let mut apis: Vec<(Process, Client)> = Vec::new();
    for n in 1..=3 {
        apis.push(http_process(&format!("api-{n}"), "api", &env, &logs).await);
    }
    let mut relay = Process::start("relay", &["relay"], &env, &logs);
    let mut worker = Process::start("worker", &["worker"], &env, &logs);
    let ports: Vec<u16> = apis
        .iter()
        .map(|(_, client)| client.base.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/nginx/orderflow.conf"
    ))
    .expect("the shipped nginx configuration");
    let nginx = Nginx::start(|listen, dir| nginx::for_loopback(&shipped, listen, &ports, dir))
        .expect("nginx starts with the shipped configuration");
    let front = Client::new(nginx.url());
    eprintln!(
        "[nginx] 3 api, relay, worker and nginx up in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Set up through nginx: the products and the shoppers.
    let admin = front.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut products = Vec::new();
    for n in 0..PRODUCTS {
        products.push(
            front
                .product(&admin, &format!("NGINX-{n}"), 250, 1_000_000)
                .await,
        );
    }
    let mut shoppers = Vec::new();
    for n in 0..SHOPPERS {
        let email = format!("nginx{n}@example.com");
        shoppers.push(front.registered_shopper(&email).await);
    }

    // The request id: kept from the client through nginx and orderflow.
    let answer = front
        .http
        .get(format!("{}/api/v1/products", front.base))
        .header("x-request-id", "behind-nginx-1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-request-id"], "behind-nginx-1");

    // The SSE follower of shopper 0's orders.
    let stop_following = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(Vec::new()));
    let connects = Arc::new(AtomicUsize::new(0));
    let follower = tokio::spawn(follow_forever(
        front.http.clone(),
        front.base.clone(),
        shoppers[0].1.clone(),
        format!("orders:{}", shoppers[0].0),
        got.clone(),
        connects.clone(),
        stop_following.clone(),
    ));

    let load = Arc::new(Load {
        phase: Mutex::new(Arc::new(Tally::default())),
        stop: AtomicBool::new(false),
        placed: Mutex::new(BTreeMap::new()),
        shopper_of: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(Vec::new()),
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let shopping: Vec<_> = shoppers
        .iter()
        .enumerate()
        .map(|(n, (_, token))| {
            tokio::spawn(shop(
                load.clone(),
                http.clone(),
                front.base.clone(),
                n,
                token.clone(),
                products.clone(),
            ))
        })
        .collect();

    // Phase 1: SIGKILL one API process mid-load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    apis[1].0.kill_hard().await;
    eprintln!("[nginx] SIGKILLed api-2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    apis[1].0.spawn();
    let (process, client) = &mut apis[1];
    process.wait_ready(&format!("{}/readyz", client.base)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = load.next_phase();
    eprintln!("[nginx] around the SIGKILL: {}", killed.line());

    // Phase 2: a rolling restart, SIGTERM one at a time.
    for (process, client) in apis.iter_mut() {
        let stopping = Instant::now();
        process.stop().await;
        // `stop` SIGKILLs after 20 s: a process that takes that long did
        // not shut down on SIGTERM (a live stream held it open).
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "{} took {:?} to stop on SIGTERM",
            process.name,
            stopping.elapsed()
        );
        process.spawn();
        process.wait_ready(&format!("{}/readyz", client.base)).await;
        eprintln!("[nginx] restarted {} with SIGTERM", process.name);
        // A rolling deploy's pause between processes: nginx, which only
        // checks passively, takes a restarted process back within its
        // `fail_timeout` (2 s).
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let rolling = load.next_phase();
    eprintln!("[nginx] during the rolling restart: {}", rolling.line());
    load.stop.store(true, Ordering::Relaxed);
    for task in shopping {
        task.await.expect("a shopper task panicked");
    }
    for (process, _) in apis.iter_mut() {
        process.assert_running();
    }
    relay.assert_running();
    worker.assert_running();

    let failures = load.failures.lock().unwrap().clone();
    if !failures.is_empty() {
        eprintln!(
            "[nginx] {} failures; nginx's error log ends with:\n{}",
            failures.len(),
            nginx_trouble(&nginx)
        );
        eprintln!(
            "[nginx] the API processes' warnings and errors:\n{}",
            api_trouble(&logs)
        );
    }
    let failures: Vec<String> = failures.into_iter().take(10).collect();
    assert_eq!(
        killed.failed_reads.load(Ordering::Relaxed),
        0,
        "a read failed around the SIGKILL: {failures:?}"
    );
    assert!(killed.reads.load(Ordering::Relaxed) > 0 && rolling.reads.load(Ordering::Relaxed) > 0);
    // A rolling restart fails nothing, not even a first try. (Order
    // attempts used to fail here now and then: PostgreSQL's deadlock
    // detector picked an order placement, queued behind two group commits
    // that took shoppers' turns in opposite orders, as the victim. Turns
    // are now taken all at once, sorted: see `Engine::shopper_turns`.)
    assert_eq!(
        rolling.failed_reads.load(Ordering::Relaxed),
        0,
        "a read failed during the rolling restart: {failures:?}"
    );
    assert_eq!(
        rolling.failed_order_attempts.load(Ordering::Relaxed),
        0,
        "an order attempt failed during the rolling restart: {failures:?}"
    );

    // No lost order, none twice: each key placed one order, and the
    // database holds exactly those.
    let placed = load.placed.lock().unwrap().clone();
    let unplaced: Vec<_> = placed.iter().filter(|(_, order)| order.is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "keys never answered 201: {unplaced:?}; {failures:?}"
    );
    let orders: HashSet<String> = placed.values().flatten().cloned().collect();
    assert_eq!(
        orders.len(),
        placed.len(),
        "two keys answered with one order"
    );
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .unwrap();
    let in_database: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM orders")
        .fetch_all(&db)
        .await
        .unwrap();
    let in_database: HashSet<String> = in_database
        .into_iter()
        .map(|(id,)| id.to_string())
        .collect();
    assert_eq!(
        in_database, orders,
        "the database holds exactly the orders the clients were given"
    );
    eprintln!(
        "[nginx] {} orders placed, each once ({:.1}s since start)",
        orders.len(),
        started.elapsed().as_secs_f64()
    );

    // The follower: shopper 0's whole order history, in order, once.
    let user0: uuid::Uuid = shoppers[0].0.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected = loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE user_id = $1 AND status <> 'confirmed'",
        )
        .bind(user0)
        .fetch_one(&db)
        .await
        .unwrap();
        let history: Vec<(i64, uuid::Uuid, String)> = sqlx::query_as(
            "SELECT h.seq, h.order_id, h.status FROM order_history h
             JOIN orders o ON o.id = h.order_id WHERE o.user_id = $1 ORDER BY h.seq",
        )
        .bind(user0)
        .fetch_all(&db)
        .await
        .unwrap();
        let history: Vec<(i64, String, String)> = history
            .into_iter()
            .map(|(seq, order, status)| (seq, order.to_string(), status))
            .collect();
        if open == 0 && *got.lock().unwrap() == history {
            break history;
        }
        if Instant::now() > deadline {
            let got = got.lock().unwrap().clone();
            panic!(
                "{open} of shopper 0's orders not confirmed; the follower got {} messages, the history has {}; \
                 got {got:?}\nexpected {history:?}",
                got.len(),
                history.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let connects = connects.load(Ordering::Relaxed);
    assert!(
        connects >= 2,
        "the follower's stream was never ended by a restart ({connects} connection)"
    );
    eprintln!(
        "[nginx] the SSE follower got all {} steps of shopper 0's orders over {connects} connections",
        expected.len()
    );
    stop_following.store(true, Ordering::Relaxed);
    follower.abort();

    let access_log = std::fs::read_to_string(nginx.dir().join("access.log")).unwrap();
    assert!(
        access_log.contains("request_id=behind-nginx-1"),
        "nginx logged the client's request id"
    );
    for (process, _) in apis.iter_mut() {
        process.stop().await;
    }
    relay.stop().await;
    worker.stop().await;
}

/// nginx's first complaints that are not "no live upstreams" (the
/// consequence, not the cause), and the answers that were not 2xx.
fn nginx_trouble(nginx: &Nginx) -> String {
    let read = |name: &str| std::fs::read_to_string(nginx.dir().join(name)).unwrap_or_default();
    let errors = read("error.log");
    let errors = errors
        .lines()
        .filter(|line| {
            (line.contains("[error]") || line.contains("[warn]"))
                && !line.contains("no live upstreams")
        })
        .take(20);
    let access = read("access.log");
    let answers = access
        .lines()
        .filter(|line| line.contains("upstream_status=") && !line.contains("upstream_status=20"))
        .take(20);
    errors.chain(answers).collect::<Vec<_>>().join("\n")
}

/// The first warnings and errors the API processes logged.
fn api_trouble(logs: &std::path::Path) -> String {
    let mut lines = Vec::new();
    for n in 1..=3 {
        let log = std::fs::read_to_string(logs.join(format!("api-{n}.log"))).unwrap_or_default();
        lines.extend(
            log.lines()
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .take(10)
                .map(|line| format!("api-{n}: {line}")),
        );
    }
    lines.join("\n")
}
