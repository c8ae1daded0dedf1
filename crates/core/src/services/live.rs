//! Live channels: what a connected client (SSE today) is sent, and how a
//! client that reconnects gets exactly what it missed.
//!
//! Map:
//! - [`LiveChannel`]: the channels there are and who may follow each. Built
//!   so far: `orders:{user}` (every step of the shopper's orders). The
//!   issue's `notifications:{user}`, `product:{id}`, `admin:orders` and
//!   `admin:health` are not built yet.
//! - [`LiveHub`]: this process's doorbell, rung after a commit that changed
//!   a channel, and [`Follower`], one client's view of one channel.
//!
//! Where the messages come from: the database, never a second copy. An
//! `orders:{user}` message is a row of the order history the change writes
//! anyway ([`OrderChange`]), at its position in the shopper's history;
//! writing a separate message row per change made the embedded pipeline
//! twice as slow to confirm an order (the single SQLite writer has no
//! headroom under load; see `docs/benchmarks/live-channels`). Positions grow in
//! commit order per shopper (the store guarantees it) and have gaps (other
//! shoppers' rows), so a follower sends what comes after its last position.
//!
//! A follower watches the hub first, then reads everything after the
//! client's position, and reads again after each ring or after
//! [`DEFAULT_RECHECK`] without one; it sends only positions above the last
//! it sent, so nothing is sent twice and nothing is skipped. The recheck is
//! also what brings changes committed by other processes (a worker
//! elsewhere, on PostgreSQL) to a client connected here: at most one
//! recheck late. Redis pub/sub between processes, to ring at once, is not
//! built yet.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderflow_domain::user::Role;
use orderflow_domain::{Timestamp, UserId};
use tokio::sync::watch;

use crate::ports::store::{OrderChange, Store, StoreResult};

/// Messages read from the database at once while catching up.
const CATCH_UP_PAGE: u32 = 200;
/// How often a follower with no news looks at the database.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(1);

/// A channel a client can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveChannel {
    /// `orders:{user}`: the shopper's orders, every status change.
    Orders(UserId),
}

impl LiveChannel {
    /// Parses a channel name; `None` for a name that is not a channel.
    pub fn parse(name: &str) -> Option<Self> {
        let (kind, rest) = name.split_once(':')?;
        match kind {
            "orders" => uuid::Uuid::parse_str(rest).ok().map(Self::Orders),
            _ => None,
        }
    }

    /// The channel's name, as clients and the database spell it.
    pub fn name(&self) -> String {
        match self {
            Self::Orders(user) => format!("orders:{user}"),
        }
    }

    /// Whether `user` (with `role`) may follow the channel: a shopper only
    /// their own user channels; an admin any.
    pub fn may_follow(&self, user: UserId, role: Role) -> bool {
        match self {
            Self::Orders(owner) => *owner == user || role == Role::Admin,
        }
    }
}

/// A message of a live channel, as a client is sent it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveMessage {
    pub channel: String,
    /// Grows in commit order within the channel; may skip numbers.
    pub position: i64,
    pub at: Timestamp,
    pub data: serde_json::Value,
}

impl LiveMessage {
    fn order_change(channel: &str, change: OrderChange) -> Self {
        Self {
            channel: channel.to_owned(),
            position: change.position,
            at: change.at,
            data: serde_json::json!({
                "type": "order.status",
                "order_id": change.order_id,
                "status": change.status.as_str(),
            }),
        }
    }
}

/// This process's doorbell for live channels: tells its followers of a
/// channel that the channel has committed news.
pub struct LiveHub {
    store: Arc<dyn Store>,
    /// Per followed channel, a ring counter.
    channels: Mutex<HashMap<String, watch::Sender<u64>>>,
    recheck: Duration,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("recheck", &self.recheck)
            .finish_non_exhaustive()
    }
}

