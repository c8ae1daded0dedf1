//! The database port.
//!
//! Reads that stand alone are methods of [`Store`]. Everything that writes goes
//! through a unit of work, [`StoreTx`], obtained from [`Store::begin`]: a use
//! case or consumer does its effect, appends the events it causes to the outbox
//! ([`StoreTx::append`]) and marks the event it handled as processed
//! ([`StoreTx::mark_processed`]), then commits once. That single commit is what
//! makes "at-least-once delivery, exactly-once effect" true (DESIGN.md §4).
//!
//! Dropping a `StoreTx` without calling [`StoreTx::commit`] rolls it back.

use async_trait::async_trait;
use orderflow_domain::events::Envelope;
use orderflow_domain::fraud::WindowOrder;
use orderflow_domain::money::Currency;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::{HistoryEntry, Order, OrderStatus};
use orderflow_domain::product::{Product, ProductDraft, ProductSearch};
use orderflow_domain::sales::{Granularity, WindowRange};
use orderflow_domain::user::Role;
use orderflow_domain::{EventId, OrderId, ProductId, Timestamp, UserId};
use serde::{Deserialize, Serialize};

/// Storage failures. `Conflict` is the only one callers branch on; the rest
/// are reported as 500/503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write; the string names what was taken.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The database could not be reached or timed out.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database said.
    #[error("database error: {0}")]
    Database(String),
    /// Stored data could not be decoded (a bug or a manual edit).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A user as stored. The password hash is a PHC string (argon2id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: Timestamp,
}

/// A login on one device. Refresh tokens are opaque; only their SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: uuid::Uuid,
    pub user_id: UserId,
    pub device: String,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// What happened when a refresh token was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshRotation {
    /// The token was current: it is now replaced by the new hash.
    Rotated { session: SessionRecord },
    /// The token was already rotated away: someone replayed it. The whole
    /// session was revoked.
    ReuseDetected {
        session_id: uuid::Uuid,
        user_id: UserId,
    },
    /// Unknown, expired, or its session was revoked.
    Invalid,
}

/// A saved answer to an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// SHA-256 of the canonical request, to tell "same request" from "key reuse".
    pub request_hash: String,
    pub response_status: u16,
    pub response_body: serde_json::Value,
}

/// Outcome of claiming an idempotency key inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now belongs to this transaction.
    Claimed,
    /// The key was used before; here is what was answered then.
    Existing(IdempotencyRecord),
}

/// Outcome of reserving the stock of an order, all lines or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every line taken; `products` are the reserved products as this
    /// transaction left them (new stock, new version), for the caches.
    Reserved { products: Vec<Product> },
    /// This order's stock was reserved before (a redelivery); nothing changed.
    AlreadyReserved,
    /// Not enough stock for this product; nothing was changed.
    Insufficient {
        product_id: ProductId,
        available: i64,
        requested: u32,
    },
    /// The product no longer exists.
    UnknownProduct { product_id: ProductId },
    /// The order was cancelled before its stock was reserved; nothing
    /// changed.
    OrderCancelled,
}

/// A notification that was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub user_id: UserId,
    pub channel: Channel,
    pub kind: NotificationKind,
    pub order_id: Option<OrderId>,
    pub sent_at: Timestamp,
}

/// One step of an order, with its place in the order history: `position`
/// grows in commit order per shopper (it has gaps: the numbers between are
/// other shoppers' steps), so "after position p" is exactly what a client
/// that saw p has not seen. Over every shopper, positions grow in commit
/// order on SQLite (one writer); on PostgreSQL a step can commit after a
/// higher position did, which the `admin:orders` follower waits out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderChange {
    pub position: i64,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub at: Timestamp,
}

/// Which page of a live channel's messages to read: always oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangesPage {
    /// The first ones after a position (a follower catching up).
    After(i64),
    /// The newest ones, in one read (a snapshot: the last position read
    /// is the one to follow after).
    Latest,
}

/// A notification that was sent, with its place among the shopper's
/// notifications: `position` grows in commit order per shopper (as
/// [`OrderChange::position`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationChange {
    pub position: i64,
    pub notification: NotificationRecord,
}

/// A payment attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub order_id: OrderId,
    pub succeeded: bool,
    /// Provider reference when it succeeded, reason when it failed.
    pub reference: String,
    pub amount_cents: i64,
    pub currency: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderboardEntry {
    pub user_id: UserId,
    pub name: String,
    pub points: i64,
    pub rank: i64,
}

