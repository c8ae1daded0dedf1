//! Scenarios for the shared cache port ([`SharedCache`]).
//!
//! Keys and channels are made unique per run, so the scenarios may share one
//! server. TTL checks use short real TTLs (hundreds of milliseconds) and wait
//! well past them: they test expiry itself, so they sleep, and say so.

use std::sync::Arc;
use std::time::Duration;

use crate::ports::cache::{CacheEvent, SharedCache, Subscription, Versioned};

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

/// Waits (bounded) for the next message of a subscription.
async fn next_message(subscription: &mut Subscription) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Some(CacheEvent::Message(message))) => return message,
            Ok(Some(CacheEvent::Resubscribed | CacheEvent::Lost)) => continue,
            Ok(None) => panic!("the subscription ended"),
            Err(_) => panic!("no message within 5 s"),
        }
    }
}

/// get / set / replace / delete, and keys do not leak into each other.
pub async fn values(cache: Arc<dyn SharedCache>) {
    let key = unique("value");
    let other = unique("other");
    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "an unknown key is a miss"
    );
    cache
        .set(&key, b"first", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(
        cache.get(&other).await.unwrap(),
        None,
        "keys are independent"
    );
    cache
        .set(&key, b"second", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"second"[..]),
        "set replaces"
    );
    // Any bytes round-trip, not only text.
    let binary = [0u8, 255, 10, 13, 0];
    cache
        .set(&other, &binary, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&other).await.unwrap().as_deref(),
        Some(&binary[..])
    );
    assert!(
        cache.delete(&key).await.unwrap(),
        "delete reports an existing key"
    );
    assert_eq!(
        cache.get(&key).await.unwrap(),
        None,
        "a deleted key is a miss"
    );
    assert!(
        !cache.delete(&key).await.unwrap(),
        "deleting twice reports nothing"
    );
}

/// A value is gone after its TTL. (Sleeps: expiry is what is tested.)
pub async fn values_expire(cache: Arc<dyn SharedCache>) {
    let short = unique("short");
    let long = unique("long");
    cache
        .set(&short, b"v", Duration::from_millis(200))
        .await
        .unwrap();
    cache
        .set(&long, b"v", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        cache.get(&short).await.unwrap().is_some(),
        "alive before its TTL"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        cache.get(&short).await.unwrap(),
        None,
        "expired after its TTL"
    );
    assert!(
        cache.get(&long).await.unwrap().is_some(),
        "a longer TTL still holds"
    );
}