impl LiveHub {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            channels: Mutex::new(HashMap::new()),
            recheck: DEFAULT_RECHECK,
        }
    }

    /// How often a follower with no news looks at the database (default
    /// [`DEFAULT_RECHECK`]).
    pub fn with_recheck(mut self, every: Duration) -> Self {
        self.recheck = every;
        self
    }

    /// Tells this process's followers of `channel` that it has committed
    /// news. Call only after the commit: they read the database at once.
    pub fn publish(&self, channel: &str) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = channels.get(channel) {
            if sender.receiver_count() == 0 {
                // Nobody follows it any more.
                channels.remove(channel);
            } else {
                sender.send_modify(|rings| *rings = rings.wrapping_add(1));
            }
        }
    }

    fn receiver(&self, channel: &str) -> watch::Receiver<u64> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(channel.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Starts following `channel` after position `after` (the client's last
    /// position), or from now when `None`. A position past the channel's
    /// head (not one this server gave) starts from now with
    /// [`Follower::recovered`] false.
    pub async fn follow(&self, channel: LiveChannel, after: Option<i64>) -> StoreResult<Follower> {
        let name = channel.name();
        // Watching before reading the head: a message committed in between
        // is in the first read or rings the bell, never neither.
        let receiver = self.receiver(&name);
        let head = match channel {
            LiveChannel::Orders(user) => self.store.last_order_change(user).await?,
        };
        let (last, recovered) = match after {
            None => (head, true),
            Some(position) if (0..=head).contains(&position) => (position, true),
            Some(_) => (head, false),
        };
        let mut recheck = tokio::time::interval(self.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Follower {
            channel,
            name,
            store: self.store.clone(),
            receiver: Some(receiver),
            last,
            recovered,
            backlog: VecDeque::new(),
            read_now: true,
            recheck,
        })
    }
}

/// One client's view of one channel: yields its messages in position
/// order, each once, from the position it started after.
pub struct Follower {
    channel: LiveChannel,
    name: String,
    store: Arc<dyn Store>,
    /// `None` once the hub is gone; the database rechecks go on.
    receiver: Option<watch::Receiver<u64>>,
    last: i64,
    recovered: bool,
    /// Read from the database, not sent yet.
    backlog: VecDeque<LiveMessage>,
    /// Read again without waiting: at the start (the client's missed
    /// messages), and after a full page (there may be more).
    read_now: bool,
    recheck: tokio::time::Interval,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("channel", &self.name)
            .field("last", &self.last)
            .field("recovered", &self.recovered)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.name
    }

    /// The position of the last message yielded (or started after).
    pub fn position(&self) -> i64 {
        self.last
    }

    /// False when the client's position could not be continued from and
    /// the follower started from the channel's head instead: the client
    /// must reload its state.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The next message, waiting for it if there is none yet.
    pub async fn next(&mut self) -> StoreResult<LiveMessage> {
        loop {
            while let Some(message) = self.backlog.pop_front() {
                if message.position > self.last {
                    self.last = message.position;
                    return Ok(message);
                }
                // At or below what was sent: dropped (never sent twice).
            }
            match &mut self.receiver {
                _ if self.read_now => {}
                Some(receiver) => tokio::select! {
                    rang = receiver.changed() => if rang.is_err() {
                        // The hub is gone: rechecks only.
                        self.receiver = None;
                    },
                    _ = self.recheck.tick() => {}
                },
                None => {
                    self.recheck.tick().await;
                }
            }
            self.catch_up().await?;
        }
    }

    async fn catch_up(&mut self) -> StoreResult<()> {
        self.backlog.clear();
        let page: Vec<LiveMessage> = match self.channel {
            LiveChannel::Orders(user) => self
                .store
                .order_changes(user, self.last, CATCH_UP_PAGE)
                .await?
                .into_iter()
                .map(|change| LiveMessage::order_change(&self.name, change))
                .collect(),
        };
        self.read_now = page.len() >= CATCH_UP_PAGE as usize;
        self.backlog.extend(page);
        Ok(())
    }
}
