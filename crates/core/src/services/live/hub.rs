//! [`LiveHub`]: this process's doorbell for live channels, the followers
//! that read a channel's messages from the database, the bus that carries
//! the doorbell between processes, and the single-use tickets.
//!
//! A follower watches the hub first, then reads everything after the
//! client's position, and reads again after each ring or after the
//! recheck interval ([`DEFAULT_RECHECK`]) without one; it sends only
//! positions above the last it sent, so nothing is sent twice and nothing
//! is skipped.
//!
//! Between processes: with a bus (the shared cache's pub/sub, Redis when
//! scaled), [`LiveHub::publish`] also tells every other process's hub, so
//! a shopper connected to API 2 hears at once of a change a worker
//! committed elsewhere. The bus only rings: the messages still come from
//! the database, so a bus that loses a ring (Redis restarting) costs at
//! most one recheck of delay, and when its subscription comes back every
//! follower here reads again. Without a bus the recheck alone brings other
//! processes' changes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};

use super::{LiveChannel, LiveMessage};
use crate::CoreError;
use crate::ports::cache::{CacheEvent, SharedCache};
use crate::ports::store::{Store, StoreResult};
use crate::services::auth::{AuthService, Principal, new_random_token, sha256_hex};

/// Messages read from the database at once while catching up.
const CATCH_UP_PAGE: u32 = 200;
/// How often a follower with no news looks at the database.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(1);
/// How long a ticket from [`LiveHub::issue_ticket`] can be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// The bus channel the hubs ring each other on.
const BUS_CHANNEL: &str = "live";
/// Rings waiting to go out on the bus; past this a ring is dropped (the
/// other processes' rechecks bring the change, a little later).
const BUS_QUEUE: usize = 4096;

/// Per followed channel, a ring counter.
type Bells = Mutex<HashMap<String, watch::Sender<u64>>>;

fn bells(bells: &Bells) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
    bells
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rings `channel` in this process, if anybody here follows it.
fn ring(bells_of: &Bells, channel: &str) {
    let mut channels = bells(bells_of);
    if let Some(sender) = channels.get(channel) {
        if sender.receiver_count() == 0 {
            // Nobody follows it any more.
            channels.remove(channel);
        } else {
            sender.send_modify(|rings| *rings = rings.wrapping_add(1));
        }
    }
}

/// This process's live channels: rings followers after commits, starts
/// followers and connections, and keeps the tickets.
pub struct LiveHub {
    store: Arc<dyn Store>,
    pub(super) auth: Arc<AuthService>,
    /// Where tickets are kept: shared by every process (Redis when
    /// scaled), so a ticket issued by one API process works at another.
    tickets: Arc<dyn SharedCache>,
    bells: Arc<Bells>,
    /// Rings for the other processes, when there is a bus.
    bus: Option<mpsc::Sender<String>>,
    recheck: Duration,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("recheck", &self.recheck)
            .field("bus", &self.bus.is_some())
            .finish_non_exhaustive()
    }
}

impl LiveHub {
    /// A hub with no bus: for one process, or for several that rely on the
    /// recheck ([`with_bus`](Self::with_bus) rings across them at once).
    pub fn new(
        store: Arc<dyn Store>,
        auth: Arc<AuthService>,
        tickets: Arc<dyn SharedCache>,
    ) -> Self {
        Self {
            store,
            auth,
            tickets,
            bells: Arc::new(Mutex::new(HashMap::new())),
            bus: None,
            recheck: DEFAULT_RECHECK,
        }
    }

    /// How often a follower with no news looks at the database (default
    /// [`DEFAULT_RECHECK`]).
    pub fn with_recheck(mut self, every: Duration) -> Self {
        self.recheck = every;
        self
    }

    /// Rings the other processes' hubs over `bus`'s pub/sub, and hears
    /// theirs. Starts two tasks (needs a Tokio runtime); they end when the
    /// hub is dropped.
    pub fn with_bus(mut self, bus: Arc<dyn SharedCache>) -> Self {
        // Each hub signs its rings, so it does not ring its own followers
        // twice when its own rings come back.
        let me = uuid::Uuid::now_v7().to_string();
        let (rings, mut outgoing) = mpsc::channel::<String>(BUS_QUEUE);
        let sender = bus.clone();
        let signature = me.clone();
        tokio::spawn(async move {
            while let Some(channel) = outgoing.recv().await {
                let message = format!("{signature} {channel}");
                if let Err(error) = sender.publish(BUS_CHANNEL, &message).await {
                    metrics::counter!("orderflow_live_bus_failures_total").increment(1);
                    tracing::debug!(%error, "live ring not sent to other processes");
                }
            }
        });
        let bells = Arc::downgrade(&self.bells);
        tokio::spawn(async move {
            loop {
                let mut subscription = match bus.subscribe(BUS_CHANNEL).await {
                    Ok(subscription) => subscription,
                    Err(error) => {
                        tracing::warn!(%error, "live bus: cannot subscribe; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if bells.strong_count() == 0 {
                            return;
                        }
                        continue;
                    }
                };
                // Whatever was published before now is in the database:
                // every follower here reads again (the first time too,
                // as the subscription may be a re-subscription).
                match bells.upgrade() {
                    Some(bells) => ring_all(&bells),
                    None => return,
                }
                while let Some(event) = subscription.next().await {
                    let Some(bells) = bells.upgrade() else {
                        return;
                    };
                    match event {
                        CacheEvent::Message(message) => match message.split_once(' ') {
                            Some((from, channel)) if from != me => {
                                metrics::counter!("orderflow_live_bus_rings_total").increment(1);
                                ring(&bells, channel);
                            }
                            _ => {}
                        },
                        CacheEvent::Lost => {}
                        CacheEvent::Resubscribed => ring_all(&bells),
                    }
                }
                if bells.strong_count() == 0 {
                    return;
                }
            }
        });
        self.bus = Some(rings);
        self
    }

