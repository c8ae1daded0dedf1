//! `email`, `sms`, `push`: tell the shopper how their order ended (and, by
//! e-mail only, welcome new users). After the commit, the notification goes
//! to the front of the shopper's recent-notifications read model.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::providers::Notifier;
use orderflow_core::ports::read_models::{RECENT_NOTIFICATIONS_KEPT, ReadModels};
use orderflow_core::ports::store::{NotificationRecord, Store};
use orderflow_core::services::effects::notification_message;
use orderflow_domain::events::EventData;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::{OrderId, UserId};

use super::{claim, mirror_failed};
use crate::error::WorkerError;
use crate::runtime::{Handled, Handler};

/// One handler type for the three channels; the group is named after the channel.
pub struct NotifyHandler {
    channel: Channel,
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    read_models: Option<Arc<dyn ReadModels>>,
}

impl NotifyHandler {
    pub fn new(channel: Channel, store: Arc<dyn Store>, notifier: Arc<dyn Notifier>) -> Self {
        Self {
            channel,
            store,
            notifier,
            read_models: None,
        }
    }

    /// Mirrors each notification into `read_models` after the commit.
    pub fn with_read_models(mut self, read_models: Option<Arc<dyn ReadModels>>) -> Self {
        self.read_models = read_models;
        self
    }

    /// Puts `record` (committed) in front of the shopper's recent list; when
    /// the list is missing, creates it from the database's newest entries,
    /// read now, after the commit, so they include `record`.
    async fn mirror_notification(&self, models: &dyn ReadModels, record: &NotificationRecord) {
        match models.push_notification(record, &[]).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => return mirror_failed("push_notification", &error),
        }
        let snapshot = match self
            .store
            .notifications_of_user(record.user_id, RECENT_NOTIFICATIONS_KEPT)
            .await
        {
            Ok(snapshot) => snapshot,
            Err(error) => return mirror_failed("push_notification", &error),
        };
        if let Err(error) = models.push_notification(record, &snapshot).await {
            mirror_failed("push_notification", &error);
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
        let record = NotificationRecord {
            user_id,
            channel: self.channel,
            kind,
            order_id,
            // Microseconds, what the databases keep: the read model's copy
            // must equal the one read back from the database.
            sent_at: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
        };
        tx.record_notification(&record).await?;
        tx.commit().await?;
        if let Some(models) = &self.read_models {
            self.mirror_notification(models.as_ref(), &record).await;
        }
        Ok(Handled::Applied)
    }
}
