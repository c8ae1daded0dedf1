//! Criterion micro-benchmarks of orderflow's hot paths (issue 4).
//!
//! Run with `cargo bench -p orderflow --bench hot_paths` (add a filter such
//! as `-- catalog/` to run one group). Everything that touches storage runs
//! against a real [`SqliteStore`](orderflow_adapters::sqlite::SqliteStore)
//! (WAL, the production pool settings) in a fresh temporary data dir, wired
//! by [`App::build`] exactly as `orderflow serve` wires it, on a multi-thread
//! tokio runtime; the Prometheus recorder is installed, so metric updates on
//! these paths are paid for as in production. The whole run is sized to
//! finish in a couple of minutes on a 2-core machine.
//!
//! What each group measures, and why it matters:
//!
//! - `catalog/product_l1_hit`: `CatalogService::product` on a warm key, served
//!   from the in-process moka cache (a lookup, a counter bump and a clone of
//!   the product). Every product page, and every line of every order in the
//!   default architecture, is priced through this read.
//!   `catalog/product_cache_off`: the same read with the cache off
//!   (`ORDERFLOW_CACHE=off`, the notes' version 1), i.e. one SQLite query per
//!   read; the ratio of the two is what the cache buys per read.
//! - `auth/authenticate`: `AuthService::authenticate` on a valid access
//!   token: header decode, signature check with the key its `kid` names (the
//!   algorithm of the key set in the data dir; the bench prints which),
//!   `iss`/`aud`/`exp`/`nbf` checks, then the revocation check against
//!   `DbBackedRevocations`, which holds 1,000 other revoked tokens (an empty
//!   map would skip hashing the lookup key). Every authenticated request pays
//!   this before its handler runs.
//! - `order/validate_and_price/{1,20}`: `order::validate_request` followed by
//!   `order::price` for a 1-line and a 20-line order (pure domain code, no
//!   IO). Linear work per line plus the repeated-product merge, which is
//!   quadratic in the number of lines; throughput is in order lines.
//! - `envelope/to_bytes` and `envelope/from_slice`: encoding and decoding a
//!   structured-mode CloudEvents envelope of an `OrderPlaced` with three
//!   lines. Every event is encoded once when appended and decoded once per
//!   consumer group that reads it (eight groups read `order.events`), so the
//!   decode side is multiplied; throughput is in bytes of JSON.
//! - `event_log/append_one`: `Store::begin`, `StoreTx::append` of one event,
//!   `commit`: the outbox write every order placement and every consumer
//!   effect ends with (writer lock, `BEGIN IMMEDIATE`, offset bump, insert,
//!   `COMMIT`), minus the business rows.
//! - `event_log/subscribe_poll32_commit`: `SqliteEventLog::subscribe` of a
//!   new group, `poll` of a batch of 32 (the whole topic, spread over the six
//!   partitions) and `commit` of the offsets: a consumer's start plus one
//!   batch. `event_log/poll32_commit`: the same without the `subscribe`
//!   (done outside the timer), i.e. the steady-state cost of one consumer
//!   batch apart from its handlers. Throughput is in events.
//! - `consumer/loyalty/{group_commit,one_per_transaction}`: one member of
//!   the `loyalty` group (no provider call, so the database is the whole
//!   cost) consuming 256 freshly appended `OrderConfirmed` events of 32
//!   shoppers with [`Consumer::process_batch`](orderflow_workers::Consumer::process_batch)
//!   until all are committed: its effects written by group commits of up to
//!   64 (the default), against one transaction per delivery
//!   (`ORDERFLOW_GROUP_COMMIT_MAX=1`, what every delivery cost before group
//!   commit). Throughput is in deliveries.
//! - `http/product_read`, `http/healthz` and `http/bare`: one request
//!   through the router `orderflow serve` serves, every middleware layer
//!   included, with the binary's tracing subscriber at its default level,
//!   the Prometheus recorder and the read ceiling's generous catalog
//!   rate-limit policy (looked up, never refusing): a product read served
//!   from L1, and `/healthz`. `http/bare` is an axum router with one route
//!   answering the same bytes and no middleware. No socket and no HTTP
//!   parsing: what `orderflow bench --read-ceiling` measures with the
//!   network, minus the kernel's and hyper's share, so a change to the
//!   stack shows here without the noise of a load generator sharing the
//!   cores. `http/…/all_cores` sends the same requests from every worker
//!   of the runtime at once: per request of the whole, so perfect scaling
//!   reads one over the number of cores of the single-core figure, and what
//!   it reads above that is what the cores' shared state costs. This group
//!   installs the global subscriber, so it runs last.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orderflow::App;
use orderflow::cli::Cli;
use orderflow_core::services::catalog::{CacheSettings, CatalogService, ViewerKey};
use orderflow_domain::events::{Envelope, EventData, topics};
use orderflow_domain::money::Currency;
use orderflow_domain::order::{self, OrderLine, RequestedLine};
use orderflow_domain::product::{Product, ProductDraft};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// The binary's allocator, so allocation costs what it costs in `serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "a long enough password for benches";
/// Events in the topic the read benches consume: exactly one batch.
const BATCH: usize = 32;
/// Other revoked tokens held by the revocation list in the auth bench.
const REVOKED: usize = 1_000;