/// Points and rank (1 = most points; users without points have no rank).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsStanding {
    pub points: i64,
    pub rank: Option<i64>,
}

/// Revenue and orders of one UTC day, from confirmed orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailySales {
    pub day: chrono::NaiveDate,
    pub currency: String,
    pub orders: i64,
    pub revenue_cents: i64,
}

/// What the fraud check remembers of one shopper around an order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FraudHistory {
    /// The latest event time of the shopper's remembered orders.
    pub watermark: Option<Timestamp>,
    /// Their remembered orders in the asked range, by event time.
    pub orders: Vec<WindowOrder>,
}

/// A shopper's remembered orders in a range, summed
/// ([`Store::fraud_summary`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FraudSummary {
    /// The latest event time of the shopper's remembered orders (any range).
    pub watermark: Option<Timestamp>,
    /// Their remembered orders in the range.
    pub orders: u64,
    /// The totals of those in the asked currency, in its cents.
    pub total_cents: i64,
}

/// Revenue of one tumbling window of event time, in one currency, from
/// confirmed orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesWindow {
    pub granularity: Granularity,
    pub window_start: Timestamp,
    pub currency: String,
    pub orders: i64,
    /// Items sold (the sum of the lines' quantities).
    pub units: i64,
    pub revenue_cents: i64,
}

/// One product's sales over a range of windows, and its place by revenue
/// among the products sold in the same currency (1 = most).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSales {
    pub product_id: ProductId,
    /// None when the product was deleted since.
    pub name: Option<String>,
    pub currency: String,
    /// Orders that had the product.
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
    pub place: i64,
}

/// A message a consumer group gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The id of the dead-letter record (also the `failed.messages` event id).
    pub id: uuid::Uuid,
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error: String,
    pub attempts: u32,
    pub event: Envelope,
    pub failed_at: Timestamp,
    pub replayed_at: Option<Timestamp>,
}

