//! `trending`: product views per minute (the hopping windows of
//! `GET /products/trending` sum them) and per product, from the
//! `product.viewed` events the API processes flush (write-behind counters),
//! by event time. A batch past its minute's grace is still added, and counted
//! in `orderflow_stream_late_events_total{group="trending"}`.
//!
//! Views go through the log, not straight into the database, so that this
//! state is like the revenue's: `orderflow rebuild trending` throws it away
//! and builds it again from the events.

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::StoreTx;
use orderflow_domain::events::EventData;
use orderflow_domain::{ProductId, Timestamp};

use super::LatenessWatch;
use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

pub struct TrendingHandler {
    lateness: LatenessWatch,
}

impl TrendingHandler {
    pub fn new() -> Self {
        Self {
            lateness: LatenessWatch::new("trending"),
        }
    }
}

impl Default for TrendingHandler {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Handler for TrendingHandler {
    fn group(&self) -> &'static str {
        "trending"
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let EventData::ProductViewed { product_id, views } = event.data else {
            return Ok(Prepared::Ignored);
        };
        self.lateness.observe(event.time);
        Ok(Prepared::Effect(Box::new(AddViews {
            product_id,
            views,
            at: event.time,
        })))
    }
}

/// Add the views to their product and minute.
struct AddViews {
    product_id: ProductId,
    views: u64,
    at: Timestamp,
}

#[async_trait]
impl Effect for AddViews {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        tx.add_product_views(self.product_id, self.views, self.at)
            .await?;
        Ok(Applied::Changed)
    }
}
