//! `--staleness`: do the caches lie? Orders, admin edits and product reads
//! run at once against a fresh shop, and every product a read showed is
//! checked against the database itself.
//!
//! Two setups, one after the other:
//! - **embedded**: one `orderflow serve` (SQLite, the in-process cache);
//! - **two APIs on Redis**: the same plus a second process running only the
//!   API (`orderflow api`) on the same database, both with L2 and the
//!   invalidation channel in a `redis-server` the bench starts. Reads and
//!   orders alternate between the two processes, so a change committed by
//!   one process must reach the other's L1 through Redis.
//!
//! What changes the hot products meanwhile: open-loop orders (each reserves
//! stock: one change), declined payments (every fifth order is over the
//! simulated card limit, and its stock is released again: another change),
//! and admin edits of one hot product that no order touches (its price,
//! written through the cache).
//!
//! # How a read is judged
//! A **reference reader** reads every hot product's version straight from
//! the database file every [`PROBE_EVERY`], one query after another (so the
//! versions it sees only grow). For a read sent at `s`, answered at `r`,
//! showing version `v`, let `P1` be the first reference read that saw a
//! version above `v` and `P0` the one before it (the last that saw `v` or
//! less). The change after `v` committed after `P0` was sent and before
//! `P1` was answered, so the read was behind the database by
//! - **at least** `s − P1.answered` (it was sent after the newer version was
//!   certainly committed), and
//! - **at most** `r − P0.sent`.
//!
//! A read is **stale** when it was behind by more than [`STALE_AFTER`] (the
//! issue's 100 ms): counted as *certain* when the lower bound passes it and
//! *possible* when only the upper bound does. The window between the bounds
//! is one reference period plus one reference query, so a read behind by
//! more than about 100 + 6 ms is always counted as certain.
//!
//! A list page counts as one read of each hot product on it: pages follow
//! the same rule as single products.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::shop::{MetricsSnapshot, Shop};
use crate::stats::{Latencies, LatencySummary, ratio};
use crate::sut::{Server, V2};
use crate::{BenchArgs, BenchError, spinner};

/// The bound: a read may show a product at most this long after
/// its next change committed.
pub const STALE_AFTER: Duration = Duration::from_millis(100);
/// How often the reference reader reads the database.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Products the scenario reads and changes (the first of the catalog).
const HOT_PRODUCTS: usize = 8;
/// Each reader's every tenth read is a page of the product list.
const LIST_EVERY: u64 = 10;
/// The page size of list reads: large enough to hold every hot product.
const PAGE: usize = 100;
/// The ordered products' price during the scenario, and the simulated card
/// limit: one unit is charged, two are declined (and their stock released,
/// a change of its own).
const PRICE_CENTS: i64 = 1_000;
const DECLINE_ABOVE_CENTS: &str = "1500";
/// Every this many orders, one buys two units (declined).
const DECLINED_EVERY: usize = 5;
/// Orders per second when `--rate` is not given.
const DEFAULT_ORDER_RATE: f64 = 100.0;
/// How often the edited product's price changes.
const EDIT_EVERY: Duration = Duration::from_millis(200);

/// Both setups' results.
#[derive(Debug, Clone, Serialize)]
pub struct StalenessRun {
    pub stale_after_ms: f64,
    pub probe_every_ms: f64,
    pub duration_secs: f64,
    pub order_rate: f64,
    pub readers: usize,
    pub scenarios: Vec<Scenario>,
}