/// The database port: stand-alone reads, and [`Store::begin`] for writes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations; safe to call on every start.
    async fn migrate(&self) -> StoreResult<()>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// Starts a unit of work. Writers that must not interleave (stock,
    /// idempotency) are serialized by the adapter (row locks, or SQLite's
    /// single writer).
    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>>;
    /// Starts the unit of work of one group commit of consumer group
    /// `group`. It may wait behind requests: on SQLite's single writer a
    /// request's [`Store::begin`] is served before every queued group
    /// commit. On PostgreSQL, group commits of one group run one at a time
    /// across processes (a transaction-scoped advisory lock): two members'
    /// flushes would otherwise lock the same rows (a product's stock, a day's
    /// sales) in different orders and deadlock.
    async fn begin_group_commit(&self, group: &str) -> StoreResult<Box<dyn StoreTx>> {
        let _ = group;
        self.begin().await
    }
    /// Starts a unit of work that nobody waits for (the product-view
    /// flush): on SQLite's single writer, requests go ahead of it.
    async fn begin_background(&self) -> StoreResult<Box<dyn StoreTx>> {
        self.begin().await
    }

    // --- users and sessions ---
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Creates a session holding the hash of its first refresh token.
    async fn create_session(&self, session: &SessionRecord, refresh_hash: &str) -> StoreResult<()>;
    /// Atomically swaps `presented_hash` for `new_hash` if it is the session's
    /// current token; detects reuse of an already rotated one.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        now: Timestamp,
        new_expires_at: Timestamp,
    ) -> StoreResult<RefreshRotation>;
    async fn session(&self, id: uuid::Uuid) -> StoreResult<Option<SessionRecord>>;
    async fn sessions_of_user(&self, user_id: UserId) -> StoreResult<Vec<SessionRecord>>;
    /// Revokes one session; false when it did not exist or was revoked already.
    async fn revoke_session(&self, id: uuid::Uuid, now: Timestamp) -> StoreResult<bool>;
    /// Revokes every session of the user; returns how many.
    async fn revoke_all_sessions(&self, user_id: UserId, now: Timestamp) -> StoreResult<u64>;

    // --- revoked access tokens (by jti; the token itself is never stored) ---
    async fn insert_revocation(&self, jti: &str, expires_at: Timestamp) -> StoreResult<()>;
    async fn is_revoked(&self, jti: &str, now: Timestamp) -> StoreResult<bool>;
    /// Revocations still in force, to warm an in-memory or Redis copy.
    async fn active_revocations(&self, now: Timestamp) -> StoreResult<Vec<(String, Timestamp)>>;
    /// Users whose every token issued before a point in time is revoked (logout-all).
    async fn set_tokens_valid_after(&self, user_id: UserId, after: Timestamp) -> StoreResult<()>;
    async fn tokens_valid_after(&self, user_id: UserId) -> StoreResult<Option<Timestamp>>;

    // --- catalog ---
    /// Products ordered by id, after the cursor.
    async fn list_products(
        &self,
        after: Option<ProductId>,
        limit: u32,
    ) -> StoreResult<Vec<Product>>;
    async fn product(&self, id: ProductId) -> StoreResult<Option<Product>>;
    /// The ids of the products a search finds, in its order, one page
    /// (full-text on SQLite's FTS5 or PostgreSQL's `tsvector`).
    async fn search_products(&self, search: &ProductSearch) -> StoreResult<Vec<ProductId>>;
    /// The answer saved under an idempotency key, if any (status 0 while
    /// its request is in progress).
    async fn idempotency_record(
        &self,
        user_id: UserId,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRecord>>;
    /// Every category with how many products it holds, by name.
    async fn categories(&self) -> StoreResult<Vec<(String, i64)>>;
    async fn products_by_ids(&self, ids: &[ProductId]) -> StoreResult<Vec<Product>>;
    async fn count_products(&self) -> StoreResult<i64>;
    /// `Conflict` when the SKU is taken.
    async fn insert_product(
        &self,
        id: ProductId,
        draft: &ProductDraft,
        now: Timestamp,
    ) -> StoreResult<Product>;
    /// `None` when the product does not exist; `Conflict` when the SKU is taken.
    async fn update_product(
        &self,
        id: ProductId,
        draft: &ProductDraft,
        now: Timestamp,
    ) -> StoreResult<Option<Product>>;

    /// Inserts or replaces products by SKU, all in one transaction (the bulk
    /// import, `orderflow import`): a new SKU is inserted under the id given
    /// with it, an existing one keeps its id and gets the new fields and a
    /// new version. Returns the stored rows, in input order.
    async fn import_products(
        &self,
        products: &[(ProductId, ProductDraft)],
        now: Timestamp,
    ) -> StoreResult<Vec<Product>>;
    /// The `top` products by views over the minutes that start in
    /// `from..to` (most first; ties by product id).
    async fn most_viewed(
        &self,
        from: Timestamp,
        to: Timestamp,
        top: u32,
    ) -> StoreResult<Vec<(ProductId, i64)>>;
    /// How many views a product has had (0 when none were flushed yet).
    async fn product_views(&self, id: ProductId) -> StoreResult<i64>;
    /// The fraud check's memory of `user_id` as committed: their watermark
    /// and their orders placed within `[from, to]` (event time). Read
    /// outside any unit of work: the `fraud` group reads it while preparing
    /// a verdict, so the read never holds SQLite's one writer.
    async fn fraud_history(
        &self,
        user_id: UserId,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<FraudHistory>;
    /// What the fraud check learns of `user_id` without reading their
    /// orders one by one: their watermark, and how many orders and how much
    /// in `currency` they placed within `[from, to]`. Read outside any unit
    /// of work, like [`fraud_history`](Self::fraud_history), which it spares
    /// whenever these sums already break no rule.
    async fn fraud_summary(
        &self,
        user_id: UserId,
        from: Timestamp,
        to: Timestamp,
        currency: &Currency,
    ) -> StoreResult<FraudSummary>;
    /// How many distinct visitors read `product` on `day` (exact: the
    /// visitor ids `trending` recorded; 0 for none).
    async fn unique_viewers(&self, day: chrono::NaiveDate, product: ProductId) -> StoreResult<i64>;
    /// The salt of `day`'s visitor ids, the same for every process: the
    /// stored one, or `candidate` stored now when the day has none yet.
    async fn viewer_salt(&self, day: chrono::NaiveDate, candidate: &str) -> StoreResult<String>;

    // --- orders ---
    async fn order(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<HistoryEntry>)>>;
    /// The order and its lines without its history: one read fewer, for a
    /// caller that only needs what was ordered (the `orders` group reads
    /// this for every stock and payment outcome).
    async fn order_without_history(&self, id: OrderId) -> StoreResult<Option<Order>>;
    /// The user's orders, newest first, created strictly before `before` when given.
    async fn orders_of_user(
        &self,
        user_id: UserId,
        before: Option<OrderId>,
        limit: u32,
    ) -> StoreResult<Vec<Order>>;
    async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>>;
    /// Held orders (the fraud review queue), oldest first, after the order
    /// `after` when given (keyset paging on creation time and id).
    async fn held_orders(&self, after: Option<OrderId>, limit: u32) -> StoreResult<Vec<Order>>;

    // --- read models filled by consumers ---
    /// Newest first.
    async fn notifications_of_user(
        &self,
        user_id: UserId,
        limit: u32,
    ) -> StoreResult<Vec<NotificationRecord>>;
    /// `user_id`'s points and rank. The rank counts every member with more
    /// points: a range of the points index as long as the rank.
    async fn points(&self, user_id: UserId) -> StoreResult<PointsStanding>;
    /// `user_id`'s points alone (0 without any): one row by its key, for
    /// callers that do not show the rank (the loyalty consumer's mirror,
    /// after every award).
    async fn point_balance(&self, user_id: UserId) -> StoreResult<i64>;
    // --- live channels ---
    /// The steps of `user_id`'s orders (of every shopper's with `None`)
    /// on `page`, in position order, at most `limit`.
    async fn order_changes(
        &self,
        user_id: Option<UserId>,
        page: ChangesPage,
        limit: u32,
    ) -> StoreResult<Vec<OrderChange>>;
    /// The position of `user_id`'s last order step (of anyone's with
    /// `None`; 0 when none).
    async fn last_order_change(&self, user_id: Option<UserId>) -> StoreResult<i64>;
    /// The notifications sent to `user_id` on `page`, in position order,
    /// at most `limit`.
    async fn notification_changes(
        &self,
        user_id: UserId,
        page: ChangesPage,
        limit: u32,
    ) -> StoreResult<Vec<NotificationChange>>;
    /// The position of `user_id`'s last notification (0 when none).
    async fn last_notification(&self, user_id: UserId) -> StoreResult<i64>;
    async fn leaderboard(&self, limit: u32) -> StoreResult<Vec<LeaderboardEntry>>;
    async fn daily_sales(&self, days: u32) -> StoreResult<Vec<DailySales>>;
    /// The windows of `range.granularity` that start in `range`, oldest
    /// first, one per currency; windows without sales are left out.
    async fn sales(&self, range: WindowRange) -> StoreResult<Vec<SalesWindow>>;
    /// The `top` products by revenue over the windows that start in
    /// `range`, per currency (ties: by product id), by place.
    async fn top_products(&self, range: WindowRange, top: u32) -> StoreResult<Vec<ProductSales>>;
    /// Whether a group already handled an event (a cheap pre-check; the
    /// authoritative check is [`StoreTx::mark_processed`]).
    async fn is_processed(&self, group: &str, event_id: EventId) -> StoreResult<bool> {
        Ok(!self.processed_among(group, &[event_id]).await?.is_empty())
    }
    /// Which of `event_ids` a group already handled, in one query (a
    /// consumer looks up a whole polled batch at once).
    async fn processed_among(
        &self,
        group: &str,
        event_ids: &[EventId],
    ) -> StoreResult<std::collections::HashSet<EventId>>;

    // --- dead letters ---
    /// Newest first; `include_replayed` shows the replayed ones too.
    async fn dead_letters(
        &self,
        limit: u32,
        include_replayed: bool,
    ) -> StoreResult<Vec<DeadLetter>>;
    async fn dead_letter(&self, id: uuid::Uuid) -> StoreResult<Option<DeadLetter>>;
    async fn count_dead_letters(&self) -> StoreResult<i64>;
    // --- retention ---
    /// Deletes at most `limit` rows of `what` that are older than `before`
    /// (see [`Prunable`]), in one short transaction that yields to requests;
    /// how many it deleted.
    async fn prune(&self, what: Prunable<'_>, before: Timestamp, limit: u32) -> StoreResult<u64>;
    /// Deletes the group's state and its processed marks, in one
    /// transaction, so that a replay of the log builds the state again
    /// from nothing (`orderflow rebuild`).
    ///
    /// With a [`Since`], only the state of the windows that start on or
    /// after its day goes (all-time totals lose what those windows added),
    /// and only the marks of events processed since its `marks_from`.
    async fn reset_state(&self, what: Rebuildable, since: Option<Since>) -> StoreResult<()>;
}

/// Where a partial rebuild starts (`orderflow rebuild GROUP --from DAY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// The first day (UTC) whose windows are rebuilt; events of earlier
    /// days keep their effects.
    pub day: chrono::NaiveDate,
    /// Processed marks written at or after this go too: before the day's
    /// start by a margin for the clocks of the processes that stamped the
    /// events and the marks.
    pub marks_from: Timestamp,
}

impl Since {
    /// From `day` on, the marks from `clock_margin` before its start.
    pub fn day(day: chrono::NaiveDate, clock_margin: chrono::Duration) -> Self {
        Self {
            day,
            marks_from: midnight(day) - clock_margin,
        }
    }

    /// The day's first instant (midnight UTC).
    pub fn start(&self) -> Timestamp {
        midnight(self.day)
    }
}

fn midnight(day: chrono::NaiveDate) -> Timestamp {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// A consumer group whose state `orderflow rebuild` throws away and builds
/// again by replaying the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuildable {
    /// `analytics`: sales per day and per product, and the sales windows.
    Analytics,
    /// `fraud`: the shoppers' remembered orders.
    Fraud,
    /// `trending`: views per product and per minute, and the exact unique
    /// viewers per product and day.
    Trending,
}

impl Rebuildable {
    pub const ALL: [Rebuildable; 3] = [
        Rebuildable::Analytics,
        Rebuildable::Fraud,
        Rebuildable::Trending,
    ];

    /// The consumer group that keeps this state.
    pub fn group(self) -> &'static str {
        match self {
            Rebuildable::Analytics => "analytics",
            Rebuildable::Fraud => "fraud",
            Rebuildable::Trending => "trending",
        }
    }

    pub fn parse(group: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.group() == group)
    }
}

