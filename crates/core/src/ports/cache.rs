//! The shared cache: the L2 layer under each process's in-process L1
//! (DESIGN.md §3). Values are opaque bytes (the caller serializes), so the
//! port stays free of any product type and any adapter can hold them.
//!
//! What the catalog needs from it, and why each piece exists:
//! - [`get`](SharedCache::get) / [`set`](SharedCache::set) with a TTL /
//!   [`delete`](SharedCache::delete): the cache itself. Everything here is
//!   derived data: losing it costs database queries, never correctness.
//! - [`try_lock`](SharedCache::try_lock) / [`unlock`](SharedCache::unlock):
//!   a short lock (`SET NX PX` in Redis) so that, across processes, one
//!   loader queries the database for a key while the others wait for the L2
//!   to fill (request collapsing). The lock expires by itself, so a loader
//!   that dies cannot block a key, and the release checks the holder's
//!   token, so a slow loader whose lock expired cannot release the lock a
//!   newer loader holds.
//! - [`publish`](SharedCache::publish) / [`subscribe`](SharedCache::subscribe):
//!   invalidations, so an update in one process drops the entry from every
//!   process's L1. A subscription survives the shared cache going away and
//!   coming back; it reports [`CacheEvent::Resubscribed`] when it does, since
//!   messages published meanwhile were lost and the subscriber should drop
//!   everything it holds.
//!
//! Keys are plain strings chosen by the caller; an adapter may prefix them
//! (tenants, tests) but never interprets them.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Shared-cache failures. Callers treat every one the same way (fall back
/// to the database, count it, log it); the variants say what to look at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The shared cache could not be reached or did not answer in time.
    #[error("shared cache unavailable: {0}")]
    Unavailable(String),
    /// The shared cache answered with an error or something unexpected.
    #[error("shared cache error: {0}")]
    Backend(String),
}

pub type CacheResult<T> = Result<T, CacheError>;

/// Proof of holding a lock: a random value only the holder knows, checked
/// on release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(pub String);

impl LockToken {
    /// A fresh random token (a UUID v4: unguessable, unique across processes).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEvent {
    /// A message published on the channel.
    Message(String),
    /// The subscription was lost and is back: messages published in between
    /// were missed.
    Resubscribed,
}

/// A live subscription to one channel. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::Receiver<CacheEvent>,
}

impl Subscription {
    /// Wraps the receiving end an adapter feeds.
    pub fn new(events: mpsc::Receiver<CacheEvent>) -> Self {
        Self { events }
    }

    /// The next event; `None` once the adapter has stopped for good.
    pub async fn next(&mut self) -> Option<CacheEvent> {
        self.events.recv().await
    }
}

#[async_trait]
pub trait SharedCache: Send + Sync + 'static {
    /// The value stored under `key`, if any and not expired.
    async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>>;
    /// Stores `value` under `key` for `ttl` (replacing any value).
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> CacheResult<()>;
    /// Removes `key`; true when it existed.
    async fn delete(&self, key: &str) -> CacheResult<bool>;
    /// Takes the lock `key` for at most `ttl` if nobody holds it; `None` when
    /// someone does.
    async fn try_lock(&self, key: &str, ttl: Duration) -> CacheResult<Option<LockToken>>;
    /// Releases the lock `key` if `token` still holds it; true when released
    /// (false when it expired and maybe someone else took it since).
    async fn unlock(&self, key: &str, token: &LockToken) -> CacheResult<bool>;
    /// Sends `message` to every current subscriber of `channel`.
    async fn publish(&self, channel: &str, message: &str) -> CacheResult<()>;
    /// Subscribes to `channel`. Returns once the subscription is active (a
    /// message published after this returns is delivered), or with an error
    /// when the shared cache cannot be reached now; see the module docs for
    /// what happens when it goes away later.
    async fn subscribe(&self, channel: &str) -> CacheResult<Subscription>;
}
