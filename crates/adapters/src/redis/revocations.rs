//! Revoked access-token ids on Redis, backed by the database.
//!
//! The database ([`Store`]) is the source of truth: [`revoke`] writes it
//! first, then Redis (`SET key 1 PXAT <exp>`, so the entry disappears when
//! the token would have died anyway). Every process reads Redis, so a logout
//! in one process is seen by all at once.
//!
//! Redis may lose everything (DESIGN.md §3), and an empty Redis must not
//! let a revoked token back in. So the keys live in 16 shards, each with a
//! marker key (`…{revoked:N}:ready`) written after the shard was filled from
//! the database. The lookup is one script that reads the token's key and its
//! shard's marker together (one hash tag per shard, so both are in one
//! cluster slot): revoked, not revoked, or "this shard was lost". On "lost",
//! the adapter rebuilds every shard from [`Store::active_revocations`] (one
//! rebuild at a time per process) and answers this lookup from the database.
//!
//! Redis unreachable: lookups are answered by the database
//! (`orderflow_revocations_fallback_total`), a revocation is stored in the
//! database and reported as done. Whatever this process could not write, or
//! may have missed, is made good by a rebuild on the first lookup after Redis
//! answers again.
//!
//! [`revoke`]: RevocationList::revoke

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use orderflow_core::ports::revocations::RevocationList;
use orderflow_core::ports::store::{Store, StoreResult};
use orderflow_domain::Timestamp;

use super::connection::RedisConnection;

/// Shards: enough to spread the keys over a cluster's nodes, few enough that
/// a rebuild writes a handful of pipelines.
const SHARDS: u32 = 16;

/// KEYS = token key, shard marker. 1 = revoked, 0 = not revoked, -1 = the
/// shard is not (or no longer) filled.
const CHECK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return -1
";

/// KEYS = token key; ARGV = expiry (Unix ms). Keeps the later expiry when a
/// token is revoked twice.
const REVOKE: &str = r"
local current = redis.call('PEXPIRETIME', KEYS[1])
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PXAT', ARGV[1])
end
return 1
";

/// [`RevocationList`] on Redis, backed by a [`Store`].
pub struct RedisRevocations {
    conn: RedisConnection,
    store: Arc<dyn Store>,
    check: redis::Script,
    revoke: redis::Script,
    /// Set when a write or lookup failed: Redis may lack something, so the
    /// next lookup that reaches Redis rebuilds first.
    needs_rebuild: AtomicBool,
    /// One rebuild at a time in this process; holds when the last one
    /// finished, so callers that waited for it do not redo it.
    rebuilding: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRevocations")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl RedisRevocations {
    /// No network access here; the first lookup fills an empty Redis.
    pub fn new(conn: RedisConnection, store: Arc<dyn Store>) -> Self {
        Self {
            conn,
            store,
            check: redis::Script::new(CHECK),
            revoke: redis::Script::new(REVOKE),
            needs_rebuild: AtomicBool::new(false),
            rebuilding: tokio::sync::Mutex::new(None),
        }
    }

    fn shard(jti: &str) -> u32 {
        // FNV-1a: stable across processes and versions (unlike std's hasher).
        let hash = jti.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        hash % SHARDS
    }

    fn token_key(&self, jti: &str) -> String {
        self.conn
            .key(&format!("{{revoked:{}}}:jti:{jti}", Self::shard(jti)))
    }

    fn marker_key(&self, shard: u32) -> String {
        self.conn.key(&format!("{{revoked:{shard}}}:ready"))
    }

