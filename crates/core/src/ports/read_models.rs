//! Read models mirrored into a fast shared store (Redis in the scaled setup):
//! the points leaderboard, daily sales counters, each shopper's recent
//! notifications, and live order-status messages.
//!
//! Everything here is derived data (DESIGN.md §3): the database stays the
//! source of truth and an adapter may lose everything at any moment. Hence:
//! - writes carry absolute values read from the database (a total, not an
//!   increment), so a redelivery or a replay cannot double count, and a
//!   late, stale write cannot lower a value (totals only grow);
//! - reads answer `None` whenever the adapter cannot vouch for a complete
//!   answer (not filled yet, flushed, down): the caller then reads the
//!   database, exactly as without read models;
//! - errors are [`ReadModelError`], which callers log, count
//!   (`orderflow_read_model_errors_total`) and otherwise ignore: a read model
//!   never fails a consumer nor a request.

use async_trait::async_trait;
use orderflow_domain::order::OrderStatus;
use orderflow_domain::{OrderId, UserId};

use crate::ports::store::{DailySales, LeaderboardEntry, NotificationRecord};

/// Why a read model could not be read or written. Never fatal to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// The backing store did not answer (down, timed out, refused).
    #[error("read model store unavailable: {0}")]
    Unavailable(String),
    /// The backing store answered something this code cannot read.
    #[error("unreadable read model data: {0}")]
    Corrupt(String),
}

pub type ReadModelResult<T> = Result<T, ReadModelError>;

/// How many notifications per shopper a read model keeps; also how many a
/// consumer reads from the database to create a missing list.
pub const RECENT_NOTIFICATIONS_KEPT: u32 = 50;

#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// Sets `user_id`'s leaderboard score to `total_points` (their absolute
    /// total in the database), keeping a higher score already there.
    async fn publish_points(
        &self,
        user_id: UserId,
        name: &str,
        total_points: i64,
    ) -> ReadModelResult<()>;

    /// Fills the leaderboard from the database's top entries and marks it
    /// complete for a while; scores already higher are kept.
    async fn seed_leaderboard(&self, entries: &[LeaderboardEntry]) -> ReadModelResult<()>;

    /// The top `limit` (most points first, ties by user id, `rank` as SQL
    /// `RANK()`), or `None` when the leaderboard is not known to be complete
    /// (or is empty): read the database then.
    async fn top(&self, limit: u32) -> ReadModelResult<Option<Vec<LeaderboardEntry>>>;

    /// Sets one day's totals for one currency (absolute values from the
    /// database), keeping higher values already there.
    async fn record_sale(&self, sales: &DailySales) -> ReadModelResult<()>;

    /// The totals of `day`, one entry per currency; `None` when unknown.
    async fn sales_of_day(
        &self,
        day: chrono::NaiveDate,
    ) -> ReadModelResult<Option<Vec<DailySales>>>;

    /// Adds `record` (committed in the database) to the front of its user's
    /// capped list of recent notifications. When that list does not exist,
    /// nothing is written and `Ok(false)` asks the caller to call again with
    /// `newest_first`, the user's recent notifications from the database
    /// (read after the commit, so they include `record`), which then become
    /// the list. A record already in the list is not added twice.
    async fn push_notification(
        &self,
        record: &NotificationRecord,
        newest_first: &[NotificationRecord],
    ) -> ReadModelResult<bool>;

    /// The newest `limit` notifications of `user_id`, newest first, or `None`
    /// when the list is not there or holds fewer than asked can be vouched
    /// for (`limit` above what the adapter keeps).
    async fn recent_notifications(
        &self,
        user_id: UserId,
        limit: u32,
    ) -> ReadModelResult<Option<Vec<NotificationRecord>>>;

    /// Tells live listeners (other processes, open browser streams) that an
    /// order changed status. Fire and forget: nobody listening is fine.
    async fn publish_order_status(
        &self,
        user_id: UserId,
        order_id: OrderId,
        status: OrderStatus,
    ) -> ReadModelResult<()>;
}

/// Logs and counts a read model failure; what callers do with every
/// [`ReadModelError`] (the database already has the truth).
pub fn report_error(operation: &'static str, error: &ReadModelError) {
    metrics::counter!("orderflow_read_model_errors_total", "operation" => operation).increment(1);
    tracing::warn!(operation, %error, "read model unavailable; the database answers instead");
}

/// The relative standard error of a HyperLogLog count as Redis keeps it
/// (16,384 registers: 1.04 / √16384), the bound `unique_viewers` states.
pub const HYPERLOGLOG_STANDARD_ERROR: f64 = 0.0081;

/// Unique viewers per product and day as HyperLogLog sketches in a shared
/// store (Redis in the scaled setup): the `trending` group's state there,
/// in place of the exact `product_viewers` table of the embedded setup.
///
/// Not derived from the database like [`ReadModels`]: derived from the log
/// instead. Adding a visitor id twice changes nothing, so a redelivery or a
/// replay never counts a reader twice; a sketch that was lost (Redis
/// flushed) comes back with `orderflow rebuild trending`. A count is within
/// [`HYPERLOGLOG_STANDARD_ERROR`] of the truth (one standard error).
#[async_trait]
pub trait ViewerSketches: Send + Sync + 'static {
    /// Adds visitor ids to `product`'s sketch of `day`.
    async fn add(
        &self,
        day: chrono::NaiveDate,
        product: orderflow_domain::ProductId,
        viewers: &[String],
    ) -> ReadModelResult<()>;
    /// The estimated distinct visitor ids of `product` on `day`.
    async fn count(
        &self,
        day: chrono::NaiveDate,
        product: orderflow_domain::ProductId,
    ) -> ReadModelResult<u64>;
    /// Forgets the sketches of `from` on (a rebuild starts over), or of
    /// every day.
    async fn forget(&self, from: Option<chrono::NaiveDate>) -> ReadModelResult<()>;
}
