//! The embedded rate limiter: per-key counters held in process.
//!
//! With one process (the embedded setup) every request passes through the
//! same memory, so the limiter needs no shared store; the Redis adapter exists
//! for when several API processes must share one budget. Losing this state on
//! a restart only gives clients a fresh budget, which DESIGN.md §3 allows.
//!
//! The three algorithms of the port:
//! - **Fixed window**: at most `limit` requests per `window`. A key's window
//!   starts at its first request and lasts `window` (the same semantics as the
//!   usual Redis `INCR` + `PEXPIRE`), so `reset_after` is exact.
//! - **Token bucket**: bursts up to `capacity`, refilled at `refill_per_second`.
//!   It is implemented as GCRA (the "generic cell rate algorithm"): instead of
//!   a token count it keeps the *theoretical arrival time* (TAT) at which the
//!   bucket will be full again. That is one duration per key, refilling is
//!   implicit, and all arithmetic is on whole nanoseconds, so the
//!   `retry_after` it answers is exactly when the next request passes.
//! - **Leaky bucket** (as a queue): requests leave at `rate_per_second`,
//!   evenly spaced. The state is one duration per key, the time the next
//!   request may leave (`next`). A request arriving at `now` leaves at
//!   `max(now, next)`: it is allowed with that wait as its `delay` if at most
//!   `queue` requests are ahead of it, otherwise refused with the time until
//!   a place frees up. Like GCRA it needs no timer and no task: waiting is
//!   the caller's (the middleware sleeps `delay`).
//!
//! Memory is bounded. A key whose window has ended, or whose bucket is full
//! again, carries no information: dropping it changes no future decision.
//! Such idle keys are swept once a minute. If more than `max_keys` keys are
//! busy at once (a flood of distinct client IPs), the least recently seen are
//! evicted, which at worst hands those clients a fresh budget early.
//!
//! Time is `tokio::time::Instant`, so tests drive the limiter with paused time.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::rate_limit::{Algorithm, RateDecision, RateLimiter, RatePolicy};
use tokio::time::Instant;

/// How many keys are tracked by default, across all policies.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// How often each shard drops its idle keys.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Shards split the lock so concurrent requests on different keys rarely
/// wait for each other. Small limiters use one shard so the bound is exact.
const SHARDS: usize = 16;
const SHARDED_ABOVE: usize = 1_024;
/// The emission interval of a bucket that never refills (a zero or invalid
/// rate): long enough to mean "never", small enough to add without overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A rate limiter for one process. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct InProcessRateLimiter {
    /// Times are kept as offsets from this instant: plain durations, no
    /// overflow-prone `Instant` arithmetic.
    epoch: Instant,
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Shard {
    /// One slot per (policy, key), found by its hash and parts: a decision
    /// hashes the parts once and allocates nothing for a key it has seen.
    entries: hashbrown::HashTable<Slot>,
    last_sweep: Duration,
}

/// A tracked key: its hash (kept, so growing the table hashes nothing
/// again), `"{policy}\u{1f}{key}"` and its state.
#[derive(Debug)]
struct Slot {
    hash: u64,
    id: Box<str>,
    entry: Entry,
}

impl Slot {
    /// True when this is the slot of `key` under policy `policy`.
    fn is(&self, policy: &str, key: &str) -> bool {
        self.id.len() == policy.len() + 1 + key.len()
            && self.id.starts_with(policy)
            && self.id[policy.len()..].starts_with('\u{1f}')
            && self.id.ends_with(key)
    }
}

#[derive(Debug)]
struct Entry {
    state: State,
    last_seen: Duration,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// The current window ends at `ends` and has let `count` requests pass.
    Window { ends: Duration, count: u32 },
    /// When the bucket will be full again (GCRA's theoretical arrival time).
    Bucket { tat: Duration },
    /// When the next request may leave the queue.
    Queue { next: Duration },
}

impl State {
    /// True when forgetting this state changes no decision: the window is
    /// over, or the bucket is full again.
    fn is_idle(&self, now: Duration) -> bool {
        match *self {
            State::Window { ends, .. } => ends <= now,
            State::Bucket { tat } => tat <= now,
            State::Queue { next } => next <= now,
        }
    }
}

