//! `analytics`: revenue and orders per day, product sales, and revenue,
//! orders and units in tumbling windows of a minute and a day (per product
//! too), from confirmed orders, by event time: the confirmation's envelope
//! time, so a replay or a late delivery lands in the window it happened in
//! (see `orderflow_domain::sales`). A confirmation past its window's grace
//! ([`LATE_AFTER`](super::LATE_AFTER)) is still recorded, and counted in
//! `orderflow_stream_late_events_total{group="analytics"}`.
//! After the commit, the day's totals (read back from the database) are
//! mirrored into the read models.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::read_models::ReadModels;
use orderflow_core::ports::store::{Store, StoreTx};
use orderflow_domain::events::EventData;
use orderflow_domain::money::Currency;
use orderflow_domain::order::{Order, OrderStatus};

use super::{LatenessWatch, mirror_failed};
use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

pub struct AnalyticsHandler {
    store: Arc<dyn Store>,
    read_models: Option<Arc<dyn ReadModels>>,
    lateness: LatenessWatch,
}

/// Days older than this are not mirrored (a replay of old events): the read
/// model is about recent sales, and the database keeps them all.
const MIRRORED_DAYS: i64 = 366;

impl AnalyticsHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            read_models: None,
            lateness: LatenessWatch::new("analytics"),
        }
    }

    /// Mirrors each day's totals into `read_models` after the commit.
    pub fn with_read_models(mut self, read_models: Option<Arc<dyn ReadModels>>) -> Self {
        self.read_models = read_models;
        self
    }
}

#[async_trait]
impl Handler for AnalyticsHandler {
    fn group(&self) -> &'static str {
        "analytics"
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let EventData::OrderConfirmed {
            order_id,
            user_id,
            items,
            total_cents,
            currency,
        } = &event.data
        else {
            return Ok(Prepared::Ignored);
        };
        // The event carries everything a sale needs, so no read is spent on
        // the order. Its timestamps are the confirmation time, which is also
        // the time the sale counts for.
        self.lateness.observe(event.time);
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
        Ok(Prepared::Effect(Box::new(RecordSale {
            at: event.time,
            order,
            mirror: self
                .read_models
                .clone()
                .map(|models| (self.store.clone(), models)),
        })))
    }
}

/// Add the sale to its day and windows; mirror the day's totals after the
/// commit.
struct RecordSale {
    order: Order,
    at: orderflow_domain::Timestamp,
    mirror: Option<(Arc<dyn Store>, Arc<dyn ReadModels>)>,
}

#[async_trait]
impl Effect for RecordSale {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        tx.record_sale(&self.order, self.at).await?;
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        if let Some((store, models)) = &self.mirror {
            mirror_day(
                store.as_ref(),
                models.as_ref(),
                self.at.date_naive(),
                self.order.currency.as_str(),
            )
            .await;
        }
    }
}

/// Publishes the totals of (`day`, `currency`) as committed in the database.
async fn mirror_day(
    store: &dyn Store,
    models: &dyn ReadModels,
    day: chrono::NaiveDate,
    currency: &str,
) {
    let age = (chrono::Utc::now().date_naive() - day).num_days();
    let Some(days) = u32::try_from(age + 1)
        .ok()
        .filter(|days| (1..=MIRRORED_DAYS).contains(&i64::from(*days)))
    else {
        return;
    };
    let sales = match store.daily_sales(days).await {
        Ok(sales) => sales,
        Err(error) => return mirror_failed("record_sale", &error),
    };
    let Some(totals) = sales
        .iter()
        .find(|sales| sales.day == day && sales.currency == currency)
    else {
        return;
    };
    if let Err(error) = models.record_sale(totals).await {
        mirror_failed("record_sale", &error);
    }
}