    /// Writes every revocation in force from the database into Redis, then
    /// marks every shard filled; returns how many were written. A call that
    /// waited for a rebuild already running in this process returns 0 and
    /// does not start another.
    pub async fn rebuild(&self) -> Result<usize, RebuildError> {
        let asked_at = std::time::Instant::now();
        let mut last_rebuild = self.rebuilding.lock().await;
        if last_rebuild.is_some_and(|finished| finished > asked_at) {
            // A burst of lookups found Redis empty at once: one rebuild serves them all.
            return Ok(0);
        }
        let now = Utc::now();
        let active = self.store.active_revocations(now).await?;
        let mut shards: Vec<redis::Pipeline> = (0..SHARDS).map(|_| redis::pipe()).collect();
        let mut written = 0;
        for (jti, expires_at) in &active {
            if *expires_at <= now {
                continue;
            }
            shards[Self::shard(jti) as usize]
                .cmd("SET")
                .arg(self.token_key(jti))
                .arg(1)
                .arg("PXAT")
                .arg(expires_at.timestamp_millis())
                .ignore();
            written += 1;
        }
        for (shard, mut pipe) in (0..SHARDS).zip(shards) {
            // The marker last: a shard is "filled" only once its keys are in.
            pipe.cmd("SET").arg(self.marker_key(shard)).arg(1).ignore();
            self.conn.pipeline::<()>(&pipe).await?;
        }
        self.needs_rebuild.store(false, Ordering::SeqCst);
        *last_rebuild = Some(std::time::Instant::now());
        metrics::counter!("orderflow_revocations_rebuilds_total").increment(1);
        tracing::info!(
            revocations = written,
            "revocation list rebuilt in Redis from the database"
        );
        Ok(written)
    }

    async fn ask_database(&self, jti: &str, why: &str) -> StoreResult<bool> {
        metrics::counter!("orderflow_revocations_fallback_total").increment(1);
        tracing::debug!(reason = why, "revocation looked up in the database");
        self.store.is_revoked(jti, Utc::now()).await
    }
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Store(#[from] orderflow_core::ports::store::StoreError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[async_trait]
impl RevocationList for RedisRevocations {
    async fn revoke(&self, jti: &str, expires_at: Timestamp) -> StoreResult<()> {
        // The database first: Redis must never know more than what survives.
        self.store.insert_revocation(jti, expires_at).await?;
        if expires_at <= Utc::now() {
            return Ok(());
        }
        let written = self
            .conn
            .invoke::<i64>(
                self.revoke
                    .key(self.token_key(jti))
                    .arg(expires_at.timestamp_millis()),
            )
            .await;
        if let Err(error) = written {
            self.needs_rebuild.store(true, Ordering::SeqCst);
            metrics::counter!("orderflow_revocations_redis_errors_total").increment(1);
            tracing::warn!(%error, "revocation stored in the database but not in Redis; Redis will be rebuilt");
        }
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        if self.needs_rebuild.load(Ordering::SeqCst)
            && let Err(error) = self.rebuild().await
        {
            tracing::debug!(%error, "revocation rebuild still failing");
            return self.ask_database(jti, "rebuild pending").await;
        }
        let shard = Self::shard(jti);
        let answer = self
            .conn
            .invoke::<i64>(
                self.check
                    .key(self.token_key(jti))
                    .key(self.marker_key(shard)),
            )
            .await;
        match answer {
            Ok(1) => Ok(true),
            Ok(0) => Ok(false),
            Ok(_) => {
                // The shard is empty: Redis was flushed or restarted empty.
                if let Err(error) = self.rebuild().await {
                    self.needs_rebuild.store(true, Ordering::SeqCst);
                    tracing::warn!(%error, "revocation list: rebuilding Redis failed");
                }
                self.ask_database(jti, "Redis lost the revocations").await
            }
            Err(error) => {
                self.needs_rebuild.store(true, Ordering::SeqCst);
                metrics::counter!("orderflow_revocations_redis_errors_total").increment(1);
                tracing::warn!(%error, "revocation list: Redis unreachable, asking the database");
                self.ask_database(jti, "Redis unreachable").await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: every process (and version) must agree.
        assert_eq!(RedisRevocations::shard(""), 0x811c_9dc5 % SHARDS);
        let used: std::collections::HashSet<u32> = (0..200)
            .map(|i| RedisRevocations::shard(&format!("jti-{i}")))
            .collect();
        assert_eq!(used.len(), SHARDS as usize);
    }
}
