//! `payment`: charges reserved orders through the payment provider.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::providers::{ChargeOutcome, ChargeRequest, PaymentGateway};
use orderflow_core::ports::store::{PaymentRecord, StoreTx};
use orderflow_core::services::effects::payment_idempotency_key;
use orderflow_domain::events::{Envelope, EventData};

use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

pub struct PaymentHandler {
    gateway: Arc<dyn PaymentGateway>,
}

impl PaymentHandler {
    pub fn new(gateway: Arc<dyn PaymentGateway>) -> Self {
        Self { gateway }
    }
}

#[async_trait]
impl Handler for PaymentHandler {
    fn group(&self) -> &'static str {
        "payment"
    }

    /// A charge or a message must not go out twice for a redelivery.
    fn skips_processed(&self) -> bool {
        true
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let EventData::StockReserved {
            order_id,
            user_id,
            total_cents,
            currency,
        } = &event.data
        else {
            return Ok(Prepared::Ignored);
        };
        // Keyed by order, not by event: if the charge went through but the
        // group commit did not, the retry is answered from the provider's
        // idempotency cache instead of charging twice.
        let request = ChargeRequest {
            idempotency_key: payment_idempotency_key(*order_id),
            order_id: *order_id,
            user_id: *user_id,
            amount_cents: *total_cents,
            currency: currency.clone(),
        };
        let outcome = self.gateway.charge(&request).await?;
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
        Ok(Prepared::Effect(Box::new(RecordPayment {
            payment: PaymentRecord {
                order_id: *order_id,
                succeeded,
                reference,
                amount_cents: *total_cents,
                currency: currency.clone(),
                at: chrono::Utc::now(),
            },
            result: Envelope::new(data, event.traceparent.clone()),
        })))
    }
}

/// The charge's result: the payment row and the event saying how it went.
struct RecordPayment {
    payment: PaymentRecord,
    result: Envelope,
}

#[async_trait]
impl Effect for RecordPayment {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        tx.record_payment(&self.payment).await?;
        tx.append(std::slice::from_ref(&self.result)).await?;
        Ok(Applied::Changed)
    }
}
