//! Request collapsing, refresh-ahead and the shop's pages answering from the
//! cache, checked through the metrics. This is its own test binary (its own process), so no other test's queries share
//! the process-wide metrics recorder, and its tests take turns.

use clap::Parser;
use orderflow::App;
use orderflow::cli::Cli;
use orderflow_domain::product::ProductDraft;

/// The metrics recorder is one per process: the tests here take turns, so
/// no test's reads move another's counters.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn app(cache: &str) -> (App, tempfile::TempDir) {
    app_with(&["--cache", cache]).await
}

async fn app_with(flags: &[&str]) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["orderflow", "--data-dir", dir.path().to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push("serve");
    let cli = Cli::try_parse_from(args).unwrap();
    (App::build(cli.settings).await.unwrap(), dir)
}

/// The sum of the series of `metric` that carry every one of `labels`, as
/// the app exports them.
fn metric(app: &App, metric: &str, labels: &[&str]) -> f64 {
    app.state
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A product written to the database directly, so no cache holds it (the
/// catalog's own create writes through to the cache).
async fn cold_product(app: &App, sku: &str) -> orderflow_domain::product::Product {
    app.store
        .insert_product(
            uuid::Uuid::now_v7(),
            &ProductDraft::new(sku, "Mug", 100, "EUR", 1).unwrap(),
            chrono::Utc::now(),
        )
        .await
        .unwrap()
}

/// `orderflow_db_queries_total{op="product"}`.
fn product_queries(app: &App) -> f64 {
    metric(app, "orderflow_db_queries_total", &["op=\"product\""])
}

#[tokio::test]
async fn cache_collapses_concurrent_misses_and_cache_off_reads_the_database_every_time() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // With the cache: 50 concurrent reads of a cold key make one query,
    // and further reads make none.
    let (cached, _dir1) = app("on").await;
    let product = cold_product(&cached, "BURST-1").await;
    let before = product_queries(&cached);
    let misses = || {
        metric(
            &cached,
            "orderflow_cache_misses_total",
            &["layer=\"l1\"", "kind=\"product\""],
        )
    };
    let collapsed = || {
        metric(
            &cached,
            "orderflow_cache_loads_collapsed_total",
            &["scope=\"in_process\""],
        )
    };
    let (misses_before, collapsed_before) = (misses(), collapsed());
    let reads: Vec<_> = (0..50)
        .map(|_| {
            let catalog = cached.catalog.clone();
            tokio::spawn(async move { catalog.product(product.id).await.unwrap().unwrap().id })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap(), product.id);
    }
    assert_eq!(
        product_queries(&cached) - before,
        1.0,
        "one query for a burst of 50 misses"
    );
    // Every miss but the one that loaded waited for that load, and is
    // counted as collapsed: misses − loads = collapsed loads.
    let burst_misses = misses() - misses_before;
    assert!(burst_misses >= 1.0);
    assert_eq!(
        collapsed() - collapsed_before,
        burst_misses - 1.0,
        "in-process collapses are counted"
    );
    for _ in 0..10 {
        cached.catalog.product(product.id).await.unwrap().unwrap();
    }
    assert_eq!(product_queries(&cached) - before, 1.0, "hits make no query");

    // Unknown ids are cached as misses too.
    let unknown = uuid::Uuid::now_v7();
    let before = product_queries(&cached);
    for _ in 0..5 {
        assert!(cached.catalog.product(unknown).await.unwrap().is_none());
    }
    assert_eq!(
        product_queries(&cached) - before,
        1.0,
        "a missing id is looked up once"
    );

    // Without the cache (the notes' version 1) every read is a query.
    let (uncached, _dir2) = app("off").await;
    let product = uncached
        .catalog
        .create(ProductDraft::new("BURST-2", "Burst", 100, "EUR", 1).unwrap())
        .await
        .unwrap();
    let before = product_queries(&uncached);
    for _ in 0..10 {
        uncached.catalog.product(product.id).await.unwrap().unwrap();
    }
    assert_eq!(
        product_queries(&uncached) - before,
        10.0,
        "cache off: one query per read"
    );
}

#[tokio::test]
async fn a_hot_product_is_refreshed_ahead_and_never_misses() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Entries live 1 s (+ up to 250 ms of jitter); a hot one is reloaded in
    // the last sixth of its life. Reads every 10 ms for 3 s span at least
    // two lifetimes: without refresh-ahead that is three misses or more.
    let (app, _dir) = app_with(&["--cache-ttl-secs", "1"]).await;
    let hot = cold_product(&app, "HOT-1").await;
    let misses = || {
        metric(
            &app,
            "orderflow_cache_misses_total",
            &["layer=\"l1\"", "kind=\"product\""],
        )
    };
    let refreshes = || metric(&app, "orderflow_cache_refresh_ahead_total", &[]);
    let (misses_before, refreshes_before) = (misses(), refreshes());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        app.catalog.product(hot.id).await.unwrap().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        refreshes() - refreshes_before >= 2.0,
        "reloaded ahead of expiry, once per lifetime"
    );
    assert_eq!(misses() - misses_before, 1.0, "only the first read missed");
}

/// The catalog's read queries: a product, a batch of products, a search,
/// the category list.
fn catalog_queries(app: &App) -> f64 {
    [
        "product",
        "products_by_ids",
        "search_products",
        "categories",
    ]
    .iter()
    .map(|op| {
        metric(
            app,
            "orderflow_db_queries_total",
            &[&format!("op=\"{op}\"")],
        )
    })
    .sum()
}

/// The catalog queries that loading `pages` (each must answer 200) made.
async fn catalog_queries_of(app: &App, base: &str, pages: &[String]) -> f64 {
    let before = catalog_queries(app);
    for page in pages {
        let response = reqwest::get(format!("{base}{page}")).await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        assert!(response.text().await.unwrap().contains("Kettle"), "{page}");
    }
    catalog_queries(app) - before
}

#[tokio::test]
async fn the_shops_product_and_category_pages_answer_from_the_cache() {
    let _turn = ONE_AT_A_TIME.lock().await;
    for (cache, cached) in [("on", true), ("off", false)] {
        let (app, _dir) = app_with(&["--cache", cache, "--listen", "127.0.0.1:0"]).await;
        let kettle = app
            .catalog
            .create(
                ProductDraft::new("PAGE-KETTLE", "Steel Kettle", 4_500, "EUR", 5)
                    .unwrap()
                    .described("Boils a litre.", Some("Kitchen"))
                    .unwrap(),
            )
            .await
            .unwrap();
        let listener = app.bind().await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = std::sync::Arc::new(app);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let (app, shutdown) = (app.clone(), shutdown.clone());
            async move { app.run(listener, false, shutdown).await }
        });
        let pages = [
            format!("/products/{}", kettle.id),
            "/category/Kitchen".to_owned(),
            "/search?q=kettle".to_owned(),
        ];
        let first = catalog_queries_of(&app, &base, &pages).await;
        assert!(
            first >= 1.0,
            "cache {cache}: the first loads read the catalog"
        );
        let again = catalog_queries_of(&app, &base, &pages).await;
        if cached {
            assert_eq!(
                again, 0.0,
                "cache on: loaded again, every page is a cache hit"
            );
        } else {
            assert!(again >= first, "cache off: every load reads the database");
        }
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
