//! What a shopper reads about themselves: notifications, points, the leaderboard.
//! These are read models the consumers fill.

use std::sync::Arc;

use orderflow_domain::UserId;

use crate::CoreError;
use crate::ports::store::{LeaderboardEntry, NotificationRecord, PointsStanding, Store};

pub const MAX_LEADERBOARD: u32 = 100;
pub const MAX_NOTIFICATIONS: u32 = 200;

pub struct ShopperQueries {
    store: Arc<dyn Store>,
}

impl ShopperQueries {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Newest first.
    pub async fn notifications(
        &self,
        user_id: UserId,
        limit: Option<u32>,
    ) -> Result<Vec<NotificationRecord>, CoreError> {
        let limit = limit.unwrap_or(50).clamp(1, MAX_NOTIFICATIONS);
        Ok(self.store.notifications_of_user(user_id, limit).await?)
    }

    pub async fn points(&self, user_id: UserId) -> Result<PointsStanding, CoreError> {
        Ok(self.store.points(user_id).await?)
    }

    pub async fn leaderboard(
        &self,
        limit: Option<u32>,
    ) -> Result<Vec<LeaderboardEntry>, CoreError> {
        let limit = limit.unwrap_or(10).clamp(1, MAX_LEADERBOARD);
        Ok(self.store.leaderboard(limit).await?)
    }
}
