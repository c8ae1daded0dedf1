//! The fault matrix (issue 16): a dependency fails while a bounded load runs
//! against a real `orderflow serve` process (PostgreSQL + Redis, and Kafka in
//! the broker case), then comes back. Each case prints its figures (`[fault-matrix]`) and checks:
//!
//! - PostgreSQL stopped (fast shutdown) for ~8 s, then started again on the
//!   same port with the same data: no 5xx but 503, every 503 a problem
//!   document of type `unavailable` with `Retry-After`, 503s only while the
//!   outage lasts (and a short settle window after it), cached product reads
//!   answering 200 throughout, every order answered 503 retried with its
//!   `Idempotency-Key` until 201, and every 201 order final afterwards (and
//!   in the database exactly once).
//! - Redis stopped for ~6 s, then started again (empty): product reads never
//!   answer 5xx (they fall back to the database), orders keep being accepted,
//!   every 201 order reaches a final state.
//! - The Kafka broker (tansu on its PostgreSQL engine) stopped and kept down
//!   ~8 s, then started again on the same port with the same storage
//!   (`fault_matrix/broker_restart.rs`): every order answered 201
//!   throughout, the outbox holds the rows while the broker is away and
//!   drains after, every order confirmed and in the database once, one
//!   e-mail, SMS and push each and the right points, no dead letters.
//! - The SMS provider down for 20 s (`fault_matrix/provider_outage.rs`).
//!
//! The load is bounded: [`SHOPPERS`] shoppers each place one order at a time
//! (a fresh `Idempotency-Key` per order, the same key for its retries), and
//! one reader reads a product read before the outage that no order touches
//! (so no stock change invalidates its cache entry), each with short pauses.
//! The cases take turns: they measure timings, and CI machines have few cores.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderflow_testkit::postgres::PostgresServer;
use orderflow_testkit::redis::RedisServer;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[path = "fault_matrix/broker_restart.rs"]
mod broker_restart;
#[path = "fault_matrix/provider_outage.rs"]
mod provider_outage;
mod support;
use support::process::{Process, http_process, processes_environment, tail, work_dir};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Client};

/// A metric's value in a Prometheus exposition, summed over the series
/// whose labels contain `labels` (`""`: every series); 0 when it has none.
fn metric(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The cases run one at a time (their timings would disturb each other).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Concurrent shoppers placing orders.
const SHOPPERS: usize = 4;
/// A client's pause between two requests.
const PAUSE: Duration = Duration::from_millis(50);
/// A shopper's pause before retrying an order answered 503.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a shopper keeps retrying an unanswered order once the load
/// stopped, before counting it unresolved.
const RETRY_GRACE: Duration = Duration::from_secs(30);
/// Longer than the server's own limits (30 s to get a pooled connection, 30 s
/// per request), so the server answers before the client gives up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the orders acknowledged may take to reach a final state once the
/// load stopped.
const FINAL_WITHIN: Duration = Duration::from_secs(60);
/// How long after PostgreSQL is back a 503 may still be answered.
const SETTLE: Duration = Duration::from_secs(10);
const UNAVAILABLE: &str = "https://orderflow.dev/problems/unavailable";
const FINAL_STATES: [&str; 4] = ["confirmed", "rejected", "payment_failed", "cancelled"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Order,
    Read,
}

/// One request of the load and how it was answered.
#[derive(Debug, Clone)]
struct Answer {
    call: Call,
    /// When it was sent, since the load started.
    sent: Duration,
    took: Duration,
    /// `None`: no HTTP answer (connection failed, client time-out).
    status: Option<u16>,
    /// For a 503 whose problem document or headers are not what the rules
    /// ask: what is wrong.
    bad_unavailable: Option<String>,
    /// The body (or the client's error) when not 2xx, shortened.
    detail: String,
}

impl Answer {
    fn answered(&self) -> Duration {
        self.sent + self.took
    }

    fn status_name(&self) -> String {
        self.status
            .map_or_else(|| "no answer".to_owned(), |s| s.to_string())
    }
}

/// When the dependency was down, since the load started: `from` when the
/// test began stopping it, `to` when it accepted connections again.
#[derive(Debug, Clone, Copy)]
struct Outage {
    from: Duration,
    to: Duration,
}

impl Outage {
    fn phase(&self, at: Duration) -> &'static str {
        if at < self.from {
            "before"
        } else if at < self.to {
            "during"
        } else {
            "after"
        }
    }
}