/// One setup's result.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub api_processes: usize,
    /// Product versions shown: one per product read, one per hot product
    /// on a list page.
    pub reads: u64,
    pub read_errors: u64,
    pub orders_accepted: u64,
    pub order_errors: u64,
    pub admin_edits: u64,
    pub edit_errors: u64,
    /// Versions of the hot products committed during the measured time, as
    /// the reference reader saw them.
    pub changes: u64,
    /// Reads certainly behind the database by more than `stale_after_ms`.
    pub stale_certain: u64,
    /// Reads that may have been (only the upper bound passes it).
    pub stale_possible: u64,
    /// Reads that showed an older version than the database had when they
    /// were sent, by any amount (the lower bound is above 0).
    pub behind_at_all: u64,
    /// How far behind the database each read may have been (the upper
    /// bound; 0 for reads that showed the newest version).
    pub behind_at_most: LatencySummary,
    pub behind_at_most_percentiles: Vec<(f64, f64)>,
    /// The same two figures for each API process's reads (the first is the
    /// `serve` that runs the consumers; a second hears changes over Redis).
    pub per_api: Vec<ApiBehind>,
    /// Read requests sent (a list page is one).
    pub read_requests: u64,
    /// Cache lookups that hit, over every layer and API process
    /// (`orderflow_cache_{hits,misses}_total`, as the comparison reports it).
    pub cache_hit_ratio: f64,
    /// Read requests answered without loading from the database: 1 − the
    /// catalog's read-path queries (misses and refresh-ahead reloads, see
    /// [`MetricsSnapshot::catalog_db_loads`]) / read requests.
    pub served_without_database: f64,
    /// Reference reads made, and the longest gap between two of them (an
    /// instrument check: the bounds are only as tight as this gap).
    pub reference_reads: u64,
    pub reference_gap_max_ms: f64,
}

/// How far behind one API process's reads were.
#[derive(Debug, Clone, Serialize)]
pub struct ApiBehind {
    pub reads: u64,
    pub behind_at_all: u64,
    pub behind_at_most: LatencySummary,
}

impl StalenessRun {
    pub fn table(&self) -> String {
        let header: Vec<String> = [
            "setup",
            "reads",
            "changes",
            "orders",
            "edits",
            "stale > 100 ms (certain / possible)",
            "behind at most p99 / max",
            "hit ratio: lookups / reads",
        ]
        .map(str::to_owned)
        .to_vec();
        let rows: Vec<Vec<String>> = self
            .scenarios
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    format!("{} ({} errors)", s.reads, s.read_errors),
                    s.changes.to_string(),
                    format!("{} ({} errors)", s.orders_accepted, s.order_errors),
                    format!("{} ({} errors)", s.admin_edits, s.edit_errors),
                    format!("{} / {}", s.stale_certain, s.stale_possible),
                    format!(
                        "{:.1} / {:.1} ms",
                        s.behind_at_most.p99_ms, s.behind_at_most.max_ms
                    ),
                    format!(
                        "{:.2}% / {:.2}%",
                        s.cache_hit_ratio * 100.0,
                        s.served_without_database * 100.0
                    ),
                ]
            })
            .collect();
        format!(
            "staleness: {} readers, {:.0} orders/s, {:.0} s measured, reference read every {:.0} ms (longest gap {:.0} ms)\n{}",
            self.readers,
            self.order_rate,
            self.duration_secs,
            self.probe_every_ms,
            self.scenarios
                .iter()
                .map(|s| s.reference_gap_max_ms)
                .fold(0.0, f64::max),
            crate::report::boxed(&header, &rows)
        )
    }
}

/// Runs both setups with a fresh server each.
pub async fn run(args: &BenchArgs, binary: &Path) -> Result<StalenessRun, BenchError> {
    let order_rate = args.rate.unwrap_or(DEFAULT_ORDER_RATE);
    let mut scenarios = Vec::new();

    println!("\n▶ staleness: embedded (one orderflow serve, SQLite, in-process cache)");
    let server = Server::start_with(binary, &V2, &[], &[DECLINES]).await?;
    let result = measure(args, "embedded", &[&server], order_rate).await;
    server.stop().await?;
    scenarios.push(result?);

    println!("\n▶ staleness: two API processes on Redis (serve + api, one SQLite file)");
    let redis = crate::sut::start_redis().await?;
    let url = redis.url();
    let env = [DECLINES, ("ORDERFLOW_REDIS_URL", Some(url.as_str()))];
    let first = Server::start_with(binary, &V2, &[], &env).await?;
    let second = first.api_beside(binary, &V2, &env).await;
    let result = match &second {
        Ok(second) => measure(args, "two APIs on Redis", &[&first, second], order_rate).await,
        Err(e) => Err(BenchError::Server(e.to_string())),
    };
    if let Ok(second) = second {
        second.stop().await?;
    }
    first.stop().await?;
    drop(redis);
    scenarios.push(result?);

    Ok(StalenessRun {
        stale_after_ms: STALE_AFTER.as_secs_f64() * 1e3,
        probe_every_ms: PROBE_EVERY.as_secs_f64() * 1e3,
        duration_secs: args.duration_secs.max(1) as f64,
        order_rate,
        readers: args.users.max(1),
        scenarios,
    })
}

