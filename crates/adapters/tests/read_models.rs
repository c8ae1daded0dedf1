//! The Redis read models against real `redis-server`s, standalone and a
//! three-master cluster, each plain and secured (TLS only, as the shipped
//! ACL's `orderflow` user: the read models' Lua scripts use the most
//! commands): the contract scenarios
//! (`orderflow_core::contract::read_models`), live order-status messages
//! over pub/sub, the unique-viewer HyperLogLogs, and a flush, after which
//! reads answer `None` so callers fall back to the database.

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::redis::{RedisConnection, RedisReadModels, RedisViewerSketches};
use orderflow_core::contract;
use orderflow_core::ports::cache::CacheEvent;
use orderflow_core::ports::read_models::{HYPERLOGLOG_STANDARD_ERROR, ReadModels, ViewerSketches};
use orderflow_core::ports::store::{LeaderboardEntry, NotificationRecord};
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::OrderStatus;
use orderflow_testkit::redis::{RedisCluster, RedisServer};

use redis_support::{
    connect, connect_with, plain_cluster, plain_standalone, secured_cluster, secured_standalone,
};

macro_rules! scenarios {
    ($module:ident, $settings:path) => {
        mod $module {
            use super::*;

            async fn models() -> Arc<dyn ReadModels> {
                Arc::new(RedisReadModels::new(connect_with($settings())))
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn points_are_absolute() {
                contract::read_models::points_are_absolute(models().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn top_orders_and_ranks() {
                contract::read_models::top_orders_and_ranks(models().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn notifications_are_capped_and_newest_first() {
                contract::read_models::notifications_are_capped_and_newest_first(models().await)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sales_are_absolute() {
                contract::read_models::sales_are_absolute(models().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn viewer_sketches_count_distinct_ids() {
                sketches_count_distinct_ids(connect_with($settings())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn order_status_reaches_a_subscriber() {
                order_status_is_published(connect_with($settings())).await;
            }
        }
    };
}

scenarios!(standalone, plain_standalone);
scenarios!(cluster, plain_cluster);
scenarios!(tls_standalone, secured_standalone);
scenarios!(tls_cluster, secured_cluster);

/// The HyperLogLog sketches: 20,000 distinct visitor ids, added in chunks of
/// 1,000 (an event's most) and half of them added again (a replay), count
/// within three standard errors of 20,000; small sets come out exact; other
/// days and products are apart; `forget` empties them from a day on, or all.
async fn sketches_count_distinct_ids(conn: RedisConnection) {
    let sketches = RedisViewerSketches::new(conn, Duration::from_secs(8 * 24 * 3600));
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap();
    let (mug, cup) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let ids: Vec<String> = (0..20_000).map(|n| format!("{n:032x}")).collect();
    for chunk in ids.chunks(1000).chain(ids[..10_000].chunks(1000)) {
        sketches.add(today, mug, chunk).await.expect("PFADD");
    }
    sketches
        .add(yesterday, mug, &ids[..3])
        .await
        .expect("PFADD");
    sketches.add(today, cup, &[]).await.expect("nothing to add");
    let counted = sketches.count(today, mug).await.expect("PFCOUNT");
    let error = (counted as f64 - 20_000.0).abs() / 20_000.0;
    assert!(
        error <= 3.0 * HYPERLOGLOG_STANDARD_ERROR,
        "{counted} distinct of 20,000: {:.2}% off",
        error * 100.0
    );
    eprintln!(
        "HyperLogLog: {counted} of 20,000 ({:.2}% off)",
        error * 100.0
    );
    assert_eq!(sketches.count(yesterday, mug).await.unwrap(), 3);
    assert_eq!(sketches.count(today, cup).await.unwrap(), 0);
    sketches
        .forget(Some(today))
        .await
        .expect("forget from today");
    assert_eq!(sketches.count(today, mug).await.unwrap(), 0);
    assert_eq!(
        sketches.count(yesterday, mug).await.unwrap(),
        3,
        "before `from`"
    );
    sketches.forget(None).await.expect("forget all");
    assert_eq!(sketches.count(yesterday, mug).await.unwrap(), 0);
}

async fn order_status_is_published(conn: RedisConnection) {
    let models = RedisReadModels::new(conn.clone());
    let user = uuid::Uuid::now_v7();
    let order = uuid::Uuid::now_v7();
    let mut messages = conn
        .subscribe(&models.order_channel(user))
        .await
        .expect("subscribe");
    models
        .publish_order_status(user, order, OrderStatus::Confirmed)
        .await
        .expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .expect("the message arrives within 5 s")
        .expect("the subscription is open");
    let CacheEvent::Message(payload) = message else {
        panic!("expected a message, got {message:?}");
    };
    let payload: serde_json::Value = serde_json::from_str(&payload).expect("JSON");
    assert_eq!(payload["order_id"], order.to_string());
    assert_eq!(payload["status"], "confirmed");
}

async fn flushed_redis_sends_readers_to_the_database(flush: impl Fn(), url: &str) {
    let models = RedisReadModels::new(connect(url));
    let user = uuid::Uuid::now_v7();
    models
        .seed_leaderboard(&[LeaderboardEntry {
            user_id: user,
            name: "Ann".into(),
            points: 10,
            rank: 1,
        }])
        .await
        .expect("seed");
    let record = NotificationRecord {
        user_id: user,
        channel: Channel::Sms,
        kind: NotificationKind::OrderRejected,
        order_id: None,
        sent_at: contract::now(),
    };
    assert!(
        models
            .push_notification(&record, std::slice::from_ref(&record))
            .await
            .expect("push")
    );
    assert!(models.top(5).await.expect("top").is_some());
    assert!(
        models
            .recent_notifications(user, 5)
            .await
            .expect("read")
            .is_some()
    );
    flush();
    assert_eq!(models.top(5).await.expect("top"), None);
    // A point write after the flush does not make a one-shopper board answer.
    models
        .publish_points(user, "Ann", 20)
        .await
        .expect("publish");
    assert_eq!(models.top(5).await.expect("top"), None);
    assert_eq!(
        models.recent_notifications(user, 5).await.expect("read"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_standalone_sends_readers_to_the_database() {
    let server = RedisServer::start().expect("starting redis-server");
    let url = server.url();
    flushed_redis_sends_readers_to_the_database(|| server.flushall().expect("FLUSHALL"), &url)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_cluster_sends_readers_to_the_database() {
    let cluster = RedisCluster::start().expect("starting a Redis cluster");
    let url = cluster.url();
    flushed_redis_sends_readers_to_the_database(|| cluster.flushall().expect("FLUSHALL"), &url)
        .await;
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let models = RedisReadModels::new(connect("redis://127.0.0.1:1"));
    let started = std::time::Instant::now();
    assert!(models.top(5).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// `ShopperQueries` with read models: a miss reads the database and seeds
/// Redis, the next read is served by Redis (the database is changed behind
/// its back to tell them apart), and after a flush the database answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_read_redis_and_fall_back_to_the_database() {
    use orderflow_adapters::sqlite::SqliteStore;
    use orderflow_core::ports::store::Store;
    use orderflow_core::services::queries::ShopperQueries;

    let server = RedisServer::start().expect("starting redis-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
    let sqlite = SqliteStore::connect(&url, 4).await.expect("connect");
    sqlite.migrate().await.expect("migrate");
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let ann = contract::given_user(&store, "Ann").await;
    let add_points = |points: i64| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.expect("begin");
            tx.add_points(ann.id, points).await.expect("add points");
            tx.commit().await.expect("commit");
        }
    };
    add_points(30).await;
    let models = Arc::new(RedisReadModels::new(connect(&server.url())));
    let queries = ShopperQueries::new(store.clone()).with_read_models(models.clone());

    let first = queries.leaderboard(Some(5)).await.expect("leaderboard");
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].points, first[0].name.as_str()), (30, "Ann"));
    assert!(
        models.top(5).await.expect("top").is_some(),
        "the miss seeded Redis"
    );

    // Points the mirror never saw: Redis still says 30, so a 30 here proves
    // the read came from Redis.
    add_points(5).await;
    let cached = queries.leaderboard(Some(5)).await.expect("leaderboard");
    assert_eq!(cached[0].points, 30, "served by the read model");

    server.flushall().expect("FLUSHALL");
    let fresh = queries.leaderboard(Some(5)).await.expect("leaderboard");
    assert_eq!(fresh[0].points, 35, "after a flush the database answers");

    // Notifications: no list in Redis, so the database answers (empty).
    assert!(
        queries
            .notifications(ann.id, Some(10))
            .await
            .expect("notifications")
            .is_empty()
    );
}