/// What a shopper's orders came to.
#[derive(Debug, Default)]
struct Shopped {
    /// (order id, shopper index) of every order answered 201.
    acknowledged: Vec<(String, usize)>,
    /// Orders that got their 201 only after one or more 503s.
    retried_to_201: usize,
    /// Orders answered a 4xx (final: not retried).
    refused: usize,
    /// Orders still without an answer other than 503 when the grace ran out.
    unresolved: usize,
}

/// `application/problem+json`, type `unavailable`, and a `Retry-After` of
/// whole seconds; or what is missing.
fn unavailable_fault(
    content_type: &str,
    body: &Value,
    retry_after: Option<&str>,
) -> Option<String> {
    let mut faults = Vec::new();
    if !content_type.starts_with("application/problem+json") {
        faults.push(format!("content type {content_type:?}"));
    }
    if body["type"] != UNAVAILABLE {
        faults.push(format!("type {}", body["type"]));
    }
    match retry_after {
        None => faults.push("no Retry-After".to_owned()),
        Some(value) if value.parse::<u64>().is_err() => {
            faults.push(format!("Retry-After {value:?}"));
        }
        Some(_) => {}
    }
    (!faults.is_empty()).then(|| faults.join(", "))
}

fn shorten(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Sends `request`, records how it was answered in `answers`, and returns
/// the status and the JSON body (`Null` when there is none).
async fn send(
    call: Call,
    request: reqwest::RequestBuilder,
    clock: Instant,
    answers: &Mutex<Vec<Answer>>,
) -> (Option<u16>, Value) {
    let sent = clock.elapsed();
    let begun = Instant::now();
    let (status, body, bad_unavailable, detail) = match request.send().await {
        Err(error) => (None, Value::Null, None, format!("no answer: {error}")),
        Ok(response) => {
            let status = response.status().as_u16();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap_or("(not text)").to_owned())
            };
            let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
            let retry_after = header(reqwest::header::RETRY_AFTER);
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let bad = if status == 503 {
                unavailable_fault(&content_type, &body, retry_after.as_deref())
            } else {
                None
            };
            let detail = if (200..300).contains(&status) {
                String::new()
            } else {
                shorten(&text)
            };
            (Some(status), body, bad, detail)
        }
    };
    answers.lock().unwrap().push(Answer {
        call,
        sent,
        took: begun.elapsed(),
        status,
        bad_unavailable,
        detail,
    });
    (status, body)
}

/// A running shop: one `orderflow serve`, its catalog and its shoppers.
struct Shop {
    serve: Process,
    client: Client,
    /// Products the shoppers order (plenty of stock).
    ordered: Vec<String>,
    /// The product only the reader reads, read once before the load.
    cached: String,
    /// The shoppers' access tokens.
    shoppers: Vec<String>,
    /// A shopper's pause between two orders ([`PAUSE`] unless a case
    /// slows its load down).
    pause: Duration,
    _work: tempfile::TempDir,
}

impl Shop {
    /// Starts `orderflow serve` on `database_url` and `redis_url` (a key
    /// prefix of its own), with the settings `extra` adds, creates the
    /// catalog and the shoppers, and reads every product once so the caches
    /// hold them.
    async fn open(database_url: &str, redis_url: &str, extra: &[(&str, &str)]) -> Shop {
        let (work, logs) = work_dir();
        let prefix = orderflow_testkit::redis::fresh_prefix();
        let mut settings = vec![
            ("ORDERFLOW_DATABASE_URL", database_url),
            ("ORDERFLOW_REDIS_URL", redis_url),
            ("ORDERFLOW_REDIS_KEY_PREFIX", &prefix),
        ];
        settings.extend_from_slice(extra);
        let env = processes_environment(&work.path().join("data"), &settings);
        let (serve, client) = http_process("serve", "serve", &env, &logs).await;
        let admin = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        let mut ordered = Vec::new();
        for n in 0..3 {
            ordered.push(
                client
                    .product(&admin, &format!("FAULT-{n}"), 250, 1_000_000)
                    .await,
            );
        }
        let cached = client.product(&admin, "FAULT-READ", 990, 5).await;
        for id in ordered.iter().chain([&cached]) {
            let read = client
                .http
                .get(format!("{}/api/v1/products/{id}", client.base))
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), 200, "reading product {id}");
        }
        let mut shoppers = Vec::new();
        for n in 0..SHOPPERS {
            shoppers.push(client.shopper(&format!("fault{n}@example.com")).await);
        }
        Shop {
            serve,
            client,
            ordered,
            cached,
            shoppers,
            pause: PAUSE,
            _work: work,
        }
    }
}

