//! `email`, `sms`, `push`: tell the shopper their order is held for a
//! review, and how it ended, cancellations included (and, by
//! e-mail only, welcome new users). After the commit, the notification goes
//! to the front of the shopper's recent-notifications read model.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::providers::Notifier;
use orderflow_core::ports::read_models::{RECENT_NOTIFICATIONS_KEPT, ReadModels};
use orderflow_core::ports::store::{NotificationRecord, Store, StoreTx};
use orderflow_core::services::effects::notification_message;
use orderflow_core::services::live::{LiveChannel, LiveHub};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::{OrderId, UserId};

use super::mirror_failed;
use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

/// One handler type for the three channels; the group is named after the channel.
pub struct NotifyHandler {
    channel: Channel,
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    read_models: Option<Arc<dyn ReadModels>>,
    live: Option<Arc<LiveHub>>,
}

impl NotifyHandler {
    pub fn new(channel: Channel, store: Arc<dyn Store>, notifier: Arc<dyn Notifier>) -> Self {
        Self {
            channel,
            store,
            notifier,
            read_models: None,
            live: None,
        }
    }

    /// Rings the shopper's `notifications:{user}` channel on `hub` after
    /// each commit.
    pub fn with_live(mut self, hub: Option<Arc<LiveHub>>) -> Self {
        self.live = hub;
        self
    }

    /// Mirrors each notification into `read_models` after the commit.
    pub fn with_read_models(mut self, read_models: Option<Arc<dyn ReadModels>>) -> Self {
        self.read_models = read_models;
        self
    }

    /// The notification an event calls for on this channel, if any.
    fn notification(
        &self,
        data: &EventData,
    ) -> Option<(NotificationKind, UserId, Option<OrderId>)> {
        match data {
            EventData::OrderHeld {
                order_id, user_id, ..
            } => Some((NotificationKind::OrderHeld, *user_id, Some(*order_id))),
            EventData::OrderConfirmed {
                order_id, user_id, ..
            } => Some((NotificationKind::OrderConfirmed, *user_id, Some(*order_id))),
            EventData::OrderRejected {
                order_id, user_id, ..
            } => Some((NotificationKind::OrderRejected, *user_id, Some(*order_id))),
            EventData::OrderPaymentFailed {
                order_id, user_id, ..
            } => Some((NotificationKind::PaymentFailed, *user_id, Some(*order_id))),
            EventData::OrderCancelled {
                order_id, user_id, ..
            } => Some((NotificationKind::OrderCancelled, *user_id, Some(*order_id))),
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

    /// A charge or a message must not go out twice for a redelivery.
    fn skips_processed(&self) -> bool {
        true
    }

    /// One order's messages go out in order; a shopper's different orders
    /// are independent messages, so they do not wait for each other (with
    /// the shopper's lane, one shopper's SMS, 300 ms each, could go out at
    /// most about three a second, however many orders they placed).
    fn lane(&self, envelope: &Envelope) -> String {
        match self.notification(&envelope.data) {
            Some((_, _, Some(order_id))) => order_id.to_string(),
            _ => envelope.key.clone(),
        }
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let Some((kind, user_id, order_id)) = self.notification(&event.data) else {
            return Ok(Prepared::Ignored);
        };
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .ok_or_else(|| WorkerError::Missing(format!("user {user_id}")))?;
        // Keyed by group and event: if the send went through but the group
        // commit did not, the provider drops the resend.
        let message = notification_message(
            kind,
            &user,
            order_id,
            format!("{}:{}", self.group(), event.id),
        );
        self.notifier.send(&message).await?;
        Ok(Prepared::Effect(Box::new(RecordNotification {
            record: NotificationRecord {
                user_id,
                channel: self.channel,
                kind,
                order_id,
                // Microseconds, what the databases keep: the read model's copy
                // must equal the one read back from the database.
                sent_at: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
            },
            mirror: self
                .read_models
                .clone()
                .map(|models| (self.store.clone(), models)),
            live: self.live.clone(),
        })))
    }
}

/// The notification that was sent, recorded; mirrored and rung on the
/// shopper's live channel after the commit.
struct RecordNotification {
    record: NotificationRecord,
    mirror: Option<(Arc<dyn Store>, Arc<dyn ReadModels>)>,
    live: Option<Arc<LiveHub>>,
}

#[async_trait]
impl Effect for RecordNotification {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        tx.record_notification(&self.record).await?;
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        if let Some(hub) = &self.live {
            hub.publish(&LiveChannel::Notifications(self.record.user_id).name());
        }
        if let Some((store, models)) = &self.mirror {
            mirror_notification(store.as_ref(), models.as_ref(), &self.record).await;
        }
    }
}

/// Puts `record` (committed) in front of the shopper's recent list; when
/// the list is missing, creates it from the database's newest entries,
/// read now, after the commit, so they include `record`.
async fn mirror_notification(
    store: &dyn Store,
    models: &dyn ReadModels,
    record: &NotificationRecord,
) {
    match models.push_notification(record, &[]).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(error) => return mirror_failed("push_notification", &error),
    }
    let snapshot = match store
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
