//! Shopper notifications: which channel, and what they are about.

use serde::{Deserialize, Serialize};

/// The three channels the notes name; each has its own consumer group and provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == value)
    }
}

/// What a notification tells the shopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Welcome,
    /// The order waits for a fraud review.
    OrderHeld,
    OrderConfirmed,
    OrderRejected,
    PaymentFailed,
    /// The shopper cancelled the order (refunded, when it had been charged).
    OrderCancelled,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 6] = [
        NotificationKind::Welcome,
        NotificationKind::OrderHeld,
        NotificationKind::OrderConfirmed,
        NotificationKind::OrderRejected,
        NotificationKind::PaymentFailed,
        NotificationKind::OrderCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Welcome => "welcome",
            NotificationKind::OrderHeld => "order_held",
            NotificationKind::OrderConfirmed => "order_confirmed",
            NotificationKind::OrderRejected => "order_rejected",
            NotificationKind::PaymentFailed => "payment_failed",
            NotificationKind::OrderCancelled => "order_cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// A short human text for the message body.
    pub fn subject(self) -> &'static str {
        match self {
            NotificationKind::Welcome => "Welcome to the shop",
            NotificationKind::OrderHeld => "Your order is being reviewed",
            NotificationKind::OrderConfirmed => "Your order is confirmed",
            NotificationKind::OrderRejected => "Your order could not be fulfilled",
            NotificationKind::PaymentFailed => "Your payment did not go through",
            NotificationKind::OrderCancelled => "Your order is cancelled",
        }
    }
}
