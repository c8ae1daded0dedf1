//! `trending`: product views per minute (the hopping windows of
//! `GET /products/trending` sum them) and per product, and the unique
//! viewers per product and day, from the `product.viewed` events the API
//! processes flush (write-behind counters), by event time. A batch past its
//! minute's grace is still added, and counted in
//! `orderflow_stream_late_events_total{group="trending"}`.
//!
//! Unique viewers: exact in the database (`product_viewers`, in the
//! transaction with the views) in the embedded setup; with Redis, a
//! HyperLogLog per product and day ([`ViewerSketches`]), added before the
//! transaction: adding an id twice changes nothing, so a retry or a replay
//! never counts a reader twice.
//!
//! Views go through the log, not straight into the database, so that this
//! state is like the revenue's: `orderflow rebuild trending` throws it away
//! and builds it again from the events.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::read_models::ViewerSketches;
use orderflow_core::ports::store::StoreTx;
use orderflow_domain::events::EventData;
use orderflow_domain::{ProductId, Timestamp};

use super::LatenessWatch;
use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

pub struct TrendingHandler {
    lateness: LatenessWatch,
    sketches: Option<Arc<dyn ViewerSketches>>,
}

impl TrendingHandler {
    pub fn new() -> Self {
        Self {
            lateness: LatenessWatch::new("trending"),
            sketches: None,
        }
    }

    /// Counts unique viewers in `sketches` (Redis) instead of exactly in
    /// the database.
    pub fn with_sketches(mut self, sketches: Option<Arc<dyn ViewerSketches>>) -> Self {
        self.sketches = sketches;
        self
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
        let EventData::ProductViewed {
            product_id,
            views,
            viewers,
        } = &event.data
        else {
            return Ok(Prepared::Ignored);
        };
        self.lateness.observe(event.time);
        let day = event.time.date_naive();
        let viewers = match &self.sketches {
            Some(sketches) => {
                sketches.add(day, *product_id, viewers).await?;
                Vec::new()
            }
            None => viewers.clone(),
        };
        Ok(Prepared::Effect(Box::new(AddViews {
            product_id: *product_id,
            views: *views,
            at: event.time,
            viewers,
        })))
    }
}

/// Add the views to their product and minute, and the visitor ids (when
/// counted exactly) to the product's day.
struct AddViews {
    product_id: ProductId,
    views: u64,
    at: Timestamp,
    viewers: Vec<String>,
}

#[async_trait]
impl Effect for AddViews {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        if self.views > 0 {
            tx.add_product_views(self.product_id, self.views, self.at)
                .await?;
        }
        tx.add_product_viewers(self.at.date_naive(), self.product_id, &self.viewers)
            .await?;
        Ok(Applied::Changed)
    }
}
