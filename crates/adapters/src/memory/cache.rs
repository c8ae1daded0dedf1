//! The shared cache of one process: the same promises as the Redis L2
//! (values with a TTL, token-checked locks, pub/sub), held in memory.
//!
//! With one process there is nobody to share with, so the catalog does not
//! need it (its L1 is enough); it exists so that the cache contract has an
//! embedded adapter too, and so that tests of the catalog's L2 logic can run
//! several catalogs in one process without a server. Expired entries are
//! dropped when read and swept when the map grows.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::cache::{
    CacheEvent, CacheResult, LockToken, SharedCache, Subscription, Versioned,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// Sweep expired entries when the map holds more than this many.
const SWEEP_ABOVE: usize = 10_000;

/// [`SharedCache`] in process.
#[derive(Debug)]
pub struct InProcessSharedCache {
    values: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    locks: Mutex<HashMap<String, (LockToken, Instant)>>,
    /// (channel, message) for every subscriber.
    bus: broadcast::Sender<(String, String)>,
}

impl Default for InProcessSharedCache {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessSharedCache {
    pub fn new() -> Self {
        Self {
            values: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            bus: broadcast::channel(1024).0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl SharedCache for InProcessSharedCache {
    async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        let mut values = lock(&self.values);
        match values.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                values.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> CacheResult<()> {
        let now = Instant::now();
        let mut values = lock(&self.values);
        if values.len() > SWEEP_ABOVE {
            values.retain(|_, (_, expires)| *expires > now);
        }
        values.insert(key.to_owned(), (value.to_vec(), now + ttl));
        Ok(())
    }

    async fn delete(&self, key: &str) -> CacheResult<bool> {
        let removed = lock(&self.values).remove(key);
        Ok(removed.is_some_and(|(_, expires)| expires > Instant::now()))
    }

    /// Compare and set under the map's lock: atomic like the Redis script.
    async fn set_versioned(
        &self,
        key: &str,
        entry: &Versioned,
        ttl: Duration,
    ) -> CacheResult<bool> {
        let now = Instant::now();
        let mut values = lock(&self.values);
        let current = values
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .and_then(|(bytes, _)| Versioned::decode(bytes));
        if current.is_some_and(|current| !entry.replaces(&current)) {
            return Ok(false);
        }
        values.insert(key.to_owned(), (entry.encode(), now + ttl));
        Ok(true)
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> CacheResult<Option<LockToken>> {
        let now = Instant::now();
        let mut locks = lock(&self.locks);
        if locks.get(key).is_some_and(|(_, expires)| *expires > now) {
            return Ok(None);
        }
        let token = LockToken::random();
        locks.insert(key.to_owned(), (token.clone(), now + ttl));
        Ok(Some(token))
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> CacheResult<bool> {
        let now = Instant::now();
        let mut locks = lock(&self.locks);
        match locks.get(key) {
            Some((held, expires)) if held == token && *expires > now => {
                locks.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn publish(&self, channel: &str, message: &str) -> CacheResult<()> {
        // No subscriber is not an error (PUBLISH answers 0 then).
        let _ = self.bus.send((channel.to_owned(), message.to_owned()));
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> CacheResult<Subscription> {
        let mut bus = self.bus.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let channel = channel.to_owned();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = tx.closed() => return,
                    received = bus.recv() => match received {
                        Ok((on, message)) if on == channel => CacheEvent::Message(message),
                        Ok(_) => continue,
                        // Messages were dropped: the subscriber must assume
                        // it missed invalidations, as after a reconnection.
                        Err(broadcast::error::RecvError::Lagged(_)) => CacheEvent::Resubscribed,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription::new(rx))
    }
}