/// The bounded load: [`SHOPPERS`] shoppers and one reader, until finished.
struct Load {
    clock: Instant,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    shoppers: Vec<JoinHandle<Shopped>>,
    reader: JoinHandle<()>,
}

impl Load {
    fn start(shop: &Shop) -> Load {
        let clock = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        let base = format!("{}/api/v1", shop.client.base);
        let shoppers = shop
            .shoppers
            .iter()
            .enumerate()
            .map(|(shopper, token)| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                let (stop, answers) = (stop.clone(), answers.clone());
                let (products, pause) = (shop.ordered.clone(), shop.pause);
                tokio::spawn(async move {
                    let mut shopped = Shopped::default();
                    let mut n = shopper;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = uuid::Uuid::now_v7().to_string();
                        let items = json!({"items": [{"product_id": products[n % products.len()], "quantity": 1}]});
                        let mut attempts = 0;
                        let mut stopped_at: Option<Instant> = None;
                        loop {
                            attempts += 1;
                            let request = http
                                .post(format!("{base}/orders"))
                                .bearer_auth(&token)
                                .header("idempotency-key", &key)
                                .json(&items);
                            match send(Call::Order, request, clock, &answers).await {
                                (Some(201), body) => {
                                    let id = body["id"].as_str().expect("a 201 names the order");
                                    shopped.acknowledged.push((id.to_owned(), shopper));
                                    if attempts > 1 {
                                        shopped.retried_to_201 += 1;
                                    }
                                    break;
                                }
                                (Some(503) | None, _) => {
                                    if stop.load(Ordering::Relaxed)
                                        && stopped_at.get_or_insert_with(Instant::now).elapsed()
                                            > RETRY_GRACE
                                    {
                                        shopped.unresolved += 1;
                                        break;
                                    }
                                    tokio::time::sleep(RETRY_PAUSE).await;
                                }
                                (Some(_), _) => {
                                    shopped.refused += 1;
                                    break;
                                }
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                    shopped
                })
            })
            .collect();
        let reader = {
            let url = format!("{base}/products/{}", shop.cached);
            let (stop, answers) = (stop.clone(), answers.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    send(Call::Read, http.get(&url), clock, &answers).await;
                    tokio::time::sleep(PAUSE).await;
                }
            })
        };
        Load {
            clock,
            stop,
            answers,
            shoppers,
            reader,
        }
    }

    /// Since the load started.
    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Stops the clients (a shopper first finishes the order it is
    /// retrying) and returns every answer and what the orders came to.
    async fn finish(self) -> (Vec<Answer>, Shopped) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Shopped::default();
        for shopper in self.shoppers {
            let shopped = shopper.await.expect("a shopper panicked");
            total.acknowledged.extend(shopped.acknowledged);
            total.retried_to_201 += shopped.retried_to_201;
            total.refused += shopped.refused;
            total.unresolved += shopped.unresolved;
        }
        self.reader.await.expect("the reader panicked");
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        (answers, total)
    }
}

