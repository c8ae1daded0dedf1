//! The in-process adapters: the rate limiter (driven with tokio's paused
//! clock, so window edges and refills are exact and instant) and the
//! revocation list (against a real SQLite database in a temporary directory).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use orderflow_adapters::memory::{DbBackedRevocations, InProcessRateLimiter};
use orderflow_adapters::sqlite::SqliteStore;
use orderflow_core::contract::in_minutes;
use orderflow_core::ports::rate_limit::{Algorithm, RateDecision, RateLimiter, RatePolicy};
use orderflow_core::ports::revocations::RevocationList;
use orderflow_core::ports::store::Store;
use tokio::time::advance;

fn fixed(limit: u32, window_secs: u64) -> RatePolicy {
    RatePolicy {
        name: "fixed".into(),
        algorithm: Algorithm::FixedWindow {
            limit,
            window: Duration::from_secs(window_secs),
        },
    }
}

fn bucket(capacity: u32, refill_per_second: f64) -> RatePolicy {
    RatePolicy {
        name: "bucket".into(),
        algorithm: Algorithm::TokenBucket {
            capacity,
            refill_per_second,
        },
    }
}

fn allowed(limit: u32, remaining: u32, reset_after: Duration) -> RateDecision {
    RateDecision {
        allowed: true,
        limit,
        remaining,
        retry_after: Duration::ZERO,
        reset_after,
        delay: Duration::ZERO,
    }
}

fn denied(limit: u32, retry_after: Duration, reset_after: Duration) -> RateDecision {
    RateDecision {
        allowed: false,
        limit,
        remaining: 0,
        retry_after,
        reset_after,
        delay: Duration::ZERO,
    }
}

fn leaky(rate_per_second: f64, queue: u32) -> RatePolicy {
    RatePolicy {
        name: "leaky".into(),
        algorithm: Algorithm::LeakyBucket {
            rate_per_second,
            queue,
        },
    }
}

