//! `orders`: drives the order state machine from stock and payment results.
//!
//! The two results travel on different topics, so they can arrive in either
//! order; [`OrderStatus::on`](orderflow_domain::order::OrderStatus::on) copes
//! with that, and refuses facts that no longer fit (answered as
//! [`Handled::Stale`]: marked processed, no effect, counted). After the
//! commit, the order's new status goes to live listeners through the read
//! models' pub/sub channel of its shopper.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::read_models::ReadModels;
use orderflow_core::ports::store::Store;
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::order::{OrderFact, OrderStatus, Transition};

use super::{claim, mirror_failed};
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

pub struct OrdersHandler {
    store: Arc<dyn Store>,
    read_models: Option<Arc<dyn ReadModels>>,
}

impl OrdersHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            read_models: None,
        }
    }

    /// Publishes each committed status change through `read_models`.
    pub fn with_read_models(mut self, read_models: Option<Arc<dyn ReadModels>>) -> Self {
        self.read_models = read_models;
        self
    }
}

#[async_trait]
impl Handler for OrdersHandler {
    fn group(&self) -> &'static str {
        "orders"
    }

    fn topics(&self) -> &'static [&'static str] {
        super::topics_of("orders")
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError> {
        let event = &delivery.envelope;
        let (order_id, fact, reason) = match &event.data {
            EventData::StockReserved { order_id, .. } => {
                (*order_id, OrderFact::StockReserved, None)
            }
            EventData::StockRejected {
                order_id, reason, ..
            } => (*order_id, OrderFact::StockRejected, Some(reason)),
            EventData::PaymentSucceeded { order_id, .. } => {
                (*order_id, OrderFact::PaymentSucceeded, None)
            }
            EventData::PaymentFailed {
                order_id, reason, ..
            } => (*order_id, OrderFact::PaymentFailed, Some(reason)),
            _ => return Ok(Handled::Ignored),
        };
        let Some(mut tx) = claim(self.store.as_ref(), self.group(), event.id).await? else {
            return Ok(Handled::Duplicate);
        };
        // Locked until commit, so two members racing on one order's events
        // apply their facts one after the other.
        let Some(order) = tx.order_for_update(order_id).await? else {
            return Err(WorkerError::Missing(format!("order {order_id}")));
        };
        let steps = match order.status.on(fact) {
            Transition::Apply(steps) => steps,
            Transition::Ignored { from, fact } => {
                tracing::info!(%order_id, %from, ?fact, event_id = %event.id, "transition does not fit; ignored");
                tx.commit().await?;
                return Ok(Handled::Stale);
            }
        };
        tx.set_order_status(order_id, &steps, chrono::Utc::now())
            .await?;
        let reason = || reason.cloned().unwrap_or_default();
        let user_id = order.user_id;
        let caused = match steps.last() {
            Some(OrderStatus::Confirmed) => Some(EventData::OrderConfirmed {
                order_id,
                user_id,
                items: order.items.clone(),
                total_cents: order.total_cents,
                currency: order.currency.to_string(),
            }),
            Some(OrderStatus::Rejected) => Some(EventData::OrderRejected {
                order_id,
                user_id,
                reason: reason(),
            }),
            Some(OrderStatus::PaymentFailed) => {
                // False when nothing is reserved any more; the processed mark
                // already guarantees this runs once per event.
                let released = tx.release_stock(order_id).await?;
                tracing::debug!(%order_id, released, "payment failed; stock released");
                Some(EventData::OrderPaymentFailed {
                    order_id,
                    user_id,
                    reason: reason(),
                })
            }
            _ => None,
        };
        if let Some(data) = caused {
            tx.append(&[Envelope::new(data, event.traceparent.clone())])
                .await?;
        }
        tx.commit().await?;
        if let (Some(models), Some(status)) = (&self.read_models, steps.last())
            && let Err(error) = models
                .publish_order_status(user_id, order_id, *status)
                .await
        {
            mirror_failed("publish_order_status", &error);
        }
        // Counted after the commit, so a transition rolled back (and retried)
        // is counted once, when it really happened.
        if let Some(last) = steps.last().filter(|status| status.is_final()) {
            metrics::counter!("orderflow_orders_total", "status" => last.as_str(), "mode" => "events")
                .increment(1);
            if *last == OrderStatus::Confirmed {
                metrics::counter!("orderflow_revenue_cents_total", "currency" => order.currency.to_string())
                    .increment(u64::try_from(order.total_cents).unwrap_or(0));
            }
        }
        Ok(Handled::Applied)
    }
}