/// What retention deletes, each kind only once it cannot matter any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prunable<'a> {
    /// Events of the embedded log appended before the cut-off that every
    /// group reading their topic has committed past: `(group, topics)` per
    /// group. A partition where some group has no committed offset keeps
    /// everything; a topic nobody reads is pruned by age alone.
    Events {
        subscriptions: &'a [(&'a str, &'a [&'a str])],
    },
    /// Processed marks (exactly-once). Kept longer than any event can be
    /// redelivered: the services' retention makes sure of it.
    ProcessedMarks,
    /// Idempotency keys, answered or not, by when they were claimed.
    IdempotencyKeys,
    /// Outbox rows the relay has published, by when they were sent.
    SentOutbox,
    /// Dead letters that were replayed, by when they were replayed.
    ReplayedDeadLetters,
    /// Minute windows that start before the cut-off: sales (totals and per
    /// product) and product views. Day sales windows are kept (one row a
    /// day and currency, and one a day per product sold).
    MinuteWindows,
    /// The fraud check's remembered orders placed before the cut-off.
    FraudOrders,
    /// Unique viewers of the days before the cut-off's day.
    ProductViewers,
    /// Visitor-id salts of the days before the cut-off's day.
    ViewerSalts,
    /// Carts kept in the database whose last change is before the cut-off
    /// (carts in Redis expire by themselves).
    Carts,
}