/// An allowed leaky-bucket decision that waits `delay` in the queue.
fn queued(queue: u32, remaining: u32, delay: Duration, reset_after: Duration) -> RateDecision {
    RateDecision {
        allowed: true,
        limit: queue,
        remaining,
        retry_after: Duration::ZERO,
        reset_after,
        delay,
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

// --- fixed window ---

#[tokio::test(start_paused = true)]
async fn fixed_window_counts_down_then_refuses_until_the_window_ends() {
    let limiter = InProcessRateLimiter::new();
    let policy = fixed(3, 10);
    assert_eq!(limiter.check(&policy, "ip").await, allowed(3, 2, S(10)));
    advance(S(1)).await;
    assert_eq!(limiter.check(&policy, "ip").await, allowed(3, 1, S(9)));
    assert_eq!(limiter.check(&policy, "ip").await, allowed(3, 0, S(9)));
    advance(S(2)).await;
    assert_eq!(limiter.check(&policy, "ip").await, denied(3, S(7), S(7)));
    // A refused request does not extend the window.
    advance(S(6)).await;
    assert_eq!(limiter.check(&policy, "ip").await, denied(3, S(1), S(1)));
}

#[tokio::test(start_paused = true)]
async fn fixed_window_edges_are_exact() {
    let limiter = InProcessRateLimiter::new();
    let policy = fixed(2, 1);
    assert!(limiter.check(&policy, "k").await.allowed);
    assert!(limiter.check(&policy, "k").await.allowed);
    // One millisecond before the end: still refused, and told so precisely.
    advance(MS(999)).await;
    assert_eq!(limiter.check(&policy, "k").await, denied(2, MS(1), MS(1)));
    // At the end: a fresh window with the full budget.
    advance(MS(1)).await;
    assert_eq!(limiter.check(&policy, "k").await, allowed(2, 1, S(1)));
}

#[tokio::test(start_paused = true)]
async fn fixed_window_keys_and_policies_are_independent() {
    let limiter = InProcessRateLimiter::new();
    let login = RatePolicy {
        name: "login".into(),
        ..fixed(1, 60)
    };
    let orders = RatePolicy {
        name: "orders".into(),
        ..fixed(1, 60)
    };
    assert!(limiter.check(&login, "10.0.0.1").await.allowed);
    assert!(!limiter.check(&login, "10.0.0.1").await.allowed);
    assert!(limiter.check(&login, "10.0.0.2").await.allowed);
    assert!(limiter.check(&orders, "10.0.0.1").await.allowed);
}

#[tokio::test(start_paused = true)]
async fn a_zero_limit_refuses_everything() {
    let limiter = InProcessRateLimiter::new();
    assert_eq!(
        limiter.check(&fixed(0, 5), "k").await,
        denied(0, S(5), S(5))
    );
}

// --- token bucket ---

#[tokio::test(start_paused = true)]
async fn token_bucket_allows_a_burst_up_to_capacity() {
    let limiter = InProcessRateLimiter::new();
    let policy = bucket(5, 1.0);
    for remaining in (0..5).rev() {
        let decision = limiter.check(&policy, "user").await;
        assert!(decision.allowed);
        assert_eq!(decision.remaining, remaining);
        assert_eq!(decision.limit, 5);
    }
    // Empty: the next token comes in one second, the bucket is full in five.
    assert_eq!(limiter.check(&policy, "user").await, denied(5, S(1), S(5)));
}

#[tokio::test(start_paused = true)]
async fn token_bucket_refills_at_its_rate() {
    let limiter = InProcessRateLimiter::new();
    let policy = bucket(4, 2.0); // a token every 500 ms
    for _ in 0..4 {
        assert!(limiter.check(&policy, "k").await.allowed);
    }
    assert_eq!(limiter.check(&policy, "k").await, denied(4, MS(500), S(2)));
    advance(MS(499)).await;
    assert_eq!(
        limiter.check(&policy, "k").await,
        denied(4, MS(1), MS(1501))
    );
    // Exactly when `retry_after` said.
    advance(MS(1)).await;
    assert_eq!(limiter.check(&policy, "k").await, allowed(4, 0, S(2)));
    // Three tokens' worth of time gives three requests, not more.
    advance(MS(1500)).await;
    for remaining in (0..3).rev() {
        assert_eq!(limiter.check(&policy, "k").await.remaining, remaining);
    }
    assert!(!limiter.check(&policy, "k").await.allowed);
}

#[tokio::test(start_paused = true)]
async fn token_bucket_never_holds_more_than_capacity() {
    let limiter = InProcessRateLimiter::new();
    let policy = bucket(3, 10.0);
    assert!(limiter.check(&policy, "k").await.allowed);
    // An hour of refill still only fills three tokens.
    advance(S(3600)).await;
    let mut passed = 0;
    while limiter.check(&policy, "k").await.allowed {
        passed += 1;
    }
    assert_eq!(passed, 3);
}

#[tokio::test(start_paused = true)]
async fn token_bucket_reports_time_until_full_as_reset() {
    let limiter = InProcessRateLimiter::new();
    let policy = bucket(10, 5.0); // 200 ms per token
    assert_eq!(limiter.check(&policy, "k").await, allowed(10, 9, MS(200)));
    assert_eq!(limiter.check(&policy, "k").await, allowed(10, 8, MS(400)));
    advance(MS(100)).await;
    // Half a token refilled: still 8 whole ones left after this request's.
    assert_eq!(limiter.check(&policy, "k").await, allowed(10, 7, MS(500)));
}

// --- leaky bucket ---

#[tokio::test(start_paused = true)]
async fn leaky_bucket_queues_requests_over_the_rate_instead_of_refusing() {
    let limiter = InProcessRateLimiter::new();
    let policy = leaky(2.0, 3); // one every 500 ms, three may wait
    // The first passes at once; the next three wait their turn, evenly spaced.
    assert_eq!(
        limiter.check(&policy, "u").await,
        queued(3, 3, S(0), MS(500))
    );
    assert_eq!(
        limiter.check(&policy, "u").await,
        queued(3, 2, MS(500), S(1))
    );
    assert_eq!(
        limiter.check(&policy, "u").await,
        queued(3, 1, S(1), MS(1500))
    );
    assert_eq!(
        limiter.check(&policy, "u").await,
        queued(3, 0, MS(1500), S(2))
    );
    // The queue is full: refused until the first queued one leaves.
    assert_eq!(limiter.check(&policy, "u").await, denied(3, MS(500), S(2)));
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_frees_a_place_exactly_when_one_leaves() {
    let limiter = InProcessRateLimiter::new();
    let policy = leaky(4.0, 1); // one every 250 ms, one may wait
    assert!(limiter.check(&policy, "u").await.allowed);
    assert_eq!(limiter.check(&policy, "u").await.delay, MS(250));
    assert_eq!(
        limiter.check(&policy, "u").await,
        denied(1, MS(250), MS(500))
    );
    advance(MS(249)).await;
    assert_eq!(limiter.check(&policy, "u").await, denied(1, MS(1), MS(251)));
    advance(MS(1)).await;
    // Its place in the queue: behind the one leaving at 500 ms.
    assert_eq!(
        limiter.check(&policy, "u").await,
        queued(1, 0, MS(250), MS(500))
    );
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_output_is_smooth_whatever_the_arrivals() {
    let limiter = InProcessRateLimiter::new();
    let policy = leaky(10.0, 100);
    // A burst of 20 at once leaves as one request every 100 ms.
    let mut leaves = Vec::new();
    for _ in 0..20 {
        let decision = limiter.check(&policy, "u").await;
        assert!(decision.allowed);
        leaves.push(decision.delay);
    }
    for (i, delay) in leaves.iter().enumerate() {
        assert_eq!(*delay, MS(100 * i as u64));
    }
    // Idle for long enough, the queue is empty and nothing waits.
    advance(S(2)).await;
    assert_eq!(limiter.check(&policy, "u").await.delay, S(0));
    // Requests spaced at the rate never wait.
    for _ in 0..5 {
        advance(MS(100)).await;
        assert_eq!(limiter.check(&policy, "u").await.delay, S(0));
    }
}

#[tokio::test(start_paused = true)]
async fn a_leaky_bucket_without_a_queue_is_a_strict_rate() {
    let limiter = InProcessRateLimiter::new();
    let policy = leaky(1.0, 0);
    assert!(limiter.check(&policy, "u").await.allowed);
    assert_eq!(limiter.check(&policy, "u").await, denied(0, S(1), S(1)));
    advance(S(1)).await;
    assert_eq!(limiter.check(&policy, "u").await, queued(0, 0, S(0), S(1)));
    // A zero rate never drains, so nothing may queue for it.
    let never = leaky(0.0, 5);
    assert!(limiter.check(&never, "v").await.allowed);
    assert!(!limiter.check(&never, "v").await.allowed);
}

// --- memory bound ---

#[tokio::test(start_paused = true)]
async fn idle_keys_are_dropped_and_busy_keys_are_bounded() {
    let limiter = InProcessRateLimiter::with_max_keys(100);
    let policy = fixed(5, 10);
    for i in 0..100 {
        limiter.check(&policy, &format!("client-{i}")).await;
    }
    assert_eq!(limiter.len(), 100);
    // Every key is busy (its window is open): room is made by evicting the
    // least recently seen, and the bound holds.
    for i in 100..250 {
        limiter.check(&policy, &format!("client-{i}")).await;
        assert!(limiter.len() <= 100, "{} keys tracked", limiter.len());
    }
    // A recent key kept its count.
    assert_eq!(limiter.check(&policy, "client-249").await.remaining, 3);
    // Once the windows are over, the keys carry nothing and are swept.
    advance(S(61)).await;
    limiter.check(&policy, "late").await;
    assert_eq!(limiter.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_never_overspend_the_budget() {
    let limiter = Arc::new(InProcessRateLimiter::new());
    // A token every 1000 s: nothing refills while the test runs.
    let policy = bucket(50, 0.001);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let policy = policy.clone();
            tokio::spawn(async move { limiter.check(&policy, "shared").await.allowed })
        })
        .collect();
    let mut passed = 0;
    for task in tasks {
        passed += usize::from(task.await.unwrap());
    }
    assert_eq!(passed, 50);
}

// --- revocations ---

async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("revocations.db").display());
    let store = SqliteStore::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    (dir, Arc::new(store))
}

#[tokio::test]
async fn a_revoked_token_is_revoked_until_it_expires() {
    let (_dir, store) = store().await;
    let revocations = DbBackedRevocations::load(store.clone()).await.unwrap();
    assert!(!revocations.is_revoked("jti-1").await.unwrap());

    revocations.revoke("jti-1", in_minutes(15)).await.unwrap();
    assert!(revocations.is_revoked("jti-1").await.unwrap());
    assert!(!revocations.is_revoked("jti-2").await.unwrap());
    // Written to the database, the source of truth.
    assert!(store.is_revoked("jti-1", Utc::now()).await.unwrap());
}

#[tokio::test]
async fn a_token_already_expired_is_not_kept() {
    let (_dir, store) = store().await;
    let revocations = DbBackedRevocations::load(store.clone()).await.unwrap();
    revocations
        .revoke("old", Utc::now() - TimeDelta::seconds(1))
        .await
        .unwrap();
    assert!(!revocations.is_revoked("old").await.unwrap());
    assert!(revocations.is_empty());
}

#[tokio::test]
async fn a_restart_remembers_revocations_from_the_database() {
    let (_dir, store) = store().await;
    let first = DbBackedRevocations::load(store.clone()).await.unwrap();
    first.revoke("jti-a", in_minutes(15)).await.unwrap();
    first.revoke("jti-b", in_minutes(5)).await.unwrap();
    drop(first);

    // A new process: memory is empty until warmed from the database.
    let second = DbBackedRevocations::load(store.clone()).await.unwrap();
    assert_eq!(second.len(), 2);
    assert!(second.is_revoked("jti-a").await.unwrap());
    assert!(second.is_revoked("jti-b").await.unwrap());
}

#[tokio::test]
async fn refresh_picks_up_revocations_made_elsewhere() {
    let (_dir, store) = store().await;
    let revocations = DbBackedRevocations::load(store.clone()).await.unwrap();
    // Another process (same database) revokes a token.
    store
        .insert_revocation("elsewhere", in_minutes(15))
        .await
        .unwrap();
    assert!(!revocations.is_revoked("elsewhere").await.unwrap());
    assert_eq!(revocations.refresh().await.unwrap(), 1);
    assert!(revocations.is_revoked("elsewhere").await.unwrap());
}

#[tokio::test]
async fn lookups_are_served_from_memory_and_a_failed_write_revokes_nothing() {
    let (_dir, store) = store().await;
    let revocations = DbBackedRevocations::load(store.clone()).await.unwrap();
    revocations.revoke("before", in_minutes(15)).await.unwrap();

    // The database goes away.
    store.close().await;
    // Lookups need no query...
    assert!(revocations.is_revoked("before").await.unwrap());
    // ...and a revocation the database did not take is reported, not faked.
    assert!(revocations.revoke("after", in_minutes(15)).await.is_err());
    assert!(!revocations.is_revoked("after").await.unwrap());
}

// --- the contract scenarios, on real time ---

mod contract_scenarios {
    use orderflow_adapters::memory::{InProcessPresence, InProcessSharedCache};
    use orderflow_core::contract;
    use orderflow_core::ports::cache::SharedCache;
    use orderflow_core::ports::presence::PresenceBoard;

    use super::*;

    macro_rules! cache_scenario {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let cache: Arc<dyn SharedCache> = Arc::new(InProcessSharedCache::new());
                contract::cache::$name(cache).await;
            }
        )*};
    }

    macro_rules! presence_scenario {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let board: Arc<dyn PresenceBoard> = Arc::new(InProcessPresence::new());
                contract::presence::$name(board).await;
            }
        )*};
    }

    mod presence {
        use super::*;
        orderflow_core::presence_scenarios!(presence_scenario);
    }

    macro_rules! rate_limit_scenario {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let limiter: Arc<dyn RateLimiter> = Arc::new(InProcessRateLimiter::new());
                contract::rate_limit::$name(limiter).await;
            }
        )*};
    }

    mod cache {
        use super::*;
        orderflow_core::cache_scenarios!(cache_scenario);
    }

    mod rate_limit {
        use super::*;
        orderflow_core::rate_limit_scenarios!(rate_limit_scenario);
    }

    mod revocations {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn revoke_and_check() {
            let (_dir, store) = store().await;
            let list = Arc::new(DbBackedRevocations::load(store.clone()).await.unwrap());
            contract::revocations::revoke_and_check(list, store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn entries_follow_the_token_expiry() {
            let (_dir, store) = store().await;
            let list = Arc::new(DbBackedRevocations::load(store).await.unwrap());
            contract::revocations::entries_follow_the_token_expiry(list).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_new_instance_remembers() {
            let (_dir, store) = store().await;
            let first = Arc::new(DbBackedRevocations::load(store.clone()).await.unwrap());
            contract::revocations::a_new_instance_remembers(first, || async move {
                Arc::new(DbBackedRevocations::load(store).await.unwrap()) as Arc<dyn RevocationList>
            })
            .await;
        }
    }
}
