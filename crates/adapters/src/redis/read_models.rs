//! [`ReadModels`] on Redis: the leaderboard in a sorted set, daily sales in
//! one hash per day, recent notifications in a capped list per shopper, and
//! order-status updates on a pub/sub channel per shopper.
//!
//! Redis may lose everything (DESIGN.md §3), so nothing here answers unless
//! it can vouch for the answer:
//! - Leaderboard (`{leaderboard}:scores`, `:names`, `:ready`, one hash tag so
//!   the read script touches one cluster slot): scores are written with
//!   `ZADD GT` from absolute totals, so replays, redeliveries and late writers
//!   never lower a score. A point write alone cannot make the board complete
//!   (after a flush it would hold one shopper), so [`top`] answers only while
//!   the `:ready` marker lives; [`seed_leaderboard`] sets it after writing the
//!   database's top entries. The marker expires after
//!   [`RedisReadModels::with_refresh_after`] (10 minutes by default), so a
//!   score write lost to a crash between commit and mirror heals at the next
//!   seed.
//! - Recent notifications (`{user:ID}:notifications`): `LPUSH` + `LTRIM` in
//!   one script that only writes into an existing list (and skips a record
//!   already there); a missing list is created whole from the database
//!   snapshot the caller passes. The list expires after the refresh period
//!   from its creation, for the same healing reason.
//! - Daily sales (`analytics:day:YYYY-MM-DD`, fields `orders:CUR` and
//!   `revenue_cents:CUR`): absolute totals, a field only ever raised.
//! - Live updates: `PUBLISH` on `orders:{user:ID}` ([`order_channel`]).
//!
//! [`top`]: ReadModels::top
//! [`seed_leaderboard`]: ReadModels::seed_leaderboard
//! [`order_channel`]: RedisReadModels::order_channel

use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::read_models::{
    RECENT_NOTIFICATIONS_KEPT, ReadModelError, ReadModelResult, ReadModels,
};
use orderflow_core::ports::store::{DailySales, LeaderboardEntry, NotificationRecord};
use orderflow_domain::order::OrderStatus;
use orderflow_domain::{OrderId, UserId};

use super::connection::RedisConnection;

/// How many notifications each shopper's list keeps.
pub const NOTIFICATIONS_KEPT: u32 = RECENT_NOTIFICATIONS_KEPT;

/// KEYS = scores, names; ARGV = member, score, name.
const PUBLISH_POINTS: &str = r"
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
";

/// KEYS = scores, names, ready; ARGV = ttl ms, then (member, score, name)*.
const SEED_LEADERBOARD: &str = r"
for i = 2, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
return 1
";

