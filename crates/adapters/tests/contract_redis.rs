//! The Redis adapters against real `redis-server`s: the port contract
//! scenarios (`orderflow_core::contract`) on a standalone server and on a
//! three-master cluster, each plain and secured (TLS only, as the shipped
//! ACL's `orderflow` user); then what the ACL and TLS must refuse; then
//! what only Redis can do wrong: being flushed, going down and coming back,
//! and several catalogs (several API processes) sharing one L2.
//!
//! The contract scenarios share one server of each kind per test binary
//! (each test has its own key prefix). Tests that stop, restart or flush
//! Redis, or need another ACL, start their own server.

mod redis_support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use orderflow_adapters::redis::{
    RedisCarts, RedisCheckError, RedisConnection, RedisPresence, RedisRateLimiter,
    RedisRevocations, RedisSettings, RedisSharedCache, RedisTls,
};
use orderflow_adapters::sqlite::SqliteStore;
use orderflow_core::contract;
use orderflow_core::ports::cache::{CacheError, CacheEvent, SharedCache};
use orderflow_core::ports::carts::Carts;
use orderflow_core::ports::presence::PresenceBoard;
use orderflow_core::ports::rate_limit::{Algorithm, RateLimiter, RatePolicy};
use orderflow_core::ports::revocations::RevocationList;
use orderflow_core::ports::store::Store;
use orderflow_core::services::catalog::{CacheSettings, CatalogService};
use orderflow_domain::product::{Product, ProductDraft};
use orderflow_testkit::pki::TestPki;
use orderflow_testkit::redis::{RedisSecurity, RedisServer, shared_secured_cluster};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use redis_support::{
    connect, connect_with, plain_cluster, plain_standalone, secured, secured_cluster,
    secured_standalone,
};

/// A migrated SQLite store in a new directory (the revocations' database).
async fn store() -> (TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
    let store = SqliteStore::connect(&url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    (dir, Arc::new(store))
}

/// One test per scenario of `contract::$module`, each given a new
/// `$adapter` (implementing `$port`) on a connection made from
/// `$settings()`.
macro_rules! redis_scenario {
    ($module:ident, $port:ident, $adapter:ident, $settings:path; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let adapter: Arc<dyn $port> = Arc::new($adapter::new(connect_with($settings())));
            contract::$module::$name(adapter).await;
        }
    )*};
}

/// A module `$module` of one test per scenario `orderflow_core::$scenarios!`
/// names (see [`redis_scenario`]).
macro_rules! redis_port {
    ($module:ident, $scenarios:ident, $port:ident, $adapter:ident, $settings:path) => {
        mod $module {
            use super::*;
            orderflow_core::$scenarios!(redis_scenario; $module, $port, $adapter, $settings);
        }
    };
}

