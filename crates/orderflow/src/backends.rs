//! Which adapter serves each port. Three settings choose, each on its own, so
//! any mix works (DESIGN.md §3):
//!
//! | setting | unset | set |
//! | --- | --- | --- |
//! | `ORDERFLOW_DATABASE_URL` | SQLite file in the data dir | `postgres://…` |
//! | `ORDERFLOW_KAFKA_BROKERS` | event log in the database | Kafka, fed by the outbox relay |
//! | `ORDERFLOW_REDIS_URL` | cache, limiter, revocations in process | Redis (L2 cache, limiter, revocations) |
//!
//! With Kafka the store appends events to its outbox table instead of its
//! log table, and [`Backends::relay`] is the relay that moves them (run by
//! `orderflow relay`, and by `orderflow serve` in-process).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orderflow_adapters::kafka::{KafkaEventLog, KafkaPublisher, KafkaSettings, ensure_topics};
use orderflow_adapters::memory::{DbBackedRevocations, InProcessRateLimiter, InProcessSharedCache};
use orderflow_adapters::postgres::{LeaseSettings, PostgresStore};
use orderflow_adapters::redis::{
    RedisCarts, RedisConnection, RedisPresence, RedisRateLimiter, RedisReadModels,
    RedisRevocations, RedisSettings, RedisSharedCache, RedisTls, RedisViewerSketches,
};
use orderflow_adapters::sqlite::SqliteStore;
use orderflow_core::ports::cache::SharedCache;
use orderflow_core::ports::carts::Carts;
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::outbox::{EventDestination, Outbox};
use orderflow_core::ports::presence::PresenceBoard;
use orderflow_core::ports::rate_limit::RateLimiter;
use orderflow_core::ports::read_models::{ReadModels, ViewerSketches};
use orderflow_core::ports::revocations::RevocationList;
use orderflow_core::ports::store::Store;
use orderflow_core::services::catalog::{CacheSettings, CatalogService};
use orderflow_core::services::relay::{Relay, RelaySettings};
use secrecy::ExposeSecret;

use crate::settings::{FailMode, Settings};
use crate::telemetry::PoolGauges;

/// The adapters chosen for the database, the event log and Redis.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    /// With Kafka: the relay from this database's outbox to the topics.
    pub relay: Option<Relay>,
    /// With Kafka: that outbox (for its backlog in the health view).
    pub outbox: Option<Arc<dyn Outbox>>,
    /// SQLite: the embedded setup, whose one process makes every change
    /// (so its live followers hear of each at once, without a recheck).
    pub embedded: bool,
    /// With Redis: the connection the cache, limiter and revocations share.
    pub redis: Option<RedisConnection>,
    /// The carts in the database, which [`Self::carts`] serves without Redis.
    database_carts: Arc<dyn Carts>,
    /// Sets the connection-pool gauges from the database adapter's pool.
    pub pool_gauges: PoolGauges,
    /// `sqlite + embedded log`, `postgres + kafka + redis`, … for the start-up log.
    pub description: String,
}

/// Runs the Redis start-up check (`orderflow_adapters::redis::permissions`):
/// a command the Redis user may not run, a refused password or a failed TLS
/// handshake stops the start with the reason, instead of failing quietly in
/// the middle of requests later. Redis not answering does not stop it
/// (orderflow works without Redis, and uses it once it is up): the check
/// then runs in the background until Redis answers, and a refusal is logged
/// as an error.
async fn check_redis(conn: &RedisConnection) -> anyhow::Result<()> {
    match conn.check_permissions().await {
        Ok(()) => Ok(()),
        Err(error) if error.is_unreachable() => {
            tracing::warn!(%error, "Redis is unreachable at start-up; checking its ACL once it answers");
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(1);
                loop {
                    tokio::time::sleep(wait).await;
                    match conn.check_permissions().await {
                        Ok(()) => {
                            return tracing::info!(
                                "Redis answers; its ACL allows what orderflow needs"
                            );
                        }
                        Err(error) if error.is_unreachable() => {
                            wait = (wait * 2).min(Duration::from_secs(30));
                        }
                        Err(error) => return tracing::error!(%error, "Redis refuses orderflow"),
                    }
                }
            });
            Ok(())
        }
        Err(error) => Err(error).context("ORDERFLOW_REDIS_URL: the start-up check"),
    }
}

