//! `payment`: charges reserved orders through the payment provider.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::providers::{ChargeOutcome, ChargeRequest, PaymentGateway};
use orderflow_core::ports::store::{PaymentRecord, Store};
use orderflow_core::services::effects::payment_idempotency_key;
use orderflow_domain::events::{Envelope, EventData};

use super::claim;
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

pub struct PaymentHandler {
    store: Arc<dyn Store>,
    gateway: Arc<dyn PaymentGateway>,
}

impl PaymentHandler {
    pub fn new(store: Arc<dyn Store>, gateway: Arc<dyn PaymentGateway>) -> Self {
        Self { store, gateway }
    }
}

#[async_trait]
impl Handler for PaymentHandler {
    fn group(&self) -> &'static str {
        "payment"
    }

    fn topics(&self) -> &'static [&'static str] {
        super::topics_of("payment")
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError> {
        let event = &delivery.envelope;
        let EventData::StockReserved {
            order_id,
            user_id,
            total_cents,
            currency,
        } = &event.data
        else {
            return Ok(Handled::Ignored);
        };
        if self.store.is_processed(self.group(), event.id).await? {
            return Ok(Handled::Duplicate);
        }
        // Keyed by order, not by event: if the charge went through but the
        // commit below did not, the retry is answered from the provider's
        // idempotency cache instead of charging twice.
        let request = ChargeRequest {
            idempotency_key: payment_idempotency_key(*order_id),
            order_id: *order_id,
            user_id: *user_id,
            amount_cents: *total_cents,
            currency: currency.clone(),
        };
        let outcome = self.gateway.charge(&request).await?;
        let Some(mut tx) = claim(self.store.as_ref(), self.group(), event.id).await? else {
            return Ok(Handled::Duplicate);
        };
        let (succeeded, reference, data) = match outcome {
            ChargeOutcome::Approved { payment_id } => (
                true,
                payment_id.clone(),
                EventData::PaymentSucceeded {
                    order_id: *order_id,
                    user_id: *user_id,
                    payment_id,
                },
            ),
            ChargeOutcome::Declined { reason } => (
                false,
                reason.clone(),
                EventData::PaymentFailed {
                    order_id: *order_id,
                    user_id: *user_id,
                    reason,
                },
            ),
        };
        tx.record_payment(&PaymentRecord {
            order_id: *order_id,
            succeeded,
            reference,
            amount_cents: *total_cents,
            currency: currency.clone(),
            at: chrono::Utc::now(),
        })
        .await?;
        tx.append(&[Envelope::new(data, event.traceparent.clone())])
            .await?;
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}
