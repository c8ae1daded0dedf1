//! What a shopper reads about themselves: notifications, points, the leaderboard.
//! These are read models the consumers fill.
//!
//! With [`ShopperQueries::with_read_models`] (the scaled setup: Redis), the
//! leaderboard and recent notifications are read there first; whenever the
//! read models do not answer (not filled, flushed, down, a limit above what
//! they keep) the database answers, as without them. A leaderboard miss also
//! seeds the read model from the database's top [`MAX_LEADERBOARD`], so the
//! next readers are served by Redis.

use std::sync::Arc;

use orderflow_domain::UserId;

use crate::CoreError;
use crate::ports::read_models::{ReadModels, report_error};
use crate::ports::store::{LeaderboardEntry, NotificationRecord, PointsStanding, Store};

pub const MAX_LEADERBOARD: u32 = 100;
pub const MAX_NOTIFICATIONS: u32 = 200;

pub struct ShopperQueries {
    store: Arc<dyn Store>,
    read_models: Option<Arc<dyn ReadModels>>,
}

impl ShopperQueries {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            read_models: None,
        }
    }

    /// Reads the leaderboard and notifications from `read_models` when they
    /// answer (see the module docs).
    pub fn with_read_models(mut self, read_models: Arc<dyn ReadModels>) -> Self {
        self.read_models = Some(read_models);
        self
    }

    /// Newest first.
    pub async fn notifications(
        &self,
        user_id: UserId,
        limit: Option<u32>,
    ) -> Result<Vec<NotificationRecord>, CoreError> {
        let limit = limit.unwrap_or(50).clamp(1, MAX_NOTIFICATIONS);
        if let Some(models) = &self.read_models {
            match models.recent_notifications(user_id, limit).await {
                Ok(Some(recent)) => return Ok(recent),
                Ok(None) => {}
                Err(error) => report_error("recent_notifications", &error),
            }
        }
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
        let Some(models) = &self.read_models else {
            return Ok(self.store.leaderboard(limit).await?);
        };
        match models.top(limit).await {
            Ok(Some(top)) => return Ok(top),
            Ok(None) => {}
            Err(error) => report_error("top", &error),
        }
        let mut top = self.store.leaderboard(MAX_LEADERBOARD).await?;
        if let Err(error) = models.seed_leaderboard(&top).await {
            report_error("seed_leaderboard", &error);
        }
        top.truncate(limit as usize);
        Ok(top)
    }
}
