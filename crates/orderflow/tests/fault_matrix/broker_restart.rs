//! The Kafka broker restarted under load (issue 16): no order lost, no
//! effect twice.
//!
//! One `orderflow serve` process (the real binary) on PostgreSQL and Kafka:
//! the test broker tansu with persistent storage
//! ([`KafkaBroker::start_persistent`]: its `s3://` engine on an object store
//! in the test process), so a restart keeps its topics, records and
//! committed offsets. A warm-up order goes through first. Then three
//! shoppers order one order at a time (a fresh `Idempotency-Key` each, the
//! same key for a retry) for ~5 s; the broker stops (its port closes, the
//! requests it has are finished, then tansu gets SIGTERM) and stays away
//! ~8 s while they go on; it starts again on the same port with the same
//! data; they order ~5 s more. Meanwhile the test samples the unsent outbox rows
//! in the database, the `orderflow_outbox_backlog` gauge on `/metrics` and
//! the total lag on `/admin/consumers`. Checks:
//! - every order is answered 201, also while the broker is away (the API
//!   writes to the PostgreSQL outbox only);
//! - the relay holds rows in the outbox while the broker is away (the
//!   backlog grows) and publishes every one once it is back;
//! - the consumers rejoin: every order answered 201 reaches a final state
//!   (confirmed: plenty of stock, a small total) within 90 s of the load's
//!   end, and is in the database once;
//! - no effect lost or twice: each confirmed order has exactly one e-mail,
//!   one SMS and one push notification (`order_confirmed`, counted in the
//!   database: the API pages at 200), each shopper's points (`/me/points`)
//!   are those of their confirmed orders, the stock went down by the
//!   confirmed quantities exactly, and nothing was dead-lettered. When an
//!   effect is missing, the `order_confirmed` events that a group did not
//!   handle are listed (from the outbox and `processed_events`).
//!
//! Figures are printed with the prefix `[fault-matrix] broker:`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderflow_testkit::kafka::KafkaBroker;
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::process::{http_process, processes_environment, tail};
use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD, Client};

const CASE: &str = "broker";
const SHOPPERS: usize = 3;
/// Load before the broker stops, how long it stays down, load after.
const BEFORE: Duration = Duration::from_secs(5);
const DOWN: Duration = Duration::from_secs(8);
const AFTER: Duration = Duration::from_secs(5);
/// A shopper's pause between two orders.
const PAUSE: Duration = Duration::from_millis(100);
/// A shopper's pause before retrying an order that got no 201.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a shopper keeps retrying once the load stopped.
const RETRY_GRACE: Duration = Duration::from_secs(20);
/// How long the orders may take to be final once the load stopped.
const FINAL_WITHIN: Duration = Duration::from_secs(90);
/// How often the backlog and the lag are sampled, and how long an answer
/// may take.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(15);
const PRICE_CENTS: i64 = 250;
const STOCK: i64 = 1_000_000;
const FINAL_STATES: [&str; 4] = ["confirmed", "rejected", "payment_failed", "cancelled"];

/// One order request and its answer.
#[derive(Debug, Clone)]
struct Answer {
    /// When it was sent, since the load started.
    sent: Duration,
    /// `None`: no HTTP answer.
    status: Option<u16>,
    /// The body or the client's error when not 201, shortened.
    detail: String,
}

/// One reading of a sampler: when it was asked (since the load started),
/// how long the answer took, and the value (`None`: no answer in time, or
/// an error).
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Duration,
    took: Duration,
    value: Option<f64>,
}

/// Readings taken every `every` by `read` until `stop`.
struct Sampler {
    readings: Arc<Mutex<Vec<Reading>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start<F>(clock: Instant, every: Duration, stop: Arc<AtomicBool>, read: F) -> Sampler
    where
        F: Fn() -> futures::future::BoxFuture<'static, Option<f64>> + Send + 'static,
    {
        let readings: Arc<Mutex<Vec<Reading>>> = Arc::default();
        let task = {
            let readings = readings.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let at = clock.elapsed();
                    let value = read().await;
                    let took = clock.elapsed() - at;
                    readings.lock().unwrap().push(Reading { at, took, value });
                    tokio::time::sleep(every).await;
                }
            })
        };
        Sampler { readings, task }
    }

    async fn finish(self) -> Vec<Reading> {
        self.task.await.unwrap();
        std::mem::take(&mut *self.readings.lock().unwrap())
    }
}

