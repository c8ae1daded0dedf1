//! `orders`: drives the order state machine from stock and payment results.
//!
//! The two results travel on different topics, so they can arrive in either
//! order; [`OrderStatus::on`](orderflow_domain::order::OrderStatus::on) copes
//! with that, and refuses facts that no longer fit (answered as
//! [`Applied::Stale`]: marked processed, no effect, counted), but for one:
//! a charge that went through for an order its shopper cancelled meanwhile
//! is owed back, so it asks the `payment` group for a refund. After the
//! commit, the order's new status goes to live listeners through the read
//! models' pub/sub channel of its shopper.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::read_models::ReadModels;
use orderflow_core::ports::store::{Store, StoreTx};
use orderflow_core::services::catalog::CatalogService;
use orderflow_core::services::live::{LiveChannel, LiveHub};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::money::Currency;
use orderflow_domain::order::{Order, OrderFact, OrderStatus, Transition};
use orderflow_domain::{EventId, OrderId, ProductId, UserId};

use super::mirror_failed;
use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

pub struct OrdersHandler {
    /// Where `prepare` reads the order (see [`Transit`]).
    store: Arc<dyn Store>,
    read_models: Option<Arc<dyn ReadModels>>,
    /// Told of each committed status change's live message.
    live: Option<Arc<LiveHub>>,
    /// Told which products' stock a payment failure released.
    catalog: Option<Arc<CatalogService>>,
}

impl OrdersHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            read_models: None,
            live: None,
            catalog: None,
        }
    }

    /// Hands each committed status change's live message to `hub` (the
    /// message is written with the change either way).
    pub fn with_live(mut self, hub: Option<Arc<LiveHub>>) -> Self {
        self.live = hub;
        self
    }

    /// Tells `catalog` of every stock release after its commit, so cached
    /// stock follows.
    pub fn with_catalog(mut self, catalog: Option<Arc<CatalogService>>) -> Self {
        self.catalog = catalog;
        self
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

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let mut charge = None;
        let (order_id, fact, reason) = match &event.data {
            EventData::StockReserved { order_id, .. } => {
                (*order_id, OrderFact::StockReserved, None)
            }
            EventData::StockRejected {
                order_id, reason, ..
            } => (*order_id, OrderFact::StockRejected, Some(reason)),
            EventData::PaymentSucceeded {
                order_id,
                payment_id,
                ..
            } => {
                charge = Some(payment_id.clone());
                (*order_id, OrderFact::PaymentSucceeded, None)
            }
            EventData::PaymentFailed {
                order_id, reason, ..
            } => (*order_id, OrderFact::PaymentFailed, Some(reason)),
            _ => return Ok(Prepared::Ignored),
        };
        // Read here, off SQLite's writer; `apply` reads the status alone.
        let Some(order) = self.store.order_without_history(order_id).await? else {
            return Err(WorkerError::Missing(format!("order {order_id}")));
        };
        Ok(Prepared::Effect(Box::new(Transit {
            order,
            order_id,
            fact,
            reason: reason.cloned().unwrap_or_default(),
            charge,
            event: event.id,
            traceparent: event.traceparent.clone(),
            read_models: self.read_models.clone(),
            catalog: self.catalog.clone(),
            released: Vec::new(),
            moved: None,
            live: self.live.clone(),
            live_message: None,
        })))
    }
}

/// Apply one fact to one order.
///
/// The order was read by `prepare`, outside the unit of work: its lines,
/// owner and total never change, so `apply` reads only the status, locked.
/// Why: reading the whole order (its head, then its lines) under SQLite's
/// one writer was over half of this effect's time there, and the `orders`
/// group applies two facts per order.
struct Transit {
    /// As `prepare` read it; the status is refreshed by `apply`.
    order: Order,
    order_id: OrderId,
    fact: OrderFact,
    reason: String,
    /// The provider's reference, for a successful charge.
    charge: Option<String>,
    event: EventId,
    traceparent: Option<String>,
    read_models: Option<Arc<dyn ReadModels>>,
    catalog: Option<Arc<CatalogService>>,
    /// Set by `apply` for `committed`: the products whose stock came back.
    released: Vec<ProductId>,
    /// Set by `apply` for `committed`: the shopper, the new status, and the
    /// order's total when the status is final.
    moved: Option<(UserId, OrderStatus, i64, Currency)>,
    live: Option<Arc<LiveHub>>,
    /// Set by `apply` for `committed`: the channel the change's live
    /// message went to.
    live_message: Option<String>,
}

#[async_trait]
impl Effect for Transit {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        let order_id = self.order_id;
        self.moved = None;
        self.live_message = None;
        self.released.clear();
        // Locked until commit, so two members racing on one order's events
        // apply their facts one after the other.
        let Some(status) = tx.order_status_for_update(order_id).await? else {
            return Err(WorkerError::Missing(format!("order {order_id}")));
        };
        self.order.status = status;
        let order = &self.order;
        let steps = match order.status.on(self.fact) {
            Transition::Apply(steps) => steps,
            Transition::Ignored {
                from: OrderStatus::Cancelled,
                fact: OrderFact::PaymentSucceeded,
            } => {
                let payment_id = self.charge.clone().unwrap_or_default();
                tracing::info!(%order_id, %payment_id, event_id = %self.event, "charged after its cancellation; refund requested");
                let refund = EventData::RefundRequested {
                    order_id,
                    user_id: order.user_id,
                    payment_id,
                    amount_cents: order.total_cents,
                    currency: order.currency.to_string(),
                };
                tx.append(&[Envelope::new(refund, self.traceparent.clone())])
                    .await?;
                return Ok(Applied::Changed);
            }
            Transition::Ignored { from, fact } => {
                tracing::info!(%order_id, %from, ?fact, event_id = %self.event, "transition does not fit; ignored");
                return Ok(Applied::Stale);
            }
        };
        let at = chrono::Utc::now();
        tx.set_order_status(order_id, &steps, at).await?;
        let user_id = order.user_id;
        self.live_message = Some(LiveChannel::Orders(user_id).name());
        let reason = || self.reason.clone();
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
                if released {
                    self.released = order.items.iter().map(|line| line.product_id).collect();
                }
                Some(EventData::OrderPaymentFailed {
                    order_id,
                    user_id,
                    reason: reason(),
                })
            }
            _ => None,
        };
        if let Some(data) = caused {
            tx.append(&[Envelope::new(data, self.traceparent.clone())])
                .await?;
        }
        self.moved = steps
            .last()
            .map(|status| (user_id, *status, order.total_cents, order.currency.clone()));
        Ok(Applied::Changed)
    }

    async fn committed(mut self: Box<Self>) {
        if let Some(catalog) = &self.catalog {
            catalog.products_changed(&self.released).await;
        }
        if let (Some(hub), Some(channel)) = (&self.live, self.live_message.take()) {
            hub.publish(&channel);
        }
        let Some((user_id, status, total_cents, currency)) = self.moved else {
            return;
        };
        if let Some(models) = &self.read_models
            && let Err(error) = models
                .publish_order_status(user_id, self.order_id, status)
                .await
        {
            mirror_failed("publish_order_status", &error);
        }
        // Counted after the commit, so a transition rolled back (and retried)
        // is counted once, when it really happened.
        if status.is_final() {
            metrics::counter!("orderflow_orders_total", "status" => status.as_str(), "mode" => "events")
                .increment(1);
            if status == OrderStatus::Confirmed {
                metrics::counter!("orderflow_revenue_cents_total", "currency" => currency.to_string())
                    .increment(u64::try_from(total_cents).unwrap_or(0));
            }
        }
    }
}