/// The runtime `orderflow serve` uses: multi-thread, IO and time enabled.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Settings as `orderflow serve` parses them, with the data (and so the
/// SQLite file and the signing keys) in `dir`.
fn settings(dir: &Path) -> orderflow::Settings {
    let dir = dir.to_str().expect("temp dir path is UTF-8");
    Cli::try_parse_from([
        "orderflow",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        // Keep warm keys warm for the whole run, whatever its length.
        "--cache-ttl-secs",
        "3600",
        "serve",
    ])
    .expect("bench settings parse")
    .settings
}

/// A fully wired app over a fresh SQLite file in its own temp dir.
async fn fresh_app() -> (TempDir, App) {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = App::build(settings(dir.path())).await.expect("app builds");
    (dir, app)
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR is a currency")
}

/// `n` catalog products as the domain sees them (no IO).
fn products(n: usize) -> Vec<Product> {
    (0..n)
        .map(|i| Product {
            id: uuid::Uuid::now_v7(),
            sku: format!("BENCH-{i:04}"),
            name: format!("Bench product {i}"),
            price_cents: 499 + 100 * i as i64,
            currency: eur(),
            stock: 1_000,
            description: String::new(),
            category: None,
            updated_at: chrono::Utc::now(),
            version: 1,
        })
        .collect()
}

/// An `OrderPlaced` event of `user_id` with `lines` lines.
fn order_placed(user_id: uuid::Uuid, lines: usize) -> Envelope {
    let items: Vec<OrderLine> = products(lines)
        .into_iter()
        .map(|p| OrderLine {
            product_id: p.id,
            sku: p.sku,
            name: p.name,
            quantity: 2,
            unit_price_cents: p.price_cents,
            line_total_cents: 2 * p.price_cents,
        })
        .collect();
    let total_cents = items.iter().map(|l| l.line_total_cents).sum();
    Envelope::new(
        EventData::OrderPlaced {
            order_id: uuid::Uuid::now_v7(),
            user_id,
            items,
            total_cents,
            currency: "EUR".into(),
        },
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    )
}

fn catalog(c: &mut Criterion) {
    let rt = runtime();
    let (dir, app, id, cache_off) = rt.block_on(async {
        let (dir, app) = fresh_app().await;
        let draft = ProductDraft::new("BENCH-1", "Bench product", 1_999, "EUR", 1_000)
            .expect("valid draft");
        let product = app.catalog.create(draft).await.expect("product created");
        // What `App::build` makes with `--cache off`, over the same store.
        let cache_off = CatalogService::new(
            app.store.clone(),
            &CacheSettings {
                enabled: false,
                ..CacheSettings::default()
            },
        );
        // Warm the key.
        let warm = app.catalog.product(product.id).await.expect("read");
        assert_eq!(warm.as_ref().map(|p| p.id), Some(product.id));
        (dir, app, product.id, cache_off)
    });

    let mut group = c.benchmark_group("catalog");
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(3));
    let cached = &app.catalog;
    group.bench_function("product_l1_hit", |b| {
        b.to_async(&rt).iter(|| async move {
            cached
                .product(black_box(id))
                .await
                .expect("read")
                .expect("product exists")
        })
    });
    // What a product read adds for the views: the reader's digest (address
    // and a typical User-Agent) and the count in memory, among 1,000
    // readers.
    let user_agent: &[u8] =
        b"Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
    let mut reader = 0_u32;
    group.bench_function("record_view", |b| {
        b.iter(|| {
            reader = (reader + 1) % 1000;
            let address = std::net::IpAddr::from(reader.to_be_bytes());
            cached.record_view(black_box(id), ViewerKey::of(address, user_agent));
        })
    });
    let uncached = &cache_off;
    group.bench_function("product_cache_off", |b| {
        b.to_async(&rt).iter(|| async move {
            uncached
                .product(black_box(id))
                .await
                .expect("read")
                .expect("product exists")
        })
    });
    group.finish();

    rt.block_on(async move { drop((app, cache_off, dir)) });
}