/// The Kafka adapter's settings from orderflow's: what `Backends::connect`
/// gives every Kafka client, so a test reads back exactly what an
/// operator's `ORDERFLOW_KAFKA_*` settings become.
pub fn kafka_settings(settings: &Settings, brokers: &str) -> anyhow::Result<KafkaSettings> {
    let scale = &settings.scale;
    Ok(KafkaSettings {
        brokers: brokers.to_owned(),
        topic_prefix: scale.kafka_topic_prefix.clone(),
        partitions: scale.kafka_partitions,
        replication_factor: scale.kafka_replication,
        topic_retention: Some(Duration::from_secs(settings.retain_events_secs)),
        client_config: scale.kafka_client_config()?,
    })
}

impl Backends {
    /// Connects the database (and migrates it), the event log (creating the
    /// Kafka topics that are missing) and Redis.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Backends> {
        let scale = &settings.scale;
        let destination = if scale.kafka_brokers.is_some() {
            EventDestination::Outbox
        } else {
            EventDestination::EmbeddedLog
        };
        let url = settings.database_url();
        let scheme = url.split(':').next().unwrap_or_default();
        type Database = (
            Arc<dyn Store>,
            Arc<dyn EventLog>,
            Arc<dyn Outbox>,
            PoolGauges,
            Arc<dyn Carts>,
        );
        let (store, embedded_log, outbox, pool_gauges, database_carts): Database = match scheme {
            "sqlite" => {
                let sqlite = SqliteStore::connect_with(
                    &url,
                    settings.database_max_connections,
                    settings.log_partitions,
                )
                .await
                .context("opening the SQLite database")?
                .with_background_wait(
                    (settings.sqlite_background_wait_ms > 0)
                        .then(|| Duration::from_millis(settings.sqlite_background_wait_ms)),
                )
                .with_event_destination(destination);
                sqlite.migrate().await.context("migrating the database")?;
                let gauges = sqlite.clone();
                (
                    Arc::new(sqlite.clone()),
                    Arc::new(sqlite.event_log()),
                    Arc::new(sqlite.outbox()),
                    Arc::new(move || gauges.export_pool_gauges()),
                    Arc::new(sqlite),
                )
            }
            "postgres" | "postgresql" => {
                let postgres = PostgresStore::connect(
                    &url,
                    settings.database_max_connections,
                    settings.log_partitions,
                )
                .await
                .context("connecting to PostgreSQL")?
                .with_event_destination(destination);
                postgres.migrate().await.context("migrating the database")?;
                let gauges = postgres.clone();
                (
                    Arc::new(postgres.clone()),
                    Arc::new(postgres.event_log().with_leases(LeaseSettings {
                        lease: Duration::from_millis(settings.log_lease_ms),
                        renew_every: Duration::from_millis(settings.log_lease_renew_ms),
                    })),
                    Arc::new(postgres.outbox()),
                    Arc::new(move || gauges.export_pool_gauges()),
                    Arc::new(postgres),
                )
            }
            other => anyhow::bail!(
                "ORDERFLOW_DATABASE_URL must start with sqlite:// or postgres:// (got {other:?})"
            ),
        };

        // With Kafka the outbox is what the relay drains; the operators'
        // health view reports its backlog.
        let relayed_outbox = scale.kafka_brokers.as_ref().map(|_| outbox.clone());
        let (log, relay): (Arc<dyn EventLog>, Option<Relay>) = match &scale.kafka_brokers {
            None => (embedded_log, None),
            Some(brokers) => {
                let kafka = kafka_settings(settings, brokers)?;
                ensure_topics(&kafka)
                    .await
                    .context("creating the Kafka topics")?;
                let groups: BTreeMap<String, Vec<String>> = orderflow_workers::GROUP_TOPICS
                    .iter()
                    .map(|(group, topics)| {
                        (
                            (*group).to_owned(),
                            topics.iter().map(|t| (*t).to_owned()).collect(),
                        )
                    })
                    .collect();
                let log =
                    KafkaEventLog::new(kafka.clone(), groups).context("connecting to Kafka")?;
                let publisher =
                    KafkaPublisher::new(&kafka).context("creating the Kafka producer")?;
                let relay = Relay::new(
                    outbox,
                    Arc::new(publisher),
                    RelaySettings {
                        batch_size: scale.relay_batch.max(1),
                        max_in_flight: scale.relay_in_flight.max(1),
                        ..RelaySettings::default()
                    },
                );
                (Arc::new(log), Some(relay))
            }
        };

