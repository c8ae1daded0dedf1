//! `payment`: charges reserved orders through the payment provider, and
//! refunds the charges of cancelled ones (`RefundRequested`).

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
        if let EventData::RefundRequested {
            order_id,
            payment_id,
            amount_cents,
            currency,
            ..
        } = &event.data
        {
            // Keyed by order, like the charge: a retry after a refund whose
            // record did not commit is answered by the provider, not paid
            // twice. A failure is retried, then dead-lettered for an
            // operator to replay: the money is owed either way.
            self.gateway
                .refund(payment_id, &format!("refund:{order_id}"))
                .await?;
            return Ok(Prepared::Effect(Box::new(RecordPayment {
                payment: PaymentRecord {
                    order_id: *order_id,
                    succeeded: true,
                    reference: payment_id.clone(),
                    amount_cents: -amount_cents,
                    currency: currency.clone(),
                    at: chrono::Utc::now(),
                },
                result: None,
            })));
        }
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
            result: Some(Envelope::new(data, event.traceparent.clone())),
        })))
    }
}

/// The charge's or refund's result: the payment row and, for a charge, the
/// event saying how it went.
struct RecordPayment {
    payment: PaymentRecord,
    result: Option<Envelope>,
}

#[async_trait]
impl Effect for RecordPayment {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        tx.record_payment(&self.payment).await?;
        if let Some(result) = &self.result {
            tx.append(std::slice::from_ref(result)).await?;
        }
        Ok(Applied::Changed)
    }
}