/// One holder at a time; the release checks the token.
pub async fn locks(cache: Arc<dyn SharedCache>) {
    let key = unique("lock");
    let token = cache
        .try_lock(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a free lock is taken");
    assert_eq!(
        cache.try_lock(&key, Duration::from_secs(30)).await.unwrap(),
        None,
        "a held lock is refused"
    );
    let stranger = crate::ports::cache::LockToken::random();
    assert!(
        !cache.unlock(&key, &stranger).await.unwrap(),
        "another token does not release the lock"
    );
    assert_eq!(
        cache.try_lock(&key, Duration::from_secs(30)).await.unwrap(),
        None,
        "still held after a wrong release"
    );
    assert!(
        cache.unlock(&key, &token).await.unwrap(),
        "the holder releases"
    );
    assert!(
        !cache.unlock(&key, &token).await.unwrap(),
        "a second release finds nothing"
    );
    assert!(
        cache
            .try_lock(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .is_some(),
        "free again after the release"
    );
    // Locks and values are separate namespaces.
    assert_eq!(cache.get(&key).await.unwrap(), None);
}

/// A lock expires by itself, and the late holder's release does not free the
/// lock someone took after it. (Sleeps: expiry is what is tested.)
pub async fn locks_expire(cache: Arc<dyn SharedCache>) {
    let key = unique("lock");
    let late = cache
        .try_lock(&key, Duration::from_millis(200))
        .await
        .unwrap()
        .expect("taken");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let current = cache
        .try_lock(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an expired lock can be taken again");
    assert!(
        !cache.unlock(&key, &late).await.unwrap(),
        "a holder whose lock expired cannot release the new holder's lock"
    );
    assert_eq!(
        cache.try_lock(&key, Duration::from_secs(30)).await.unwrap(),
        None,
        "the new holder still holds it"
    );
    assert!(cache.unlock(&key, &current).await.unwrap());
}

/// Of many concurrent takers, exactly one gets the lock.
pub async fn lock_is_exclusive_under_contention(cache: Arc<dyn SharedCache>) {
    let key = unique("contended");
    let takers: Vec<_> = (0..32)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let key = key.clone();
            tokio::spawn(async move { cache.try_lock(&key, Duration::from_secs(30)).await })
        })
        .collect();
    let mut winners = 0;
    for taker in takers {
        if taker.await.unwrap().unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(
        winners, 1,
        "exactly one of 32 concurrent takers holds the lock"
    );
}

/// Every subscriber of a channel gets each message; other channels' messages
/// are not delivered.
pub async fn invalidations_reach_every_subscriber(cache: Arc<dyn SharedCache>) {
    let channel = unique("invalidations");
    let elsewhere = unique("elsewhere");
    let mut first = cache.subscribe(&channel).await.unwrap();
    let mut second = cache.subscribe(&channel).await.unwrap();
    cache.publish(&elsewhere, "not for you").await.unwrap();
    cache.publish(&channel, "product:1").await.unwrap();
    cache.publish(&channel, "product:2").await.unwrap();
    for subscription in [&mut first, &mut second] {
        assert_eq!(next_message(subscription).await, "product:1");
        assert_eq!(next_message(subscription).await, "product:2");
    }
    // Publishing with nobody listening is fine.
    drop(first);
    drop(second);
    cache.publish(&channel, "nobody").await.unwrap();
}

/// Versioned writes: an old load never overwrites a newer value, a floor
/// (an invalidation) refuses everything older and takes its own version's
/// value, and of many concurrent writers of different versions the newest
/// wins whatever the order they arrive in.
pub async fn versioned_writes(cache: Arc<dyn SharedCache>) {
    let key = unique("product");
    let ttl = Duration::from_secs(60);
    let value = |version: i64| Versioned::value(version, format!("v{version}").into_bytes());
    assert_eq!(cache.get_versioned(&key).await.unwrap(), None);
    assert!(cache.set_versioned(&key, &value(2), ttl).await.unwrap());
    assert!(
        !cache.set_versioned(&key, &value(1), ttl).await.unwrap(),
        "an older value is refused"
    );
    assert!(
        !cache.set_versioned(&key, &value(2), ttl).await.unwrap(),
        "the same version is not written twice"
    );
    assert_eq!(cache.get_versioned(&key).await.unwrap(), Some(value(2)));

    // The stale-set race: a loader read version 3, the row changed to 4 and
    // the change left its floor; the loader's late write is refused.
    assert!(
        cache
            .set_versioned(&key, &Versioned::floor(4), ttl)
            .await
            .unwrap()
    );
    assert!(
        !cache.set_versioned(&key, &value(3), ttl).await.unwrap(),
        "nothing older than the floor"
    );
    assert_eq!(
        cache.get_versioned(&key).await.unwrap(),
        Some(Versioned::floor(4)),
        "a floor is read back as a floor (a miss with a version)"
    );
    assert!(
        !cache
            .set_versioned(&key, &Versioned::floor(3), ttl)
            .await
            .unwrap(),
        "an older floor is refused"
    );
    assert!(
        cache.set_versioned(&key, &value(4), ttl).await.unwrap(),
        "the floor's own version fills it"
    );
    assert!(
        !cache
            .set_versioned(&key, &Versioned::floor(4), ttl)
            .await
            .unwrap(),
        "a floor does not erase the value of its version"
    );
    assert_eq!(cache.get_versioned(&key).await.unwrap(), Some(value(4)));

    // A plain value under the key (written by something else) is a miss and
    // is replaced.
    let plain = unique("plain");
    cache.set(&plain, b"{\"legacy\":true}", ttl).await.unwrap();
    assert_eq!(cache.get_versioned(&plain).await.unwrap(), None);
    assert!(cache.set_versioned(&plain, &value(1), ttl).await.unwrap());
    assert_eq!(cache.get_versioned(&plain).await.unwrap(), Some(value(1)));

    // Fifty writers of versions 1..=50, started in a shuffled order, at once.
    let raced = unique("raced");
    let mut versions: Vec<i64> = (1..=50).collect();
    versions.sort_by_key(|v| (v * 7919) % 50);
    let writers: Vec<_> = versions
        .into_iter()
        .map(|version| {
            let cache = Arc::clone(&cache);
            let raced = raced.clone();
            tokio::spawn(async move {
                cache
                    .set_versioned(&raced, &value(version), Duration::from_secs(60))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        cache.get_versioned(&raced).await.unwrap(),
        Some(value(50)),
        "the newest version wins"
    );

    // Versioned entries expire like any value. (Sleeps: expiry is tested.)
    let short = unique("short");
    assert!(
        cache
            .set_versioned(&short, &value(1), Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cache.get_versioned(&short).await.unwrap(), None);
    assert!(
        cache.set_versioned(&short, &value(1), ttl).await.unwrap(),
        "an expired entry no longer refuses anything"
    );
}