        let redis = match &scale.redis_url {
            None => None,
            Some(url) => {
                let tls = RedisTls::from_files(
                    scale.redis_ca_cert.as_deref(),
                    scale.redis_client_cert.as_deref(),
                    scale.redis_client_key.as_deref(),
                )
                .context("ORDERFLOW_REDIS_CA_CERT / ORDERFLOW_REDIS_CLIENT_CERT / ORDERFLOW_REDIS_CLIENT_KEY")?;
                let redis_settings = RedisSettings::from_url(url.expose_secret())
                    .with_key_prefix(scale.redis_key_prefix.clone())
                    .with_tls(tls);
                let conn = RedisConnection::open(&redis_settings).context("ORDERFLOW_REDIS_URL")?;
                check_redis(&conn).await?;
                Some(conn)
            }
        };

        let description = format!(
            "{} + {}{}",
            if scheme == "sqlite" {
                "sqlite"
            } else {
                "postgres"
            },
            if relay.is_some() {
                "kafka"
            } else {
                "embedded log"
            },
            if redis.is_some() { " + redis" } else { "" }
        );
        Ok(Backends {
            store,
            log,
            relay,
            outbox: relayed_outbox,
            embedded: scheme == "sqlite",
            redis,
            database_carts,
            pool_gauges,
            description,
        })
    }

    /// The carts: a hash per shopper in Redis (with a time to live), or in
    /// the database without Redis (DESIGN.md §3).
    pub fn carts(&self) -> Arc<dyn Carts> {
        match &self.redis {
            Some(redis) => Arc::new(RedisCarts::new(redis.clone())),
            None => self.database_carts.clone(),
        }
    }

    /// Revoked tokens: in Redis (backed by the database) or in process.
    pub async fn revocations(&self) -> anyhow::Result<Arc<dyn RevocationList>> {
        Ok(match &self.redis {
            Some(redis) => Arc::new(RedisRevocations::new(redis.clone(), self.store.clone())),
            None => Arc::new(
                DbBackedRevocations::load(self.store.clone())
                    .await
                    .context("loading revocations")?,
            ),
        })
    }

    /// The rate limiter: one budget across processes with Redis.
    pub fn rate_limiter(&self, fail: FailMode) -> Arc<dyn RateLimiter> {
        match &self.redis {
            Some(redis) => {
                Arc::new(RedisRateLimiter::new(redis.clone()).fail_closed(fail == FailMode::Closed))
            }
            None => Arc::new(InProcessRateLimiter::new()),
        }
    }

    /// With Redis: the derived read models (leaderboard sorted set, daily
    /// sales hashes, capped notification lists, live order status) that
    /// consumers mirror after their commits and queries read first. Without
    /// Redis there are none: queries read the database.
    pub fn read_models(&self) -> Option<Arc<dyn ReadModels>> {
        self.redis
            .as_ref()
            .map(|redis| Arc::new(RedisReadModels::new(redis.clone())) as Arc<dyn ReadModels>)
    }

    /// With Redis: the unique-viewer sketches (HyperLogLogs), kept
    /// `keep_for` after their last write. Without Redis `trending` counts
    /// unique viewers exactly, in the database.
    pub fn viewer_sketches(&self, keep_for: Duration) -> Option<Arc<dyn ViewerSketches>> {
        self.redis.as_ref().map(|redis| {
            Arc::new(RedisViewerSketches::new(redis.clone(), keep_for)) as Arc<dyn ViewerSketches>
        })
    }

    /// What every process shares for live channels: Redis when
    /// configured (see [`LiveSharing`]), else this process's memory (one
    /// process: no bus and no board needed).
    pub fn live_sharing(&self) -> LiveSharing {
        match &self.redis {
            Some(redis) => {
                let shared: Arc<dyn SharedCache> = Arc::new(RedisSharedCache::new(redis.clone()));
                LiveSharing {
                    tickets: shared.clone(),
                    bus: Some(shared),
                    presence: Some(Arc::new(RedisPresence::new(redis.clone()))),
                }
            }
            None => LiveSharing {
                tickets: Arc::new(InProcessSharedCache::new()),
                bus: None,
                presence: None,
            },
        }
    }

    /// The catalog: L1 in process, plus Redis as L2 when configured.
    pub fn catalog(&self, cache: &CacheSettings) -> CatalogService {
        match &self.redis {
            Some(redis) => CatalogService::with_shared_cache(
                self.store.clone(),
                cache,
                Arc::new(RedisSharedCache::new(redis.clone())),
            ),
            None => CatalogService::new(self.store.clone(), cache),
        }
    }
}

/// What the API processes share for live channels.
pub struct LiveSharing {
    /// Where tickets are kept: redeemable at any API process.
    pub tickets: Arc<dyn SharedCache>,
    /// The bus the hubs ring each other on.
    pub bus: Option<Arc<dyn SharedCache>>,
    /// Where each process reports its connections, for `admin:health`.
    pub presence: Option<Arc<dyn PresenceBoard>>,
}
