//! `inventory`: reserves an order's stock, all lines or none, never below zero.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::{Reservation, Store};
use orderflow_domain::events::{Envelope, EventData};

use super::claim;
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

pub struct InventoryHandler {
    store: Arc<dyn Store>,
}

impl InventoryHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Handler for InventoryHandler {
    fn group(&self) -> &'static str {
        "inventory"
    }

    fn topics(&self) -> &'static [&'static str] {
        super::topics_of("inventory")
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError> {
        let event = &delivery.envelope;
        let EventData::OrderPlaced {
            order_id,
            user_id,
            items,
            total_cents,
            currency,
        } = &event.data
        else {
            return Ok(Handled::Ignored);
        };
        let Some(mut tx) = claim(self.store.as_ref(), self.group(), event.id).await? else {
            return Ok(Handled::Duplicate);
        };
        let lines: Vec<_> = items
            .iter()
            .map(|line| (line.product_id, line.quantity))
            .collect();
        let result = match tx.reserve_stock(*order_id, &lines).await? {
            Reservation::Reserved => Some(EventData::StockReserved {
                order_id: *order_id,
                user_id: *user_id,
                total_cents: *total_cents,
                currency: currency.clone(),
            }),
            // The reservation committed together with its StockReserved event,
            // so that event exists already: emitting it again would make the
            // payment group see the order twice.
            Reservation::AlreadyReserved => {
                tracing::warn!(%order_id, event_id = %event.id, "stock of this order was reserved before; nothing to emit");
                None
            }
            Reservation::Insufficient {
                product_id,
                available,
                requested,
            } => Some(EventData::StockRejected {
                order_id: *order_id,
                user_id: *user_id,
                product_id: Some(product_id),
                reason: format!(
                    "insufficient stock for product {product_id}: {requested} requested, {available} available"
                ),
            }),
            Reservation::UnknownProduct { product_id } => Some(EventData::StockRejected {
                order_id: *order_id,
                user_id: *user_id,
                product_id: Some(product_id),
                reason: format!("product {product_id} no longer exists"),
            }),
        };
        if let Some(data) = result {
            tx.append(&[Envelope::new(data, event.traceparent.clone())])
                .await?;
        }
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}