/// KEYS = scores, names, ready; ARGV = limit. Nil when not ready; else
/// {member, score, name} for the top `limit` and everyone tied with the last
/// of them (the caller orders ties by user id, as the database does).
const TOP: &str = r"
if redis.call('EXISTS', KEYS[3]) == 0 then return false end
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local members = {}
local scores = {}
local seen = {}
for i = 1, #top, 2 do
  members[#members + 1] = top[i]
  scores[#scores + 1] = top[i + 1]
  seen[top[i]] = true
end
if #top > 0 then
  local last = top[#top]
  local tied = redis.call('ZRANGE', KEYS[1], last, last, 'BYSCORE')
  for _, member in ipairs(tied) do
    if not seen[member] then
      members[#members + 1] = member
      scores[#scores + 1] = last
    end
  end
end
local result = {}
for i, member in ipairs(members) do
  local name = redis.call('HGET', KEYS[2], member)
  result[i] = {member, scores[i], name or ''}
end
return result
";

/// KEYS = the day's hash; ARGV = (field, value)*. Raises fields only.
const RAISE_FIELDS: &str = r"
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
";

/// KEYS = the list; ARGV = cap, ttl ms, record, then the snapshot newest
/// first. 1 = written (or already there), 0 = no list and no snapshot.
const PUSH_NOTIFICATION: &str = r"
local cap = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('LPOS', KEYS[1], ARGV[3]) then return 1 end
  redis.call('LPUSH', KEYS[1], ARGV[3])
  redis.call('LTRIM', KEYS[1], 0, cap - 1)
  return 1
end
if #ARGV < 4 then return 0 end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], 0, cap - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// [`ReadModels`] on one Redis deployment (standalone or cluster).
pub struct RedisReadModels {
    conn: RedisConnection,
    refresh_after: Duration,
    publish_points: redis::Script,
    seed_leaderboard: redis::Script,
    top: redis::Script,
    raise_fields: redis::Script,
    push_notification: redis::Script,
}

impl std::fmt::Debug for RedisReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReadModels")
            .field("conn", &self.conn)
            .field("refresh_after", &self.refresh_after)
            .finish_non_exhaustive()
    }
}

impl RedisReadModels {
    /// No network access here.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            refresh_after: Duration::from_secs(600),
            publish_points: redis::Script::new(PUBLISH_POINTS),
            seed_leaderboard: redis::Script::new(SEED_LEADERBOARD),
            top: redis::Script::new(TOP),
            raise_fields: redis::Script::new(RAISE_FIELDS),
            push_notification: redis::Script::new(PUSH_NOTIFICATION),
        }
    }

    /// How long a seeded leaderboard and a created notification list are
    /// trusted before they are rebuilt from the database (default 10 min).
    pub fn with_refresh_after(mut self, refresh_after: Duration) -> Self {
        self.refresh_after = refresh_after;
        self
    }

    /// The pub/sub channel of `user_id`'s order-status updates (full name,
    /// prefix included), for [`RedisConnection::subscribe`]. Messages are
    /// JSON: `{"order_id": "…", "status": "confirmed"}`.
    pub fn order_channel(&self, user_id: UserId) -> String {
        self.conn.key(&format!("orders:{{user:{user_id}}}"))
    }

    fn leaderboard_keys(&self) -> [String; 3] {
        [
            self.conn.key("{leaderboard}:scores"),
            self.conn.key("{leaderboard}:names"),
            self.conn.key("{leaderboard}:ready"),
        ]
    }

    fn notifications_key(&self, user_id: UserId) -> String {
        self.conn.key(&format!("{{user:{user_id}}}:notifications"))
    }

    fn day_key(&self, day: chrono::NaiveDate) -> String {
        self.conn.key(&format!("analytics:day:{day}"))
    }

    fn refresh_ms(&self) -> u64 {
        u64::try_from(self.refresh_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

pub(super) fn unavailable(error: redis::RedisError) -> ReadModelError {
    ReadModelError::Unavailable(error.to_string())
}

fn corrupt(what: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Corrupt(what.to_string())
}

fn to_json(record: &NotificationRecord) -> ReadModelResult<String> {
    serde_json::to_string(record).map_err(corrupt)
}

#[async_trait]
impl ReadModels for RedisReadModels {
    async fn publish_points(
        &self,
        user_id: UserId,
        name: &str,
        total_points: i64,
    ) -> ReadModelResult<()> {
        let [scores, names, _] = self.leaderboard_keys();
        let mut invocation = self.publish_points.key(scores);
        invocation
            .key(names)
            .arg(user_id.to_string())
            .arg(total_points)
            .arg(name);
        self.conn
            .invoke::<i64>(&invocation)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn seed_leaderboard(&self, entries: &[LeaderboardEntry]) -> ReadModelResult<()> {
        let [scores, names, ready] = self.leaderboard_keys();
        let mut invocation = self.seed_leaderboard.key(scores);
        invocation.key(names).key(ready).arg(self.refresh_ms());
        for entry in entries {
            invocation
                .arg(entry.user_id.to_string())
                .arg(entry.points)
                .arg(&entry.name);
        }
        self.conn
            .invoke::<i64>(&invocation)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn top(&self, limit: u32) -> ReadModelResult<Option<Vec<LeaderboardEntry>>> {
        if limit == 0 {
            return Ok(None);
        }
        let [scores, names, ready] = self.leaderboard_keys();
        let mut invocation = self.top.key(scores);
        invocation.key(names).key(ready).arg(limit);
        let rows: Option<Vec<(String, String, String)>> =
            self.conn.invoke(&invocation).await.map_err(unavailable)?;
        let Some(rows) = rows.filter(|rows| !rows.is_empty()) else {
            return Ok(None);
        };
        let mut entries = rows
            .into_iter()
            .map(|(member, score, name)| {
                let user_id = member.parse::<UserId>().map_err(corrupt)?;
                // Scores are integers written by this adapter; Redis prints them as such.
                let points = score.parse::<f64>().map_err(corrupt).and_then(|points| {
                    if points.fract() == 0.0 && points.abs() < 9.0e15 {
                        #[allow(clippy::cast_possible_truncation)]
                        Ok(points as i64)
                    } else {
                        Err(corrupt(format!("score {score} is not a point total")))
                    }
                })?;
                Ok(LeaderboardEntry {
                    user_id,
                    name,
                    points,
                    rank: 0,
                })
            })
            .collect::<ReadModelResult<Vec<_>>>()?;
        entries.sort_by(|a, b| b.points.cmp(&a.points).then(a.user_id.cmp(&b.user_id)));
        entries.truncate(limit as usize);
        // RANK(): one more than the number of entries with more points (all of
        // whom are in the list, since it is ordered by points).
        let mut rank = 0;
        let mut previous = None;
        for (index, entry) in entries.iter_mut().enumerate() {
            if previous != Some(entry.points) {
                rank = i64::try_from(index).unwrap_or(i64::MAX) + 1;
                previous = Some(entry.points);
            }
            entry.rank = rank;
        }
        Ok(Some(entries))
    }

    async fn record_sale(&self, sales: &DailySales) -> ReadModelResult<()> {
        let mut invocation = self.raise_fields.key(self.day_key(sales.day));
        invocation
            .arg(format!("orders:{}", sales.currency))
            .arg(sales.orders)
            .arg(format!("revenue_cents:{}", sales.currency))
            .arg(sales.revenue_cents);
        self.conn
            .invoke::<i64>(&invocation)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn sales_of_day(
        &self,
        day: chrono::NaiveDate,
    ) -> ReadModelResult<Option<Vec<DailySales>>> {
        let fields: Vec<(String, i64)> = self
            .conn
            .query(redis::cmd("HGETALL").arg(self.day_key(day)))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut sales: Vec<DailySales> = Vec::new();
        for (field, value) in fields {
            let (what, currency) = field
                .split_once(':')
                .ok_or_else(|| corrupt(format!("sales field {field}")))?;
            let index = match sales.iter().position(|s| s.currency == currency) {
                Some(index) => index,
                None => {
                    sales.push(DailySales {
                        day,
                        currency: currency.to_owned(),
                        orders: 0,
                        revenue_cents: 0,
                    });
                    sales.len() - 1
                }
            };
            match what {
                "orders" => sales[index].orders = value,
                "revenue_cents" => sales[index].revenue_cents = value,
                _ => return Err(corrupt(format!("sales field {field}"))),
            }
        }
        sales.sort_by(|a, b| a.currency.cmp(&b.currency));
        Ok(Some(sales))
    }

    async fn push_notification(
        &self,
        record: &NotificationRecord,
        newest_first: &[NotificationRecord],
    ) -> ReadModelResult<bool> {
        let mut invocation = self
            .push_notification
            .key(self.notifications_key(record.user_id));
        invocation
            .arg(NOTIFICATIONS_KEPT)
            .arg(self.refresh_ms())
            .arg(to_json(record)?);
        for snapshot in newest_first.iter().take(NOTIFICATIONS_KEPT as usize) {
            invocation.arg(to_json(snapshot)?);
        }
        let written: i64 = self.conn.invoke(&invocation).await.map_err(unavailable)?;
        Ok(written == 1)
    }

    async fn recent_notifications(
        &self,
        user_id: UserId,
        limit: u32,
    ) -> ReadModelResult<Option<Vec<NotificationRecord>>> {
        if limit == 0 || limit > NOTIFICATIONS_KEPT {
            return Ok(None);
        }
        let items: Vec<String> = self
            .conn
            .query(
                redis::cmd("LRANGE")
                    .arg(self.notifications_key(user_id))
                    .arg(0)
                    .arg(i64::from(limit) - 1),
            )
            .await
            .map_err(unavailable)?;
        if items.is_empty() {
            return Ok(None);
        }
        items
            .iter()
            .map(|item| serde_json::from_str(item).map_err(corrupt))
            .collect::<ReadModelResult<Vec<_>>>()
            .map(Some)
    }

    async fn publish_order_status(
        &self,
        user_id: UserId,
        order_id: OrderId,
        status: OrderStatus,
    ) -> ReadModelResult<()> {
        let payload = serde_json::json!({
            "order_id": order_id,
            "status": status.as_str(),
        })
        .to_string();
        self.conn
            .publish(&self.order_channel(user_id), &payload)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
