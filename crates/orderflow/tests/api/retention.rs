//! Retention (issue 16): with short horizons, rounds of orders keep every
//! table that only ever grew bounded, while processed marks outlive the
//! events they guard (a redelivered old event is still recognised).

use std::time::Duration;

use serde_json::json;
use sqlx::sqlite::SqlitePoolOptions;

use crate::helpers::spawn_app_with;

/// Rows of each table retention prunes: events, processed marks,
/// idempotency keys.
async fn counts(db: &sqlx::SqlitePool) -> [i64; 3] {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(db)
            .await
            .unwrap()
    };
    [
        count("SELECT COUNT(*) FROM event_log").await,
        count("SELECT COUNT(*) FROM processed_events").await,
        count("SELECT COUNT(*) FROM idempotency_keys").await,
    ]
}

#[tokio::test]
async fn short_retentions_keep_the_tables_bounded_and_marks_outlive_events() {
    let app = spawn_app_with(&[
        "--retain-events-secs",
        "1",
        "--retain-processed-secs",
        "3",
        "--retain-idempotency-secs",
        "1",
        "--prune-interval-secs",
        "0",
    ])
    .await;
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&app.app.settings.database_url())
        .await
        .unwrap();
    let shopper = app.shopper("Rana").await;
    let product = app.create_product("KEEP-1", 100, 1_000).await;

    let mut after_prune = Vec::new();
    let mut old_event = None;
    for round in 0..3 {
        for n in 0..5 {
            let key = format!("round-{round}-{n}");
            let body = json!({"items": [{"product_id": product.id, "quantity": 1}]});
            let placed = app.place_order(&shopper.token, Some(&key), &body).await;
            assert_eq!(placed.status(), 201);
        }
        app.drain().await;
        let before = counts(&db).await;
        assert!(before.iter().all(|n| *n > 0), "round {round}: {before:?}");
        if old_event.is_none() {
            let id: String = sqlx::query_scalar("SELECT event_id FROM event_log LIMIT 1")
                .fetch_one(&db)
                .await
                .unwrap();
            old_event = Some(uuid::Uuid::parse_str(&id).unwrap());
        }
        // Retention is about age: let this round's rows pass the events'
        // and keys' horizon (1 s), not the marks' (3 s).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let report = app.app.prune().await.unwrap();
        let after = counts(&db).await;
        eprintln!("round {round}: {before:?} -> {after:?} ({report:?})");
        assert_eq!(after[0], 0, "every group is past every event: all pruned");
        assert_eq!(after[2], 0, "idempotency keys older than 1 s: pruned");
        assert_eq!(report.events, before[0] as u64);
        if round == 0 {
            assert_eq!(after[1], before[1], "marks younger than 3 s stay");
            // The event is gone from the log; were it delivered again (a
            // consumer that crashed before committing), its mark says so.
            let event = old_event.unwrap();
            assert!(
                app.app.store.is_processed("email", event).await.unwrap()
                    || app
                        .app
                        .store
                        .is_processed("inventory", event)
                        .await
                        .unwrap()
            );
        }
        after_prune.push(after);
    }
    // Bounded: the marks of at most the last rounds stay; the first
    // round's are gone by the third pass.
    assert!(
        after_prune[2][1] < after_prune[0][1] + after_prune[1][1],
        "processed marks are pruned too: {after_prune:?}"
    );
}
