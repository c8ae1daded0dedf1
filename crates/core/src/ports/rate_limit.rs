//! Rate limiting. A policy names an algorithm and its numbers; the limiter
//! answers for one key (a client IP or a user id) under one policy.
//!
//! The three algorithms of the notes, each with its own purpose:
//! - [`Algorithm::FixedWindow`]: a hard cap per window (login attempts).
//!   Simple and exact, at the price of allowing up to twice the limit around
//!   a window edge.
//! - [`Algorithm::TokenBucket`]: a sustained rate with bursts up to the
//!   bucket size (a catalog page load fetching many things at once).
//! - [`Algorithm::LeakyBucket`]: smooths. Requests leave at a steady rate;
//!   one over the rate is not refused but *waits* (the decision's `delay`) in
//!   a bounded queue, and only a request that finds the queue full is refused.
//!
//! Every algorithm needs one number or two per key, so an adapter can keep
//! them in process (the embedded setup) or in Redis (one atomic script per
//! decision) with the same semantics.

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
    /// Requests pass at `rate_per_second`, evenly spaced; up to `queue`
    /// requests over the rate wait for their turn, more are refused.
    LeakyBucket { rate_per_second: f64, queue: u32 },
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
            // What passes in a second, or one per the time one takes.
            Algorithm::LeakyBucket {
                rate_per_second, ..
            } => {
                if *rate_per_second >= 1.0 {
                    (rate_per_second.floor() as u32, Duration::from_secs(1))
                } else {
                    let seconds = (1.0 / rate_per_second.max(f64::MIN_POSITIVE)).ceil();
                    (1, Duration::from_secs_f64(seconds.min(1e9)))
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The nominal limit: window limit, bucket capacity, or queue size.
    pub limit: u32,
    /// Requests that would still pass (or, for a leaky bucket, queue) now.
    pub remaining: u32,
    /// When the caller may try again (zero when allowed) or the window resets.
    pub retry_after: Duration,
    /// When the key is back to its full budget (window end, full bucket,
    /// empty queue).
    pub reset_after: Duration,
    /// How long an allowed request must wait before it is served (leaky
    /// bucket: its place in the queue); zero for the other algorithms.
    pub delay: Duration,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn check(&self, policy: &RatePolicy, key: &str) -> RateDecision;

    /// The decision made at once, by a limiter whose counts live in this
    /// process: no future to box, nothing to wait for. Same semantics as
    /// [`check`](Self::check); `None` (the default) means "ask `check`".
    /// The request path tries it first: it decides every rate-limited
    /// request, and the boxed future of `check` cost each one an allocation.
    fn check_now(&self, _policy: &RatePolicy, _key: &str) -> Option<RateDecision> {
        None
    }
}
