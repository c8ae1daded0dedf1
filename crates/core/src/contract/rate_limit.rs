//! Scenarios for the rate-limiter port ([`RateLimiter`]).
//!
//! They run on real time (a shared limiter such as Redis reads its own
//! clock, which a test cannot pause), so windows are short and the
//! assertions allow for the milliseconds a check takes: exact numbers where
//! the algorithm promises them (counts, remaining), ranges for durations.
//! Policy names are unique per run, so scenarios may share one server.
//! The scenarios that test refills sleep, and say so.

use std::sync::Arc;
use std::time::Duration;

use crate::ports::rate_limit::{Algorithm, RateLimiter, RatePolicy};

fn policy(name: &str, algorithm: Algorithm) -> RatePolicy {
    RatePolicy {
        name: format!("{name}-{}", uuid::Uuid::now_v7().simple()),
        algorithm,
    }
}

/// Slack for durations measured while the test runs.
const SLACK: Duration = Duration::from_millis(250);

/// At most `limit` per window; the window's end is reported; keys are
/// independent; a new window starts afresh. (Sleeps past the window.)
pub async fn fixed_window(limiter: Arc<dyn RateLimiter>) {
    let window = Duration::from_millis(800);
    let p = policy("fixed", Algorithm::FixedWindow { limit: 3, window });
    for expected_remaining in [2, 1, 0] {
        let decision = limiter.check(&p, "alice").await;
        assert!(decision.allowed, "within the limit: {decision:?}");
        assert_eq!(decision.limit, 3);
        assert_eq!(decision.remaining, expected_remaining);
        assert_eq!(decision.retry_after, Duration::ZERO);
        assert_eq!(decision.delay, Duration::ZERO);
        assert!(decision.reset_after <= window && decision.reset_after > window - SLACK);
    }
    let denied = limiter.check(&p, "alice").await;
    assert!(!denied.allowed, "over the limit: {denied:?}");
    assert_eq!(denied.remaining, 0);
    assert!(
        denied.retry_after > Duration::ZERO && denied.retry_after <= window,
        "retry when the window ends: {denied:?}"
    );
    assert!(
        limiter.check(&p, "bob").await.allowed,
        "another key has its own budget"
    );
    tokio::time::sleep(denied.retry_after + Duration::from_millis(100)).await;
    let fresh = limiter.check(&p, "alice").await;
    assert!(fresh.allowed, "a new window: {fresh:?}");
    assert_eq!(fresh.remaining, 2);
}

/// A full bucket allows a burst of `capacity`, then one request per refill
/// interval; `retry_after` says when. (Sleeps for one refill.)
pub async fn token_bucket(limiter: Arc<dyn RateLimiter>) {
    // One token every 500 ms.
    let p = policy(
        "bucket",
        Algorithm::TokenBucket {
            capacity: 4,
            refill_per_second: 2.0,
        },
    );
    for expected_remaining in [3, 2, 1, 0] {
        let decision = limiter.check(&p, "alice").await;
        assert!(decision.allowed, "within the burst: {decision:?}");
        assert_eq!(decision.limit, 4);
        // A token may refill while the burst runs, never more than one.
        assert!(
            decision.remaining == expected_remaining
                || decision.remaining == expected_remaining + 1,
            "remaining {expected_remaining}: {decision:?}"
        );
    }
    let denied = limiter.check(&p, "alice").await;
    assert!(!denied.allowed, "the bucket is empty: {denied:?}");
    assert!(
        denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_millis(500),
        "the next token within one interval: {denied:?}"
    );
    assert!(
        denied.reset_after >= Duration::from_millis(1500)
            && denied.reset_after <= Duration::from_secs(2),
        "full again after four intervals: {denied:?}"
    );
    assert!(
        limiter.check(&p, "bob").await.allowed,
        "another key has its own bucket"
    );
    tokio::time::sleep(denied.retry_after + Duration::from_millis(50)).await;
    assert!(limiter.check(&p, "alice").await.allowed, "a token refilled");
    assert!(!limiter.check(&p, "alice").await.allowed, "only one");
}

