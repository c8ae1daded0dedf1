//! The rate limiter on Redis: one budget shared by every API process.
//!
//! Each algorithm is ONE Lua script, so a decision (read the state, decide,
//! write the state) is atomic: concurrent requests from many processes can
//! never overspend. The scripts read Redis' own clock (`TIME`), so the
//! processes' clocks do not matter. The semantics are those of the
//! in-process limiter ([`crate::memory::rate_limit`]), at microsecond
//! resolution:
//! - fixed window: a hash `{ends, count}`; the window starts at a key's first
//!   request and lasts `window`;
//! - token bucket: GCRA, one number (the time the bucket is full again);
//! - leaky bucket: one number (the time the next request may leave); a
//!   request over the rate gets its wait as `delay`, a full queue refuses.
//!
//! Every key expires when its state carries no information any more (the
//! window ended, the bucket is full, the queue is empty), so Redis holds only
//! busy keys. One key per script: valid in a cluster.
//!
//! Numbers are stored with `%.0f`: Lua turns numbers into strings with 14
//! significant digits, which would round microsecond timestamps (16 digits).
//!
//! Redis unreachable: the request is allowed (fail open) and counted in
//! `orderflow_rate_limiter_unavailable_total`, with a warning; or refused
//! when the limiter is built to fail closed.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::rate_limit::{Algorithm, RateDecision, RateLimiter, RatePolicy};

use super::connection::RedisConnection;

/// The interval of a rate that never refills: ten years, small enough that
/// timestamps plus a few of these stay exact in a Lua number (2^53 µs).
const NEVER_US: u64 = 10 * 365 * 24 * 3600 * 1_000_000;

/// KEYS[1] = state; ARGV = limit, window µs. Returns
/// {allowed, remaining, retry_after µs, reset_after µs}.
const FIXED_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'ends', 'count')
local ends = tonumber(state[1])
local count = tonumber(state[2]) or 0
if ends == nil or ends <= now then
  ends = now + window
  count = 0
end
local reset = ends - now
local ttl_ms = math.ceil(reset / 1000) + 1
if count < limit then
  count = count + 1
  redis.call('HSET', KEYS[1], 'ends', string.format('%.0f', ends), 'count', count)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  return {1, limit - count, 0, reset}
end
return {0, 0, reset, reset}
";

/// KEYS[1] = TAT; ARGV = capacity, interval µs. Returns
/// {allowed, remaining, retry_after µs, reset_after µs}.
const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = interval * capacity
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local base = math.max(tat, now)
local new_tat = base + interval
local allowed_from = new_tat - burst
if now >= allowed_from then
  local ahead = new_tat - now
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  local remaining = math.floor(math.max(burst - ahead, 0) / interval)
  return {1, remaining, 0, ahead}
end
return {0, 0, allowed_from - now, base - now}
";

/// KEYS[1] = next departure; ARGV = queue, interval µs. Returns
/// {allowed, remaining, retry_after µs, reset_after µs, delay µs}.
const LEAKY_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local queue = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local nxt = tonumber(redis.call('GET', KEYS[1])) or now
local leaves_at = math.max(nxt, now)
local delay = leaves_at - now
local ahead = math.ceil(delay / interval)
if ahead <= queue then
  local after = leaves_at + interval
  redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.ceil((after - now) / 1000) + 1)
  local waiting = math.ceil((after - now) / interval) - 1
  return {1, math.max(queue - waiting, 0), 0, after - now, delay}
end
local full_until = leaves_at - interval * queue
return {0, 0, math.max(full_until - now, 1), delay, 0}
";

/// [`RateLimiter`] on Redis (standalone or cluster).
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    conn: RedisConnection,
    fixed_window: redis::Script,
    token_bucket: redis::Script,
    leaky_bucket: redis::Script,
    fail_closed: bool,
}

