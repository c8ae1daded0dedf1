//! `inventory`: reserves an order's stock, all lines or none, never below
//! zero, once the fraud check (or an admin) cleared the order.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::{Reservation, StoreTx};
use orderflow_core::services::catalog::CatalogService;
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::product::Product;
use orderflow_domain::{OrderId, ProductId, UserId};

use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

/// Nothing to prepare: the reservation is a database write, made in the
/// group commit.
#[derive(Default)]
pub struct InventoryHandler {
    /// Told which products' stock changed, after the commit.
    catalog: Option<Arc<CatalogService>>,
}

impl InventoryHandler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells `catalog` of every reservation after its commit, so cached
    /// stock follows.
    pub fn with_catalog(mut self, catalog: Option<Arc<CatalogService>>) -> Self {
        self.catalog = catalog;
        self
    }
}

#[async_trait]
impl Handler for InventoryHandler {
    fn group(&self) -> &'static str {
        "inventory"
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let EventData::OrderCleared {
            order_id,
            user_id,
            items,
            total_cents,
            currency,
            ..
        } = &event.data
        else {
            return Ok(Prepared::Ignored);
        };
        Ok(Prepared::Effect(Box::new(Reserve {
            order_id: *order_id,
            user_id: *user_id,
            lines: items
                .iter()
                .map(|line| (line.product_id, line.quantity))
                .collect(),
            total_cents: *total_cents,
            currency: currency.clone(),
            event: event.id,
            traceparent: event.traceparent.clone(),
            catalog: self.catalog.clone(),
            reserved: Vec::new(),
        })))
    }
}

/// Reserve the order's lines, then say how it went.
struct Reserve {
    order_id: OrderId,
    user_id: UserId,
    lines: Vec<(ProductId, u32)>,
    total_cents: i64,
    currency: String,
    event: orderflow_domain::EventId,
    traceparent: Option<String>,
    catalog: Option<Arc<CatalogService>>,
    /// Set by `apply` for `committed`: the products whose stock was taken,
    /// as the reservation left them.
    reserved: Vec<Product>,
}

#[async_trait]
impl Effect for Reserve {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        let (order_id, user_id) = (self.order_id, self.user_id);
        let reservation = tx.reserve_stock(order_id, &self.lines).await?;
        let result = match reservation {
            Reservation::Reserved { products } => {
                self.reserved = products;
                Some(EventData::StockReserved {
                    order_id,
                    user_id,
                    total_cents: self.total_cents,
                    currency: self.currency.clone(),
                })
            }
            // The reservation committed together with its StockReserved event,
            // so that event exists already: emitting it again would make the
            // payment group see the order twice.
            Reservation::AlreadyReserved => {
                tracing::warn!(%order_id, event_id = %self.event, "stock of this order was reserved before; nothing to emit");
                None
            }
            // The shopper cancelled it first: nothing to reserve, nothing
            // for payment to charge.
            Reservation::OrderCancelled => {
                tracing::info!(%order_id, event_id = %self.event, "order cancelled before its reservation; nothing reserved");
                None
            }
            Reservation::Insufficient {
                product_id,
                available,
                requested,
            } => Some(EventData::StockRejected {
                order_id,
                user_id,
                product_id: Some(product_id),
                reason: format!(
                    "insufficient stock for product {product_id}: {requested} requested, {available} available"
                ),
            }),
            Reservation::UnknownProduct { product_id } => Some(EventData::StockRejected {
                order_id,
                user_id,
                product_id: Some(product_id),
                reason: format!("product {product_id} no longer exists"),
            }),
        };
        if let Some(data) = result {
            tx.append(&[Envelope::new(data, self.traceparent.clone())])
                .await?;
        }
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        if let Some(catalog) = &self.catalog {
            catalog.products_written(&self.reserved).await;
        }
    }
}