/// Prints, per call and phase, the answers by status and the slowest one;
/// returns the counts by (call, phase, status).
fn report(
    case: &str,
    answers: &[Answer],
    outage: Outage,
) -> BTreeMap<(Call, &'static str, String), usize> {
    let mut counts = BTreeMap::new();
    let mut slowest: BTreeMap<(Call, &'static str), Duration> = BTreeMap::new();
    for answer in answers {
        let phase = outage.phase(answer.sent);
        *counts
            .entry((answer.call, phase, answer.status_name()))
            .or_insert(0) += 1;
        let slow = slowest.entry((answer.call, phase)).or_default();
        *slow = (*slow).max(answer.took);
    }
    for call in [Call::Order, Call::Read] {
        for phase in ["before", "during", "after"] {
            let statuses: Vec<String> = counts
                .iter()
                .filter(|((c, p, _), _)| *c == call && *p == phase)
                .map(|((_, _, status), n)| format!("{status}: {n}"))
                .collect();
            eprintln!(
                "[fault-matrix] {case}: {call:?} requests sent {phase} the outage: {{{}}}, slowest {:.2}s",
                statuses.join(", "),
                slowest
                    .get(&(call, phase))
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64()
            );
        }
    }
    counts
}

/// The distinct (call, status, detail) of the answers `which` selects, with
/// their number: what a failure message shows.
fn examples(answers: &[Answer], which: impl Fn(&Answer) -> bool) -> String {
    let mut seen: BTreeMap<(Call, String, String), usize> = BTreeMap::new();
    for answer in answers.iter().filter(|a| which(a)) {
        let detail = answer
            .bad_unavailable
            .clone()
            .unwrap_or_else(|| answer.detail.clone());
        *seen
            .entry((answer.call, answer.status_name(), detail))
            .or_insert(0) += 1;
    }
    seen.iter()
        .map(|((call, status, detail), n)| format!("{n} × {call:?} {status}: {detail}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every 201 order, read as its shopper until it is final (bounded); how
/// long that took and the final states by count.
async fn all_final(
    shop: &Shop,
    acknowledged: &[(String, usize)],
) -> (Duration, BTreeMap<String, usize>) {
    let started = Instant::now();
    let deadline = started + FINAL_WITHIN;
    let mut states = BTreeMap::new();
    for (id, shopper) in acknowledged {
        loop {
            let answer = shop
                .client
                .http
                .get(format!("{}/api/v1/orders/{id}", shop.client.base))
                .bearer_auth(&shop.shoppers[*shopper])
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            assert!(
                status == 200 || status == 503,
                "GET /orders/{id} answered {status}: {body}"
            );
            let state = body["status"].as_str().unwrap_or_default().to_owned();
            if FINAL_STATES.contains(&state.as_str()) {
                *states.entry(state).or_insert(0) += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} not final within {FINAL_WITHIN:?} after the load: {status} {body}\nserve log:\n{}",
                tail(&shop.serve.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (started.elapsed(), states)
}

/// The serve log's warnings and errors by message (span fields dropped,
/// grouped on the message's first words), the most frequent first.
fn log_summary(case: &str, log: &std::path::Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by_message: BTreeMap<String, (usize, String)> = BTreeMap::new();
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
        let entry = by_message
            .entry(format!("{level} {key}"))
            .or_insert_with(|| (0, format!("{level} {}", shorten(message))));
        entry.0 += 1;
    }
    let mut lines: Vec<&(usize, String)> = by_message.values().collect();
    lines.sort_by_key(|line| std::cmp::Reverse(line.0));
    let shown: Vec<String> = lines
        .iter()
        .take(6)
        .map(|(n, line)| format!("  {n} × {line}"))
        .collect();
    eprintln!(
        "[fault-matrix] {case}: serve logged {} warnings and errors, most frequent first:\n{}",
        lines.iter().map(|(n, _)| n).sum::<usize>(),
        shown.join("\n")
    );
}

/// Orders in the database at `url`.
async fn orders_in_database(url: &str) -> i64 {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("the test connects to PostgreSQL");
    let count = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    count
}

/// The rules every case checks on the orders: every answer a 201 or a
/// well-formed 503, nothing unresolved or refused, each acknowledged order
/// final and in the database once.
async fn check_orders(
    case: &str,
    shop: &Shop,
    database_url: &str,
    answers: &[Answer],
    shopped: &Shopped,
) {
    let unexpected = examples(answers, |a| {
        a.call == Call::Order && !matches!(a.status, Some(201 | 503))
    });
    assert!(
        unexpected.is_empty(),
        "{case}: orders answered other than 201 or 503:\n{unexpected}"
    );
    assert_eq!(
        (shopped.unresolved, shopped.refused),
        (0, 0),
        "{case}: every order answered 503 gets its 201 on a retry with the same key"
    );
    let (took, states) = all_final(shop, &shopped.acknowledged).await;
    let stored = orders_in_database(database_url).await;
    eprintln!(
        "[fault-matrix] {case}: {} orders acknowledged ({} of them after 503s), all final {:.1}s after the load stopped: {states:?}; {stored} in the database",
        shopped.acknowledged.len(),
        shopped.retried_to_201,
        took.as_secs_f64()
    );
    assert_eq!(
        stored as usize,
        shopped.acknowledged.len(),
        "{case}: every acknowledged order is stored once (a retried key makes no second order)"
    );
}

/// Every 503 in `answers` is a problem document of type `unavailable` with
/// `Retry-After`.
fn check_unavailable_answers(case: &str, answers: &[Answer]) {
    let bad = examples(answers, |a| a.bad_unavailable.is_some());
    // Needs the Retry-After on 503s (crates/api + crates/core, issue 16):
    // until that lands, this fails with "no Retry-After".
    assert!(
        bad.is_empty(),
        "{case}: 503s that are not a problem document of type {UNAVAILABLE} with Retry-After:\n{bad}"
    );
}

/// How [`under_outage`] stops a server, and how it starts it again.
type StopAndStart<S> = (fn(&mut S), fn(&mut S) -> anyhow::Result<()>);

/// When the outage of [`under_outage`] happened, on the load's clock.
struct Timeline {
    /// From the stop being asked to the server answering again.
    outage: Outage,
    /// When the server was down (its stop returned).
    stopped: Duration,
    /// When it was asked to start again.
    restarting: Duration,
}

impl Timeline {
    /// The timeline for the log: "`server` stopping at …, down at …,
    /// starting again at …, `back` at … (… `away`)".
    fn told(&self, server: &str, back: &str, away: &str) -> String {
        let Timeline {
            outage,
            stopped,
            restarting,
        } = self;
        format!(
            "{server} stopping at {:.1}s, down at {:.1}s, starting again at {:.1}s, {back} at {:.1}s ({:.1}s {away})",
            outage.from.as_secs_f64(),
            stopped.as_secs_f64(),
            restarting.as_secs_f64(),
            outage.to.as_secs_f64(),
            (outage.to - outage.from).as_secs_f64(),
        )
    }
}

/// One case of this file: its turn (cases run one at a time), its clock
/// and the load's phases.
struct Case {
    name: &'static str,
    started: Instant,
    phases: [Duration; 3],
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Case {
    /// Waits for the case's turn and starts its clock; `phases` are the
    /// load before the outage, the outage and the load after it.
    async fn begin(name: &'static str, phases: [Duration; 3]) -> Case {
        let _turn = ONE_AT_A_TIME.lock().await;
        Case {
            name,
            started: Instant::now(),
            phases,
            _turn,
        }
    }

    /// The outage of `server` under `shop`'s load ([`under_outage`]), once
    /// the servers and the shop are ready; the shop's server survives it.
    async fn outage<S: Send + 'static>(
        &self,
        shop: &mut Shop,
        server: S,
        stop_and_start: StopAndStart<S>,
    ) -> (S, Timeline, Vec<Answer>, Shopped) {
        eprintln!(
            "[fault-matrix] {}: servers and shop ready in {:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        let outcome = under_outage(shop, server, stop_and_start, self.phases).await;
        shop.serve.assert_running();
        outcome
    }

    /// The end of the case whose load `shop` served: the orders of
    /// `answers` are checked, the server stopped and its log summed up,
    /// then `outside` (the server the case stopped) goes.
    async fn finish(
        self,
        mut shop: Shop,
        database_url: &str,
        answers: &[Answer],
        shopped: &Shopped,
        outside: impl Sized,
    ) {
        check_orders(self.name, &shop, database_url, answers, shopped).await;
        shop.serve.stop().await;
        log_summary(self.name, &shop.serve.log);
        drop(outside);
        eprintln!(
            "[fault-matrix] {}: the case took {:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// No answer was a 5xx other than a 503, and every request was answered.
fn check_no_other_server_errors(case: &str, answers: &[Answer], serve_log: &std::path::Path) {
    let server_errors = examples(answers, |a| a.status.is_none_or(|s| s >= 500 && s != 503));
    assert!(
        server_errors.is_empty(),
        "{case}: answers other than 503 among the 5xx (or no answer at all):\n{server_errors}\nserve log:\n{}",
        tail(serve_log, 40)
    );
}

/// Runs the load `phases[0]`, takes `server` away with `stop`, keeps it away
/// `phases[1]`, brings it back with `start`, runs the load `phases[2]` more;
/// hands the server back with the timeline, the answers and what was shopped.
/// Stopping and starting block (they wait for the server), so they run off
/// the runtime's threads.
async fn under_outage<S: Send + 'static>(
    shop: &Shop,
    mut server: S,
    (stop, start): StopAndStart<S>,
    [before, down, after]: [Duration; 3],
) -> (S, Timeline, Vec<Answer>, Shopped) {
    let load = Load::start(shop);
    tokio::time::sleep(before).await;
    let from = load.now();
    server = tokio::task::spawn_blocking(move || {
        stop(&mut server);
        server
    })
    .await
    .unwrap();
    let stopped = load.now();
    tokio::time::sleep(down).await;
    let restarting = load.now();
    server = tokio::task::spawn_blocking(move || start(&mut server).map(|()| server))
        .await
        .unwrap()
        .expect("the server starts again");
    let outage = Outage {
        from,
        to: load.now(),
    };
    tokio::time::sleep(after).await;
    let (answers, shopped) = load.finish().await;
    let timeline = Timeline {
        outage,
        stopped,
        restarting,
    };
    (server, timeline, answers, shopped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load() {
    const CASE: &str = "postgres restarted";
    const BEFORE: Duration = Duration::from_secs(8);
    const DOWN: Duration = Duration::from_secs(8);
    const AFTER: Duration = Duration::from_secs(8);
    let case = Case::begin(CASE, [BEFORE, DOWN, AFTER]).await;
    // A server of its own: this test stops it.
    let postgres = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
        .expect("PostgreSQL starts");
    let database_url = postgres.create_database().await.expect("a fresh database");
    let redis_url = tokio::task::spawn_blocking(orderflow_testkit::redis::shared_standalone_url)
        .await
        .unwrap();
    let mut shop = Shop::open(&database_url, &redis_url, &[]).await;
    let (postgres, timeline, answers, shopped) = case
        .outage(
            &mut shop,
            postgres,
            (PostgresServer::stop, PostgresServer::start_again),
        )
        .await;
    eprintln!(
        "[fault-matrix] {CASE}: load from 0s to {:.1}s; {}; {} requests",
        answers
            .iter()
            .map(Answer::answered)
            .max()
            .unwrap_or_default()
            .as_secs_f64(),
        timeline.told("PostgreSQL", "accepting connections", "of outage"),
        answers.len()
    );
    let (outage, stopped) = (timeline.outage, timeline.stopped);
    let counts = report(CASE, &answers, outage);

    // 503s only while PostgreSQL is down, and shortly after (measured).
    let unavailable: Vec<&Answer> = answers.iter().filter(|a| a.status == Some(503)).collect();
    let last_503 = unavailable.iter().map(|a| a.answered()).max();
    let first_201_after = answers
        .iter()
        .filter(|a| a.call == Call::Order && a.status == Some(201) && a.sent >= outage.to)
        .map(Answer::answered)
        .min();
    let settled = |at: Option<Duration>| {
        at.map_or_else(
            || "none".to_owned(),
            |at| format!("{:+.2}s", at.as_secs_f64() - outage.to.as_secs_f64()),
        )
    };
    eprintln!(
        "[fault-matrix] {CASE}: {} answers 503 ({} orders, {} reads); last 503 answered {} after PostgreSQL was back; first 201 of an order sent after it {}",
        unavailable.len(),
        unavailable.iter().filter(|a| a.call == Call::Order).count(),
        unavailable.iter().filter(|a| a.call == Call::Read).count(),
        settled(last_503),
        settled(first_201_after)
    );
    if !unavailable.is_empty() {
        eprintln!(
            "[fault-matrix] {CASE}: the 503s:\n{}",
            examples(&answers, |a| a.status == Some(503))
        );
    }
    // Requests the outage held up: sent before PostgreSQL was back, answered
    // (whatever the status) after it was stopped.
    let held: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent < outage.to && a.answered() > stopped && a.took > Duration::from_secs(1))
        .collect();
    eprintln!(
        "[fault-matrix] {CASE}: {} requests waited through the outage (over 1 s), the longest {:.2}s; statuses {:?}",
        held.len(),
        held.iter()
            .map(|a| a.took)
            .max()
            .unwrap_or_default()
            .as_secs_f64(),
        held.iter().map(|a| a.status_name()).collect::<Vec<_>>()
    );
    // The outage is answered, not waited out: a request gives up on the
    // pool after its 5 s acquire timeout (twice at most: an order reads the
    // catalog, then opens its transaction) and answers 503.
    let longest_hold = held.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(
        longest_hold < Duration::from_secs(12),
        "{CASE}: a request waited {longest_hold:?} through the outage"
    );
    assert!(
        unavailable
            .iter()
            .any(|a| a.call == Call::Order && outage.phase(a.sent) == "during"),
        "{CASE}: no order sent during the outage was answered 503: {counts:?}"
    );
    let misplaced = examples(&answers, |a| {
        a.status == Some(503) && (a.answered() < outage.from || a.answered() > outage.to + SETTLE)
    });
    assert!(
        misplaced.is_empty(),
        "{CASE}: 503s outside the outage (and {SETTLE:?} after it):\n{misplaced}"
    );
    check_no_other_server_errors(CASE, &answers, &shop.serve.log);
    check_unavailable_answers(CASE, &answers);

    // Cached product reads during the outage (issue 16: "reads served from
    // the cache keep working"). QUESTIONED: if this fails, the product was
    // in the cache before the outage and reading it still needed the
    // database; the message shows what the reads answered.
    let reads_during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.call == Call::Read && outage.phase(a.sent) == "during")
        .collect();
    let reads_ok = reads_during
        .iter()
        .filter(|a| a.status == Some(200))
        .count();
    eprintln!(
        "[fault-matrix] {CASE}: cached product reads during the outage: {reads_ok} OK, {} failed",
        reads_during.len() - reads_ok
    );
    assert!(
        !reads_during.is_empty(),
        "{CASE}: the reader read during the outage"
    );
    let failed_reads = examples(&answers, |a| {
        a.call == Call::Read && outage.phase(a.sent) == "during" && a.status != Some(200)
    });
    assert!(
        failed_reads.is_empty(),
        "{CASE}: cached product reads failed while PostgreSQL was down:\n{failed_reads}"
    );
    let unexpected_reads = examples(&answers, |a| {
        a.call == Call::Read && !matches!(a.status, Some(200 | 503))
    });
    assert!(
        unexpected_reads.is_empty(),
        "{CASE}: reads answered other than 200 or 503:\n{unexpected_reads}"
    );

    // Orders flow again once PostgreSQL is back.
    assert!(
        first_201_after.is_some(),
        "{CASE}: no order sent after the restart was accepted: {counts:?}"
    );
    case.finish(shop, &database_url, &answers, &shopped, postgres)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load() {
    const CASE: &str = "redis killed";
    const BEFORE: Duration = Duration::from_secs(5);
    const DOWN: Duration = Duration::from_secs(6);
    const AFTER: Duration = Duration::from_secs(5);
    let case = Case::begin(CASE, [BEFORE, DOWN, AFTER]).await;
    let database_url = orderflow_testkit::postgres::fresh_database()
        .await
        .expect("a fresh PostgreSQL database");
    // A server of its own: this test stops it.
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server starts");
    let mut shop = Shop::open(&database_url, &redis.url(), &[]).await;
    let (redis, timeline, answers, shopped) = case
        .outage(&mut shop, redis, (RedisServer::stop, RedisServer::restart))
        .await;
    eprintln!(
        "[fault-matrix] {CASE}: {}; {} requests",
        timeline.told("Redis", "answering", "of outage"),
        answers.len()
    );
    let outage = timeline.outage;
    let counts = report(CASE, &answers, outage);

    // Product reads fall back to the database: no 5xx at all.
    let failed_reads = examples(&answers, |a| {
        a.call == Call::Read && a.status.is_none_or(|s| s >= 500)
    });
    assert!(
        failed_reads.is_empty(),
        "{CASE}: product reads failed (the database was up):\n{failed_reads}\nserve log:\n{}",
        tail(&shop.serve.log, 40)
    );
    check_no_other_server_errors(CASE, &answers, &shop.serve.log);
    check_unavailable_answers(CASE, &answers);

    // Orders are still accepted while Redis is down.
    let accepted_during = answers
        .iter()
        .filter(|a| {
            a.call == Call::Order && a.status == Some(201) && outage.phase(a.sent) == "during"
        })
        .count();
    eprintln!(
        "[fault-matrix] {CASE}: {accepted_during} orders sent during the outage answered 201"
    );
    assert!(
        accepted_during > 0,
        "{CASE}: no order placed while Redis was down was accepted: {counts:?}"
    );
    case.finish(shop, &database_url, &answers, &shopped, redis)
        .await;
}
