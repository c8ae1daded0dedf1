//! `loyalty`: points for confirmed orders (which also feed the leaderboard,
//! mirrored as the shopper's new total into the read models after the commit).

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::read_models::ReadModels;
use orderflow_core::ports::store::Store;
use orderflow_core::services::effects::points_for;
use orderflow_domain::UserId;
use orderflow_domain::events::EventData;
use orderflow_domain::money::{Currency, Money};

use super::{claim, mirror_failed};
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

pub struct LoyaltyHandler {
    store: Arc<dyn Store>,
    read_models: Option<Arc<dyn ReadModels>>,
}

impl LoyaltyHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            read_models: None,
        }
    }

    /// Mirrors each shopper's new total into `read_models` after the commit.
    pub fn with_read_models(mut self, read_models: Option<Arc<dyn ReadModels>>) -> Self {
        self.read_models = read_models;
        self
    }

    /// Publishes `user_id`'s total as committed in the database: an absolute
    /// value, so a replay or a late writer cannot inflate or lower it.
    async fn mirror_points(&self, models: &dyn ReadModels, user_id: UserId) {
        let standing = match self.store.points(user_id).await {
            Ok(standing) => standing,
            Err(error) => return mirror_failed("publish_points", &error),
        };
        let name = match self.store.user_by_id(user_id).await {
            Ok(user) => user.map(|user| user.name).unwrap_or_default(),
            Err(error) => return mirror_failed("publish_points", &error),
        };
        if let Err(error) = models.publish_points(user_id, &name, standing.points).await {
            mirror_failed("publish_points", &error);
        }
    }
}

#[async_trait]
impl Handler for LoyaltyHandler {
    fn group(&self) -> &'static str {
        "loyalty"
    }

    fn topics(&self) -> &'static [&'static str] {
        super::topics_of("loyalty")
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError> {
        let event = &delivery.envelope;
        let EventData::OrderConfirmed {
            user_id,
            total_cents,
            currency,
            ..
        } = &event.data
        else {
            return Ok(Handled::Ignored);
        };
        let currency = Currency::parse(currency)
            .map_err(|error| WorkerError::InvalidEvent(error.to_string()))?;
        let points = points_for(&Money::new(*total_cents, currency));
        let Some(mut tx) = claim(self.store.as_ref(), self.group(), event.id).await? else {
            return Ok(Handled::Duplicate);
        };
        if points > 0 {
            tx.add_points(*user_id, points).await?;
        }
        tx.commit().await?;
        if points > 0
            && let Some(models) = &self.read_models
        {
            self.mirror_points(models.as_ref(), *user_id).await;
        }
        Ok(Handled::Applied)
    }
}
