//! Request collapsing, checked through the database-query metric. This is its
//! own test binary (its own process), so no other test's queries share the
//! process-wide metrics recorder.

use clap::Parser;
use orderflow::App;
use orderflow::cli::Cli;
use orderflow_domain::product::ProductDraft;

async fn app(cache: &str) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::try_parse_from([
        "orderflow",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--cache",
        cache,
        "serve",
    ])
    .unwrap();
    (App::build(cli.settings).await.unwrap(), dir)
}

/// `orderflow_db_queries_total{op="product"}` as the app exports it.
fn product_queries(app: &App) -> f64 {
    app.state
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("orderflow_db_queries_total") && l.contains("op=\"product\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn cache_collapses_concurrent_misses_and_cache_off_reads_the_database_every_time() {
    // With the cache: 50 concurrent reads of a cold key make one query,
    // and further reads make none.
    let (cached, _dir1) = app("on").await;
    let product = cached
        .catalog
        .create(ProductDraft::new("BURST-1", "Burst", 100, "EUR", 1).unwrap())
        .await
        .unwrap();
    let before = product_queries(&cached);
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
