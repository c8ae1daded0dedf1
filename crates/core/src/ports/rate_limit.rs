//! Rate limiting. A policy names an algorithm and its numbers; the limiter
//! answers for one key (a client IP or a user id) under one policy.

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    /// At most `limit` requests per `window`, counted in fixed windows.
    FixedWindow { limit: u32, window: Duration },
    /// Bursts up to `capacity`, refilled at `refill_per_second`.
    TokenBucket {
        capacity: u32,
        refill_per_second: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    /// Stable name, used in keys, metrics and the `RateLimit-Policy` header.
    pub name: String,
    pub algorithm: Algorithm,
}

impl RatePolicy {
    /// The nominal limit and window, for the `RateLimit-Policy` header.
    pub fn quota(&self) -> (u32, Duration) {
        match &self.algorithm {
            Algorithm::FixedWindow { limit, window } => (*limit, *window),
            Algorithm::TokenBucket {
                capacity,
                refill_per_second,
            } => {
                let seconds = (*capacity as f64 / refill_per_second.max(f64::MIN_POSITIVE)).ceil();
                (*capacity, Duration::from_secs_f64(seconds.max(1.0)))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the caller may try again (zero when allowed) or the window resets.
    pub retry_after: Duration,
    pub reset_after: Duration,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn check(&self, policy: &RatePolicy, key: &str) -> RateDecision;
}
