//! Live channels: what a connected client (SSE today) is sent, and how a
//! client that reconnects gets exactly what it missed.
//!
//! Map:
//! - [`LiveChannel`]: the channels there are and who may follow each. Built
//!   so far: `orders:{user}` (every status change of the shopper's orders,
//!   with the steps it went through). The issue's `notifications:{user}`,
//!   `product:{id}`, `admin:orders` and `admin:health` are not built yet.
//! - [`order_moved`]: writes an order's status change to its channel, in the
//!   unit of work that makes the change (so a message exists exactly when
//!   the change committed). The caller hands the returned message to
//!   [`LiveHub::publish`] after the commit.
//! - [`LiveHub`]: this process's fan-out, and [`Follower`], one client's
//!   view of one channel.
//!
//! Why the database is the source and the hub only a shortcut: every message
//! has its channel's position (1, 2, 3, …, committed in order, see
//! [`StoreTx::append_live`]). A follower subscribes to the hub first, then
//! reads from the database everything after the client's position, then
//! takes hub messages, dropping any at or below the position it has sent
//! (no duplicate) and reading the database again whenever a hub message
//! skips a position, the hub says this follower fell behind, or
//! [`DEFAULT_RECHECK`] passed without news (no gap). The recheck is also
//! what brings messages written by other processes (a worker elsewhere, on
//! PostgreSQL) to a client connected here: at most one recheck late, with
//! nothing between processes but the database. Redis pub/sub between API
//! processes, to make that immediate, is not built yet.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderflow_domain::order::OrderStatus;
use orderflow_domain::user::Role;
use orderflow_domain::{OrderId, Timestamp, UserId};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::ports::store::{LiveMessage, Store, StoreResult, StoreTx};

/// Messages the hub keeps per channel for followers that have not taken
/// them yet; one further behind reads the database instead.
const HUB_BUFFER: usize = 256;
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

/// Writes "order `order_id` of `user_id` went through `steps`" to the
/// shopper's `orders:{user}` channel in `tx`, and returns the message (with
/// its position) for [`LiveHub::publish`] once `tx` committed.
pub async fn order_moved(
    tx: &mut dyn StoreTx,
    user_id: UserId,
    order_id: OrderId,
    steps: &[OrderStatus],
    at: Timestamp,
) -> StoreResult<LiveMessage> {
    let channel = LiveChannel::Orders(user_id).name();
    let data = serde_json::json!({
        "type": "order.status",
        "order_id": order_id,
        "status": steps.last().map(|s| s.as_str()),
        "steps": steps.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    });
    let position = tx.append_live(&channel, &data, at).await?;
    Ok(LiveMessage {
        channel,
        position,
        at,
        data,
    })
}

/// This process's fan-out of committed live messages to its followers.
pub struct LiveHub {
    store: Arc<dyn Store>,
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<LiveMessage>>>>,
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

    /// Hands a committed message to this process's followers of its
    /// channel. Call only after the commit: a follower may send it at once.
    pub fn publish(&self, message: LiveMessage) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = channels.get(&message.channel) {
            let channel = message.channel.clone();
            if sender.send(Arc::new(message)).is_err() {
                // Nobody follows it any more.
                channels.remove(&channel);
            }
        }
    }

    fn receiver(&self, channel: &str) -> broadcast::Receiver<Arc<LiveMessage>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(HUB_BUFFER).0)
            .subscribe()
    }

    /// Starts following `channel` after position `after` (the client's last
    /// position), or from now when `None`. A position past the channel's
    /// head (not one this server gave) starts from now with
    /// [`Follower::recovered`] false.
    pub async fn follow(&self, channel: LiveChannel, after: Option<i64>) -> StoreResult<Follower> {
        let name = channel.name();
        // Subscribed before reading the head: a message committed in between
        // is in the database read or on the hub, never in neither.
        let receiver = self.receiver(&name);
        let head = self.store.live_head(&name).await?;
        let (last, recovered) = match after {
            None => (head, true),
            Some(position) if (0..=head).contains(&position) => (position, true),
            Some(_) => (head, false),
        };
        let mut recheck = tokio::time::interval(self.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Follower {
            channel: name,
            store: self.store.clone(),
            receiver: Some(receiver),
            last,
            recovered,
            backlog: VecDeque::new(),
            recheck,
        })
    }
}

/// One client's view of one channel: yields its messages in position
/// order, each once, from the position it started after.
pub struct Follower {
    channel: String,
    store: Arc<dyn Store>,
    /// `None` once the hub is gone; the database rechecks go on.
    receiver: Option<broadcast::Receiver<Arc<LiveMessage>>>,
    last: i64,
    recovered: bool,
    /// Read from the database, not sent yet.
    backlog: VecDeque<LiveMessage>,
    recheck: tokio::time::Interval,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("channel", &self.channel)
            .field("last", &self.last)
            .field("recovered", &self.recovered)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
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
                if message.position == self.last + 1 {
                    self.last = message.position;
                    return Ok(message);
                }
                if message.position > self.last + 1 {
                    // Cannot happen with gap-free positions; read again.
                    self.backlog.clear();
                    self.catch_up().await?;
                }
            }
            let received = match &mut self.receiver {
                Some(receiver) => tokio::select! {
                    received = receiver.recv() => Some(received),
                    _ = self.recheck.tick() => None,
                },
                None => {
                    self.recheck.tick().await;
                    None
                }
            };
            match received {
                Some(Ok(message)) if message.position <= self.last => {}
                Some(Ok(message)) if message.position == self.last + 1 => {
                    self.last = message.position;
                    return Ok(Arc::unwrap_or_clone(message));
                }
                Some(Err(RecvError::Closed)) => {
                    self.receiver = None;
                    self.catch_up().await?;
                }
                // A skipped position, a follower the hub left behind, or a
                // quiet spell: the database has the truth.
                Some(Ok(_)) | Some(Err(RecvError::Lagged(_))) | None => self.catch_up().await?,
            }
        }
    }

    async fn catch_up(&mut self) -> StoreResult<()> {
        let page = self
            .store
            .live_messages(&self.channel, self.last, CATCH_UP_PAGE)
            .await?;
        self.backlog.extend(page);
        Ok(())
    }
}
