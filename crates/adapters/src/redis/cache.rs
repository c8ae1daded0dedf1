//! The shared cache (L2) on Redis: values under `{prefix}cache:{key}`, locks
//! under `{prefix}lock:{key}`, channels named `{prefix}channel:{name}`.
//!
//! - Values: `SET key value PX ttl`, `GET`, `DEL`.
//! - Locks: `SET lock token NX PX ttl`; the release is a Lua script that
//!   deletes the lock only if it still holds the caller's token, in one
//!   atomic step (a `GET` then `DEL` from the client could delete a lock
//!   someone else took in between). One key per command, so every command is
//!   valid in a cluster.
//! - Versioned values: the [`Versioned`] encoding under the same value keys,
//!   written by a Lua script that compares the stored version first, so no
//!   client can put an older value over a newer one between a check and a
//!   write (one key per script, valid in a cluster).
//! - Invalidations: `PUBLISH` / `SUBSCRIBE` (on a cluster, the sharded
//!   `SPUBLISH` / `SSUBSCRIBE`, spread over [`CLUSTER_PUBSUB_SHARDS`]
//!   channels by the streams that are busy), with the reconnecting
//!   subscriber of [`RedisConnection::subscribe`].

use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::cache::{
    CacheError, CacheResult, LockToken, SharedCache, Subscription, Versioned,
};
use redis::RedisError;

use super::connection::RedisConnection;

/// Deletes the lock `KEYS[1]` only if its value is the token `ARGV[1]`.
const RELEASE_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Stores `ARGV[2]` (a [`Versioned`] encoding of version `ARGV[1]`, a floor
/// when `ARGV[3]` is `F`) in `KEYS[1]` for `ARGV[4]` ms unless the stored
/// entry is newer: [`Versioned::replaces`], repeated in Lua. Returns 1 when
/// stored. A stored value that is not a versioned encoding is replaced.
const SET_VERSIONED: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version, kind = string.match(current, '^(%-?%d+)([VF])')
  if version then
    version = tonumber(version)
    local new = tonumber(ARGV[1])
    if version > new or (version == new and (kind == 'V' or ARGV[3] == 'F')) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
return 1
";

/// Channels a busy stream spreads over on a cluster: enough that the
/// channels' slots land on every primary of a usual cluster (3 to 10),
/// few enough that each process's subscriptions stay cheap.
const CLUSTER_PUBSUB_SHARDS: usize = 16;

/// [`SharedCache`] on Redis (standalone or cluster).
#[derive(Debug, Clone)]
pub struct RedisSharedCache {
    conn: RedisConnection,
    release: redis::Script,
    set_versioned: redis::Script,
}

impl RedisSharedCache {
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            release: redis::Script::new(RELEASE_LOCK),
            set_versioned: redis::Script::new(SET_VERSIONED),
        }
    }

    fn value_key(&self, key: &str) -> String {
        self.conn.key(&format!("cache:{key}"))
    }

    fn lock_key(&self, key: &str) -> String {
        self.conn.key(&format!("lock:{key}"))
    }

    fn channel(&self, name: &str) -> String {
        self.conn.key(&format!("channel:{name}"))
    }
}

/// Milliseconds for `PX`, at least one (Redis refuses zero).
pub(crate) fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Maps a Redis failure onto the port's error: connection trouble and
/// timeouts mean "unavailable", the rest is the server's answer.
pub(crate) fn cache_error(error: RedisError) -> CacheError {
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        CacheError::Unavailable(error.to_string())
    } else {
        CacheError::Backend(error.to_string())
    }
}

#[async_trait]
impl SharedCache for RedisSharedCache {
    async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        self.conn
            .query(redis::cmd("GET").arg(self.value_key(key)))
            .await
            .map_err(cache_error)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> CacheResult<()> {
        self.conn
            .query::<()>(
                redis::cmd("SET")
                    .arg(self.value_key(key))
                    .arg(value)
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await
            .map_err(cache_error)
    }

    async fn delete(&self, key: &str) -> CacheResult<bool> {
        let deleted: u64 = self
            .conn
            .query(redis::cmd("DEL").arg(self.value_key(key)))
            .await
            .map_err(cache_error)?;
        Ok(deleted > 0)
    }

    async fn set_versioned(
        &self,
        key: &str,
        entry: &Versioned,
        ttl: Duration,
    ) -> CacheResult<bool> {
        let kind = if entry.value.is_some() { "V" } else { "F" };
        let stored: u64 = self
            .conn
            .invoke(
                self.set_versioned
                    .key(self.value_key(key))
                    .arg(entry.version)
                    .arg(entry.encode())
                    .arg(kind)
                    .arg(px(ttl)),
            )
            .await
            .map_err(cache_error)?;
        Ok(stored == 1)
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> CacheResult<Option<LockToken>> {
        let token = LockToken::random();
        let taken: Option<String> = self
            .conn
            .query(
                redis::cmd("SET")
                    .arg(self.lock_key(key))
                    .arg(&token.0)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await
            .map_err(cache_error)?;
        Ok(taken.map(|_| token))
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> CacheResult<bool> {
        let released: u64 = self
            .conn
            .invoke(self.release.key(self.lock_key(key)).arg(&token.0))
            .await
            .map_err(cache_error)?;
        Ok(released > 0)
    }

    async fn publish(&self, channel: &str, message: &str) -> CacheResult<()> {
        self.conn
            .publish(&self.channel(channel), message)
            .await
            .map_err(cache_error)
    }

    async fn subscribe(&self, channel: &str) -> CacheResult<Subscription> {
        let events = self
            .conn
            .subscribe(&self.channel(channel))
            .await
            .map_err(cache_error)?;
        Ok(Subscription::new(events))
    }

    fn pubsub_shards(&self) -> usize {
        if self.conn.is_cluster() {
            CLUSTER_PUBSUB_SHARDS
        } else {
            1
        }
    }
}
