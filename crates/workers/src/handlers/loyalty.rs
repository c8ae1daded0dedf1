//! `loyalty`: points for confirmed orders (which also feed the leaderboard).

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::Store;
use orderflow_core::services::effects::points_for;
use orderflow_domain::events::EventData;
use orderflow_domain::money::{Currency, Money};

use super::claim;
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

pub struct LoyaltyHandler {
    store: Arc<dyn Store>,
}

impl LoyaltyHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
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
        Ok(Handled::Applied)
    }
}