/// The simulated card limit of every process the scenario starts.
const DECLINES: (&str, Option<&str>) = (
    "ORDERFLOW_SIM_PAYMENT_DECLINE_ABOVE_CENTS",
    Some(DECLINE_ABOVE_CENTS),
);

/// One version a read showed, with when the read was sent and answered
/// (since the scenario's start).
#[derive(Debug, Clone, Copy)]
struct Shown {
    /// Which API process answered (index into the scenario's processes).
    api: usize,
    product: usize,
    version: i64,
    sent: Duration,
    answered: Duration,
}

/// One reference read of one product.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reference {
    sent: Duration,
    answered: Duration,
    version: i64,
}

/// How far behind the database a read was: bounds in seconds, `None` when
/// the database never had a newer version.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Behind {
    at_least: f64,
    at_most: f64,
}

/// Judges one read against the reference reads of its product (sorted by
/// time, so their versions only grow). See the module docs.
fn behind(references: &[Reference], shown: &Shown) -> Option<Behind> {
    let first_newer = references.partition_point(|r| r.version <= shown.version);
    let newer = references.get(first_newer)?;
    let last_older_sent = first_newer
        .checked_sub(1)
        .map_or(Duration::ZERO, |i| references[i].sent);
    Some(Behind {
        at_least: (shown.sent.as_secs_f64() - newer.answered.as_secs_f64()).max(0.0),
        at_most: (shown.answered.as_secs_f64() - last_older_sent.as_secs_f64()).max(0.0),
    })
}

/// The server's database file, read-only (the reference reader, the soak's accounting).
pub(crate) async fn read_only_pool(database: &Path) -> Result<SqlitePool, BenchError> {
    let options = SqliteConnectOptions::new()
        .filename(database)
        .read_only(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| BenchError::Setup(format!("opening the database to read it: {e}")))
}

/// Reads the hot products' versions every [`PROBE_EVERY`] until `stop`.
async fn reference_reader(
    pool: SqlitePool,
    hot: Vec<uuid::Uuid>,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Vec<Reference>>, BenchError> {
    let index: HashMap<String, usize> = hot
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), i))
        .collect();
    let mut references = vec![Vec::new(); hot.len()];
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let sent = start.elapsed();
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, version FROM products")
            .fetch_all(&pool)
            .await
            .map_err(|e| BenchError::Setup(format!("reading the database: {e}")))?;
        let answered = start.elapsed();
        for (id, version) in rows {
            if let Some(&i) = index.get(&id) {
                references[i].push(Reference {
                    sent,
                    answered,
                    version,
                });
            }
        }
    }
    pool.close().await;
    Ok(references)
}

/// What the load tasks counted.
#[derive(Default)]
struct Counters {
    read_requests: AtomicU64,
    read_errors: AtomicU64,
    orders_accepted: AtomicU64,
    order_errors: AtomicU64,
    edits: AtomicU64,
    edit_errors: AtomicU64,
}

