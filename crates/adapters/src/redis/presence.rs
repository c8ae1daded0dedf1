//! The live presence board on Redis: a hash per API process
//! (`{prefix}{presence}:process:{id}`, user → connections there) and a
//! sorted set of the processes (`{prefix}{presence}:processes`, scored by
//! when each report stops counting, in Redis's own clock so that the
//! processes' clocks do not matter). One hash tag, so one cluster node holds
//! them all and each script touches one slot.
//!
//! - A report is one script: replace the hash, give it the time to live,
//!   score the process. The hash always holds a marker field, so "the
//!   report is gone" (expired, or Redis lost it) reads the same whether the
//!   process had users or not.
//! - A keep-alive is one script that extends both only if the report is
//!   still there, and says so.
//! - A tally drops the expired processes, reads each alive hash (one
//!   pipeline) and sums them in the caller.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::cache::CacheResult;
use orderflow_core::ports::presence::{PresenceBoard, PresenceTally};
use orderflow_domain::UserId;

use super::cache::cache_error;
use super::connection::RedisConnection;

/// The field every report's hash holds besides the users.
const MARKER: &str = "-";

/// Put before each script: `now` in Redis's clock (ms), and `keep(ttl)`,
/// which gives the report of process `ARGV[1]` (hash `KEYS[2]`, listed in
/// `KEYS[1]`) another `ttl` ms. Every process uses the same time to live,
/// so setting the set's own expiry to it only ever extends it.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
";

/// KEYS = processes, the process's hash; ARGV = process, ttl ms, marker,
/// then user and count pairs.
const REPORT: &str = r"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], ARGV[3], 0)
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
keep(tonumber(ARGV[2]))
return 1
";

/// KEYS = processes, the process's hash; ARGV = process, ttl ms. 1 when
/// extended, 0 when the report is gone.
const KEEP_ALIVE: &str = r"
local until_ = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not until_ or tonumber(until_) <= now or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
keep(tonumber(ARGV[2]))
return 1
";

/// KEYS = processes. Drops the expired ones; returns the alive.
const ALIVE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// [`PresenceBoard`] on one Redis deployment (standalone or cluster).
pub struct RedisPresence {
    conn: RedisConnection,
    report: redis::Script,
    keep_alive: redis::Script,
    alive: redis::Script,
}

impl RedisPresence {
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            report: script(REPORT),
            keep_alive: script(KEEP_ALIVE),
            alive: script(ALIVE),
        }
    }

    fn processes(&self) -> String {
        self.conn.key("{presence}:processes")
    }

    fn process(&self, id: &str) -> String {
        self.conn.key(&format!("{{presence}}:process:{id}"))
    }
}

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl PresenceBoard for RedisPresence {
    async fn report(
        &self,
        process: &str,
        devices: &HashMap<UserId, usize>,
        ttl: Duration,
    ) -> CacheResult<()> {
        let mut invocation = self.report.key(self.processes());
        invocation
            .key(self.process(process))
            .arg(process)
            .arg(millis(ttl))
            .arg(MARKER);
        for (user, count) in devices {
            invocation.arg(user.to_string()).arg(*count);
        }
        self.conn
            .invoke::<i64>(&invocation)
            .await
            .map(|_| ())
            .map_err(cache_error)
    }

    async fn keep_alive(&self, process: &str, ttl: Duration) -> CacheResult<bool> {
        let extended: i64 = self
            .conn
            .invoke(
                self.keep_alive
                    .key(self.processes())
                    .key(self.process(process))
                    .arg(process)
                    .arg(millis(ttl)),
            )
            .await
            .map_err(cache_error)?;
        Ok(extended == 1)
    }

    async fn tally(&self) -> CacheResult<PresenceTally> {
        let alive: Vec<String> = self
            .conn
            .invoke(&self.alive.key(self.processes()))
            .await
            .map_err(cache_error)?;
        if alive.is_empty() {
            return Ok(PresenceTally::default());
        }
        let mut pipe = redis::pipe();
        for process in &alive {
            pipe.hgetall(self.process(process));
        }
        let hashes: Vec<HashMap<String, usize>> =
            self.conn.pipeline(&pipe).await.map_err(cache_error)?;
        // A hash that expired between the two reads is an empty map: that
        // process no longer counts.
        let reports: Vec<HashMap<UserId, usize>> = hashes
            .into_iter()
            .filter(|hash| hash.contains_key(MARKER))
            .map(|hash| {
                hash.into_iter()
                    .filter_map(|(user, count)| Some((user.parse().ok()?, count)))
                    .collect()
            })
            .collect();
        Ok(PresenceTally::of(&reports))
    }
}