/// Requests over the rate wait their turn (`delay`, one interval apart) in a
/// bounded queue; a full queue refuses.
pub async fn leaky_bucket(limiter: Arc<dyn RateLimiter>) {
    // One request every 200 ms, three may wait.
    let p = policy(
        "leaky",
        Algorithm::LeakyBucket {
            rate_per_second: 5.0,
            queue: 3,
        },
    );
    let first = limiter.check(&p, "alice").await;
    assert!(first.allowed);
    assert_eq!(first.delay, Duration::ZERO, "an idle queue serves at once");
    assert_eq!(first.limit, 3);
    let mut previous = first.delay;
    for place in 1..=3u32 {
        let decision = limiter.check(&p, "alice").await;
        assert!(decision.allowed, "place {place} in the queue: {decision:?}");
        let expected = Duration::from_millis(200) * place;
        assert!(
            decision.delay <= expected && decision.delay + SLACK > expected,
            "waits about {expected:?}: {decision:?}"
        );
        assert!(
            decision.delay > previous,
            "each waits longer than the one before"
        );
        previous = decision.delay;
    }
    let refused = limiter.check(&p, "alice").await;
    assert!(!refused.allowed, "the queue is full: {refused:?}");
    assert_eq!(refused.delay, Duration::ZERO);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(200),
        "a place frees within one interval: {refused:?}"
    );
    let other = limiter.check(&p, "bob").await;
    assert!(
        other.allowed && other.delay == Duration::ZERO,
        "another key has its own queue"
    );
}

/// Concurrent checks never spend more than the budget.
pub async fn concurrent_checks_never_overspend(limiter: Arc<dyn RateLimiter>) {
    // A token every 1000 s: nothing refills while the test runs.
    let p = policy(
        "concurrent",
        Algorithm::TokenBucket {
            capacity: 20,
            refill_per_second: 0.001,
        },
    );
    let checks: Vec<_> = (0..100)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let p = p.clone();
            tokio::spawn(async move { limiter.check(&p, "shared").await.allowed })
        })
        .collect();
    let mut passed = 0;
    for check in checks {
        passed += usize::from(check.await.unwrap());
    }
    assert_eq!(passed, 20, "exactly the bucket's capacity passes");
    let w = policy(
        "concurrent-window",
        Algorithm::FixedWindow {
            limit: 15,
            window: Duration::from_secs(60),
        },
    );
    let checks: Vec<_> = (0..60)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let w = w.clone();
            tokio::spawn(async move { limiter.check(&w, "shared").await.allowed })
        })
        .collect();
    let mut passed = 0;
    for check in checks {
        passed += usize::from(check.await.unwrap());
    }
    assert_eq!(passed, 15, "exactly the window's limit passes");
}

/// A limiter that decides at once ([`RateLimiter::check_now`]) spends the
/// same budget as its `check`: the two ways interleaved pass exactly the
/// bucket's capacity, and the answers agree. A limiter that cannot decide
/// at once says so with `None` every time, never with a made-up decision.
pub async fn deciding_at_once_spends_the_same_budget(limiter: Arc<dyn RateLimiter>) {
    let p = policy(
        "at-once",
        Algorithm::TokenBucket {
            capacity: 4,
            refill_per_second: 0.001,
        },
    );
    let Some(first) = limiter.check_now(&p, "carol") else {
        for _ in 0..3 {
            assert_eq!(
                limiter.check_now(&p, "carol"),
                None,
                "never decides at once"
            );
        }
        let decision = limiter.check(&p, "carol").await;
        assert!(decision.allowed, "check alone spends: {decision:?}");
        assert_eq!(decision.remaining, 3, "the `None`s spent nothing");
        return;
    };
    assert!(first.allowed, "{first:?}");
    assert_eq!(first.remaining, 3);
    let second = limiter.check(&p, "carol").await;
    assert_eq!(second.remaining, 2, "check sees what check_now spent");
    let third = limiter
        .check_now(&p, "carol")
        .expect("decides at once again");
    assert_eq!(third.remaining, 1);
    assert!(limiter.check(&p, "carol").await.allowed, "the last token");
    let refused = limiter
        .check_now(&p, "carol")
        .expect("decides at once again");
    assert!(!refused.allowed, "over the budget: {refused:?}");
    assert!(
        refused.retry_after > Duration::from_secs(900),
        "{refused:?}"
    );
    assert!(
        limiter.check_now(&p, "dave").expect("decides").allowed,
        "another key has its own budget"
    );
}