async fn measure(
    args: &BenchArgs,
    name: &str,
    apis: &[&Server],
    order_rate: f64,
) -> Result<Scenario, BenchError> {
    let readers = args.users.max(1);
    let first = apis[0];
    let setup = Shop::new(&first.base_url, 4);
    let seeding = spinner("seeding: shoppers, stock of the hot products");
    let products = setup.product_ids().await?;
    let hot: Vec<uuid::Uuid> = products.iter().copied().take(HOT_PRODUCTS).collect();
    if hot.len() < 2 {
        return Err(BenchError::Setup(
            "staleness needs at least two products".into(),
        ));
    }
    let (email, password) = first.admin.clone().expect("a started server has an admin");
    let admin = setup.login(&email, &password).await?;
    // Every hot product but the last takes orders; the last is edited.
    let (ordered, edited) = (hot[..hot.len() - 1].to_vec(), hot[hot.len() - 1]);
    for id in &ordered {
        setup
            .edit_product(&admin, *id, |product| {
                product["stock"] = serde_json::json!(1_000_000);
                product["price_cents"] = serde_json::json!(PRICE_CENTS);
            })
            .await?;
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tokens = Arc::new(setup.shoppers(args.shoppers.clamp(1, 50), &run_id).await?);
    seeding.finish_and_clear();

    let shops: Vec<Shop> = apis
        .iter()
        .map(|s| Shop::new(&s.base_url, readers))
        .collect();
    let start = Instant::now();
    let stop_reference = Arc::new(AtomicBool::new(false));
    // On a thread and runtime of its own: on the bench's runtime it would
    // queue behind the readers' tasks, and its gaps widen the bounds.
    let database = first
        .data_dir()
        .ok_or_else(|| BenchError::Setup("staleness needs a server the bench started".into()))?
        .join("orderflow.db");
    let reference = {
        let (hot, stop) = (hot.clone(), stop_reference.clone());
        std::thread::Builder::new()
            .name("staleness-reference".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| BenchError::Setup(format!("the reference reader's runtime: {e}")))?
                    .block_on(async {
                        reference_reader(read_only_pool(&database).await?, hot, start, stop).await
                    })
            })
            .map_err(|e| BenchError::Setup(format!("starting the reference reader: {e}")))?
    };

    let warmup = Duration::from_secs(args.warmup_secs);
    let measured = Duration::from_secs(args.duration_secs.max(1));
    let measure_from = start + warmup;
    let until = measure_from + measured;
    let counters = Arc::new(Counters::default());

    let mut reader_tasks = Vec::new();
    for reader in 0..readers {
        let api = reader % shops.len();
        let shop = shops[api].clone();
        let (hot, counters) = (hot.clone(), counters.clone());
        reader_tasks.push(tokio::spawn(async move {
            let mut shown = Vec::new();
            let mut k = reader as u64;
            while Instant::now() < until {
                k += 1;
                let sent = start.elapsed();
                let measuring = Instant::now() >= measure_from;
                if measuring {
                    counters.read_requests.fetch_add(1, Ordering::Relaxed);
                }
                if k.is_multiple_of(LIST_EVERY) {
                    match shop.page_versions(PAGE).await {
                        Ok(items) => {
                            let answered = start.elapsed();
                            for (id, version) in items {
                                if let Some(product) = hot.iter().position(|h| *h == id)
                                    && measuring
                                {
                                    shown.push(Shown {
                                        api,
                                        product,
                                        version,
                                        sent,
                                        answered,
                                    });
                                }
                            }
                        }
                        Err(_) => {
                            counters.read_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    let product = (k as usize) % hot.len();
                    match shop.product_version(hot[product]).await {
                        Ok(version) if measuring => shown.push(Shown {
                            api,
                            product,
                            version,
                            sent,
                            answered: start.elapsed(),
                        }),
                        Ok(_) => {}
                        Err(_) => {
                            counters.read_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            shown
        }));
    }

    let orders = {
        let (shops, tokens, counters) = (shops.clone(), tokens.clone(), counters.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / order_rate));
            let mut placed = Vec::new();
            let mut n = 0usize;
            while Instant::now() < until {
                ticks.tick().await;
                n += 1;
                let shop = shops[n % shops.len()].clone();
                let token = tokens[n % tokens.len()].clone();
                let product = ordered[n % ordered.len()];
                let quantity = if n.is_multiple_of(DECLINED_EVERY) {
                    2
                } else {
                    1
                };
                let counters = counters.clone();
                placed.push(tokio::spawn(async move {
                    match shop.place(&token, product, quantity).await {
                        (crate::shop::Outcome::Ok, Some(_)) => &counters.orders_accepted,
                        _ => &counters.order_errors,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }));
            }
            futures::future::join_all(placed).await;
        })
    };

    let edits = {
        let (shops, counters) = (shops.clone(), counters.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(EDIT_EVERY);
            let mut n = 0usize;
            while Instant::now() < until {
                ticks.tick().await;
                n += 1;
                let edit = shops[n % shops.len()].edit_product(&admin, edited, |product| {
                    let price = product["price_cents"].as_i64().unwrap_or(100);
                    product["price_cents"] = serde_json::json!(price + 1);
                });
                match edit.await {
                    Ok(()) => &counters.edits,
                    Err(_) => &counters.edit_errors,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let bar = spinner(&format!(
        "{name}: {readers} readers, {order_rate:.0} orders/s, warm-up {} s",
        warmup.as_secs()
    ));
    tokio::time::sleep_until(measure_from.into()).await;
    let metrics_before = metrics(&shops).await?;
    bar.set_message(format!(
        "{name}: {readers} readers, {order_rate:.0} orders/s, measuring {} s",
        measured.as_secs()
    ));
    let mut shown = Vec::new();
    for task in reader_tasks {
        shown.extend(task.await.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let metrics_after = metrics(&shops).await?;
    orders.await.map_err(|e| BenchError::Setup(e.to_string()))?;
    edits.await.map_err(|e| BenchError::Setup(e.to_string()))?;
    // A few more reference reads, so the last reads' newer versions (if
    // any) are bounded too.
    tokio::time::sleep(PROBE_EVERY * 4).await;
    stop_reference.store(true, Ordering::Relaxed);
    let references = tokio::task::spawn_blocking(move || reference.join())
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .map_err(|_| BenchError::Setup("the reference reader panicked".into()))??;
    bar.finish_and_clear();

    let measured_from = warmup;
    let measured_to = warmup + measured;
    Ok(judge(
        name,
        apis.len(),
        &shown,
        &references,
        (measured_from, measured_to),
        &counters,
        metrics_after.since(&metrics_before),
    ))
}

/// The cache counters of every API process, summed.
async fn metrics(shops: &[Shop]) -> Result<MetricsSnapshot, BenchError> {
    let mut total = MetricsSnapshot::default();
    for shop in shops {
        let m = shop.metrics().await?;
        total.cache_hits += m.cache_hits;
        total.cache_misses += m.cache_misses;
        total.catalog_db_loads += m.catalog_db_loads;
    }
    Ok(total)
}

fn judge(
    name: &str,
    api_processes: usize,
    shown: &[Shown],
    references: &[Vec<Reference>],
    (from, to): (Duration, Duration),
    counters: &Counters,
    cache: MetricsSnapshot,
) -> Scenario {
    let read_requests = counters.read_requests.load(Ordering::Relaxed);
    let mut behind_at_most = Latencies::new();
    let mut per_api = vec![(0, Latencies::new()); api_processes];
    let (mut certain, mut possible, mut at_all) = (0, 0, 0);
    let bound = STALE_AFTER.as_secs_f64();
    for read in shown {
        let verdict = behind(&references[read.product], read);
        let at_most = Duration::from_secs_f64(verdict.map_or(0.0, |b| b.at_most));
        behind_at_most.record(at_most);
        let api = &mut per_api[read.api];
        api.1.record(at_most);
        if let Some(b) = verdict {
            at_all += u64::from(b.at_least > 0.0);
            api.0 += u64::from(b.at_least > 0.0);
            certain += u64::from(b.at_least > bound);
            possible += u64::from(b.at_least <= bound && b.at_most > bound);
        }
    }
    let changes = references
        .iter()
        .map(|product| {
            let during = product
                .iter()
                .filter(|r| r.sent >= from && r.sent <= to)
                .map(|r| r.version);
            match (during.clone().min(), during.max()) {
                (Some(low), Some(high)) => (high - low) as u64,
                _ => 0,
            }
        })
        .sum();
    let gaps = references.first().map_or(0.0, |product| {
        product
            .windows(2)
            .map(|w| (w[1].sent - w[0].sent).as_secs_f64() * 1e3)
            .fold(0.0, f64::max)
    });
    Scenario {
        name: name.to_owned(),
        api_processes,
        reads: shown.len() as u64,
        read_errors: counters.read_errors.load(Ordering::Relaxed),
        orders_accepted: counters.orders_accepted.load(Ordering::Relaxed),
        order_errors: counters.order_errors.load(Ordering::Relaxed),
        admin_edits: counters.edits.load(Ordering::Relaxed),
        edit_errors: counters.edit_errors.load(Ordering::Relaxed),
        changes,
        stale_certain: certain,
        stale_possible: possible,
        behind_at_all: at_all,
        behind_at_most: behind_at_most.summary(),
        behind_at_most_percentiles: behind_at_most.percentile_curve(),
        per_api: per_api
            .into_iter()
            .map(|(at_all, latencies)| ApiBehind {
                reads: latencies.count(),
                behind_at_all: at_all,
                behind_at_most: latencies.summary(),
            })
            .collect(),
        read_requests,
        cache_hit_ratio: ratio(cache.cache_hits, cache.cache_hits + cache.cache_misses),
        served_without_database: 1.0 - ratio(cache.catalog_db_loads, read_requests as f64).min(1.0),
        reference_reads: references.first().map_or(0, |p| p.len() as u64),
        reference_gap_max_ms: gaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn reference(sent: u64, version: i64) -> Reference {
        Reference {
            sent: ms(sent),
            answered: ms(sent + 1),
            version,
        }
    }

    fn shown(sent: u64, answered: u64, version: i64) -> Shown {
        Shown {
            api: 0,
            product: 0,
            version,
            sent: ms(sent),
            answered: ms(answered),
        }
    }

    #[test]
    fn a_read_is_bounded_by_the_reference_reads_around_the_next_change() {
        // Version 2 committed between 10 ms (still 1) and 16 ms (2 answered).
        let refs = [
            reference(0, 1),
            reference(5, 1),
            reference(10, 1),
            reference(15, 2),
            reference(20, 3),
        ];
        // Showing 1 at 200–202 ms: behind by 200 − 16 = 184 ms at least,
        // by 202 − 10 = 192 ms at most.
        let b = behind(&refs, &shown(200, 202, 1)).unwrap();
        assert!((b.at_least - 0.184).abs() < 1e-9, "{b:?}");
        assert!((b.at_most - 0.192).abs() < 1e-9, "{b:?}");
        // Showing 1 at 12–13 ms: the change may not have committed yet.
        let b = behind(&refs, &shown(12, 13, 1)).unwrap();
        assert_eq!(b.at_least, 0.0);
        assert!((b.at_most - 0.003).abs() < 1e-9, "{b:?}");
        // Showing the newest version: never behind.
        assert_eq!(behind(&refs, &shown(300, 301, 3)), None);
        // Showing 2 after 3 appeared: bounded by 3's reference reads.
        let b = behind(&refs, &shown(50, 51, 2)).unwrap();
        assert!((b.at_least - 0.029).abs() < 1e-9, "{b:?}");
        assert!((b.at_most - 0.036).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn stale_reads_are_counted_certain_or_possible_and_changes_are_counted() {
        let refs = vec![vec![
            reference(0, 1),
            reference(100, 1),
            reference(150, 2),
            reference(400, 2),
            reference(405, 4),
        ]];
        let reads = [
            shown(120, 121, 1), // fresh enough
            shown(300, 301, 1), // behind 149..201 ms: certain
            shown(252, 252, 1), // behind 101..152 ms: certain
            shown(240, 260, 1), // behind 89..160 ms: possible only
            shown(500, 501, 4), // newest
        ];
        let counters = Counters::default();
        counters.read_requests.store(4, Ordering::Relaxed);
        let s = judge(
            "t",
            1,
            &reads,
            &refs,
            (ms(0), ms(1_000)),
            &counters,
            MetricsSnapshot {
                cache_hits: 99.0,
                cache_misses: 1.0,
                catalog_db_loads: 1.0,
                ..MetricsSnapshot::default()
            },
        );
        assert_eq!((s.stale_certain, s.stale_possible), (2, 1), "{s:?}");
        assert_eq!(s.behind_at_all, 3, "{s:?}");
        assert_eq!(s.per_api.len(), 1);
        assert_eq!((s.per_api[0].reads, s.per_api[0].behind_at_all), (5, 3));
        assert_eq!(s.reads, 5);
        assert_eq!(s.changes, 3, "versions 1 → 4 during the run");
        assert!((s.cache_hit_ratio - 0.99).abs() < 1e-9);
        assert!((s.served_without_database - 0.75).abs() < 1e-9, "{s:?}");
        assert!((s.reference_gap_max_ms - 250.0).abs() < 1e-9, "{s:?}");
        assert!(s.behind_at_most.max_ms >= 200.0, "{s:?}");
    }
}
