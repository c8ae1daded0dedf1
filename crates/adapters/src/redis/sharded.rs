//! Sharded pub/sub on a Redis Cluster (Redis 7's `SSUBSCRIBE` and
//! `SPUBLISH`).
//!
//! Why: a classic `PUBLISH` on a cluster is broadcast over the cluster bus
//! to every node, so every message costs every node and pub/sub does not
//! scale with the cluster. A sharded channel lives on the node that owns
//! its slot: a message goes to that shard only, and pub/sub load spreads
//! over the primaries (a busy stream spreads itself over several channels,
//! see [`SharedCache::pubsub_shards`](orderflow_core::ports::cache::SharedCache::pubsub_shards)).
//!
//! How: one RESP3 cluster connection per [`RedisConnection`](super::RedisConnection)
//! carries every sharded subscription of the process. redis-rs routes each
//! `SSUBSCRIBE` to the slot's owner and hands the pushes to [`ShardedPubSub`],
//! which gives each message to the subscribers of its channel.
//!
//! Loss is never silent: a `Disconnection` push means some node's
//! subscriptions are gone, and the push does not say which, so every
//! subscriber hears [`CacheEvent::Lost`]. Then this module subscribes every
//! channel again itself, with backoff until the nodes answer (it does not
//! rely on the library's own resubscription, which waits for the next
//! command), and each subscriber hears [`CacheEvent::Resubscribed`] once its
//! channel is confirmed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use orderflow_core::ports::cache::CacheEvent;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::{Notify, mpsc};

/// Messages waiting for one subscriber before the dispatcher waits for it.
const SUBSCRIBER_QUEUE: usize = 1024;

type Subscribers = HashMap<String, Vec<mpsc::Sender<CacheEvent>>>;

/// The process's sharded subscriptions on one cluster.
pub(super) struct ShardedPubSub {
    conn: ClusterConnection,
    subscribers: Mutex<Subscribers>,
    command_timeout: Duration,
}

impl ShardedPubSub {
    /// Takes over `conn` (a RESP3 connection whose pushes arrive on
    /// `pushes`) and starts the tasks that dispatch pushes and resubscribe
    /// after a loss; they end when the returned handle is dropped.
    pub(super) fn start(
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        command_timeout: Duration,
    ) -> Arc<Self> {
        // Rung on every `Disconnection`: the resubscriber goes round again
        // (and once when the connection is gone, so it ends).
        let lost = Arc::new(Notify::new());
        let this = Arc::new(Self {
            conn,
            subscribers: Mutex::new(HashMap::new()),
            command_timeout,
        });
        tokio::spawn(dispatch(Arc::downgrade(&this), pushes, lost.clone()));
        tokio::spawn(resubscribe(Arc::downgrade(&this), lost));
        this
    }

    /// Subscribes to the sharded channel `channel`; returns once its shard
    /// confirmed.
    pub(super) async fn subscribe(&self, channel: &str) -> RedisResult<mpsc::Receiver<CacheEvent>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        // Listed first, so nothing published once confirmed is missed.
        lock(&self.subscribers)
            .entry(channel.to_owned())
            .or_default()
            .push(tx);
        match self.ssubscribe(channel).await {
            Ok(()) => Ok(rx),
            Err(error) => {
                drop(rx);
                self.senders(channel);
                Err(error)
            }
        }
    }

    async fn ssubscribe(&self, channel: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.command_timeout, conn.ssubscribe(channel)).await {
            Ok(result) => result,
            Err(_) => Err(super::connection::timeout_error(
                "Redis did not confirm the sharded subscription within the command timeout",
            )),
        }
    }

    /// Subscribes to `channel` and unsubscribes again, for the start-up
    /// check ([`super::permissions`]); the error says which of the two
    /// commands failed. Nobody listens: nothing is delivered.
    pub(super) async fn check(&self, channel: &str) -> Result<(), (&'static str, RedisError)> {
        self.ssubscribe(channel)
            .await
            .map_err(|error| ("ssubscribe", error))?;
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.command_timeout, conn.sunsubscribe(channel)).await {
            Ok(result) => result.map_err(|error| ("sunsubscribe", error)),
            Err(_) => Err((
                "sunsubscribe",
                super::connection::timeout_error(
                    "Redis did not confirm the unsubscription within the command timeout",
                ),
            )),
        }
    }

    /// The live senders of `channel`'s subscribers (forgetting the closed).
    fn senders(&self, channel: &str) -> Vec<mpsc::Sender<CacheEvent>> {
        let mut subscribers = lock(&self.subscribers);
        let Some(senders) = subscribers.get_mut(channel) else {
            return Vec::new();
        };
        senders.retain(|sender| !sender.is_closed());
        if senders.is_empty() {
            subscribers.remove(channel);
            let mut conn = self.conn.clone();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let _ = conn.sunsubscribe(&channel).await;
            });
            return Vec::new();
        }
        senders.clone()
    }

    fn channels(&self) -> Vec<String> {
        lock(&self.subscribers).keys().cloned().collect()
    }
}

async fn deliver(senders: Vec<mpsc::Sender<CacheEvent>>, event: CacheEvent) {
    for sender in senders {
        let _ = sender.send(event.clone()).await;
    }
}

/// Hands each pushed message to its channel's subscribers; on a lost
/// connection tells every subscriber and wakes the resubscriber. Ends
/// (waking the resubscriber to end too) when the connection is dropped.
async fn dispatch(
    pubsub: Weak<ShardedPubSub>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    lost: Arc<Notify>,
) {
    while let Some(push) = pushes.recv().await {
        let Some(pubsub) = pubsub.upgrade() else {
            break;
        };
        match push.kind {
            PushKind::SMessage => {
                let [channel, payload] = push.data.as_slice() else {
                    continue;
                };
                let (Some(channel), Some(payload)) = (text(channel), text(payload)) else {
                    continue;
                };
                deliver(pubsub.senders(&channel), CacheEvent::Message(payload)).await;
            }
            PushKind::Disconnection => {
                tracing::warn!("Redis Cluster sharded subscription lost; resubscribing");
                metrics::counter!("orderflow_redis_resubscriptions_total").increment(1);
                for channel in pubsub.channels() {
                    deliver(pubsub.senders(&channel), CacheEvent::Lost).await;
                }
                lost.notify_one();
            }
            // Confirmations (also the library's own resubscriptions).
            _ => {}
        }
    }
    lost.notify_one();
}

/// After each loss, subscribes every channel again until each is
/// confirmed, then tells its subscribers.
async fn resubscribe(pubsub: Weak<ShardedPubSub>, lost: Arc<Notify>) {
    loop {
        // No strong handle while waiting, or the connection never drops.
        lost.notified().await;
        let Some(this) = pubsub.upgrade() else {
            return;
        };
        let mut pending = this.channels();
        drop(this);
        let mut backoff = Duration::from_millis(50);
        while !pending.is_empty() {
            let Some(this) = pubsub.upgrade() else {
                return;
            };
            let mut failed = Vec::new();
            for channel in pending {
                match this.ssubscribe(&channel).await {
                    Ok(()) => deliver(this.senders(&channel), CacheEvent::Resubscribed).await,
                    Err(error) => {
                        tracing::debug!(%channel, %error, "Redis Cluster still unreachable for pub/sub");
                        failed.push(channel);
                    }
                }
            }
            drop(this);
            pending = failed;
            if !pending.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn lock(subscribers: &Mutex<Subscribers>) -> std::sync::MutexGuard<'_, Subscribers> {
    subscribers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
