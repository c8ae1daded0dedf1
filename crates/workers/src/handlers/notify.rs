//! `email`, `sms`, `push`: tell the shopper how their order ended (and, by
//! e-mail only, welcome new users).

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::providers::Notifier;
use orderflow_core::ports::store::{NotificationRecord, Store};
use orderflow_core::services::effects::notification_message;
use orderflow_domain::events::EventData;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::{OrderId, UserId};

use super::claim;
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

/// One handler type for the three channels; the group is named after the channel.
pub struct NotifyHandler {
    channel: Channel,
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
}

impl NotifyHandler {
    pub fn new(channel: Channel, store: Arc<dyn Store>, notifier: Arc<dyn Notifier>) -> Self {
        Self {
            channel,
            store,
            notifier,
        }
    }

    /// The notification an event calls for on this channel, if any.
    fn notification(
        &self,
        data: &EventData,
    ) -> Option<(NotificationKind, UserId, Option<OrderId>)> {
        match data {
            EventData::OrderConfirmed {
                order_id, user_id, ..
            } => Some((NotificationKind::OrderConfirmed, *user_id, Some(*order_id))),
            EventData::OrderRejected {
                order_id, user_id, ..
            } => Some((NotificationKind::OrderRejected, *user_id, Some(*order_id))),
            EventData::OrderPaymentFailed {
                order_id, user_id, ..
            } => Some((NotificationKind::PaymentFailed, *user_id, Some(*order_id))),
            EventData::UserRegistered { user_id, .. } if self.channel == Channel::Email => {
                Some((NotificationKind::Welcome, *user_id, None))
            }
            _ => None,
        }
    }
}

#[async_trait]
impl Handler for NotifyHandler {
    fn group(&self) -> &'static str {
        self.channel.as_str()
    }

    fn topics(&self) -> &'static [&'static str] {
        super::topics_of(self.channel.as_str())
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError> {
        let event = &delivery.envelope;
        let Some((kind, user_id, order_id)) = self.notification(&event.data) else {
            return Ok(Handled::Ignored);
        };
        if self.store.is_processed(self.group(), event.id).await? {
            return Ok(Handled::Duplicate);
        }
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .ok_or_else(|| WorkerError::Missing(format!("user {user_id}")))?;
        // Keyed by group and event: if the send went through but the commit
        // below did not, the provider drops the resend.
        let message = notification_message(
            kind,
            &user,
            order_id,
            format!("{}:{}", self.group(), event.id),
        );
        self.notifier.send(&message).await?;
        let Some(mut tx) = claim(self.store.as_ref(), self.group(), event.id).await? else {
            return Ok(Handled::Duplicate);
        };
        tx.record_notification(&NotificationRecord {
            user_id,
            channel: self.channel,
            kind,
            order_id,
            sent_at: chrono::Utc::now(),
        })
        .await?;
        tx.commit().await?;
        Ok(Handled::Applied)
    }
}