impl Default for InProcessRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessRateLimiter {
    /// Tracks up to [`DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// Tracks up to `max_keys` keys (at least one).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let shard_count = if max_keys > SHARDED_ABOVE { SHARDS } else { 1 };
        let shards = (0..shard_count)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Self {
            epoch: Instant::now(),
            shards,
            shard_capacity: max_keys.div_ceil(shard_count),
            hasher: RandomState::new(),
        }
    }

    /// How many keys are tracked now (idle ones included until swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    /// The decision for `key` under `policy` at `now` (an offset from the epoch).
    fn decide(&self, policy: &RatePolicy, key: &str, now: Duration) -> RateDecision {
        // SipHash, keyed per limiter, as std's maps: the key is the client's
        // address, which a client with an IPv6 block chooses freely.
        let hash = {
            let mut hasher = self.hasher.build_hasher();
            hasher.write(policy.name.as_bytes());
            hasher.write_u8(0x1f);
            hasher.write(key.as_bytes());
            hasher.finish()
        };
        // The table picks buckets by the hash's low bits; the shard by others.
        let shard = &self.shards[(hash >> 32) as usize % self.shards.len()];
        let mut shard = lock(shard);
        shard.sweep_if_due(now);
        let name = policy.name.as_str();
        let is_key = |slot: &Slot| slot.is(name, key);
        if shard.entries.len() >= self.shard_capacity && shard.entries.find(hash, is_key).is_none()
        {
            shard.make_room(now, self.shard_capacity);
        }
        let slot = match shard.entries.entry(hash, is_key, |slot| slot.hash) {
            hashbrown::hash_table::Entry::Occupied(seen) => seen.into_mut(),
            hashbrown::hash_table::Entry::Vacant(new) => {
                let id = [name, "\u{1f}", key].concat().into_boxed_str();
                let state = fresh(&policy.algorithm, now);
                new.insert(Slot {
                    hash,
                    id,
                    entry: Entry {
                        state,
                        last_seen: now,
                    },
                })
                .into_mut()
            }
        };
        let entry = &mut slot.entry;
        entry.last_seen = now;
        match &policy.algorithm {
            Algorithm::FixedWindow { limit, window } => {
                fixed_window(&mut entry.state, *limit, *window, now)
            }
            Algorithm::TokenBucket {
                capacity,
                refill_per_second,
            } => token_bucket(&mut entry.state, *capacity, *refill_per_second, now),
            Algorithm::LeakyBucket {
                rate_per_second,
                queue,
            } => leaky_bucket(&mut entry.state, *rate_per_second, *queue, now),
        }
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn check(&self, policy: &RatePolicy, key: &str) -> RateDecision {
        self.decide(policy, key, self.now())
    }

    fn check_now(&self, policy: &RatePolicy, key: &str) -> Option<RateDecision> {
        Some(self.decide(policy, key, self.now()))
    }
}

impl Shard {
    fn sweep_if_due(&mut self, now: Duration) {
        if now.saturating_sub(self.last_sweep) >= SWEEP_INTERVAL {
            self.sweep(now);
        }
    }

    /// Drops idle keys; lossless.
    fn sweep(&mut self, now: Duration) {
        self.last_sweep = now;
        self.entries.retain(|slot| !slot.entry.state.is_idle(now));
    }

    /// Frees room for one more key: first the idle ones, then, if every key
    /// is busy, the least recently seen eighth (so a flood of new keys pays
    /// for this scan once per many insertions, not on each).
    fn make_room(&mut self, now: Duration, capacity: usize) {
        self.sweep(now);
        if self.entries.len() < capacity {
            return;
        }
        let evict = (self.entries.len() + 1 - capacity)
            .max(capacity / 8)
            .min(self.entries.len());
        // The `evict`-th oldest sighting: keys seen before it go, and of
        // those seen at it exactly, as many as it takes.
        let mut seen: Vec<Duration> = self.entries.iter().map(|s| s.entry.last_seen).collect();
        let (_, &mut cutoff, _) = seen.select_nth_unstable(evict - 1);
        let mut at_cutoff = evict - seen.iter().filter(|&&t| t < cutoff).count();
        self.entries
            .retain(|slot| match slot.entry.last_seen.cmp(&cutoff) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal if at_cutoff > 0 => {
                    at_cutoff -= 1;
                    false
                }
                _ => true,
            });
        metrics::counter!("orderflow_rate_limit_evictions_total").increment(evict as u64);
    }
}

