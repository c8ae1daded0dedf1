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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use orderflow_domain::UserId;
use orderflow_domain::product::Product;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{LiveChannel, LiveMessage};
use crate::CoreError;
use crate::ports::cache::{CacheEvent, SharedCache};
use crate::ports::presence::{PresenceBoard, PresenceTally};
use crate::ports::store::{ChangesPage, Store, StoreResult};
use crate::services::admin::Operations;
use crate::services::auth::{AuthService, Principal, new_random_token, sha256_hex};
use crate::services::lock;

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
/// A bus message for a user whose tokens were revoked, not a channel.
const REVOKED_PREFIX: &str = "revoked:";

/// Hears the other hubs' rings on the bus channel `channel` (subscribing
/// again while it cannot), until the hub is dropped.
async fn hear_bus(
    bus: Arc<dyn SharedCache>,
    channel: String,
    me: String,
    bells: std::sync::Weak<Bells>,
    states: std::sync::Weak<States>,
) {
    loop {
        let mut subscription = match bus.subscribe(&channel).await {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(%error, %channel, "live bus: cannot subscribe; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if bells.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        // Whatever was published before now is in the database: every
        // follower here reads again (the first time too, as the
        // subscription may be a re-subscription).
        match (bells.upgrade(), states.upgrade()) {
            (Some(bells), Some(states)) => {
                ring_all(&bells);
                states.reload_all();
                states.revoked_all();
            }
            _ => return,
        }
        while let Some(event) = subscription.next().await {
            let (Some(bells), Some(states)) = (bells.upgrade(), states.upgrade()) else {
                return;
            };
            match event {
                CacheEvent::Message(message) => match message.split_once(' ') {
                    Some((from, channel)) if from != me => {
                        metrics::counter!("orderflow_live_bus_rings_total").increment(1);
                        if let Some(user) = channel.strip_prefix(REVOKED_PREFIX) {
                            if let Ok(user) = user.parse() {
                                states.revoked(user);
                            }
                        } else if is_state_channel(channel) {
                            // Read once here, for every follower.
                            states.reload(channel);
                        } else {
                            ring(&bells, channel);
                        }
                    }
                    _ => {}
                },
                CacheEvent::Lost => {}
                CacheEvent::Resubscribed => {
                    ring_all(&bells);
                    states.reload_all();
                    states.revoked_all();
                }
            }
        }
        if bells.strong_count() == 0 {
            return;
        }
    }
}

/// Per followed channel, a ring counter.
type Bells = Mutex<HashMap<String, watch::Sender<u64>>>;

/// Rings `channel` in this process, if anybody here follows it; a
/// shopper's `orders:{user}` rings `admin:orders` too (the same rows).
fn ring(bells_of: &Bells, channel: &str) {
    let mut channels = lock(bells_of);
    let mut ring_one = |channel: &str| {
        if let Some(sender) = channels.get(channel) {
            if sender.receiver_count() == 0 {
                // Nobody follows it any more.
                channels.remove(channel);
            } else {
                sender.send_modify(|rings| *rings = rings.wrapping_add(1));
            }
        }
    };
    ring_one(channel);
    if channel.starts_with("orders:") {
        ring_one(ADMIN_ORDERS);
    }
}

const ADMIN_ORDERS: &str = "admin:orders";

/// This process's live channels: rings followers after commits, starts
/// followers and connections, and keeps the tickets.
pub struct LiveHub {
    store: Arc<dyn Store>,
    pub(super) auth: Arc<AuthService>,
    /// Where tickets are kept: shared by every process (Redis when
    /// scaled), so a ticket issued by one API process works at another.
    tickets: Arc<dyn SharedCache>,
    bells: Arc<Bells>,
    /// The state channels' latest messages, kept once per process.
    states: Arc<States>,
    /// Rings for the other processes, when there is a bus.
    bus: Option<mpsc::Sender<String>>,
    /// This hub among the processes: signs its bus rings and names its
    /// presence report.
    instance: String,
    recheck: Duration,
    revocation_listener: OnceLock<()>,
    presence_reporter: OnceLock<()>,
    /// Cancelled when this process stops: every connection closes with
    /// [`CloseReason::Restarting`](super::CloseReason::Restarting).
    pub(super) stopping: CancellationToken,
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
        let store_for_states = store.clone();
        Self {
            store,
            auth,
            tickets,
            bells: Arc::new(Mutex::new(HashMap::new())),
            states: Arc::new(States {
                store: store_for_states,
                operations: OnceLock::new(),
                latest: Mutex::new(HashMap::new()),
                dirty: Mutex::new(HashSet::new()),
                poke: Notify::new(),
                recheck: Mutex::new(DEFAULT_RECHECK),
                keeper: OnceLock::new(),
                presence: Mutex::new(HashMap::new()),
                presence_changes: std::sync::atomic::AtomicU64::new(0),
                board: OnceLock::new(),
            }),
            bus: None,
            instance: uuid::Uuid::now_v7().to_string(),
            recheck: DEFAULT_RECHECK,
            revocation_listener: OnceLock::new(),
            presence_reporter: OnceLock::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Where `admin:health` reads consumer lag, dead letters and the
    /// outbox backlog.
    pub fn with_operations(self, operations: Arc<Operations>) -> Self {
        let _ = self.states.operations.set(operations);
        self
    }

    /// How often a follower with no news looks at the database (default
    /// [`DEFAULT_RECHECK`]).
    pub fn with_recheck(mut self, every: Duration) -> Self {
        self.recheck = every;
        *lock(&self.states.recheck) = every;
        self
    }

    /// Reports this process's live connections to `board` every
    /// [`PRESENCE_EVERY`] from its first connection on (a process that
    /// serves none, a worker, reports nothing), so that `admin:health`
    /// counts every process's; without a board, this process's alone.
    pub fn with_presence(self, board: Arc<dyn PresenceBoard>) -> Self {
        let _ = self.states.board.set(board);
        self
    }

    /// Closes every live connection of this process, now and from now on,
    /// with [`CloseReason::Restarting`](super::CloseReason::Restarting):
    /// called when the process is told to stop, so that its graceful
    /// shutdown is not held open by streams that never end, and the clients
    /// reconnect (to another process) with their positions at once.
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// Rings the other processes' hubs over `bus`'s pub/sub, and hears
    /// theirs. Starts two tasks (needs a Tokio runtime); they end when the
    /// hub is dropped.
    pub fn with_bus(mut self, bus: Arc<dyn SharedCache>) -> Self {
        // Each hub signs its rings, so it does not ring its own followers
        // twice when its own rings come back.
        let me = self.instance.clone();
        // Rings are doorbells (their order does not matter), so they go
        // round the bus's channels in turn: on a sharded bus (a Redis
        // Cluster) every node carries its share.
        let channels: Vec<String> = match bus.pubsub_shards() {
            0 | 1 => vec![BUS_CHANNEL.to_owned()],
            shards => (0..shards).map(|k| format!("{BUS_CHANNEL}:{k}")).collect(),
        };
        let (rings, mut outgoing) = mpsc::channel::<String>(BUS_QUEUE);
        let sender = bus.clone();
        let signature = me.clone();
        let targets = channels.clone();
        tokio::spawn(async move {
            for turn in 0.. {
                let Some(channel) = outgoing.recv().await else {
                    return;
                };
                let message = format!("{signature} {channel}");
                let target = &targets[turn % targets.len()];
                if let Err(error) = sender.publish(target, &message).await {
                    metrics::counter!("orderflow_live_bus_failures_total").increment(1);
                    tracing::debug!(%error, "live ring not sent to other processes");
                }
            }
        });
        for channel in channels {
            tokio::spawn(hear_bus(
                bus.clone(),
                channel,
                me.clone(),
                Arc::downgrade(&self.bells),
                Arc::downgrade(&self.states),
            ));
        }
        self.bus = Some(rings);
        // Revocations made here go to the other processes even while
        // nobody here is connected.
        self.listen_for_revocations();
        self
    }

    /// Tells the followers of `channel`, here and (with a bus) in every
    /// other process, that it has committed news. Call only after the
    /// commit: they read the database at once.
    pub fn publish(&self, channel: &str) {
        if is_state_channel(channel) {
            self.states.reload(channel);
        } else {
            ring(&self.bells, channel);
        }
        self.ring_others(channel);
    }

    /// Tells the followers of `product:{id}` its committed state: here at
    /// once without reading it again, and (with a bus) every other process,
    /// which reads it once for all its followers.
    pub fn publish_product(&self, product: &Product) {
        let channel = LiveChannel::Product(product.id).name();
        self.states
            .set(&channel, || LiveMessage::product(&channel, product));
        self.ring_others(&channel);
    }

    fn ring_others(&self, channel: &str) {
        if let Some(bus) = &self.bus
            && bus.try_send(channel.to_owned()).is_err()
        {
            metrics::counter!("orderflow_live_bus_failures_total").increment(1);
        }
    }

    fn receiver(&self, channel: &str) -> watch::Receiver<u64> {
        lock(&self.bells)
            .entry(channel.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Starts following `channel` after position `after` (the client's last
    /// position), or from now when `None`. A position past the channel's
    /// head (not one this server gave) starts from now with
    /// [`Follower::recovered`] false. On a state channel a position behind
    /// the head gets the newest state.
    pub async fn follow(
        &self,
        channel: LiveChannel,
        after: Option<i64>,
    ) -> Result<Follower, CoreError> {
        let name = channel.name();
        // Watching before reading the head: a message committed in between
        // is in the first read or rings the bell, never neither.
        let (head, source) = match channel {
            LiveChannel::Product(_) | LiveChannel::Health => {
                let receiver = self.states.receiver(&name);
                let latest = receiver.borrow().clone();
                let head = match latest {
                    Some(message) => message.position,
                    None => self.states.load(&name).await?.position,
                };
                (head, Source::State(receiver))
            }
            LiveChannel::Orders(_) | LiveChannel::Notifications(_) | LiveChannel::AdminOrders => {
                let receiver = self.receiver(&name);
                let head = match channel {
                    LiveChannel::Orders(user) => self.store.last_order_change(Some(user)).await?,
                    LiveChannel::Notifications(user) => self.store.last_notification(user).await?,
                    _ => self.store.last_order_change(None).await?,
                };
                let mut recheck = tokio::time::interval(self.recheck);
                recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let events = Events {
                    receiver: Some(receiver),
                    backlog: VecDeque::new(),
                    read_now: true,
                    gap: None,
                    recheck,
                };
                (head, Source::Events(events))
            }
        };
        let (last, recovered) = match after {
            None => (head, true),
            Some(position) if (0..=head).contains(&position) => (position, true),
            Some(_) => (head, false),
        };
        Ok(Follower {
            channel,
            name,
            store: self.store.clone(),
            last,
            recovered,
            source,
        })
    }

    /// `channel`'s newest messages (at most `limit`; a state channel's
    /// state) and the position to follow it after, read at once: a client
    /// that shows them and then subscribes with that position misses
    /// nothing and gets nothing twice ("load, then subscribe" without a
    /// race).
    pub async fn snapshot(
        &self,
        channel: LiveChannel,
        limit: u32,
    ) -> Result<LiveSnapshot, CoreError> {
        let name = channel.name();
        let messages = if channel.is_state() {
            vec![(*self.states.load(&name).await?).clone()]
        } else {
            read_page(&*self.store, channel, &name, ChangesPage::Latest, limit).await?
        };
        Ok(LiveSnapshot {
            position: messages.last().map_or(0, |message| message.position),
            channel: name,
            messages,
        })
    }

    /// A live connection of `user` opened (counted for `admin:health`):
    /// its bell for revocations of the user's tokens.
    pub(super) fn connected(&self, user: UserId) -> watch::Receiver<u64> {
        self.listen_for_revocations();
        if let Some(board) = self.states.board.get() {
            self.presence_reporter.get_or_init(|| {
                tokio::spawn(report_presence(
                    board.clone(),
                    self.instance.clone(),
                    Arc::downgrade(&self.states),
                ));
            });
        }
        let mut presence = lock(&self.states.presence);
        let devices = presence.entry(user).or_insert_with(|| Devices {
            count: 0,
            revoked: watch::channel(0).0,
        });
        devices.count += 1;
        self.states.presence_changed();
        devices.revoked.subscribe()
    }

    /// A live connection of `user` closed.
    pub(super) fn disconnected(&self, user: UserId) {
        let mut presence = lock(&self.states.presence);
        if let Some(devices) = presence.get_mut(&user) {
            devices.count -= 1;
            if devices.count == 0 {
                presence.remove(&user);
            }
        }
        self.states.presence_changed();
    }

    /// Starts (once: with the bus, or at the first connection) the task
    /// that hears this process's revocations and rings the users'
    /// connections here and, over the bus, elsewhere.
    fn listen_for_revocations(&self) {
        self.revocation_listener.get_or_init(|| {
            let mut heard = self.auth.revoked_users();
            let states = Arc::downgrade(&self.states);
            let bus = self.bus.clone();
            tokio::spawn(async move {
                loop {
                    let user = heard.recv().await;
                    let Some(states) = states.upgrade() else {
                        return;
                    };
                    match user {
                        Ok(user) => {
                            states.revoked(user);
                            if let Some(bus) = &bus
                                && bus.try_send(format!("{REVOKED_PREFIX}{user}")).is_err()
                            {
                                metrics::counter!("orderflow_live_bus_failures_total").increment(1);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            states.revoked_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        });
    }

    /// How a connection of this hub is paced and checked: its token is
    /// checked for revocation every recheck interval, and at once when a
    /// revocation of its user is heard (from this process, or over the bus
    /// from another).
    pub fn connection_settings(&self) -> super::ConnectionSettings {
        super::ConnectionSettings {
            auth_check: self.recheck,
            ..super::ConnectionSettings::default()
        }
    }

    /// Live connections and users: every process's, from the presence
    /// board when there is one and it answers, else this process's.
    pub async fn presence(&self) -> PresenceTally {
        self.states.presence().await
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
    for sender in lock(bells_of).values() {
        sender.send_modify(|rings| *rings = rings.wrapping_add(1));
    }
}

/// A channel's newest messages and the position to follow it after
/// ([`LiveHub::snapshot`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveSnapshot {
    pub channel: String,
    pub position: i64,
    pub messages: Vec<LiveMessage>,
}

/// One client's view of one channel: yields its messages in position
/// order, each once, from the position it started after.
pub struct Follower {
    channel: LiveChannel,
    name: String,
    store: Arc<dyn Store>,
    last: i64,
    recovered: bool,
    source: Source,
}

/// Where a follower's messages come from.
enum Source {
    /// An event channel: read from the database after each ring.
    Events(Events),
    /// A state channel: the process's latest state of it, read once for
    /// every follower ([`States`]); versions a follower was too slow for
    /// are skipped, as the newest state replaces them.
    State(watch::Receiver<Option<Arc<LiveMessage>>>),
}

struct Events {
    /// `None` once the hub is gone; the database rechecks go on.
    receiver: Option<watch::Receiver<u64>>,
    /// Read from the database, not sent yet.
    backlog: VecDeque<LiveMessage>,
    /// Read again without waiting: at the start (the client's missed
    /// messages), and after a full page (there may be more).
    read_now: bool,
    /// `admin:orders` only: the first position missing after the last one
    /// sent, and since when; read again every [`GAP_LOOK_EVERY`] until it
    /// is filled or [`GAP_WAIT`] has passed.
    gap: Option<(i64, tokio::time::Instant)>,
    recheck: tokio::time::Interval,
}

/// How long `admin:orders` waits for a missing position before it goes
/// on without it. Every shopper's steps share one sequence; on PostgreSQL a
/// step can commit after a higher position did (the lower one is still in
/// a transaction), and a rolled-back transaction leaves its positions
/// unused for good. Waiting tells the two apart: a step whose transaction
/// outlasts this wait is missed by the live stream (it is in the order's
/// history). On SQLite (one writer) a missing position never fills later.
const GAP_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting `admin:orders` follower reads again.
const GAP_LOOK_EVERY: Duration = Duration::from_millis(20);

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
    pub async fn next(&mut self) -> StoreResult<Arc<LiveMessage>> {
        match &mut self.source {
            Source::State(receiver) => loop {
                let latest = receiver.borrow_and_update().clone();
                if let Some(message) = latest
                    && message.position > self.last
                {
                    self.last = message.position;
                    return Ok(message);
                }
                if receiver.changed().await.is_err() {
                    // The hub is gone (shutting down): nothing more comes.
                    std::future::pending::<()>().await;
                }
            },
            Source::Events(_) => self.next_event().await,
        }
    }

    async fn next_event(&mut self) -> StoreResult<Arc<LiveMessage>> {
        loop {
            let Source::Events(events) = &mut self.source else {
                unreachable!("an event channel's follower");
            };
            while let Some(message) = events.backlog.pop_front() {
                if message.position > self.last {
                    self.last = message.position;
                    return Ok(Arc::new(message));
                }
                // At or below what was sent: dropped (never sent twice).
            }
            match &mut events.receiver {
                _ if events.read_now => {}
                _ if events.gap.is_some() => tokio::time::sleep(GAP_LOOK_EVERY).await,
                Some(receiver) => tokio::select! {
                    rang = receiver.changed() => if rang.is_err() {
                        // The hub is gone: rechecks only.
                        events.receiver = None;
                    },
                    _ = events.recheck.tick() => {}
                },
                None => {
                    events.recheck.tick().await;
                }
            }
            let mut page = self.read_after().await?;
            let full = page.len() >= CATCH_UP_PAGE as usize;
            let Source::Events(events) = &mut self.source else {
                unreachable!("an event channel's follower");
            };
            if self.channel == LiveChannel::AdminOrders {
                events.gap = settle(&mut page, self.last, events.gap);
            }
            events.read_now = full && events.gap.is_none();
            events.backlog = page.into();
        }
    }

    /// The messages as a stream that ends after its first error.
    pub fn into_stream(self) -> BoxStream<'static, StoreResult<Arc<LiveMessage>>> {
        stream::unfold(Some(self), |follower| async move {
            let mut follower = follower?;
            match follower.next().await {
                Ok(message) => Some((Ok(message), Some(follower))),
                Err(error) => Some((Err(error), None)),
            }
        })
        .boxed()
    }

    /// An event channel's messages after the last one sent, a page.
    async fn read_after(&self) -> StoreResult<Vec<LiveMessage>> {
        let after = ChangesPage::After(self.last);
        read_page(&*self.store, self.channel, &self.name, after, CATCH_UP_PAGE).await
    }
}

/// A page of event channel `channel` (named `name`): after a position, or
/// its newest messages. A state channel has no pages: empty.
async fn read_page(
    store: &dyn Store,
    channel: LiveChannel,
    name: &str,
    page: ChangesPage,
    limit: u32,
) -> StoreResult<Vec<LiveMessage>> {
    let orders = |user| async move {
        let changes = store.order_changes(user, page, limit).await?;
        Ok::<_, crate::ports::store::StoreError>(
            changes
                .into_iter()
                .map(|change| LiveMessage::order_change(name, change))
                .collect(),
        )
    };
    match channel {
        LiveChannel::Orders(user) => orders(Some(user)).await,
        LiveChannel::AdminOrders => orders(None).await,
        LiveChannel::Notifications(user) => Ok(store
            .notification_changes(user, page, limit)
            .await?
            .into_iter()
            .map(|change| LiveMessage::notification(name, change))
            .collect()),
        LiveChannel::Product(_) | LiveChannel::Health => Ok(Vec::new()),
    }
}

/// Keeps in `page` (positions after `last`, in order) only what follows
/// `last` without a missing position, unless the first missing one has
/// been missing for [`GAP_WAIT`] (`gap` says since when); returns the gap
/// still waited for.
fn settle(
    page: &mut Vec<LiveMessage>,
    last: i64,
    gap: Option<(i64, tokio::time::Instant)>,
) -> Option<(i64, tokio::time::Instant)> {
    let contiguous = page
        .iter()
        .zip(last + 1..)
        .take_while(|(message, expected)| message.position == *expected)
        .count();
    if contiguous == page.len() {
        return None;
    }
    let missing = last + 1 + contiguous as i64;
    match gap {
        Some((position, since)) if position == missing && since.elapsed() >= GAP_WAIT => {
            // Given up on, the whole hole (every position in it was missing
            // all along): the rest is judged from the next one present.
            let mut rest = page.split_off(contiguous);
            let present = rest[0].position;
            let further = settle(&mut rest, present - 1, None);
            page.extend(rest);
            further
        }
        Some((position, since)) if position == missing => {
            page.truncate(contiguous);
            Some((position, since))
        }
        _ => {
            page.truncate(contiguous);
            Some((missing, tokio::time::Instant::now()))
        }
    }
}

fn is_state_channel(name: &str) -> bool {
    LiveChannel::parse(name).is_some_and(|channel| channel.is_state())
}

/// The latest message of each followed state channel, kept once per
/// process and handed to every follower of it: a product that changes is
/// read once here, not once per follower, and handed out
/// [`FAN_OUT_CHUNK`] followers at a time. A keeper task (started with the
/// first state channel followed) reloads what is marked for reloading (a
/// ring from another process, a change whose row was not at hand), every
/// followed product each recheck (the safety net for lost rings), and
/// `admin:health` every second.
struct States {
    store: Arc<dyn Store>,
    operations: OnceLock<Arc<Operations>>,
    latest: Mutex<HashMap<String, StateChannel>>,
    /// Channels to read again at the keeper's next round.
    dirty: Mutex<HashSet<String>>,
    poke: Notify,
    recheck: Mutex<Duration>,
    keeper: OnceLock<()>,
    /// Live connections per user, in this process.
    presence: Mutex<HashMap<UserId, Devices>>,
    /// Bumped at each connection and disconnection: the reporter sends the
    /// whole map only when it moved.
    presence_changes: std::sync::atomic::AtomicU64,
    /// Where every process reports its connections, when there is one.
    board: OnceLock<Arc<dyn PresenceBoard>>,
}

/// One user's live connections in this process.
struct Devices {
    count: usize,
    /// Rung when the user's tokens or sessions were revoked (here or, over
    /// the bus, elsewhere): each connection checks its own at once.
    revoked: watch::Sender<u64>,
}

/// One follower's view of a state channel: the newest message it was
/// handed.
type StateSender = Arc<watch::Sender<Option<Arc<LiveMessage>>>>;

/// A followed state channel in this process: its newest message, and a
/// watch per follower, so that a change can be handed out a chunk of
/// followers at a time ([`fan_out`]).
#[derive(Default)]
struct StateChannel {
    latest: Option<Arc<LiveMessage>>,
    followers: Vec<StateSender>,
}

impl StateChannel {
    /// Forgets the followers that went away; whether any is left.
    fn followed(&mut self) -> bool {
        self.followers.retain(|follower| !follower.is_closed());
        !self.followers.is_empty()
    }
}

/// Followers handed a state change before the fan-out lets other tasks
/// run: a product followed by 10,000 connections wakes them 64 at a time,
/// so a shopper's order message woken meanwhile waits behind 64 sends,
/// not behind 10,000.
const FAN_OUT_CHUNK: usize = 64;

/// Hands `message` to `followers` a chunk at a time (each keeps the newer
/// of what it holds and `message`, so overlapping fan-outs of one channel
/// never go back).
async fn fan_out(followers: Vec<StateSender>, message: Arc<LiveMessage>) {
    for chunk in followers.chunks(FAN_OUT_CHUNK) {
        for follower in chunk {
            hand(follower, &message);
        }
        tokio::task::yield_now().await;
    }
}

fn hand(follower: &StateSender, message: &Arc<LiveMessage>) {
    follower.send_if_modified(|state| match state {
        Some(current) if current.position >= message.position => false,
        _ => {
            *state = Some(message.clone());
            true
        }
    });
}

/// How often `admin:health` is sent.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// How often each process reports its connections to the presence board.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// How long a report counts without another: a process that died drops
/// out of the totals within this time.
const PRESENCE_TTL: Duration = Duration::from_secs(3);

/// Reports `states`' connections to `board` every [`PRESENCE_EVERY`]: the
/// whole map when it changed or the board lost it, else a keep-alive.
async fn report_presence(
    board: Arc<dyn PresenceBoard>,
    instance: String,
    states: std::sync::Weak<States>,
) {
    let mut reported: Option<u64> = None;
    let mut every = tokio::time::interval(PRESENCE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(states) = states.upgrade() else {
            return;
        };
        let changes = states
            .presence_changes
            .load(std::sync::atomic::Ordering::Acquire);
        let kept = match reported {
            Some(last) if last == changes => board
                .keep_alive(&instance, PRESENCE_TTL)
                .await
                .unwrap_or(false),
            _ => false,
        };
        if !kept {
            let devices = states.local_devices();
            reported = match board.report(&instance, &devices, PRESENCE_TTL).await {
                Ok(()) => Some(changes),
                Err(error) => {
                    tracing::debug!(%error, "live presence not reported");
                    None
                }
            };
        }
    }
}

impl States {
    /// Live connections per user, in this process.
    fn local_devices(&self) -> HashMap<UserId, usize> {
        lock(&self.presence)
            .iter()
            .map(|(user, devices)| (*user, devices.count))
            .collect()
    }

    fn presence_changed(&self) {
        self.presence_changes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Every process's connections from the board, or this process's when
    /// there is no board or it does not answer.
    async fn presence(&self) -> PresenceTally {
        if let Some(board) = self.board.get() {
            match board.tally().await {
                Ok(tally) => return tally,
                Err(error) => {
                    tracing::debug!(%error, "presence board unavailable; counting this process only");
                }
            }
        }
        PresenceTally::of([&self.local_devices()])
    }

    /// Tells `user`'s connections here to check their tokens now.
    fn revoked(&self, user: UserId) {
        if let Some(devices) = lock(&self.presence).get(&user) {
            devices
                .revoked
                .send_modify(|rings| *rings = rings.wrapping_add(1));
        }
    }

    /// Tells every connection here to check its token now (revocations
    /// may have been missed: the bus was away, a listener lagged).
    fn revoked_all(&self) {
        for devices in lock(&self.presence).values() {
            devices
                .revoked
                .send_modify(|rings| *rings = rings.wrapping_add(1));
        }
    }

    fn receiver(self: &Arc<Self>, channel: &str) -> watch::Receiver<Option<Arc<LiveMessage>>> {
        self.keeper.get_or_init(|| {
            tokio::spawn(Self::keep(Arc::downgrade(self)));
        });
        let mut channels = lock(&self.latest);
        let state = channels.entry(channel.to_owned()).or_default();
        let (sender, receiver) = watch::channel(state.latest.clone());
        state.followers.push(Arc::new(sender));
        receiver
    }

    /// Keeps `message` as its channel's state if it is newer, and hands it
    /// to the channel's followers (a chunk at a time when they are many);
    /// builds it only when somebody here follows it.
    fn set(&self, channel: &str, message: impl FnOnce() -> LiveMessage) {
        let mut channels = lock(&self.latest);
        let Some(state) = channels.get_mut(channel) else {
            return; // Nobody here follows it.
        };
        if !state.followed() {
            channels.remove(channel);
            return;
        }
        let message = message();
        if state
            .latest
            .as_ref()
            .is_some_and(|current| current.position >= message.position)
        {
            return;
        }
        let message = Arc::new(message);
        state.latest = Some(message.clone());
        if state.followers.len() <= FAN_OUT_CHUNK {
            for follower in &state.followers {
                hand(follower, &message);
            }
        } else {
            tokio::spawn(fan_out(state.followers.clone(), message));
        }
    }

    /// Marks `channel` to be read again at once.
    fn reload(&self, channel: &str) {
        if lock(&self.latest).contains_key(channel) {
            lock(&self.dirty).insert(channel.to_owned());
            self.poke.notify_one();
        }
    }

    fn reload_all(&self) {
        let channels: Vec<String> = lock(&self.latest).keys().cloned().collect();
        lock(&self.dirty).extend(channels);
        self.poke.notify_one();
    }

    /// Reads `channel`'s state now and keeps it.
    async fn load(&self, channel: &str) -> Result<Arc<LiveMessage>, CoreError> {
        let message = match LiveChannel::parse(channel) {
            Some(LiveChannel::Product(id)) => {
                let product = self.store.products_by_ids(&[id]).await?.pop();
                LiveMessage::product(channel, &product.ok_or(CoreError::NotFound("product"))?)
            }
            Some(LiveChannel::Health) => {
                let operations = self.operations.get().ok_or_else(|| {
                    CoreError::Internal("admin:health has no operations wired".into())
                })?;
                LiveMessage::health(operations.health().await?, &self.presence().await)
            }
            _ => {
                return Err(CoreError::Internal(format!(
                    "{channel} is not a state channel"
                )));
            }
        };
        let message = Arc::new(message);
        self.set(channel, || (*message).clone());
        Ok(message)
    }

    async fn keep(states: std::sync::Weak<Self>) {
        let mut last_recheck = tokio::time::Instant::now();
        loop {
            let Some(this) = states.upgrade() else {
                return;
            };
            let _ = tokio::time::timeout(HEALTH_EVERY, this.poke.notified()).await;
            let recheck_now = last_recheck.elapsed() >= *lock(&this.recheck);
            if recheck_now {
                last_recheck = tokio::time::Instant::now();
            }
            let followed: Vec<String> = {
                let mut latest = lock(&this.latest);
                latest.retain(|_, state| state.followed());
                latest.keys().cloned().collect()
            };
            let dirty: HashSet<String> = std::mem::take(&mut *lock(&this.dirty));
            let health = LiveChannel::Health.name();
            for channel in followed {
                if (channel == health || recheck_now || dirty.contains(&channel))
                    && let Err(error) = this.load(&channel).await
                {
                    tracing::debug!(%error, %channel, "live state not read; kept the last one");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: i64) -> LiveMessage {
        LiveMessage::new(
            "admin:orders".into(),
            position,
            chrono::Utc::now(),
            serde_json::Value::Null,
        )
    }

    fn positions(page: &[LiveMessage]) -> Vec<i64> {
        page.iter().map(|message| message.position).collect()
    }

    /// A change for many followers reaches every one, a chunk at a time,
    /// and an older change handed out later never replaces a newer one.
    #[tokio::test]
    async fn a_fan_out_reaches_every_follower_and_never_goes_back() {
        let (senders, mut receivers): (Vec<StateSender>, Vec<_>) = (0..FAN_OUT_CHUNK * 3 + 5)
            .map(|_| {
                let (sender, receiver) = watch::channel(None);
                (Arc::new(sender), receiver)
            })
            .unzip();
        let (newer, older) = (Arc::new(at(7)), Arc::new(at(6)));
        let first = tokio::spawn(fan_out(senders.clone(), newer));
        let late = tokio::spawn(fan_out(senders.clone(), older));
        first.await.unwrap();
        late.await.unwrap();
        for receiver in &mut receivers {
            assert!(receiver.has_changed().unwrap(), "every follower is woken");
            let held = receiver.borrow_and_update().clone();
            assert_eq!(held.map(|message| message.position), Some(7));
        }
    }

    /// `admin:orders` sends positions without a hole; a hole is waited for
    /// [`GAP_WAIT`] (it may be a transaction still committing), then
    /// skipped whole (a rolled-back transaction leaves several).
    #[tokio::test(start_paused = true)]
    async fn a_hole_is_waited_for_then_skipped_whole() {
        let mut page = vec![at(1), at(2), at(5), at(6)];
        let gap = settle(&mut page, 0, None);
        assert_eq!(positions(&page), [1, 2], "up to the hole");
        assert_eq!(gap.map(|(position, _)| position), Some(3));

        tokio::time::advance(GAP_WAIT / 2).await;
        let mut page = vec![at(5), at(6)];
        let still = settle(&mut page, 2, gap);
        assert!(page.is_empty(), "still waiting");
        assert_eq!(still, gap, "the same wait, not a new one");

        tokio::time::advance(GAP_WAIT / 2).await;
        let mut page = vec![at(5), at(6), at(8)];
        let next = settle(&mut page, 2, still);
        assert_eq!(positions(&page), [5, 6], "3 and 4 given up together");
        assert_eq!(next.map(|(position, _)| position), Some(7));

        let mut page = vec![at(7), at(8)];
        assert_eq!(settle(&mut page, 6, next), None, "7 came: no hole");
        assert_eq!(positions(&page), [7, 8]);
    }
}
