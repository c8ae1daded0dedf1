//! The Kafka broker restarted under load (issue 16): no order lost, no
//! effect twice.
//!
//! One `orderflow serve` process (the real binary: API, relay and every
//! consumer group) on PostgreSQL, Redis and Kafka. The Kafka is the test
//! broker tansu on its PostgreSQL storage engine
//! ([`KafkaBroker::start_on_postgres`]: a database of its own on the shared
//! test server), so a restart keeps its topics, records and committed group
//! offsets. The fault matrix's load ([`under_outage`], at a slower pace:
//! [`ORDER_PAUSE`]) runs ~5 s, the broker is stopped (SIGTERM: tansu serves
//! the connections it has for up to 5 s more, then exits) and kept down
//! ~8 s, started again on the same port, and the load runs ~6 s more.
//! Meanwhile, and until everything settled, the test counts the unsent
//! outbox rows in the database, and times `/metrics` and `/admin/consumers`
//! (both read consumer lag from Kafka). Checks:
//! - every order is answered 201 at its first attempt, also while the
//!   broker is away (the API writes the outbox in PostgreSQL only), and the
//!   product reads 200;
//! - the outbox keeps the rows while the broker is down (at every reading,
//!   at least one unsent row per order placed since it went down), and
//!   drains once it is back;
//! - the consumers rejoin: every 201 order reaches a final state
//!   (confirmed: plenty of stock, no declines) and is in the database once;
//! - no effect lost or twice: each confirmed order has exactly one e-mail,
//!   one SMS and one push notification, each shopper exactly the points of
//!   their confirmed orders, and nothing was dead-lettered;
//! - `/metrics` answers 200 within [`METRICS_WITHIN`] throughout, and
//!   `/admin/consumers` answers (200, or 503 while Kafka is away) within
//!   [`ADMIN_WITHIN`]: both read the lag from Kafka, with a bound.
//!
//! Figures are printed with the prefix `[fault-matrix] broker restarted:`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orderflow_testkit::kafka::{KafkaBroker, POSTGRES_ENGINE_CLIENT_CONFIG};
use orderflow_testkit::postgres::PostgresServer;
use serde_json::Value;
use sqlx::Row;
use tokio::task::JoinHandle;

use super::{
    Call, ONE_AT_A_TIME, Outage, Shop, check_orders, examples, log_summary, metric, report,
    under_outage,
};
use crate::support::process::tail;
use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD};

const CASE: &str = "broker restarted";
/// Load before the broker stops, how long it stays away, load after.
const BEFORE: Duration = Duration::from_secs(5);
const DOWN: Duration = Duration::from_secs(8);
const AFTER: Duration = Duration::from_secs(6);
/// `/metrics` waits at most 1 s for the lag and 1 s for the dead letters.
const METRICS_WITHIN: Duration = Duration::from_secs(4);
/// `/admin/consumers` gives up on the lag after 3 s.
const ADMIN_WITHIN: Duration = Duration::from_secs(6);
/// A shopper's pause between two orders: 4 shoppers make ~16 orders a
/// second, ~64 events (four per order). The fault matrix's usual pace
/// (50 ms) makes ~240 events a second, more than tansu on its PostgreSQL
/// engine takes here with one record per batch (~150 a second on two
/// cores): the outbox would grow with the broker up, and the case would
/// measure the broker's throughput instead of its restart.
const ORDER_PAUSE: Duration = Duration::from_millis(250);
/// How often the outbox and the admin endpoints are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long an admin endpoint may take before its reading counts as no
/// answer: longer than the Kafka adapter's 10 s request time-out, so a wait
/// on the broker shows its whole length.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The readings' clock starts just before the load's: a reading taken at
/// `at` counts the orders answered by `at - CLOCK_MARGIN` on the load's
/// clock (so surely committed before the reading's query began).
const CLOCK_MARGIN: Duration = Duration::from_millis(50);
/// How long the outbox may take to drain, the lag to reach 0 and the orders
/// to be final once the load stopped.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// One reading of a sampler: when it was taken (readings' clock), how long
/// it took, and the value (`None`: no answer, or an error).
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Duration,
    took: Duration,
    value: Option<i64>,
}