/// Per phase of `outage`: readings answered of those taken, the highest
/// value, the slowest answer.
fn phase_summary(readings: &[Reading], outage: &Outage) -> String {
    ["before", "during", "after"]
        .iter()
        .map(|phase| {
            let of_phase: Vec<&Reading> = readings
                .iter()
                .filter(|r| outage.phase(r.at) == *phase)
                .collect();
            let highest = of_phase
                .iter()
                .filter_map(|r| r.value)
                .fold(None::<f64>, |max, v| Some(max.map_or(v, |m| m.max(v))));
            let slowest = of_phase.iter().map(|r| r.took).max().unwrap_or_default();
            format!(
                "{phase}: {} of {} answered, highest {}, slowest {:.1}s",
                of_phase.iter().filter(|r| r.value.is_some()).count(),
                of_phase.len(),
                highest.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                slowest.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The highest value per whole second since the load started (`?` for a
/// second with no answer): `0s:0 1s:3 …`.
fn per_second(readings: &[Reading]) -> String {
    let mut seconds: BTreeMap<u64, Option<f64>> = BTreeMap::new();
    for reading in readings {
        let entry = seconds.entry(reading.at.as_secs()).or_default();
        if let Some(value) = reading.value {
            *entry = Some(entry.map_or(value, |m| m.max(value)));
        }
    }
    seconds
        .iter()
        .map(|(second, value)| {
            format!(
                "{second}s:{}",
                value.map_or_else(|| "?".to_owned(), |v| v.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// When the broker was away, since the load started.
#[derive(Debug, Clone, Copy)]
struct Outage {
    /// The test began stopping it: its port closes at once (connections
    /// are closed once their requests are answered), then tansu gets
    /// SIGTERM. The broker is away from here.
    stopping: Duration,
    /// tansu had exited.
    down: Duration,
    /// The test began starting it again.
    restarting: Duration,
    /// It accepted connections again.
    up: Duration,
}

impl Outage {
    fn phase(&self, at: Duration) -> &'static str {
        if at < self.stopping {
            "before"
        } else if at < self.up {
            "during"
        } else {
            "after"
        }
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(300).collect()
}

/// A metric's value (the first series named `name`) in an exposition.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .find_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
}

/// The serve log's warnings and errors, grouped on their message's first
/// words, most frequent first (at most `shown` groups).
fn log_summary(log: &std::path::Path, shown: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut groups: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for line in text.lines() {
        let Some(level) = ["ERROR", "WARN"]
            .into_iter()
            .find(|l| line.contains(&format!(" {l} ")))
        else {
            continue;
        };
        let message = line
            .split_once(&format!(" {level} "))
            .map_or(line, |(_, m)| m);
        let message = message.rsplit_once("}: ").map_or(message, |(_, m)| m);
        let key: String = message.chars().take(40).collect();
        let group = groups
            .entry(format!("{level} {key}"))
            .or_insert_with(|| (0, format!("{level} {}", shorten(message))));
        group.0 += 1;
    }
    let mut groups: Vec<(usize, String)> = groups.into_values().collect();
    groups.sort_by_key(|group| std::cmp::Reverse(group.0));
    let total: usize = groups.iter().map(|(n, _)| n).sum();
    let lines: Vec<String> = groups
        .iter()
        .take(shown)
        .map(|(n, line)| format!("  {n} × {line}"))
        .collect();
    format!(
        "{total} warnings and errors, most frequent first:\n{}",
        lines.join("\n")
    )
}

/// What the effect groups did for the confirmed orders.
struct Effects {
    /// Every confirmed order in the database (the warm-up order included).
    confirmed: BTreeSet<String>,
    /// Per channel: "n each" → how many confirmed orders got n.
    per_channel: BTreeMap<String, BTreeMap<String, usize>>,
    /// Orders and channels without exactly one `order_confirmed`.
    wrong_notifications: Vec<String>,
    /// "points (expected n)" per shopper.
    points_figures: Vec<String>,
    points_wrong: Vec<String>,
}

impl Effects {
    /// Notifications from the database (every one, no page limit); points as
    /// each shopper reads them (`/me/points`), against the totals of their
    /// confirmed orders.
    async fn read(db: &sqlx::PgPool, client: &Client, shoppers: &[(String, String)]) -> Effects {
        let confirmed: BTreeSet<String> =
            sqlx::query_scalar("SELECT id::text FROM orders WHERE status = 'confirmed'")
                .fetch_all(db)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let notes = sqlx::query(
            "SELECT order_id::text AS order_id, channel, kind, count(*) AS n \
             FROM notifications WHERE order_id IS NOT NULL GROUP BY 1, 2, 3",
        )
        .fetch_all(db)
        .await
        .unwrap();
        let mut notifications: HashMap<(String, String), Vec<(String, i64)>> = HashMap::new();
        for row in &notes {
            notifications
                .entry((row.get("order_id"), row.get("channel")))
                .or_default()
                .push((row.get("kind"), row.get("n")));
        }
        let mut per_channel: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut wrong_notifications = Vec::new();
        for id in &confirmed {
            for channel in ["email", "sms", "push"] {
                let got = notifications
                    .get(&(id.clone(), channel.to_owned()))
                    .cloned()
                    .unwrap_or_default();
                let count: i64 = got.iter().map(|(_, n)| n).sum();
                *per_channel
                    .entry(channel.to_owned())
                    .or_default()
                    .entry(format!("{count} each"))
                    .or_default() += 1;
                if got != [("order_confirmed".to_owned(), 1)] {
                    wrong_notifications.push(format!("order {id} {channel}: {got:?}"));
                }
            }
        }
        let mut points_figures = Vec::new();
        let mut points_wrong = Vec::new();
        for (user, token) in shoppers {
            let totals: Vec<i64> = sqlx::query_scalar(
                "SELECT total_cents::bigint FROM orders WHERE user_id::text = $1 AND status = 'confirmed'",
            )
            .bind(user)
            .fetch_all(db)
            .await
            .unwrap();
            let expected: i64 = totals.iter().map(|cents| cents / 100).sum();
            let points = client.get("/me/points", token).await["points"]
                .as_i64()
                .unwrap_or(-1);
            points_figures.push(format!("{points} (expected {expected})"));
            if points != expected {
                points_wrong.push(format!(
                    "shopper {user}: {points} points, {expected} expected for {} confirmed orders",
                    totals.len()
                ));
            }
        }
        Effects {
            confirmed,
            per_channel,
            wrong_notifications,
            points_figures,
            points_wrong,
        }
    }

    fn complete(&self) -> bool {
        self.wrong_notifications.is_empty() && self.points_wrong.is_empty()
    }
}

/// The orders whose `order_confirmed` event (in the outbox) one of the
/// effect groups (`email`, `sms`, `push`, `loyalty`) has no
/// `processed_events` row for.
async fn confirmations_unhandled(db: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT o.payload->'data'->>'order_id' FROM outbox o \
         WHERE o.payload->>'type' = 'orderflow.order.confirmed' \
           AND (SELECT count(*) FROM processed_events p WHERE p.event_id = o.event_id \
                AND p.group_name IN ('email', 'sms', 'push', 'loyalty')) < 4 \
         ORDER BY o.seq",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// Every event of `orders` in the outbox, each with the two events before
/// and after it on the same topic and key (so in the same partition, in
/// order): when it was appended and relayed (seconds since `since`) and
/// the groups that handled it (`processed_events`). `*` marks the events
/// of `orders`. One line each.
async fn trace_orders(
    db: &sqlx::PgPool,
    orders: &[String],
    since: std::time::SystemTime,
) -> String {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let rows = sqlx::query(
        "WITH ranked AS ( \
             SELECT seq, topic, key, event_id, payload->>'type' AS kind, \
                    payload->'data'->>'order_id' AS order_id, created_at, sent_at, \
                    row_number() OVER (PARTITION BY topic, key ORDER BY seq) AS rn \
             FROM outbox), \
         targets AS (SELECT topic, key, rn FROM ranked WHERE order_id = ANY($1)) \
         SELECT DISTINCT r.seq, r.topic, r.key, r.kind, r.order_id, \
                EXTRACT(EPOCH FROM r.created_at)::float8 - $2 AS created, \
                EXTRACT(EPOCH FROM r.sent_at)::float8 - $2 AS sent, \
                ARRAY(SELECT p.group_name FROM processed_events p \
                      WHERE p.event_id = r.event_id ORDER BY 1) AS handled_by, \
                COALESCE(r.order_id = ANY($1), false) AS traced \
         FROM ranked r JOIN targets t ON r.topic = t.topic AND r.key = t.key \
              AND r.rn BETWEEN t.rn - 2 AND t.rn + 2 \
         ORDER BY r.topic, r.key, r.seq",
    )
    .bind(orders)
    .bind(since)
    .fetch_all(db)
    .await
    .unwrap();
    if rows.is_empty() {
        return format!("  (no event of {orders:?} in the outbox)");
    }
    rows.iter()
        .map(|row| {
            let sent: Option<f64> = row.get("sent");
            format!(
                "  {} seq {} {} key {} {} order {}: appended {:+.1}s, relayed {}, handled by {:?}",
                if row.get::<bool, _>("traced") {
                    "*"
                } else {
                    " "
                },
                row.get::<i64, _>("seq"),
                row.get::<String, _>("topic"),
                row.get::<String, _>("key"),
                row.get::<Option<String>, _>("kind").unwrap_or_default(),
                row.get::<Option<String>, _>("order_id").unwrap_or_default(),
                row.get::<f64, _>("created"),
                sent.map_or_else(|| "never".to_owned(), |s| format!("{s:+.1}s")),
                row.get::<Vec<String>, _>("handled_by")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarted_under_load_loses_no_order_and_repeats_no_effect() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let database_url = orderflow_testkit::postgres::fresh_database()
        .await
        .expect("a fresh PostgreSQL database");
    let mut broker = tokio::task::spawn_blocking(KafkaBroker::start_persistent)
        .await
        .unwrap()
        .expect("tansu starts on its object store");
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await
        .expect("the test connects to PostgreSQL");

    let work = tempfile::tempdir().unwrap();
    let prefix = orderflow_testkit::kafka::fresh_prefix();
    let bootstrap = broker.bootstrap();
    let env = processes_environment(
        &work.path().join("data"),
        &[
            ("ORDERFLOW_DATABASE_URL", &database_url),
            ("ORDERFLOW_KAFKA_BROKERS", &bootstrap),
            ("ORDERFLOW_KAFKA_TOPIC_PREFIX", &prefix),
            // As scaled.rs: a short session, and one record per batch (tansu
            // 0.6 skips the rest of a multi-record batch that a fetch starts
            // inside, and its high watermark stops at the last batch's first
            // offset + 1). Real Kafka needs no such setting.
            (
                "ORDERFLOW_KAFKA_CONFIG",
                "session.timeout.ms=6000;heartbeat.interval.ms=1000;batch.num.messages=1",
            ),
        ],
    );
    let (mut serve, client) = http_process("serve", "serve", &env, work.path()).await;
    let admin = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let product = client
        .product(&admin, "BROKER-RESTART", PRICE_CENTS, STOCK)
        .await;
    let mut shoppers = Vec::new();
    for n in 0..SHOPPERS {
        shoppers.push(
            client
                .registered_shopper(&format!("broker-restart-{n}@example.com"))
                .await,
        );
    }
    // One order through the whole pipeline first: the topics exist and the
    // groups have joined before the clock starts.
    let warm_up = client.order_to_the_end(&shoppers[0].1, &product, 1).await;
    assert_eq!(warm_up, "confirmed", "the warm-up order");
    let warm_up_id: String = sqlx::query_scalar("SELECT id::text FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    eprintln!(
        "[fault-matrix] {CASE}: PostgreSQL, tansu ({bootstrap}, S3 storage on the test's object store) and serve ready, one order confirmed, in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // --- the load, the samplers ---
    let clock = Instant::now();
    let load_started_at = std::time::SystemTime::now();
    let stop_load = Arc::new(AtomicBool::new(false));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut load = Vec::new();
    for (shopper, (_, token)) in shoppers.iter().enumerate() {
        let (http, base, token, product) = (
            http.clone(),
            client.base.clone(),
            token.clone(),
            product.clone(),
        );
        let (stop, answers) = (stop_load.clone(), answers.clone());
        load.push(tokio::spawn(async move {
            // (order id, shopper) of every 201; orders given up on.
            let mut acknowledged: Vec<(String, usize)> = Vec::new();
            let mut unresolved = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = uuid::Uuid::now_v7().to_string();
                let mut stopped_at: Option<Instant> = None;
                loop {
                    let sent = clock.elapsed();
                    let result = http
                        .post(format!("{base}/api/v1/orders"))
                        .bearer_auth(&token)
                        .header("idempotency-key", &key)
                        .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
                        .send()
                        .await;
                    let (status, body) = match result {
                        Err(error) => (None, format!("no answer: {error}")),
                        Ok(response) => (
                            Some(response.status().as_u16()),
                            response.text().await.unwrap_or_default(),
                        ),
                    };
                    let id = (status == Some(201))
                        .then(|| serde_json::from_str::<Value>(&body).ok())
                        .flatten()
                        .and_then(|v| v["id"].as_str().map(str::to_owned));
                    answers.lock().unwrap().push(Answer {
                        sent,
                        status,
                        detail: if id.is_some() {
                            String::new()
                        } else {
                            shorten(&body)
                        },
                    });
                    if let Some(id) = id {
                        acknowledged.push((id, shopper));
                        break;
                    }
                    // Anything else is retried with the same key (and
                    // reported): the order must still get its 201.
                    if stop.load(Ordering::Relaxed)
                        && stopped_at.get_or_insert_with(Instant::now).elapsed() > RETRY_GRACE
                    {
                        unresolved += 1;
                        break;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                tokio::time::sleep(PAUSE).await;
            }
            (acknowledged, unresolved)
        }));
    }
    // The samplers: unsent outbox rows in the database, the
    // `orderflow_outbox_backlog` gauge on /metrics, the total lag on
    // /admin/consumers. Each on its own, so a slow answer holds no other up.
    let unsent_sampler = {
        let db = db.clone();
        Sampler::start(clock, SAMPLE_EVERY, stop_sampling.clone(), move || {
            let db = db.clone();
            Box::pin(async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                    .fetch_one(&db)
                    .await
                    .ok()
                    .map(|n| n as f64)
            })
        })
    };
    let gauge_sampler = {
        let (http, base) = (http.clone(), client.base.clone());
        Sampler::start(clock, SAMPLE_EVERY, stop_sampling.clone(), move || {
            let request = http.get(format!("{base}/metrics")).timeout(SAMPLE_TIMEOUT);
            Box::pin(async move {
                let exposition = request.send().await.ok()?.text().await.ok()?;
                gauge(&exposition, "orderflow_outbox_backlog")
            })
        })
    };
    let lag_sampler = {
        let (http, base, admin) = (http.clone(), client.base.clone(), admin.clone());
        Sampler::start(clock, SAMPLE_EVERY, stop_sampling.clone(), move || {
            let request = http
                .get(format!("{base}/api/v1/admin/consumers"))
                .bearer_auth(&admin)
                .timeout(SAMPLE_TIMEOUT);
            Box::pin(async move {
                let response = request.send().await.ok()?;
                if response.status() != 200 {
                    return None;
                }
                let view: Value = response.json().await.ok()?;
                let groups = view["groups"].as_array()?;
                Some(
                    groups
                        .iter()
                        .map(|g| g["lag"].as_i64().unwrap_or(0))
                        .sum::<i64>() as f64,
                )
            })
        })
    };

    // --- the outage ---
    tokio::time::sleep(BEFORE).await;
    let stopping = clock.elapsed();
    broker = tokio::task::spawn_blocking(move || {
        broker.stop();
        broker
    })
    .await
    .unwrap();
    let down = clock.elapsed();
    eprintln!(
        "[fault-matrix] {CASE}: tansu stopping at {:.1}s (port closed, requests finished, SIGTERM), exited at {:.1}s",
        stopping.as_secs_f64(),
        down.as_secs_f64()
    );
    // Away for DOWN from the moment the port closed.
    tokio::time::sleep(DOWN.saturating_sub(clock.elapsed() - stopping)).await;
    let restarting = clock.elapsed();
    broker = tokio::task::spawn_blocking(move || broker.start_again().map(|()| broker))
        .await
        .unwrap()
        .expect("tansu starts again on its port with its data");
    let outage = Outage {
        stopping,
        down,
        restarting,
        up: clock.elapsed(),
    };
    eprintln!(
        "[fault-matrix] {CASE}: tansu starting again at {:.1}s, accepting connections at {:.1}s ({:.1}s away)",
        outage.restarting.as_secs_f64(),
        outage.up.as_secs_f64(),
        (outage.up - outage.stopping).as_secs_f64()
    );
    tokio::time::sleep(AFTER).await;
    let load_stopped = clock.elapsed();
    stop_load.store(true, Ordering::Relaxed);
    let mut acknowledged: Vec<(String, usize)> = Vec::new();
    let mut unresolved = 0;
    for shopper in load {
        let (acked, given_up) = shopper.await.expect("a shopper panicked");
        acknowledged.extend(acked);
        unresolved += given_up;
    }
    serve.assert_running();
    let answers = std::mem::take(&mut *answers.lock().unwrap());

    // --- how the orders were answered, per phase ---
    let mut by_phase: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for answer in &answers {
        let status = answer
            .status
            .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        *by_phase
            .entry((outage.phase(answer.sent), status))
            .or_default() += 1;
    }
    let not_201: BTreeSet<(Option<u16>, &str)> = answers
        .iter()
        .filter(|a| a.status != Some(201))
        .map(|a| (a.status, a.detail.as_str()))
        .collect();
    eprintln!(
        "[fault-matrix] {CASE}: {} order requests, {} answered 201 ({} distinct orders), {unresolved} given up; by phase and status: {by_phase:?}",
        answers.len(),
        answers.iter().filter(|a| a.status == Some(201)).count(),
        acknowledged.len()
    );
    if !not_201.is_empty() {
        eprintln!(
            "[fault-matrix] {CASE}: answers other than 201: {not_201:?}\nserve log:\n{}",
            tail(&serve.log, 30)
        );
    }

    // --- every acknowledged order final (bounded) ---
    let final_deadline = Instant::now() + FINAL_WITHIN;
    let mut orders: HashMap<String, Value> = HashMap::new();
    let mut stuck: Vec<(String, String)> = Vec::new();
    for (id, shopper) in &acknowledged {
        loop {
            let answer = http
                .get(format!("{}/api/v1/orders/{id}", client.base))
                .bearer_auth(&shoppers[*shopper].1)
                .send()
                .await;
            let body = match answer {
                Ok(response) if response.status() == 200 => {
                    response.json::<Value>().await.unwrap_or(Value::Null)
                }
                _ => Value::Null,
            };
            let state = body["status"].as_str().unwrap_or_default().to_owned();
            if FINAL_STATES.contains(&state.as_str()) {
                orders.insert(id.clone(), body);
                break;
            }
            if Instant::now() >= final_deadline {
                stuck.push((id.clone(), state));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let all_final_at = clock.elapsed();
    // A last second of samples after the end, then the samplers stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_sampling.store(true, Ordering::Relaxed);
    let unsent = unsent_sampler.finish().await;
    let gauges = gauge_sampler.finish().await;
    let lags = lag_sampler.finish().await;

    // --- the backlog: held during the outage, drained after ---
    let highest = |readings: &[Reading], phase: &str| {
        readings
            .iter()
            .filter(|r| outage.phase(r.at) == phase)
            .filter_map(|r| r.value)
            .fold(0.0_f64, f64::max)
    };
    let (peak_before, peak_during) = (highest(&unsent, "before"), highest(&unsent, "during"));
    // After the restart: the first reading back at no more than the peak
    // before the outage (the load goes on, so a few rows are always on their
    // way), and the first at zero.
    let first_after = |readings: &[Reading], limit: f64| {
        readings
            .iter()
            .filter(|r| r.at >= outage.up)
            .find(|r| r.value.is_some_and(|v| v <= limit))
            .map(|r| r.at - outage.up)
    };
    let seconds = |after: Option<Duration>| {
        after.map_or_else(
            || "never".to_owned(),
            |d| format!("{:.1}s", d.as_secs_f64()),
        )
    };
    let drained = first_after(&unsent, peak_before);
    let unsent_at_end = unsent.last().and_then(|r| r.value);
    eprintln!(
        "[fault-matrix] {CASE}: unsent outbox rows (database): peak {peak_before} before the outage, {peak_during} during it; \
         back to ≤ {peak_before} {} and at 0 {} after tansu was back; {unsent_at_end:?} at the end",
        seconds(drained),
        seconds(first_after(&unsent, 0.0))
    );
    eprintln!(
        "[fault-matrix] {CASE}: unsent outbox rows per second: {}",
        per_second(&unsent)
    );
    eprintln!(
        "[fault-matrix] {CASE}: orderflow_outbox_backlog on /metrics: {}",
        phase_summary(&gauges, &outage)
    );
    eprintln!(
        "[fault-matrix] {CASE}: orderflow_outbox_backlog per second: {}",
        per_second(&gauges)
    );
    eprintln!(
        "[fault-matrix] {CASE}: total lag on /admin/consumers: {}; first 0 {} after tansu was back",
        phase_summary(&lags, &outage),
        seconds(first_after(&lags, 0.0))
    );

    // --- statuses, the database, the effects ---
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for order in orders.values() {
        *statuses
            .entry(order["status"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    eprintln!(
        "[fault-matrix] {CASE}: {} orders acknowledged, {} final {:.1}s after the load stopped ({:.1}s after tansu was back): {statuses:?}; {} not final: {:?}",
        acknowledged.len(),
        orders.len(),
        (all_final_at - load_stopped).as_secs_f64(),
        (all_final_at - outage.up).as_secs_f64(),
        stuck.len(),
        stuck.iter().take(5).collect::<Vec<_>>()
    );
    let shopper_ids: Vec<String> = shoppers.iter().map(|(id, _)| id.clone()).collect();
    let in_database: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id::text = ANY($1)")
            .bind(&shopper_ids)
            .fetch_one(&db)
            .await
            .unwrap();
    // The effects come from other groups than the order's status: they
    // may trail it a little. Bounded by the same deadline.
    let effects = loop {
        let effects = Effects::read(&db, &client, &shoppers).await;
        if effects.complete() || Instant::now() >= final_deadline {
            break effects;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let effects_at = clock.elapsed();
    eprintln!(
        "[fault-matrix] {CASE}: {} confirmed orders in the database (the warm-up order included), {in_database} orders in all; \
         notifications per confirmed order, by channel: {:?} ({:.1}s after the load stopped); points per shopper: {}",
        effects.confirmed.len(),
        effects.per_channel,
        (effects_at - load_stopped).as_secs_f64(),
        effects.points_figures.join(", ")
    );
    // What happened to the events of the orders that are stuck or lack an
    // effect (only when some are).
    let mut troubled: Vec<String> = stuck.iter().map(|(id, _)| id.clone()).collect();
    if !effects.complete() {
        troubled.extend(confirmations_unhandled(&db).await);
    }
    troubled.truncate(10);
    let trace = if troubled.is_empty() {
        String::new()
    } else {
        let trace = trace_orders(&db, &troubled, load_started_at).await;
        eprintln!(
            "[fault-matrix] {CASE}: the events of the orders stuck or lacking an effect ({troubled:?}; the warm-up order is {warm_up_id}), with their neighbours on the same topic and key; \
             seconds since the load started: tansu away from {:.1}s (exited at {:.1}s) to {:.1}s:\n{trace}",
            outage.stopping.as_secs_f64(),
            outage.down.as_secs_f64(),
            outage.up.as_secs_f64()
        );
        trace
    };
    let stock: i64 = sqlx::query_scalar("SELECT stock::bigint FROM products WHERE id::text = $1")
        .bind(&product)
        .fetch_one(&db)
        .await
        .unwrap();
    let sold: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(i.quantity), 0)::bigint FROM order_items i \
         JOIN orders o ON o.id = i.order_id WHERE o.status = 'confirmed'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let dead_letters = client.get("/admin/dlq?all=true", &admin).await;
    let dead_lettered = dead_letters["items"].as_array().map_or(0, Vec::len);
    eprintln!(
        "[fault-matrix] {CASE}: stock {stock} + {sold} confirmed = {} (initial {STOCK}); {dead_lettered} dead letters",
        stock + sold
    );
    serve.stop().await;
    eprintln!(
        "[fault-matrix] {CASE}: serve logged {}",
        log_summary(&serve.log, 6)
    );
    eprintln!(
        "[fault-matrix] {CASE}: the case took {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // --- the checks ---
    let tansu_log = || tail(&broker.dir().join("tansu.log"), 20);
    assert!(
        not_201.is_empty() && unresolved == 0,
        "{CASE}: orders answered other than 201 (by phase: {by_phase:?}): {not_201:?}; {unresolved} never got a 201"
    );
    assert!(
        by_phase
            .get(&("during", "201".to_owned()))
            .copied()
            .unwrap_or(0)
            > 0,
        "{CASE}: orders were placed while the broker was away: {by_phase:?}"
    );
    assert!(
        stuck.is_empty(),
        "{CASE}: {} of {} orders not final within {FINAL_WITHIN:?} of the load's end: {:?}\n{trace}\nserve log:\n{}\ntansu log:\n{}",
        stuck.len(),
        acknowledged.len(),
        stuck.iter().take(10).collect::<Vec<_>>(),
        tail(&serve.log, 20),
        tansu_log()
    );
    assert_eq!(
        statuses.get("confirmed"),
        Some(&acknowledged.len()),
        "{CASE}: every order is confirmed (plenty of stock, a small total): {statuses:?}"
    );
    let distinct: BTreeSet<&String> = acknowledged.iter().map(|(id, _)| id).collect();
    assert_eq!(
        distinct.len(),
        acknowledged.len(),
        "{CASE}: each key made its own order"
    );
    assert_eq!(
        in_database as usize,
        acknowledged.len() + 1,
        "{CASE}: every acknowledged order (and the warm-up order) is in the database once, no other"
    );
    assert!(
        peak_during > peak_before,
        "{CASE}: the relay held rows in the outbox while the broker was away (peak {peak_during} during, {peak_before} before)"
    );
    assert_eq!(
        unsent_at_end,
        Some(0.0),
        "{CASE}: the relay published every row once the broker was back"
    );
    assert!(
        effects.wrong_notifications.is_empty(),
        "{CASE}: each confirmed order has one order_confirmed notification per channel; {} wrong: {:?}\n{trace}",
        effects.wrong_notifications.len(),
        effects
            .wrong_notifications
            .iter()
            .take(10)
            .collect::<Vec<_>>()
    );
    assert!(
        effects.points_wrong.is_empty(),
        "{CASE}: points: {:?}\n{trace}",
        effects.points_wrong
    );
    assert_eq!(
        stock + sold,
        STOCK,
        "{CASE}: the stock went down by the confirmed quantities exactly"
    );
    assert_eq!(
        dead_lettered, 0,
        "{CASE}: nothing dead-lettered: {dead_letters}"
    );
    drop(broker);
}