fn auth(c: &mut Criterion) {
    let rt = runtime();
    let (dir, app, token) = rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        // First start: migrate, and revoke other tokens in the database...
        {
            let app = App::build(settings(dir.path())).await.expect("app builds");
            let expires_at = chrono::Utc::now() + chrono::TimeDelta::hours(1);
            for i in 0..REVOKED {
                app.store
                    .insert_revocation(&format!("revoked-{i}"), expires_at)
                    .await
                    .expect("revocation stored");
            }
        }
        // ...so that the second start's `DbBackedRevocations::load` holds them
        // in memory, as a long-running process would.
        let app = App::build(settings(dir.path()))
            .await
            .expect("app rebuilds");
        app.auth
            .register("bench@example.com", PASSWORD, "Bench")
            .await
            .expect("register");
        let pair = app
            .auth
            .login(
                "bench@example.com",
                PASSWORD,
                Some("bench"),
                Some("127.0.0.1"),
            )
            .await
            .expect("login");
        let alg = jsonwebtoken::decode_header(&pair.access_token)
            .expect("token header")
            .alg;
        eprintln!("auth/authenticate: access tokens are signed with {alg:?}");
        (dir, app, pair.access_token)
    });

    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(3));
    let service = &app.auth;
    let token = token.as_str();
    group.bench_function("authenticate", |b| {
        b.to_async(&rt).iter(|| async move {
            service
                .authenticate(black_box(token))
                .await
                .expect("token is valid")
        })
    });
    group.finish();

    rt.block_on(async move { drop((app, dir)) });
}