/// One test per scenario and deployment (`standalone`, `cluster`, and the
/// same secured), `$settings` naming the function that gives the
/// deployment's settings.
macro_rules! per_deployment {
    ($deployment:ident, $settings:path) => {
        mod $deployment {
            use super::*;

            redis_port!(
                cache,
                cache_scenarios,
                SharedCache,
                RedisSharedCache,
                $settings
            );
            redis_port!(
                presence,
                presence_scenarios,
                PresenceBoard,
                RedisPresence,
                $settings
            );
            redis_port!(carts, cart_scenarios, Carts, RedisCarts, $settings);
            redis_port!(
                rate_limit,
                rate_limit_scenarios,
                RateLimiter,
                RedisRateLimiter,
                $settings
            );

            mod revocations {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn revoke_and_check() {
                    let (_dir, store) = store().await;
                    let list = Arc::new(RedisRevocations::new(
                        connect_with($settings()),
                        store.clone(),
                    ));
                    contract::revocations::revoke_and_check(list, store).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn entries_follow_the_token_expiry() {
                    let (_dir, store) = store().await;
                    let list = Arc::new(RedisRevocations::new(connect_with($settings()), store));
                    contract::revocations::entries_follow_the_token_expiry(list).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn a_new_instance_remembers() {
                    let (_dir, store) = store().await;
                    let conn = connect_with($settings());
                    let first = Arc::new(RedisRevocations::new(conn.clone(), store.clone()));
                    contract::revocations::a_new_instance_remembers(first, || async move {
                        Arc::new(RedisRevocations::new(conn, store)) as Arc<dyn RevocationList>
                    })
                    .await;
                }
            }
        }
    };
}

per_deployment!(standalone, plain_standalone);
per_deployment!(cluster, plain_cluster);
per_deployment!(tls_standalone, secured_standalone);
per_deployment!(tls_cluster, secured_cluster);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_connections_know_they_are_clustered() {
    assert!(connect_with(plain_cluster()).is_cluster());
    assert!(!connect_with(plain_standalone()).is_cluster());
}

// --- TLS and the ACL: what they let through, what they refuse ---

/// Whether `result` is Redis's `NOPERM` (the error printed when not).
fn is_noperm<T: std::fmt::Debug>(result: redis::RedisResult<T>) -> bool {
    match result {
        Err(error) if error.code() == Some("NOPERM") => true,
        Err(error) => {
            eprintln!("not NOPERM: {error:?}");
            false
        }
        Ok(value) => panic!("allowed, answered {value:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_acl_user_passes_the_start_up_check_and_the_check_leaves_nothing() {
    for (settings, cluster) in [(secured_standalone(), false), (secured_cluster(), true)] {
        let conn = connect_with(settings);
        conn.check_permissions()
            .await
            .unwrap_or_else(|e| panic!("cluster {cluster}: {e}"));
        let admin = if cluster {
            shared_secured_cluster().nodes()
        } else {
            std::slice::from_ref(orderflow_testkit::redis::shared_secured_standalone())
        };
        for node in admin {
            let pattern = format!("{}*", conn.prefix());
            let keys = node.cli(&["--scan", "--pattern", &pattern]).unwrap();
            assert_eq!(keys.trim(), "", "the probe keys were deleted");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_acl_user_cannot_flush_reconfigure_or_leave_its_prefix() {
    // The standalone server and each node of the cluster, each as one
    // server (a cluster client would merge the nodes' answers to KEYS and
    // lose their errors).
    let standalone = orderflow_testkit::redis::shared_secured_standalone();
    let servers = std::iter::once(standalone).chain(shared_secured_cluster().nodes());
    for server in servers {
        let conn = connect_with(secured(&server.url(), server.security().unwrap()));
        for command in [
            redis::cmd("FLUSHALL"),
            redis::cmd("FLUSHDB"),
            redis::cmd("CONFIG").arg("GET").arg("*").clone(),
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg("1")
                .clone(),
            redis::cmd("KEYS").arg("*").clone(),
            redis::cmd("SCRIPT").arg("FLUSH").clone(),
            redis::cmd("EVAL").arg("return 1").arg(0).clone(),
            redis::cmd("ACL").arg("LIST").clone(),
            redis::cmd("SHUTDOWN").arg("NOSAVE").clone(),
        ] {
            assert!(
                is_noperm(conn.query::<redis::Value>(&command).await),
                "{command:?} was allowed"
            );
        }
        // Keys and channels outside the prefix.
        assert!(is_noperm(
            conn.query::<redis::Value>(redis::cmd("GET").arg("someone-else:key"))
                .await
        ));
        assert!(is_noperm(conn.publish("someone-else:channel", "x").await));
        // The server is still up: nothing above ran.
        assert_eq!(server.cli(&["PING"]).unwrap().trim(), "PONG");
    }
    // What the user needs works, on both deployments.
    for conn in [
        connect_with(secured_standalone()),
        connect_with(secured_cluster()),
    ] {
        conn.query::<()>(redis::cmd("SET").arg(conn.key("k")).arg("v"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_lacking_a_command_fails_the_start_up_check_naming_it() {
    // PEXPIRETIME is sent only from inside a Lua script (revocations).
    let security = RedisSecurity::shipped()
        .and_then(|s| s.replacing("+pexpiretime", ""))
        .unwrap();
    let server = RedisServer::start_secured(security.clone()).unwrap();
    let conn = connect_with(secured(&server.url(), &security));
    conn.ping()
        .await
        .expect("logged in: only a command is missing");
    let error = conn.check_permissions().await.unwrap_err();
    assert!(
        matches!(&error, RedisCheckError::Denied { command, .. } if command == "PEXPIRETIME"),
        "{error}"
    );
    assert!(
        error.to_string().contains("may not run PEXPIRETIME"),
        "{error}"
    );

    // Keys under another pattern than the prefix: the first keyed command.
    let security = RedisSecurity::shipped()
        .and_then(|s| s.replacing("~orderflow:*", "~shop:*"))
        .unwrap();
    let server = RedisServer::start_secured(security.clone()).unwrap();
    let error = connect_with(secured(&server.url(), &security))
        .check_permissions()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RedisCheckError::Denied { command, detail } if command == "SET" && detail.contains("keys")),
        "{error}"
    );

    // A cluster whose user may not read the slot map: the client cannot
    // even find the nodes, and the check says why.
    let security = RedisSecurity::shipped()
        .and_then(|s| s.replacing("+cluster|slots", ""))
        .unwrap();
    let cluster = orderflow_testkit::redis::RedisCluster::start_secured(security.clone()).unwrap();
    let error = connect_with(secured(&cluster.url(), &security))
        .check_permissions()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RedisCheckError::Denied { command, .. } if command == "CLUSTER|SLOTS"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_servers_refuse_what_is_not_set_up_right() {
    let server = orderflow_testkit::redis::shared_secured_standalone();
    let security = server.security().unwrap();
    let url = server.url();
    let fails = async |settings: RedisSettings, what: &str| {
        let conn = connect_with(settings);
        assert!(conn.ping().await.is_err(), "{what}: answered");
        let error = conn.check_permissions().await.unwrap_err();
        println!("{what}: {error}");
        error
    };

    // Plain TCP to the TLS port.
    let plain = url.replacen("rediss://", "redis://", 1);
    fails(RedisSettings::from_url(&plain), "plain TCP").await;

    // A server certificate from a CA the client was not told to trust
    // (and the web PKI roots do not know the test CA either).
    let other = TestPki::generate().unwrap();
    let strangers = RedisTls::from_files(
        Some(&other.ca_cert()),
        Some(&security.pki().client_cert()),
        Some(&security.pki().client_key()),
    )
    .unwrap();
    let error = fails(
        RedisSettings::from_url(&url).with_tls(strangers),
        "another CA",
    )
    .await;
    assert!(!error.is_unreachable(), "a TLS failure is loud: {error}");
    let no_ca = RedisTls {
        ca_cert: None,
        ..secured(&url, security).tls
    };
    fails(
        RedisSettings::from_url(&url).with_tls(no_ca),
        "web PKI roots",
    )
    .await;

    // No client certificate for a server that requires one.
    let ca_only = RedisTls::from_files(Some(&security.pki().ca_cert()), None, None).unwrap();
    fails(
        RedisSettings::from_url(&url).with_tls(ca_only),
        "no client certificate",
    )
    .await;

    // A wrong password: refused, and not mistaken for Redis being down.
    let wrong = url.replacen(security.orderflow_user().1, "wrong", 1);
    let error = fails(secured(&wrong, security), "wrong password").await;
    assert!(!error.is_unreachable(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_only_tls_needs_just_the_ca() {
    let security = RedisSecurity::shipped().unwrap().without_client_certs();
    let server = RedisServer::start_secured(security.clone()).unwrap();
    let tls = RedisTls::from_files(Some(&security.pki().ca_cert()), None, None).unwrap();
    let conn = connect_with(RedisSettings::from_url(&server.url()).with_tls(tls));
    conn.check_permissions().await.unwrap();
    let cache = RedisSharedCache::new(conn);
    cache.set("k", b"v", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

// --- Redis flushed, down, back ---

/// How long a call may take while Redis is down: it must fail fast.
const FAST: Duration = Duration::from_secs(3);

/// Redis went down at `started`, and what was asked since failed fast.
fn assert_failed_fast(started: Instant) {
    assert!(
        started.elapsed() < FAST,
        "a dead Redis fails fast: {:?}",
        started.elapsed()
    );
}

/// The product `id` as `catalog` reads it; it exists.
async fn product_in(catalog: &CatalogService, id: uuid::Uuid) -> Product {
    catalog.product(id).await.unwrap().unwrap()
}

/// Waits (bounded) until the connection answers again: the first command
/// after a restart may still hit the dead connection and trigger the
/// reconnection.
async fn until_answering(conn: &RedisConnection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.ping().await.is_err() {
        assert!(Instant::now() < deadline, "Redis never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dbsize(server: &RedisServer) -> u64 {
    server
        .cli(&["DBSIZE"])
        .expect("DBSIZE")
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_are_rebuilt_from_the_database_after_a_flush() {
    let server = RedisServer::start().unwrap();
    let (_dir, store) = store().await;
    let list = RedisRevocations::new(connect(&server.url()), store.clone());
    list.revoke("a", contract::in_minutes(15)).await.unwrap();
    list.revoke("b", contract::in_minutes(15)).await.unwrap();
    // Revoked in another process that wrote only the database.
    store
        .insert_revocation("c", contract::in_minutes(15))
        .await
        .unwrap();
    assert!(list.is_revoked("a").await.unwrap());

    server.flushall().unwrap();
    assert_eq!(dbsize(&server), 0);
    assert!(
        list.is_revoked("b").await.unwrap(),
        "an empty Redis does not let a revoked token back in"
    );
    // The lookup rebuilt Redis: three tokens and sixteen shard markers.
    assert_eq!(dbsize(&server), 3 + 16);
    assert!(list.is_revoked("a").await.unwrap());
    assert!(list.is_revoked("c").await.unwrap());
    assert!(!list.is_revoked("d").await.unwrap());

    // A burst of lookups finding Redis empty at once: every answer right,
    // and Redis filled once more.
    server.flushall().unwrap();
    let list = Arc::new(list);
    let lookups: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .cycle()
        .take(40)
        .map(|jti| {
            let list = Arc::clone(&list);
            tokio::spawn(async move { (*jti, list.is_revoked(jti).await.unwrap()) })
        })
        .collect();
    for lookup in lookups {
        let (jti, revoked) = lookup.await.unwrap();
        assert_eq!(revoked, jti != "d", "{jti} during the rebuild");
    }
    assert_eq!(dbsize(&server), 3 + 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_are_answered_by_the_database_while_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let (_dir, store) = store().await;
    let list = RedisRevocations::new(connect(&server.url()), store.clone());
    list.revoke("before", contract::in_minutes(15))
        .await
        .unwrap();
    assert!(list.is_revoked("before").await.unwrap());

    server.stop();
    let started = Instant::now();
    assert!(
        list.is_revoked("before").await.unwrap(),
        "from the database"
    );
    list.revoke("during", contract::in_minutes(15))
        .await
        .expect("the database took it: the logout happened");
    assert!(list.is_revoked("during").await.unwrap());
    assert!(!list.is_revoked("never").await.unwrap());
    assert_failed_fast(started);

    // Back, empty: used again, and refilled from the database.
    server.restart().unwrap();
    assert!(list.is_revoked("during").await.unwrap());
    assert!(list.is_revoked("before").await.unwrap());
    assert_eq!(dbsize(&server), 2 + 16, "Redis was rebuilt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limiter_fails_open_or_closed_while_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let conn = connect(&server.url());
    let open = RedisRateLimiter::new(conn.clone());
    let closed = RedisRateLimiter::new(conn.clone()).fail_closed(true);
    let policy = RatePolicy {
        name: "login".into(),
        algorithm: Algorithm::FixedWindow {
            limit: 1,
            window: Duration::from_secs(60),
        },
    };
    assert!(open.check(&policy, "k").await.allowed);
    assert!(!open.check(&policy, "k").await.allowed, "the limit holds");

    server.stop();
    let started = Instant::now();
    assert!(open.check(&policy, "k").await.allowed, "fails open");
    assert!(!closed.check(&policy, "k").await.allowed, "fails closed");
    assert_failed_fast(started);

    server.restart().unwrap();
    until_answering(&conn).await;
    // Redis came back empty: a fresh budget, and limits apply again.
    assert!(open.check(&policy, "k").await.allowed);
    assert!(
        !open.check(&policy, "k").await.allowed,
        "used again without a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_reports_redis_down_and_recovers_with_its_subscriptions() {
    let mut server = RedisServer::start().unwrap();
    let conn = connect(&server.url());
    let cache = RedisSharedCache::new(conn.clone());
    cache.set("k", b"v", Duration::from_secs(60)).await.unwrap();
    let mut subscription = cache.subscribe("events").await.unwrap();

    server.stop();
    let started = Instant::now();
    assert!(matches!(
        cache.get("k").await,
        Err(CacheError::Unavailable(_))
    ));
    assert_failed_fast(started);

    server.restart().unwrap();
    until_answering(&conn).await;
    assert_eq!(
        cache.get("k").await.unwrap(),
        None,
        "back, empty, and used again"
    );
    // The subscription said when it was lost, came back by itself and says
    // it may have missed messages.
    for expected in [CacheEvent::Lost, CacheEvent::Resubscribed] {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("an event within 10 s");
        assert_eq!(event, Some(expected));
    }
    cache.publish("events", "after").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a message after the restart");
    assert_eq!(event, Some(CacheEvent::Message("after".into())));
}

/// The nodes of `cluster` where `channel` (a full name) has sharded
/// subscribers, and where it has classic ones.
fn subscribers_by_node(nodes: &[RedisServer], channel: &str) -> (Vec<usize>, Vec<usize>) {
    let count = |node: &RedisServer, command: &str| -> u64 {
        let out = node.cli(&["PUBSUB", command, channel]).unwrap();
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    };
    let on = |command: &str| -> Vec<usize> {
        (0..nodes.len())
            .filter(|&i| count(&nodes[i], command) > 0)
            .collect()
    };
    (on("SHARDNUMSUB"), on("NUMSUB"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_pubsub_uses_sharded_channels_spread_over_the_nodes() {
    let mut cluster = orderflow_testkit::redis::RedisCluster::start().unwrap();
    let conn = connect(&cluster.url());
    let cache = RedisSharedCache::new(conn.clone());
    assert_eq!(
        cache.pubsub_shards(),
        16,
        "busy streams spread over 16 channels"
    );
    let mut subscriptions = Vec::new();
    for k in 0..16 {
        subscriptions.push(cache.subscribe(&format!("live:{k}")).await.unwrap());
    }
    // Each channel has one sharded subscriber, on one node, and no classic
    // one anywhere; together they spread over the nodes (the names carry a
    // random prefix: all 16 on one node has a chance of 3 in 3^16).
    let mut nodes_used = std::collections::BTreeSet::new();
    for k in 0..16 {
        let channel = conn.key(&format!("channel:live:{k}"));
        let (sharded, classic) = subscribers_by_node(cluster.nodes(), &channel);
        assert_eq!(sharded.len(), 1, "{channel} on one shard: {sharded:?}");
        assert!(classic.is_empty(), "{channel} has classic subscribers");
        nodes_used.extend(sharded);
    }
    assert!(
        nodes_used.len() >= 2,
        "the 16 channels spread: {nodes_used:?}"
    );

    for k in [0, 7, 15] {
        cache
            .publish(&format!("live:{k}"), &format!("ring {k}"))
            .await
            .unwrap();
    }
    for k in [0, 7, 15] {
        let event = tokio::time::timeout(Duration::from_secs(5), subscriptions[k].next())
            .await
            .expect("a message within 5 s");
        assert_eq!(event, Some(CacheEvent::Message(format!("ring {k}"))));
    }

    // The node of `live:0` restarts: its subscriber hears the loss, is
    // subscribed again by itself and hears messages again.
    let channel = conn.key("channel:live:0");
    let (owner, _) = subscribers_by_node(cluster.nodes(), &channel);
    cluster.restart_node(owner[0]).unwrap();
    for expected in [CacheEvent::Lost, CacheEvent::Resubscribed] {
        let event = tokio::time::timeout(Duration::from_secs(15), subscriptions[0].next())
            .await
            .expect("an event within 15 s");
        assert_eq!(event, Some(expected));
    }
    assert_eq!(subscribers_by_node(cluster.nodes(), &channel).0, owner);
    cache.publish("live:0", "after").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), subscriptions[0].next())
        .await
        .expect("a message after the restart");
    assert_eq!(event, Some(CacheEvent::Message("after".into())));

    // A dropped subscription is unsubscribed from its shard.
    let channel = conn.key("channel:live:7");
    drop(subscriptions.remove(7));
    cache.publish("live:7", "nobody").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !subscribers_by_node(cluster.nodes(), &channel).0.is_empty() {
        assert!(Instant::now() < deadline, "{channel} still subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- several catalogs (several API processes) on one L2 ---

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Waits until `check` holds; fails with `what` after 5 s (pub/sub
/// delivery to another catalog is asynchronous).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `orderflow_db_queries_total{op="product"}` in this test process. Only the
/// catalog test below reads products, so nothing else moves it.
fn product_queries() -> f64 {
    queries("product")
}

/// `orderflow_db_queries_total{op}` so far, in this test binary.
fn queries(op: &str) -> f64 {
    counter("orderflow_db_queries_total", &format!("op=\"{op}\""))
}

/// The series of counter `name` with `label` in them, summed, so far in
/// this test binary.
fn counter(name: &str, label: &str) -> f64 {
    METRICS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("installing the metrics recorder")
        })
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalogs_sharing_redis_query_once_per_key_and_invalidate_each_other() {
    product_queries();
    let mut server = RedisServer::start().unwrap();
    let (_dir, store) = store().await;
    let settings = RedisSettings::from_url(&server.url())
        .with_key_prefix(format!("test-{}:", uuid::Uuid::now_v7().simple()));
    let shutdown = CancellationToken::new();
    // Three "processes": each its own connection, L1 and listener.
    let mut catalogs = Vec::new();
    for _ in 0..3 {
        let conn = RedisConnection::open(&settings).unwrap();
        let catalog = Arc::new(CatalogService::with_shared_cache(
            store.clone(),
            &CacheSettings::default(),
            Arc::new(RedisSharedCache::new(conn)),
        ));
        assert!(catalog.has_shared_cache());
        catalog
            .start_invalidation_listener(shutdown.clone())
            .await
            .expect("a listener with an L2");
        catalogs.push(catalog);
    }
    // Written to the database directly, so every key starts cold (the
    // catalog's own create writes through to L1 and L2).
    let mut products = Vec::new();
    for i in 0..3 {
        let draft = ProductDraft::new(&format!("L2-{i}"), "Mug", 250, "EUR", 10).unwrap();
        products.push(
            store
                .insert_product(uuid::Uuid::now_v7(), &draft, Utc::now())
                .await
                .unwrap(),
        );
    }

    // A burst: every catalog reads every product 20 times at once.
    let before = product_queries();
    let mut reads = Vec::new();
    for catalog in &catalogs {
        for product in &products {
            for _ in 0..20 {
                let catalog = Arc::clone(catalog);
                let id = product.id;
                reads.push(tokio::spawn(async move {
                    catalog.product(id).await.unwrap().expect("exists").id
                }));
            }
        }
    }
    for read in reads {
        read.await.unwrap();
    }
    assert_eq!(
        product_queries() - before,
        3.0,
        "one database query per key for a burst across three processes"
    );
    for catalog in &catalogs {
        catalog.product(products[0].id).await.unwrap();
    }
    assert_eq!(product_queries() - before, 3.0, "L1 hits make no query");

    // An update in one process reaches the L1 of the others.
    let renamed = ProductDraft::new("L2-0", "Big mug", 400, "EUR", 10).unwrap();
    catalogs[1].update(products[0].id, renamed).await.unwrap();
    for catalog in &catalogs {
        eventually("a stale L1 entry survived the update", async || {
            let seen = catalog.product(products[0].id).await.unwrap().unwrap();
            seen.price_cents == 400
        })
        .await;
    }

    // A stock change committed elsewhere (a consumer's reservation), then
    // announced by one catalog: every catalog shows the new stock and
    // version, and the list too.
    let shopper = contract::given_user(&(store.clone() as Arc<dyn Store>), "Ann").await;
    let reserve_and_announce = async |quantity: u32| {
        let order = contract::given_order(
            &(store.clone() as Arc<dyn Store>),
            shopper.id,
            &[(&products[1], quantity)],
        )
        .await;
        let mut tx = store.begin().await.unwrap();
        tx.reserve_stock(order.id, &[(products[1].id, quantity)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        catalogs[0].products_changed(&[products[1].id]).await;
    };
    reserve_and_announce(4).await;
    for catalog in &catalogs {
        eventually("stale stock survived the change", async || {
            let seen = catalog.product(products[1].id).await.unwrap().unwrap();
            let page = catalog.list(None, Some(100)).await.unwrap();
            let listed = page.items.iter().find(|p| p.id == products[1].id).unwrap();
            (seen.stock, seen.version, listed.stock) == (6, 2, 6)
        })
        .await;
    }

    // Another change, announced by the first catalog with its value: the
    // others store the value itself, so their cached page stays whole and
    // nothing is loaded again.
    let pages_before = queries("list_products");
    let l1_misses = || counter("orderflow_cache_misses_total", "layer=\"l1\"");
    let misses_before = l1_misses();
    reserve_and_announce(1).await;
    for catalog in &catalogs[1..] {
        eventually("the list kept the old stock", async || {
            let page = catalog.list(None, Some(100)).await.unwrap();
            assert_eq!(page.items.len(), products.len(), "{page:?}");
            let listed = page.items.iter().find(|p| p.id == products[1].id).unwrap();
            (listed.stock, listed.version) == (5, 3)
        })
        .await;
    }
    assert_eq!(queries("list_products"), pages_before, "no page query");
    assert_eq!(l1_misses(), misses_before, "the announced value is stored");

    // Redis down: reads keep working (L1, then the database).
    server.stop();
    let started = Instant::now();
    assert_eq!(
        product_in(&catalogs[2], products[1].id).await.id,
        products[1].id,
        "an L1 hit"
    );
    let unseen = store
        .insert_product(
            uuid::Uuid::now_v7(),
            &ProductDraft::new("L2-3", "Cup", 150, "EUR", 10).unwrap(),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        product_in(&catalogs[2], unseen.id).await.id,
        unseen.id,
        "an L1 miss answered by the database"
    );
    // A change while Redis is down: its own process shows it at once.
    catalogs[2]
        .update(
            products[2].id,
            ProductDraft::new("L2-2", "Tall mug", 500, "EUR", 10).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        product_in(&catalogs[2], products[2].id).await.price_cents,
        500,
        "the change made while Redis was down"
    );
    assert_failed_fast(started);

    // The other catalogs cannot hear that change while Redis is down: their
    // subscriptions are lost, so they stop trusting their L1 and read the
    // database. None serves the old price it holds.
    for catalog in &catalogs[..2] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while product_in(catalog, products[2].id).await.price_cents != 500 {
            assert!(
                Instant::now() < deadline,
                "a stale price served while Redis is down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Back: the change that could not be announced is sent again, so L2
    // refuses anything older than it.
    server.restart().unwrap();
    let l2 = RedisSharedCache::new(RedisConnection::open(&settings).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = l2
            .get_versioned(&format!("product:{}", products[2].id))
            .await
            .ok()
            .flatten();
        if entry.is_some_and(|entry| entry.version >= 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change made while Redis was down never reached it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for catalog in &catalogs {
        assert_eq!(product_in(catalog, products[2].id).await.price_cents, 500);
    }
    shutdown.cancel();
}
