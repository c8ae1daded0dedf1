//! [`ReadModels`] for the embedded setup: nothing to mirror into.
//!
//! With one process and one database there is no faster shared store worth
//! keeping in sync, so every write is dropped and every read answers `None`,
//! which sends the caller to the database (the embedded setup reads its
//! leaderboard and notifications there, as before read models existed).
//! Order-status updates have no listener outside the process.

use async_trait::async_trait;
use orderflow_core::ports::read_models::{ReadModelResult, ReadModels};
use orderflow_core::ports::store::{DailySales, LeaderboardEntry, NotificationRecord};
use orderflow_domain::order::OrderStatus;
use orderflow_domain::{OrderId, UserId};

/// The do-nothing [`ReadModels`]: reads always fall back to the database.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReadModels;

#[async_trait]
impl ReadModels for NoReadModels {
    async fn publish_points(&self, _: UserId, _: &str, _: i64) -> ReadModelResult<()> {
        Ok(())
    }

    async fn seed_leaderboard(&self, _: &[LeaderboardEntry]) -> ReadModelResult<()> {
        Ok(())
    }

    async fn top(&self, _: u32) -> ReadModelResult<Option<Vec<LeaderboardEntry>>> {
        Ok(None)
    }

    async fn record_sale(&self, _: &DailySales) -> ReadModelResult<()> {
        Ok(())
    }

    async fn sales_of_day(&self, _: chrono::NaiveDate) -> ReadModelResult<Option<Vec<DailySales>>> {
        Ok(None)
    }

    /// Reports the record as kept, so callers do not read a snapshot for nothing.
    async fn push_notification(
        &self,
        _: &NotificationRecord,
        _: &[NotificationRecord],
    ) -> ReadModelResult<bool> {
        Ok(true)
    }

    async fn recent_notifications(
        &self,
        _: UserId,
        _: u32,
    ) -> ReadModelResult<Option<Vec<NotificationRecord>>> {
        Ok(None)
    }

    async fn publish_order_status(
        &self,
        _: UserId,
        _: OrderId,
        _: OrderStatus,
    ) -> ReadModelResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_always_send_the_caller_to_the_database() {
        let models = NoReadModels;
        let user = uuid::Uuid::now_v7();
        models.publish_points(user, "Ann", 10).await.unwrap();
        assert_eq!(models.top(10).await.unwrap(), None);
        assert_eq!(models.recent_notifications(user, 10).await.unwrap(), None);
    }
}
