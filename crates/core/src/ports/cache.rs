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
//!   coming back; it reports [`CacheEvent::Lost`] when it goes (from then on
//!   messages are missed, so the subscriber must stop trusting what it
//!   holds) and [`CacheEvent::Resubscribed`] when it is back (messages
//!   published meanwhile were lost: drop everything held).
//!
//! - [`get_versioned`](SharedCache::get_versioned) /
//!   [`set_versioned`](SharedCache::set_versioned): values stamped with the
//!   version of the database row they were made from, written only when
//!   nothing newer is stored (atomically, in Redis a Lua script). An
//!   invalidation stores a bare *floor* ("version N exists; nothing older
//!   may be stored"), so a loader that read the row before the change can
//!   never put the old value back: the stale-set race. Plain and versioned
//!   values never share a key.
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

/// A cache entry stamped with the version of the row it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: i64,
    /// The value, or `None` for a floor: an invalidation's mark that
    /// `version` exists and nothing older may be stored.
    pub value: Option<Vec<u8>>,
}

impl Versioned {
    /// A value made from the row at `version`.
    pub fn value(version: i64, value: Vec<u8>) -> Self {
        Self {
            version,
            value: Some(value),
        }
    }

    /// A floor at `version`: no value, and no older one may be stored.
    pub fn floor(version: i64) -> Self {
        Self {
            version,
            value: None,
        }
    }

    /// Whether `self` may replace `current`: it is newer, or it is the value
    /// of the version `current` only marks as a floor. An equal or older
    /// value never replaces (the rule the Redis script repeats).
    pub fn replaces(&self, current: &Versioned) -> bool {
        self.version > current.version
            || (self.version == current.version && current.value.is_none() && self.value.is_some())
    }

    /// The stored form, the same in every adapter: the version in decimal,
    /// `V` and the value's bytes, or `F` for a floor.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.version.to_string().into_bytes();
        match &self.value {
            Some(value) => {
                bytes.push(b'V');
                bytes.extend_from_slice(value);
            }
            None => bytes.push(b'F'),
        }
        bytes
    }

    /// The inverse of [`encode`](Self::encode); `None` for bytes it did not
    /// write (another version of orderflow, a hand edit).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let digits = bytes.iter().position(|b| *b == b'V' || *b == b'F')?;
        let version = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
        Some(match bytes[digits] {
            b'V' => Self::value(version, bytes[digits + 1..].to_vec()),
            _ if digits + 1 == bytes.len() => Self::floor(version),
            _ => return None,
        })
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEvent {
    /// A message published on the channel.
    Message(String),
    /// The subscription dropped: messages are missed until
    /// [`Resubscribed`](CacheEvent::Resubscribed).
    Lost,
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
    /// The versioned entry under `key`, if any and not expired. A key that
    /// holds something [`Versioned::decode`] does not read is a miss.
    async fn get_versioned(&self, key: &str) -> CacheResult<Option<Versioned>> {
        Ok(self
            .get(key)
            .await?
            .and_then(|bytes| Versioned::decode(&bytes)))
    }
    /// Stores `entry` under `key` for `ttl` if it [replaces](Versioned::replaces)
    /// what is stored (or nothing is), in one atomic step; true when stored.
    async fn set_versioned(&self, key: &str, entry: &Versioned, ttl: Duration)
    -> CacheResult<bool>;
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
    /// How many channels a busy stream should be spread over (`name:0`,
    /// `name:1`, …): more than one where pub/sub is sharded (a Redis
    /// Cluster, where each channel lives on one node), so the stream's load
    /// spreads over the nodes; one where every channel costs the same.
    fn pubsub_shards(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::Versioned;

    #[test]
    fn versioned_entries_round_trip_and_order() {
        for entry in [
            Versioned::value(42, b"{\"a\":1}".to_vec()),
            Versioned::value(0, b"null".to_vec()),
            Versioned::value(7, Vec::new()),
            Versioned::floor(9),
        ] {
            assert_eq!(Versioned::decode(&entry.encode()), Some(entry));
        }
        assert_eq!(Versioned::decode(b"{\"plain\":true}"), None);
        assert_eq!(Versioned::decode(b"12Fx"), None);
        let (old, new) = (Versioned::value(1, vec![1]), Versioned::value(2, vec![2]));
        assert!(new.replaces(&old) && !old.replaces(&new));
        assert!(!old.replaces(&old), "an equal value is not written again");
        assert!(
            old.replaces(&Versioned::floor(1)),
            "a value fills its floor"
        );
        assert!(!Versioned::floor(1).replaces(&old));
        assert!(
            !old.replaces(&Versioned::floor(2)),
            "nothing older than a floor"
        );
    }
}