    /// Tells the followers of `channel`, here and (with a bus) in every
    /// other process, that it has committed news. Call only after the
    /// commit: they read the database at once.
    pub fn publish(&self, channel: &str) {
        ring(&self.bells, channel);
        if let Some(bus) = &self.bus
            && bus.try_send(channel.to_owned()).is_err()
        {
            metrics::counter!("orderflow_live_bus_failures_total").increment(1);
        }
    }

    fn receiver(&self, channel: &str) -> watch::Receiver<u64> {
        bells(&self.bells)
            .entry(channel.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Starts following `channel` after position `after` (the client's last
    /// position), or from now when `None`. A position past the channel's
    /// head (not one this server gave) starts from now with
    /// [`Follower::recovered`] false.
    pub async fn follow(
        &self,
        channel: LiveChannel,
        after: Option<i64>,
    ) -> Result<Follower, CoreError> {
        let name = channel.name();
        // Watching before reading the head: a message committed in between
        // is in the first read or rings the bell, never neither.
        let receiver = self.receiver(&name);
        let head = match channel {
            LiveChannel::Orders(user) => self.store.last_order_change(user).await?,
            LiveChannel::Product(id) => {
                let product = self.store.products_by_ids(&[id]).await?.pop();
                product.ok_or(CoreError::NotFound("product"))?.version
            }
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

    /// A single-use ticket that stands for `principal` for [`TICKET_TTL`]:
    /// for clients that cannot send an `Authorization` header when they
    /// connect (the browser's `EventSource` and `WebSocket`). Only its
    /// SHA-256 is kept.
    pub async fn issue_ticket(&self, principal: &Principal) -> Result<String, CoreError> {
        let ticket = new_random_token();
        let value = serde_json::to_vec(principal)
            .map_err(|e| CoreError::Internal(format!("encoding a live ticket: {e}")))?;
        self.tickets
            .set(&ticket_key(&ticket), &value, TICKET_TTL)
            .await?;
        Ok(ticket)
    }

    /// Redeems a ticket: the principal it stands for, once. Unknown, used
    /// or expired tickets, and tickets whose session was logged out since,
    /// are 401.
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Principal, CoreError> {
        let refused =
            || CoreError::Unauthorized("live ticket is unknown, used or expired".to_owned());
        let key = ticket_key(ticket);
        let value = self.tickets.get(&key).await?.ok_or_else(refused)?;
        // Whoever deletes it redeems it: two connections racing with one
        // ticket get one success.
        if !self.tickets.delete(&key).await? {
            return Err(refused());
        }
        let principal: Principal = serde_json::from_slice(&value).map_err(|_| refused())?;
        if principal.expires_at <= chrono::Utc::now() {
            return Err(CoreError::Unauthorized(
                "the access token the ticket was issued for has expired".into(),
            ));
        }
        self.auth.still_valid(&principal).await?;
        Ok(principal)
    }
}

fn ticket_key(ticket: &str) -> String {
    format!("live-ticket:{}", sha256_hex(ticket))
}

/// Rings every followed channel in this process (the bus came back after
/// missing rings).
fn ring_all(bells_of: &Bells) {
    for sender in bells(bells_of).values() {
        sender.send_modify(|rings| *rings = rings.wrapping_add(1));
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

    /// The messages as a stream that ends after its first error.
    pub fn into_stream(self) -> BoxStream<'static, StoreResult<LiveMessage>> {
        stream::unfold(Some(self), |follower| async move {
            let mut follower = follower?;
            match follower.next().await {
                Ok(message) => Some((Ok(message), Some(follower))),
                Err(error) => Some((Err(error), None)),
            }
        })
        .boxed()
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
            // A state channel: the product as it is now, if newer.
            LiveChannel::Product(id) => self
                .store
                .products_by_ids(&[id])
                .await?
                .iter()
                .filter(|product| product.version > self.last)
                .map(|product| LiveMessage::product(&self.name, product))
                .collect(),
        };
        self.read_now = page.len() >= CATCH_UP_PAGE as usize;
        self.backlog.extend(page);
        Ok(())
    }
}