fn order_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("order");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(2));
    for lines in [1_usize, 20] {
        let catalog: HashMap<_, _> = products(lines).into_iter().map(|p| (p.id, p)).collect();
        let request: Vec<RequestedLine> = catalog
            .keys()
            .enumerate()
            .map(|(i, id)| RequestedLine {
                product_id: *id,
                quantity: 1 + (i as i64 % 3),
            })
            .collect();
        group.throughput(Throughput::Elements(lines as u64));
        group.bench_with_input(
            BenchmarkId::new("validate_and_price", lines),
            &(request, catalog),
            |b, (request, catalog)| {
                b.iter(|| {
                    let merged = order::validate_request(black_box(request)).expect("valid");
                    order::price(&merged, black_box(catalog)).expect("priced")
                })
            },
        );
    }
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let event = order_placed(uuid::Uuid::now_v7(), 3);
    let bytes = event.to_bytes();
    assert_eq!(Envelope::from_slice(&bytes).expect("decodes"), event);

    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("to_bytes", |b| b.iter(|| black_box(&event).to_bytes()));
    group.bench_function("from_slice", |b| {
        b.iter(|| Envelope::from_slice(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

fn event_log(c: &mut Criterion) {
    let rt = runtime();
    let ((write_dir, writer), (read_dir, reader)) = rt.block_on(async {
        let writer = fresh_app().await;
        // The read side gets its own database, holding exactly one batch on
        // `order.events`, from 32 shoppers (so spread over the partitions).
        let reader = fresh_app().await;
        let events: Vec<Envelope> = (0..BATCH)
            .map(|_| order_placed(uuid::Uuid::now_v7(), 3))
            .collect();
        let mut tx = reader.1.store.begin().await.expect("begin");
        tx.append(&events).await.expect("append");
        tx.commit().await.expect("commit");
        (writer, reader)
    });

    let mut group = c.benchmark_group("event_log");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(4));

    group.throughput(Throughput::Elements(1));
    let store = &writer.store;
    let template = order_placed(uuid::Uuid::now_v7(), 3);
    let template = &template;
    group.bench_function("append_one", |b| {
        b.to_async(&rt).iter(|| async move {
            let mut event = template.clone();
            event.id = uuid::Uuid::now_v7();
            let mut tx = store.begin().await.expect("begin");
            tx.append(std::slice::from_ref(&event))
                .await
                .expect("append");
            tx.commit().await.expect("commit");
        })
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    let log = &reader.log;
    // A new group per iteration, so each one reads the same 32 events from
    // offset 0.
    let groups = AtomicU64::new(0);
    let groups = &groups;
    let new_group = move || format!("bench-{}", groups.fetch_add(1, Ordering::Relaxed));
    group.bench_function("subscribe_poll32_commit", |b| {
        b.to_async(&rt).iter(|| async move {
            let mut subscription = log
                .subscribe(&new_group(), &[topics::ORDER_EVENTS])
                .await
                .expect("subscribe");
            let batch = subscription
                .poll(BATCH, Duration::ZERO)
                .await
                .expect("poll");
            assert_eq!(batch.len(), BATCH);
            subscription.commit(&batch).await.expect("commit");
        })
    });
    group.bench_function("poll32_commit", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                let mut subscription = log
                    .subscribe(&new_group(), &[topics::ORDER_EVENTS])
                    .await
                    .expect("subscribe");
                let start = Instant::now();
                let batch = subscription
                    .poll(BATCH, Duration::ZERO)
                    .await
                    .expect("poll");
                subscription.commit(&batch).await.expect("commit");
                measured += start.elapsed();
                assert_eq!(batch.len(), BATCH);
            }
            measured
        })
    });
    group.finish();

    rt.block_on(async move { drop((writer, write_dir, reader, read_dir)) });
}

/// Events one iteration of the consumer benches consumes.
const CONSUMED: usize = 256;

fn consumer(c: &mut Criterion) {
    use orderflow_core::ports::store::UserRecord;
    use orderflow_workers::{ConsumerSettings, runtime::DEFAULT_GROUP_COMMIT_MAX};

    let rt = runtime();
    let (dir, app) = rt.block_on(fresh_app());
    let shoppers: Vec<uuid::Uuid> = rt.block_on(async {
        let mut tx = app.store.begin().await.expect("begin");
        let mut ids = Vec::new();
        for i in 0..32 {
            let user = UserRecord {
                id: uuid::Uuid::now_v7(),
                email: format!("consumer-bench-{i}@example.com"),
                name: format!("Shopper {i}"),
                password_hash: "not used".into(),
                role: orderflow_domain::user::Role::Shopper,
                created_at: chrono::Utc::now(),
            };
            tx.insert_user(&user).await.expect("insert user");
            ids.push(user.id);
        }
        tx.commit().await.expect("commit");
        ids
    });
    let confirmed = |user_id: uuid::Uuid| {
        let EventData::OrderPlaced {
            order_id,
            items,
            total_cents,
            currency,
            ..
        } = order_placed(user_id, 2).data
        else {
            unreachable!("order_placed builds an OrderPlaced")
        };
        Envelope::new(
            EventData::OrderConfirmed {
                order_id,
                user_id,
                items,
                total_cents,
                currency,
            },
            None,
        )
    };

    let mut group = c.benchmark_group("consumer");
    group.throughput(Throughput::Elements(CONSUMED as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (name, group_commit_max) in [
        ("loyalty/group_commit", DEFAULT_GROUP_COMMIT_MAX),
        ("loyalty/one_per_transaction", 1),
    ] {
        let member = rt.block_on(async {
            app.workers
                .consumer("loyalty")
                .await
                .expect("subscribe")
                .with_settings(ConsumerSettings {
                    group_commit_max,
                    ..ConsumerSettings::default()
                })
        });
        let member = tokio::sync::Mutex::new(member);
        let (member, store, shoppers, confirmed) = (&member, &app.store, &shoppers, &confirmed);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut member = member.lock().await;
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    let events: Vec<Envelope> = (0..CONSUMED)
                        .map(|i| confirmed(shoppers[i % shoppers.len()]))
                        .collect();
                    let mut tx = store.begin().await.expect("begin");
                    tx.append(&events).await.expect("append");
                    tx.commit().await.expect("commit");
                    let start = Instant::now();
                    let mut finished = 0;
                    while finished < CONSUMED {
                        let report = member.process_batch(Duration::ZERO).await.expect("consume");
                        finished += report.finished();
                    }
                    measured += start.elapsed();
                    assert_eq!(finished, CONSUMED);
                }
                measured
            })
        });
    }
    group.finish();
    rt.block_on(async move { drop((app, dir)) });
}