/// The state of a key seen for the first time: an ended window, a full bucket.
fn fresh(algorithm: &Algorithm, now: Duration) -> State {
    match algorithm {
        Algorithm::FixedWindow { .. } => State::Window {
            ends: now,
            count: 0,
        },
        Algorithm::TokenBucket { .. } => State::Bucket { tat: now },
        Algorithm::LeakyBucket { .. } => State::Queue { next: now },
    }
}

fn fixed_window(state: &mut State, limit: u32, window: Duration, now: Duration) -> RateDecision {
    // A new key, or a policy that changed algorithm under the same name,
    // starts with an ended window.
    let (mut ends, mut count) = match *state {
        State::Window { ends, count } => (ends, count),
        State::Bucket { .. } | State::Queue { .. } => (now, 0),
    };
    if ends <= now {
        ends = now.saturating_add(window);
        count = 0;
    }
    let reset_after = ends - now;
    let decision = if count < limit {
        count += 1;
        RateDecision {
            allowed: true,
            limit,
            remaining: limit - count,
            retry_after: Duration::ZERO,
            reset_after,
            delay: Duration::ZERO,
        }
    } else {
        RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            retry_after: reset_after,
            reset_after,
            delay: Duration::ZERO,
        }
    };
    *state = State::Window { ends, count };
    decision
}

fn token_bucket(
    state: &mut State,
    capacity: u32,
    refill_per_second: f64,
    now: Duration,
) -> RateDecision {
    // A new key (or one that was a window) has a full bucket: its TAT is now.
    let tat = match *state {
        State::Bucket { tat } => tat,
        State::Window { .. } | State::Queue { .. } => now,
    };
    // One token's worth of time, and the whole bucket's.
    let interval = emission_interval(refill_per_second);
    let burst = interval.saturating_mul(capacity);
    let base = tat.max(now);
    let new_tat = base.saturating_add(interval);
    // The request passes when, after taking its token, the bucket is not
    // "more than empty": the new TAT is at most one burst ahead of now.
    let allowed_from = new_tat.saturating_sub(burst);
    if now >= allowed_from {
        *state = State::Bucket { tat: new_tat };
        let ahead = new_tat - now;
        let remaining = (burst.saturating_sub(ahead).as_nanos() / interval.as_nanos()) as u32;
        RateDecision {
            allowed: true,
            limit: capacity,
            remaining,
            retry_after: Duration::ZERO,
            reset_after: ahead,
            delay: Duration::ZERO,
        }
    } else {
        *state = State::Bucket { tat: base };
        RateDecision {
            allowed: false,
            limit: capacity,
            remaining: 0,
            retry_after: allowed_from - now,
            reset_after: base - now,
            delay: Duration::ZERO,
        }
    }
}

fn leaky_bucket(
    state: &mut State,
    rate_per_second: f64,
    queue: u32,
    now: Duration,
) -> RateDecision {
    let next = match *state {
        State::Queue { next } => next,
        State::Window { .. } | State::Bucket { .. } => now,
    };
    let interval = emission_interval(rate_per_second);
    // A queue that never drains must not hold anyone: refuse instead.
    let queue = if interval >= NEVER { 0 } else { queue };
    // This request leaves when the queue ahead of it has drained.
    let leaves_at = next.max(now);
    let delay = leaves_at - now;
    // Requests ahead of it: each holds the queue for one interval.
    let ahead = delay.as_nanos().div_ceil(interval.as_nanos());
    if ahead <= u128::from(queue) {
        let next = leaves_at.saturating_add(interval);
        *state = State::Queue { next };
        // Places left for requests arriving now, after this one.
        let waiting = (next - now).as_nanos().div_ceil(interval.as_nanos()) - 1;
        RateDecision {
            allowed: true,
            limit: queue,
            remaining: u32::try_from(u128::from(queue).saturating_sub(waiting)).unwrap_or(0),
            retry_after: Duration::ZERO,
            reset_after: next - now,
            delay,
        }
    } else {
        *state = State::Queue { next: leaves_at };
        // A place frees when the request `queue` places ahead leaves.
        let full_until = leaves_at.saturating_sub(interval.saturating_mul(queue));
        RateDecision {
            allowed: false,
            limit: queue,
            remaining: 0,
            retry_after: full_until.saturating_sub(now).max(Duration::from_nanos(1)),
            reset_after: delay,
            delay: Duration::ZERO,
        }
    }
}