/// A unit of work. All writes of a use case or a consumer go through one.
#[async_trait]
pub trait StoreTx: Send {
    /// `Conflict` when the e-mail is taken.
    async fn insert_user(&mut self, user: &UserRecord) -> StoreResult<()>;
    /// Makes an existing user an admin or creates the admin (bootstrap).
    async fn upsert_admin(&mut self, user: &UserRecord) -> StoreResult<()>;

    /// Claims `(user, key)`. Concurrent claims of one key are serialized: the
    /// loser waits for the winner's commit and then sees `Existing`.
    async fn claim_idempotency_key(
        &mut self,
        user_id: UserId,
        key: &str,
        request_hash: &str,
    ) -> StoreResult<IdempotencyClaim>;
    /// Saves the answer for a key claimed in this transaction.
    async fn complete_idempotency_key(
        &mut self,
        user_id: UserId,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> StoreResult<()>;

    /// Inserts a new order with its lines and its first history entry.
    /// History entries are the shopper's live `orders:{user}` messages:
    /// one shopper's entries must commit in position order (see
    /// [`OrderChange`]).
    async fn insert_order(&mut self, order: &Order) -> StoreResult<()>;
    /// Reads an order and locks it against concurrent transitions until commit.
    async fn order_for_update(&mut self, id: OrderId) -> StoreResult<Option<Order>>;
    /// Reads an order's status and locks it as [`Self::order_for_update`]
    /// does. For a transition that read the rest of the order before its
    /// unit of work: only the status of an order ever changes, and one
    /// short read under the writer costs far less than the order and its
    /// lines (the `orders` group, under load).
    async fn order_status_for_update(&mut self, id: OrderId) -> StoreResult<Option<OrderStatus>>;
    /// Moves the order through `steps` (the last is the new status), adding one
    /// history entry per step.
    async fn set_order_status(
        &mut self,
        id: OrderId,
        steps: &[OrderStatus],
        at: Timestamp,
    ) -> StoreResult<()>;

    /// Reserves every line or none; stock never goes below zero.
    async fn reserve_stock(
        &mut self,
        order_id: OrderId,
        lines: &[(ProductId, u32)],
    ) -> StoreResult<Reservation>;
    /// Gives an order's reserved stock back; false when nothing was reserved
    /// or it was released already (so a redelivery releases once).
    async fn release_stock(&mut self, order_id: OrderId) -> StoreResult<bool>;

    /// The provider's reference of the order's successful charge, if it
    /// was charged (what a refund names).
    async fn charge_of(&mut self, order_id: OrderId) -> StoreResult<Option<String>>;
    /// A charge, a declined charge, or a refund (a negative amount with the
    /// refunded charge's reference): the payments table is a ledger.
    async fn record_payment(&mut self, payment: &PaymentRecord) -> StoreResult<()>;
    async fn record_notification(&mut self, notification: &NotificationRecord) -> StoreResult<()>;
    /// Adds (or with a negative value removes) loyalty points.
    async fn add_points(&mut self, user_id: UserId, points: i64) -> StoreResult<()>;
    /// Adds an order confirmed at `at` (event time) to its day's revenue,
    /// the product sales, and the windows of every granularity that `at`
    /// falls in.
    async fn record_sale(&mut self, order: &Order, at: Timestamp) -> StoreResult<()>;
    /// Adds `views` reads of a product to its total and to the minute `at`
    /// falls in (event time).
    async fn add_product_views(
        &mut self,
        product_id: ProductId,
        views: u64,
        at: Timestamp,
    ) -> StoreResult<()>;
    /// Records visitor ids among `product`'s readers on `day` (the exact
    /// unique viewers); an id recorded before changes nothing.
    async fn add_product_viewers(
        &mut self,
        day: chrono::NaiveDate,
        product_id: ProductId,
        viewers: &[String],
    ) -> StoreResult<()>;
    /// Remembers an order the fraud check judged; remembering it again
    /// changes nothing.
    async fn remember_for_fraud(&mut self, user_id: UserId, order: &WindowOrder)
    -> StoreResult<()>;

    /// Marks `(group, event)` handled. False when it was already: the caller
    /// must then drop the transaction, since the effect happened before.
    async fn mark_processed(&mut self, group: &str, event_id: EventId) -> StoreResult<bool>;
    /// [`mark_processed`](StoreTx::mark_processed) for several events of one
    /// group in one step (a consumer's group commit marks its whole flush
    /// at once): for each id, in order, true when this call marked it; false
    /// when it was marked before, or appears earlier in `event_ids`.
    async fn mark_processed_many(
        &mut self,
        group: &str,
        event_ids: &[EventId],
    ) -> StoreResult<Vec<bool>>;
    /// Appends events to the outbox; they become visible to consumers when,
    /// and only when, this transaction commits.
    async fn append(&mut self, events: &[Envelope]) -> StoreResult<()>;
    /// Stores a dead letter (its `failed.messages` event is appended
    /// separately), unless the group has an unreplayed dead letter of the
    /// same event already (a redelivery after a crash that came before the
    /// offset commit): whether it was stored.
    async fn insert_dead_letter(&mut self, dead_letter: &DeadLetter) -> StoreResult<bool>;
    /// Marks a dead letter replayed; false when it was already.
    async fn mark_dead_letter_replayed(
        &mut self,
        id: uuid::Uuid,
        at: Timestamp,
    ) -> StoreResult<bool>;

    /// Opens a savepoint: the consumer runtime applies each effect of a group
    /// commit inside one, so that one effect failing is undone alone
    /// ([`StoreTx::rollback_to_savepoint`]) and its neighbours still commit.
    /// Savepoints do not nest through this API: release or roll back before
    /// opening the next.
    async fn savepoint(&mut self) -> StoreResult<()>;
    /// Keeps what was done since [`StoreTx::savepoint`].
    async fn release_savepoint(&mut self) -> StoreResult<()>;
    /// Undoes what was done since [`StoreTx::savepoint`] (events appended
    /// since then included); the transaction stays usable.
    async fn rollback_to_savepoint(&mut self) -> StoreResult<()>;

    async fn commit(self: Box<Self>) -> StoreResult<()>;
}