fn http(c: &mut Criterion) {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt as _;

    /// A GET from a loopback client, as `serve` hands it to the router.
    fn request(path: &str) -> axum::http::Request<axum::body::Body> {
        let mut request = axum::http::Request::get(path)
            .header(axum::http::header::HOST, "127.0.0.1")
            .body(axum::body::Body::empty())
            .expect("request");
        request
            .extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40_000,
            ))));
        request
    }

    /// One request of `path` through `service`, answered 200.
    fn bench_answer<S: orderflow_api::HttpService>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        rt: &Runtime,
        name: &str,
        service: &S,
        path: &str,
    ) {
        group.bench_function(name, |b| b.to_async(rt).iter(|| answered(service, path)));
    }

    /// `service`'s answer to a GET of `path`, checked to be a 200.
    async fn answered<S: orderflow_api::HttpService>(
        service: &S,
        path: &str,
    ) -> axum::response::Response {
        let answer = service
            .clone()
            .oneshot(request(path))
            .await
            .expect("the service answers");
        assert_eq!(answer.status(), axum::http::StatusCode::OK);
        answer
    }

    /// The same request from every worker of `rt` at once (one task per
    /// worker, `iters` requests in all): on a machine's cores, what the
    /// stack's shared state (locks, counters, reference counts that both
    /// cores write) costs, which one core alone never pays. The time is per
    /// request of the whole, so perfect scaling reads 1 / workers of the
    /// one-core figure.
    fn bench_parallel<S: orderflow_api::HttpService>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        rt: &Runtime,
        name: &str,
        service: &S,
        path: &str,
    ) {
        let workers = rt.metrics().num_workers() as u64;
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let service = service.clone();
                let path = path.to_owned();
                async move {
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..workers)
                        .map(|worker| {
                            let (service, path) = (service.clone(), path.clone());
                            let share = iters / workers + u64::from(worker < iters % workers);
                            tokio::spawn(async move {
                                for _ in 0..share {
                                    black_box(answered(&service, &path).await);
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("a bench task");
                    }
                    started.elapsed()
                }
            })
        });
    }

    let rt = runtime();
    let _telemetry = orderflow::telemetry::init(orderflow::settings::LogFormat::Text, "api");
    let (dir, app, id, body) = rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = settings(dir.path());
        settings.rate_limits = orderflow_bench::ceiling::GENEROUS_CATALOG_POLICY.to_owned();
        let app = App::build(settings).await.expect("app builds");
        let draft = ProductDraft::new("BENCH-1", "Bench product", 1_999, "EUR", 1_000)
            .expect("valid draft");
        let product = app.catalog.create(draft).await.expect("product created");
        let answer = app
            .router()
            .oneshot(request(&format!("/api/v1/products/{}", product.id)))
            .await
            .expect("the router answers");
        assert_eq!(answer.status(), axum::http::StatusCode::OK);
        let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .expect("body");
        (dir, app, product.id, body)
    });
    let router = app.router();
    let bare = axum::Router::new().route(
        "/bare",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );

    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(3));
    let product_path = format!("/api/v1/products/{id}");
    bench_answer(&mut group, &rt, "product_read", &router, &product_path);
    bench_answer(&mut group, &rt, "healthz", &router, "/healthz");
    bench_answer(&mut group, &rt, "bare", &bare, "/bare");
    bench_parallel(
        &mut group,
        &rt,
        "product_read/all_cores",
        &router,
        &product_path,
    );
    bench_parallel(&mut group, &rt, "healthz/all_cores", &router, "/healthz");
    bench_parallel(&mut group, &rt, "bare/all_cores", &bare, "/bare");
    group.finish();

    rt.block_on(async move { drop((router, app, dir)) });
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = catalog, auth, order_validation, envelope, event_log, consumer, http
}
criterion_main!(hot_paths);