impl RedisRateLimiter {
    /// A limiter that fails open (allows) while Redis is unreachable.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            fixed_window: redis::Script::new(FIXED_WINDOW),
            token_bucket: redis::Script::new(TOKEN_BUCKET),
            leaky_bucket: redis::Script::new(LEAKY_BUCKET),
            fail_closed: false,
        }
    }

    /// Refuse (`fail_closed = true`) instead of allowing while Redis is
    /// unreachable: for limits that protect something more than the
    /// service's own capacity (password guessing).
    pub fn fail_closed(mut self, fail_closed: bool) -> Self {
        self.fail_closed = fail_closed;
        self
    }

    async fn decide(&self, policy: &RatePolicy, key: &str) -> redis::RedisResult<RateDecision> {
        let redis_key = self.conn.key(&format!("ratelimit:{}:{key}", policy.name));
        match &policy.algorithm {
            Algorithm::FixedWindow { limit, window } => {
                let window_us = u64::try_from(window.as_micros())
                    .unwrap_or(NEVER_US)
                    .clamp(1, NEVER_US);
                let (allowed, remaining, retry, reset): (i64, i64, i64, i64) = self
                    .conn
                    .invoke(self.fixed_window.key(&redis_key).arg(limit).arg(window_us))
                    .await?;
                Ok(RateDecision {
                    allowed: allowed == 1,
                    limit: *limit,
                    remaining: clamp_u32(remaining),
                    retry_after: micros(retry),
                    reset_after: micros(reset),
                    delay: Duration::ZERO,
                })
            }
            Algorithm::TokenBucket {
                capacity,
                refill_per_second,
            } => {
                let (allowed, remaining, retry, reset): (i64, i64, i64, i64) = self
                    .conn
                    .invoke(
                        self.token_bucket
                            .key(&redis_key)
                            .arg(capacity)
                            .arg(interval_us(*refill_per_second)),
                    )
                    .await?;
                Ok(RateDecision {
                    allowed: allowed == 1,
                    limit: *capacity,
                    remaining: clamp_u32(remaining),
                    retry_after: micros(retry),
                    reset_after: micros(reset),
                    delay: Duration::ZERO,
                })
            }
            Algorithm::LeakyBucket {
                rate_per_second,
                queue,
            } => {
                let interval = interval_us(*rate_per_second);
                // A queue that never drains must not hold anyone.
                let queue_len = if interval >= NEVER_US { 0 } else { *queue };
                let (allowed, remaining, retry, reset, delay): (i64, i64, i64, i64, i64) = self
                    .conn
                    .invoke(
                        self.leaky_bucket
                            .key(&redis_key)
                            .arg(queue_len)
                            .arg(interval),
                    )
                    .await?;
                Ok(RateDecision {
                    allowed: allowed == 1,
                    limit: *queue,
                    remaining: clamp_u32(remaining),
                    retry_after: micros(retry),
                    reset_after: micros(reset),
                    delay: micros(delay),
                })
            }
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, policy: &RatePolicy, key: &str) -> RateDecision {
        match self.decide(policy, key).await {
            Ok(decision) => decision,
            Err(error) => {
                metrics::counter!(
                    "orderflow_rate_limiter_unavailable_total",
                    "policy" => policy.name.clone(),
                    "outcome" => if self.fail_closed { "refused" } else { "allowed" },
                )
                .increment(1);
                tracing::warn!(
                    policy = %policy.name,
                    error = %error,
                    fail_closed = self.fail_closed,
                    "rate limiter: Redis unreachable, {}",
                    if self.fail_closed { "refusing" } else { "allowing" }
                );
                let (limit, window) = policy.quota();
                RateDecision {
                    allowed: !self.fail_closed,
                    limit,
                    remaining: 0,
                    retry_after: if self.fail_closed {
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    },
                    reset_after: window,
                    delay: Duration::ZERO,
                }
            }
        }
    }
}

/// `1 / rate` seconds in microseconds, at least one; [`NEVER_US`] for a rate
/// that is zero, negative or not a number.
fn interval_us(rate_per_second: f64) -> u64 {
    if !(rate_per_second.is_finite() && rate_per_second > 0.0) {
        return NEVER_US;
    }
    let us = (1_000_000.0 / rate_per_second).round();
    if us >= NEVER_US as f64 {
        NEVER_US
    } else {
        (us as u64).max(1)
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn clamp_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}
