//! `loyalty`: points for confirmed orders, taken back when the shopper
//! cancels a confirmed order (the points feed the leaderboard, mirrored as
//! the shopper's new total into the read models after the commit).

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::read_models::ReadModels;
use orderflow_core::ports::store::{Store, StoreTx};
use orderflow_core::services::effects::points_for;
use orderflow_domain::UserId;
use orderflow_domain::events::EventData;
use orderflow_domain::money::{Currency, Money};
use orderflow_domain::order::OrderStatus;

use super::mirror_failed;
use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

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
}

#[async_trait]
impl Handler for LoyaltyHandler {
    fn group(&self) -> &'static str {
        "loyalty"
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let (user_id, total_cents, currency, sign) = match &delivery.envelope.data {
            EventData::OrderConfirmed {
                user_id,
                total_cents,
                currency,
                ..
            } => (user_id, total_cents, currency, 1),
            // Only a confirmed order earned points.
            EventData::OrderCancelled {
                user_id,
                total_cents,
                currency,
                previous_status: OrderStatus::Confirmed,
                ..
            } => (user_id, total_cents, currency, -1),
            _ => return Ok(Prepared::Ignored),
        };
        let currency = Currency::parse(currency)
            .map_err(|error| WorkerError::InvalidEvent(error.to_string()))?;
        Ok(Prepared::Effect(Box::new(AddPoints {
            user_id: *user_id,
            points: sign * points_for(&Money::new(*total_cents, currency)),
            mirror: self
                .read_models
                .clone()
                .map(|models| (self.store.clone(), models)),
        })))
    }
}

/// Credit the points (or take them back); mirror the new total after the
/// commit.
struct AddPoints {
    user_id: UserId,
    points: i64,
    mirror: Option<(Arc<dyn Store>, Arc<dyn ReadModels>)>,
}

#[async_trait]
impl Effect for AddPoints {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        if self.points != 0 {
            tx.add_points(self.user_id, self.points).await?;
        }
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        if self.points != 0
            && let Some((store, models)) = &self.mirror
        {
            mirror_points(store.as_ref(), models.as_ref(), self.user_id).await;
        }
    }
}

/// Publishes `user_id`'s total as committed in the database: an absolute
/// value, so a replay or a late writer cannot inflate or lower it. The
/// balance alone: the standing's rank counted every member ahead, on every
/// award, to be thrown away.
async fn mirror_points(store: &dyn Store, models: &dyn ReadModels, user_id: UserId) {
    let points = match store.point_balance(user_id).await {
        Ok(points) => points,
        Err(error) => return mirror_failed("publish_points", &error),
    };
    let name = match store.user_by_id(user_id).await {
        Ok(user) => user.map(|user| user.name).unwrap_or_default(),
        Err(error) => return mirror_failed("publish_points", &error),
    };
    if let Err(error) = models.publish_points(user_id, &name, points).await {
        mirror_failed("publish_points", &error);
    }
}