/// Takes a reading with `read` every [`SAMPLE_EVERY`] until `stop`.
fn sample<F, R>(clock: Instant, stop: Arc<AtomicBool>, read: F) -> JoinHandle<Vec<Reading>>
where
    F: Fn() -> R + Send + 'static,
    R: Future<Output = Option<i64>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut readings = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = clock.elapsed();
            let value = read().await;
            readings.push(Reading {
                at,
                took: clock.elapsed() - at,
                value,
            });
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        readings
    })
}

/// Per phase of `outage`: readings answered of those taken, the highest
/// value, the slowest answer.
fn phases(readings: &[Reading], outage: Outage) -> String {
    ["before", "during", "after"]
        .iter()
        .map(|phase| {
            let of_phase: Vec<&Reading> = readings
                .iter()
                .filter(|r| outage.phase(r.at) == *phase)
                .collect();
            let highest = of_phase.iter().filter_map(|r| r.value).max();
            let slowest = of_phase.iter().map(|r| r.took).max().unwrap_or_default();
            format!(
                "{phase}: {} of {} answered, highest {}, slowest {:.2}s",
                of_phase.iter().filter(|r| r.value.is_some()).count(),
                of_phase.len(),
                highest.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                slowest.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The highest value per whole second (`?`: a second without an answer):
/// `0s:0 1s:3 …`.
fn per_second(readings: &[Reading]) -> String {
    let mut seconds: BTreeMap<u64, Option<i64>> = BTreeMap::new();
    for reading in readings {
        let entry = seconds.entry(reading.at.as_secs()).or_default();
        if let Some(value) = reading.value {
            *entry = Some(entry.map_or(value, |m| m.max(value)));
        }
    }
    seconds
        .iter()
        .map(|(second, value)| {
            let value = value.map_or_else(|| "?".to_owned(), |v| v.to_string());
            format!("{second}s:{value}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn unsent_rows(db: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(db)
        .await
        .ok()
}

/// The total lag over every group in an `/admin/consumers` answer.
fn total_lag(view: &Value) -> Option<i64> {
    let groups = view["groups"].as_array()?;
    Some(groups.iter().filter_map(|g| g["lag"].as_i64()).sum())
}

/// `/admin/consumers` as `admin`: the total lag, or `None` when it does not
/// answer 200.
async fn admin_lag(http: &reqwest::Client, base: &str, admin: &str) -> Option<i64> {
    let answer = http
        .get(format!("{base}/api/v1/admin/consumers"))
        .bearer_auth(admin)
        .send()
        .await
        .ok()?;
    if answer.status() != 200 {
        return None;
    }
    total_lag(&answer.json().await.ok()?)
}

async fn count(db: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarted_under_load() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let postgres = tokio::task::spawn_blocking(PostgresServer::shared)
        .await
        .unwrap()
        .expect("PostgreSQL starts");
    let database_url = postgres.create_database().await.expect("a fresh database");
    // A broker of its own: this test stops it.
    let broker = KafkaBroker::start_on_postgres(postgres)
        .await
        .expect("tansu starts on its PostgreSQL engine");
    let redis_url = tokio::task::spawn_blocking(orderflow_testkit::redis::shared_standalone_url)
        .await
        .unwrap();
    // As scaled.rs: short sessions, and one record per batch (tansu 0.6
    // mis-serves a fetch that starts inside a batch of several records);
    // plus what a PostgreSQL-engine broker's clients need.
    let kafka_config: Vec<String> = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
        ("batch.num.messages", "1"),
    ]
    .iter()
    .chain(POSTGRES_ENGINE_CLIENT_CONFIG)
    .map(|(name, value)| format!("{name}={value}"))
    .collect();
    let topic_prefix = orderflow_testkit::kafka::fresh_prefix();
    let mut shop = Shop::open(
        &database_url,
        &redis_url,
        &[
            ("ORDERFLOW_KAFKA_BROKERS", &broker.bootstrap()),
            ("ORDERFLOW_KAFKA_TOPIC_PREFIX", &topic_prefix),
            ("ORDERFLOW_KAFKA_CONFIG", &kafka_config.join(";")),
        ],
    )
    .await;
    shop.pause = ORDER_PAUSE;
    let admin = shop.client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&database_url)
        .await
        .expect("the test connects to PostgreSQL");
    eprintln!(
        "[fault-matrix] {CASE}: servers and shop ready in {:.1}s (tansu on {})",
        started.elapsed().as_secs_f64(),
        broker.bootstrap()
    );

    // The readings run alongside the load (their clock starts just before
    // the load's, see CLOCK_MARGIN).
    let clock = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(SAMPLE_TIMEOUT)
        .build()
        .unwrap();
    let unsent = sample(clock, stop.clone(), {
        let db = db.clone();
        move || {
            let db = db.clone();
            async move { unsent_rows(&db).await }
        }
    });
    let metrics = sample(clock, stop.clone(), {
        let (http, url) = (http.clone(), format!("{}/metrics", shop.client.base));
        move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let answer = http.get(url).send().await.ok()?;
                if answer.status() != 200 {
                    return None;
                }
                let text = answer.text().await.ok()?;
                Some(metric(&text, "orderflow_outbox_backlog", "") as i64)
            }
        }
    });
    let consumers = sample(clock, stop.clone(), {
        let (http, base, admin) = (http.clone(), shop.client.base.clone(), admin.clone());
        move || {
            let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
            async move { admin_lag(&http, &base, &admin).await }
        }
    });

    let (broker, timeline, answers, shopped) = under_outage(
        &shop,
        broker,
        (KafkaBroker::stop, KafkaBroker::start_again),
        [BEFORE, DOWN, AFTER],
    )
    .await;
    let (outage, stopped, restarting) = (timeline.outage, timeline.stopped, timeline.restarting);
    let load_ended = clock.elapsed();
    shop.serve.assert_running();
    eprintln!(
        "[fault-matrix] {CASE}: {}; load until {:.1}s, {} requests",
        timeline.told("broker", "accepting connections", "away"),
        load_ended.as_secs_f64(),
        answers.len()
    );
    let counts = report(CASE, &answers, outage);

    // The API does not need the broker: every order 201 at once, every
    // read 200.
    let not_ok = examples(&answers, |a| match a.call {
        Call::Order => a.status != Some(201),
        Call::Read => a.status != Some(200),
    });
    assert!(
        not_ok.is_empty(),
        "{CASE}: answers other than 201 (orders) and 200 (reads):\n{not_ok}\nserve log:\n{}",
        tail(&shop.serve.log, 40)
    );
    assert_eq!(shopped.retried_to_201, 0, "{CASE}: no order needed a retry");
    let placed_while_down: Vec<_> = answers
        .iter()
        .filter(|a| a.call == Call::Order && a.sent >= stopped && a.sent < restarting)
        .collect();
    eprintln!(
        "[fault-matrix] {CASE}: {} orders placed while the broker was down, all 201, the slowest in {:.2}s",
        placed_while_down.len(),
        placed_while_down
            .iter()
            .map(|a| a.took)
            .max()
            .unwrap_or_default()
            .as_secs_f64()
    );
    assert!(
        !placed_while_down.is_empty(),
        "{CASE}: orders were placed while the broker was down: {counts:?}"
    );

    // Every order final and stored once; everything settles: the outbox
    // drained, every group caught up, no order open (three readings in a
    // row).
    check_orders(CASE, &shop, &database_url, &answers, &shopped).await;
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut settled_readings = 0;
    let (mut open, mut lag) = (0, None);
    while settled_readings < 3 {
        open = count(
            &db,
            "SELECT count(*) FROM orders WHERE status NOT IN ('confirmed', 'rejected', 'payment_failed', 'cancelled')",
        )
        .await;
        let left = count(&db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL").await;
        lag = admin_lag(&http, &shop.client.base, &admin).await;
        settled_readings = if open == 0 && left == 0 && lag == Some(0) {
            settled_readings + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "{CASE}: not settled {SETTLE_WITHIN:?} after the load: {open} orders open, {left} outbox rows unsent, lag {lag:?}\nserve log:\n{}",
            tail(&shop.serve.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "[fault-matrix] {CASE}: settled (outbox empty, lag {lag:?}, {open} orders open) {:.1}s after the load",
        (clock.elapsed() - load_ended).as_secs_f64()
    );

    // The readings went on until everything settled: the admin endpoints'
    // answers after the restart are timed too.
    stop.store(true, Ordering::Relaxed);
    let unsent = unsent.await.unwrap();
    let metrics = metrics.await.unwrap();
    let consumers = consumers.await.unwrap();

    // The outbox keeps the rows while the broker is away: an order placed
    // once the broker was down has an unsent row until it is back.
    let held = |reading: &Reading| -> usize {
        answers
            .iter()
            .filter(|a| {
                a.call == Call::Order
                    && a.sent >= stopped
                    && a.answered() + CLOCK_MARGIN <= reading.at
            })
            .count()
    };
    let readings_down: Vec<&Reading> = unsent
        .iter()
        .filter(|r| r.at >= stopped && r.at + r.took < restarting)
        .collect();
    let short: Vec<String> = readings_down
        .iter()
        .filter(|r| r.value.is_none_or(|v| v < held(r) as i64))
        .map(|r| {
            format!(
                "at {:.2}s: {:?} unsent, {} orders placed since the broker was down",
                r.at.as_secs_f64(),
                r.value,
                held(r)
            )
        })
        .collect();
    let last_down = readings_down.last().copied();
    let first_drained = unsent
        .iter()
        .find(|r| r.at >= outage.to && r.value == Some(0))
        .map(|r| r.at);
    eprintln!(
        "[fault-matrix] {CASE}: unsent outbox rows, highest per second: {}",
        per_second(&unsent)
    );
    eprintln!(
        "[fault-matrix] {CASE}: unsent outbox rows by phase: {}; last reading before the restart {:?} unsent for {} orders placed since the broker was down; drained {} after the broker was back",
        phases(&unsent, outage),
        last_down.and_then(|r| r.value),
        last_down.map_or(0, held),
        first_drained.map_or_else(
            || "never".to_owned(),
            |at| format!("{:.1}s", at.as_secs_f64() - outage.to.as_secs_f64())
        )
    );
    assert!(
        short.is_empty(),
        "{CASE}: the outbox did not hold the rows of the orders placed while the broker was down:\n{}",
        short.join("\n")
    );
    assert!(
        last_down.is_some_and(|r| r.value.is_some_and(|v| v > 0) && held(r) > 0),
        "{CASE}: the outbox held unsent rows just before the restart: {last_down:?}"
    );
    assert!(
        first_drained.is_some(),
        "{CASE}: the outbox drained once the broker was back"
    );

    // What operators look at while the broker is away: both read the lag
    // from Kafka, within a bound (`Operations::export_gauges` keeps a
    // gauge's last value after 1 s a source; `consumer_lag` answers 503
    // after 3 s), so neither hangs on librdkafka's 10 s time-outs.
    eprintln!(
        "[fault-matrix] {CASE}: /metrics (orderflow_outbox_backlog): {}",
        phases(&metrics, outage)
    );
    eprintln!(
        "[fault-matrix] {CASE}: /admin/consumers (total lag): {}",
        phases(&consumers, outage)
    );
    let slow = |readings: &[Reading], bound: Duration| -> Vec<String> {
        readings
            .iter()
            .filter(|r| r.took > bound)
            .map(|r| {
                format!(
                    "at {:.1}s took {:.1}s",
                    r.at.as_secs_f64(),
                    r.took.as_secs_f64()
                )
            })
            .collect()
    };
    let slow_scrapes = slow(&metrics, METRICS_WITHIN);
    assert!(
        slow_scrapes.is_empty() && metrics.iter().all(|r| r.value.is_some()),
        "{CASE}: /metrics answered 200 within {METRICS_WITHIN:?} throughout: {slow_scrapes:?}"
    );
    let slow_admin = slow(&consumers, ADMIN_WITHIN);
    assert!(
        slow_admin.is_empty(),
        "{CASE}: /admin/consumers answered within {ADMIN_WITHIN:?} throughout: {slow_admin:?}"
    );

    // Every order confirmed (plenty of stock, no declines).
    let statuses: BTreeMap<String, i64> =
        sqlx::query("SELECT status::text AS status, count(*) AS n FROM orders GROUP BY 1")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get("status"), row.get("n")))
            .collect();
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        ["confirmed"],
        "{CASE}: every order confirmed: {statuses:?}"
    );

    // No effect lost or twice: one e-mail, SMS and push per confirmed order.
    let rows = sqlx::query(
        "SELECT o.id::text AS order_id, c.channel, \
                count(n.seq) FILTER (WHERE n.kind = 'order_confirmed') AS confirmed, \
                count(n.seq) AS n \
         FROM orders o CROSS JOIN (VALUES ('email'), ('sms'), ('push')) AS c (channel) \
         LEFT JOIN notifications n ON n.order_id = o.id AND n.channel = c.channel \
         WHERE o.status = 'confirmed' GROUP BY 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut per_channel: BTreeMap<(String, i64, i64), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for row in &rows {
        let (order, channel): (String, String) = (row.get("order_id"), row.get("channel"));
        let (confirmed, all): (i64, i64) = (row.get("confirmed"), row.get("n"));
        *per_channel
            .entry((channel.clone(), confirmed, all))
            .or_default() += 1;
        if (confirmed, all) != (1, 1) {
            wrong.push(format!(
                "order {order}: {confirmed} order_confirmed of {all} on {channel}"
            ));
        }
    }
    eprintln!(
        "[fault-matrix] {CASE}: notifications of the {} confirmed orders, (channel, order_confirmed, all) → orders: {per_channel:?}",
        statuses.get("confirmed").copied().unwrap_or(0)
    );
    assert_eq!(
        rows.len() as i64,
        3 * statuses.get("confirmed").copied().unwrap_or(0),
        "{CASE}: three channels per confirmed order"
    );
    assert!(
        wrong.is_empty(),
        "{CASE}: confirmed orders without exactly one notification per channel:\n{}",
        wrong.join("\n")
    );

    // Each shopper has exactly the points of their confirmed orders (a
    // user with none has none).
    let points = sqlx::query(
        "SELECT u.user_id::text AS user_id, coalesce(p.points, 0)::bigint AS points, \
                coalesce(e.expected, 0)::bigint AS expected \
         FROM (SELECT user_id FROM loyalty_points UNION SELECT user_id FROM orders) u \
         LEFT JOIN loyalty_points p ON p.user_id = u.user_id \
         LEFT JOIN (SELECT user_id, sum(total_cents / 100) AS expected FROM orders \
                    WHERE status = 'confirmed' GROUP BY 1) e ON e.user_id = u.user_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let points: HashMap<String, (i64, i64)> = points
        .iter()
        .map(|row| (row.get("user_id"), (row.get("points"), row.get("expected"))))
        .collect();
    eprintln!(
        "[fault-matrix] {CASE}: points (held, expected) per shopper: {:?}",
        points.values().collect::<Vec<_>>()
    );
    let wrong_points: Vec<_> = points.iter().filter(|(_, (p, e))| p != e).collect();
    assert!(
        wrong_points.is_empty(),
        "{CASE}: shoppers whose points are not those of their confirmed orders: {wrong_points:?}"
    );
    assert_eq!(
        points.len(),
        shop.shoppers.len(),
        "{CASE}: every shopper ordered"
    );

    let dead_letters = count(&db, "SELECT count(*) FROM dead_letters").await;
    // At-least-once publishing: the broker may hold a row more than once
    // (consumers skip the copies by event id).
    let outbox_rows = count(&db, "SELECT count(*) FROM outbox").await;
    let records = broker_records(&broker, &topic_prefix).await;
    let tansu_log = std::fs::read_to_string(broker.log()).unwrap_or_default();
    eprintln!(
        "[fault-matrix] {CASE}: {dead_letters} dead letters; {outbox_rows} outbox rows, {records} records on the broker; tansu logged {} errors, {} panics",
        tansu_log.matches(" ERROR ").count(),
        tansu_log.matches("panicked").count()
    );
    assert_eq!(dead_letters, 0, "{CASE}: nothing was dead-lettered");

    shop.serve.stop().await;
    log_summary(CASE, &shop.serve.log);
    drop(broker);
    db.close().await;
    eprintln!(
        "[fault-matrix] {CASE}: the case took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Records on the broker's topics of `prefix`, counted in tansu's database.
async fn broker_records(broker: &KafkaBroker, prefix: &str) -> i64 {
    let tansu = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(broker.storage())
        .await
        .expect("the test connects to tansu's database");
    let records = sqlx::query_scalar(
        "SELECT count(*) FROM record r JOIN topition tp ON tp.id = r.topition \
         JOIN topic t ON t.id = tp.topic WHERE starts_with(t.name, $1)",
    )
    .bind(prefix)
    .fetch_one(&tansu)
    .await
    .unwrap();
    tansu.close().await;
    records
}
