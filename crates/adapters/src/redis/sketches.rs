//! [`ViewerSketches`] on Redis: one HyperLogLog per product and day
//! (`{viewers:DAY}:PRODUCT`, `PFADD` / `PFCOUNT`, 12 KB at most each), and
//! per day a set naming that day's sketches (`{viewers:DAY}:keys`), so that
//! a rebuild can delete them without `SCAN` (which a cluster would need on
//! every node). One hash tag per day: a day's keys share a cluster slot, so
//! the add script and the delete touch one slot.
//!
//! Every key expires `keep_for` after its last write (the minute windows'
//! retention, 8 days by default): a day's counts live as long as the views
//! they go with.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::read_models::{ReadModelResult, ViewerSketches};
use orderflow_domain::ProductId;
use redis::cmd;

use super::connection::RedisConnection;
use super::read_models::unavailable;

/// KEYS = the sketch, the day's set of sketches; ARGV = ttl ms, then the
/// visitor ids.
const ADD: &str = r"
redis.call('PFADD', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
";

pub struct RedisViewerSketches {
    conn: RedisConnection,
    keep_for: Duration,
    add: redis::Script,
}

impl std::fmt::Debug for RedisViewerSketches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisViewerSketches")
            .field("conn", &self.conn)
            .field("keep_for", &self.keep_for)
            .finish_non_exhaustive()
    }
}

impl RedisViewerSketches {
    pub fn new(conn: RedisConnection, keep_for: Duration) -> Self {
        Self {
            conn,
            keep_for,
            add: redis::Script::new(ADD),
        }
    }

    fn sketch_key(&self, day: chrono::NaiveDate, product: ProductId) -> String {
        self.conn.key(&format!("{{viewers:{day}}}:{product}"))
    }

    fn day_key(&self, day: chrono::NaiveDate) -> String {
        self.conn.key(&format!("{{viewers:{day}}}:keys"))
    }
}

#[async_trait]
impl ViewerSketches for RedisViewerSketches {
    async fn add(
        &self,
        day: chrono::NaiveDate,
        product: ProductId,
        viewers: &[String],
    ) -> ReadModelResult<()> {
        if viewers.is_empty() {
            return Ok(());
        }
        let ttl_ms = u64::try_from(self.keep_for.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.add.key(self.sketch_key(day, product));
        invocation.key(self.day_key(day)).arg(ttl_ms);
        for viewer in viewers {
            invocation.arg(viewer);
        }
        self.conn
            .invoke::<i64>(&invocation)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn count(&self, day: chrono::NaiveDate, product: ProductId) -> ReadModelResult<u64> {
        self.conn
            .query(cmd("PFCOUNT").arg(self.sketch_key(day, product)))
            .await
            .map_err(unavailable)
    }

    /// Every day a sketch can still live, from `from` when given: from
    /// `keep_for` ago to tomorrow (a writer whose clock runs ahead).
    async fn forget(&self, from: Option<chrono::NaiveDate>) -> ReadModelResult<()> {
        let today = chrono::Utc::now().date_naive();
        let kept_days = self.keep_for.as_secs().div_ceil(24 * 3600);
        let oldest = today - chrono::Days::new(kept_days);
        let first = from.map_or(oldest, |from| from.max(oldest));
        let last = today + chrono::Days::new(1);
        for day in first.iter_days().take_while(|day| *day <= last) {
            let index = self.day_key(day);
            let sketches: Vec<String> = self
                .conn
                .query(cmd("SMEMBERS").arg(&index))
                .await
                .map_err(unavailable)?;
            // The sketches and their index: one slot, one command.
            self.conn
                .query::<i64>(cmd("DEL").arg(&sketches).arg(&index))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
