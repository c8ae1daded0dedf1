//! `analytics`: revenue and orders per day, and product sales, from confirmed orders.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::Store;
use orderflow_domain::events::EventData;
use orderflow_domain::money::Currency;
use orderflow_domain::order::{Order, OrderStatus};

use super::claim;
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

pub struct AnalyticsHandler {
    store: Arc<dyn Store>,
}

impl AnalyticsHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Handler for AnalyticsHandler {
    fn group(&self) -> &'static str {
        "analytics"
    }

    fn topics(&self) -> &'static [&'static str] {
        super::topics_of("analytics")
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError> {
        let event = &delivery.envelope;
        let EventData::OrderConfirmed {
            order_id,
            user_id,
            items,
            total_cents,
            currency,
        } = &event.data
        else {
            return Ok(Handled::Ignored);
        };
        // The event carries everything a sale needs, so no read is spent on
        // the order. Its timestamps are the confirmation time, which is also
        // the day the sale counts for (UTC).
        let order = Order {
            id: *order_id,
            user_id: *user_id,
            status: OrderStatus::Confirmed,
            total_cents: *total_cents,
            currency: Currency::parse(currency)
                .map_err(|error| WorkerError::InvalidEvent(error.to_string()))?,
            items: items.clone(),
            created_at: event.time,
            updated_at: event.time,
        };
        let Some(mut tx) = claim(self.store.as_ref(), self.group(), event.id).await? else {
            return Ok(Handled::Duplicate);
        };
        tx.record_sale(&order, event.time.date_naive()).await?;
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}