/// `1 / rate` seconds, at least a nanosecond; [`NEVER`] for a rate that is
/// zero, negative or not a number.
fn emission_interval(refill_per_second: f64) -> Duration {
    if !(refill_per_second.is_finite() && refill_per_second > 0.0) {
        return NEVER;
    }
    Duration::try_from_secs_f64(1.0 / refill_per_second)
        .map_or(NEVER, |d| d.clamp(Duration::from_nanos(1), NEVER))
}

/// Locks, ignoring poisoning: every update leaves an entry consistent.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(capacity: u32, rate: f64) -> RatePolicy {
        RatePolicy {
            name: "b".into(),
            algorithm: Algorithm::TokenBucket {
                capacity,
                refill_per_second: rate,
            },
        }
    }

    #[test]
    fn a_zero_rate_bucket_never_refills_and_never_panics() {
        let limiter = InProcessRateLimiter::new();
        let policy = bucket(2, 0.0);
        assert!(limiter.decide(&policy, "k", Duration::ZERO).allowed);
        assert!(limiter.decide(&policy, "k", Duration::ZERO).allowed);
        let denied = limiter.decide(&policy, "k", Duration::from_secs(3600));
        assert!(!denied.allowed);
        assert!(denied.retry_after > Duration::from_secs(3600));
    }

    #[test]
    fn sub_nanosecond_intervals_do_not_divide_by_zero() {
        let limiter = InProcessRateLimiter::new();
        let decision = limiter.decide(&bucket(3, 1e12), "k", Duration::ZERO);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 2);
    }

    #[test]
    fn a_policy_that_changes_algorithm_starts_afresh() {
        let limiter = InProcessRateLimiter::new();
        let window = RatePolicy {
            name: "b".into(),
            algorithm: Algorithm::FixedWindow {
                limit: 1,
                window: Duration::from_secs(60),
            },
        };
        assert!(limiter.decide(&window, "k", Duration::ZERO).allowed);
        assert!(!limiter.decide(&window, "k", Duration::ZERO).allowed);
        let decision = limiter.decide(&bucket(5, 1.0), "k", Duration::ZERO);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 4);
    }

    #[test]
    fn a_full_limiter_evicts_the_least_recently_seen() {
        // One shard of 16 keys: room for a new key evicts an eighth, two.
        let limiter = InProcessRateLimiter::with_max_keys(16);
        let policy = RatePolicy {
            name: "w".into(),
            algorithm: Algorithm::FixedWindow {
                limit: 5,
                window: Duration::from_secs(60),
            },
        };
        let ms = Duration::from_millis;
        for i in 0..16 {
            limiter.decide(&policy, &format!("k{i}"), ms(i));
        }
        limiter.decide(&policy, "k0", ms(100));
        limiter.decide(&policy, "new", ms(200));
        assert_eq!(limiter.len(), 15, "two evicted, one added");
        let remaining = |key: &str| limiter.decide(&policy, key, ms(300)).remaining;
        assert_eq!(remaining("k0"), 2, "seen last, kept with its count");
        assert_eq!(remaining("k3"), 3, "kept");
        assert_eq!(remaining("k1"), 4, "the oldest: evicted, a fresh window");
    }

    #[test]
    fn idle_keys_are_swept_once_a_minute() {
        // One shard, so the sweep sees every key.
        let limiter = InProcessRateLimiter::with_max_keys(10);
        let policy = bucket(5, 10.0);
        for key in ["a", "b", "c"] {
            limiter.decide(&policy, key, Duration::from_secs(1));
        }
        assert_eq!(limiter.len(), 3);
        // Long after the buckets refilled, the next check sweeps them out.
        limiter.decide(&policy, "d", Duration::from_secs(120));
        assert_eq!(limiter.len(), 1);
    }
}
