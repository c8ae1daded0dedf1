//! Live channels: what a connected client (Server-Sent Events or
//! WebSocket) is sent, how a client that reconnects gets exactly what it
//! missed, and when the server closes a connection.
//!
//! Map:
//! - this module: the channels ([`LiveChannel`]), and the one JSON shape
//!   both transports speak: [`LiveFrame`] out, [`LiveCommand`] in.
//! - [`hub`]: [`LiveHub`], this process's doorbell, rung after a commit
//!   that changed a channel (and, with a bus, by other processes'
//!   commits), with [`Follower`], one client's view of one channel,
//!   [`LiveSnapshot`], a channel's newest messages with the position to
//!   follow after, the revocations it pushes to the connections of the
//!   user concerned (here and over the bus), and the single-use tickets
//!   `EventSource` connects with.
//! - [`connection`]: [`LiveConnection`], one client's connection: its
//!   channels, a bounded queue of frames, and the reasons it is closed
//!   (token expired, logged out, too slow, channel unreadable).
//!
//! Channels: `orders:{user}`, `notifications:{user}` and `admin:orders`
//! (event channels: every message is sent), `product:{id}` and
//! `admin:health` (state channels: the newest state is sent).
//!
//! Where the messages come from: the database, never a second copy. An
//! `orders:{user}` or `admin:orders` message is a row of the order history
//! the change writes anyway; a `notifications:{user}` message, a row of the
//! notifications the e-mail, SMS and push groups record; a `product:{id}` message is the product row at its version
//! (rung by the catalog after each change). Writing a separate message
//! row per change made the embedded pipeline twice as slow to confirm an
//! order (the single SQLite writer has no headroom under load; see
//! `docs/benchmarks/live-channels`). Positions grow in commit order per
//! channel (the store guarantees it for a shopper's history; a product's
//! version grows with each change) and have gaps (other shoppers' rows;
//! versions a state channel skips), so a follower sends what comes after
//! its last position.

pub mod connection;
pub mod hub;

use std::sync::{Arc, OnceLock};

use orderflow_domain::product::Product;
use orderflow_domain::user::Role;

use orderflow_domain::{ProductId, Timestamp, UserId};
use serde::{Deserialize, Serialize};

pub use connection::{ConnectionSettings, LiveConnection};
pub use hub::{DEFAULT_RECHECK, Follower, LiveHub, LiveSnapshot, TICKET_TTL};

use crate::CoreError;
use crate::ports::presence::PresenceTally;
use crate::ports::store::{NotificationChange, OrderChange};
use crate::services::admin::HealthSnapshot;
use crate::services::auth::Principal;

/// Channels one connection may follow.
pub const MAX_CHANNELS: usize = 16;

/// The channel names there are, for error messages.
pub const KNOWN_CHANNELS: &str =
    "orders:{user id}, notifications:{user id}, product:{product id}, admin:orders, admin:health";

/// A channel a client can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveChannel {
    /// `orders:{user}`: the shopper's orders, every status change (an
    /// event channel: every message matters, each is sent).
    Orders(UserId),
    /// `notifications:{user}`: every e-mail, SMS and push notification sent
    /// to the shopper (an event channel).
    Notifications(UserId),
    /// `admin:orders`: every shopper's orders, every status change (admins
    /// only; an event channel).
    AdminOrders,
    /// `product:{id}`: the product's stock, price and fields after each
    /// change, for everyone (a state channel: a message is the whole
    /// product at a version, so a client that missed versions gets the
    /// newest, which is all it needs).
    Product(ProductId),
    /// `admin:health`: consumer lag, dead letters, the outbox backlog and
    /// the live connections, every second (admins only; a state channel).
    Health,
}

impl LiveChannel {
    /// Parses a channel name; `None` for a name that is not a channel.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin:health" => return Some(Self::Health),
            "admin:orders" => return Some(Self::AdminOrders),
            _ => {}
        }
        let (kind, rest) = name.split_once(':')?;
        let id = uuid::Uuid::parse_str(rest).ok()?;
        match kind {
            "orders" => Some(Self::Orders(id)),
            "notifications" => Some(Self::Notifications(id)),
            "product" => Some(Self::Product(id)),
            _ => None,
        }
    }

    /// The channel's name, as clients and the database spell it.
    pub fn name(&self) -> String {
        match self {
            Self::Orders(user) => format!("orders:{user}"),
            Self::Notifications(user) => format!("notifications:{user}"),
            Self::Product(id) => format!("product:{id}"),
            Self::AdminOrders => "admin:orders".to_owned(),
            Self::Health => "admin:health".to_owned(),
        }
    }

    /// A state channel's message is the whole state at a position, so a
    /// follower that missed positions is sent the newest only; an event
    /// channel's messages are each sent.
    pub fn is_state(&self) -> bool {
        matches!(self, Self::Product(_) | Self::Health)
    }

    /// Whether anyone may follow it, signed in or not (a product's stock
    /// and price are on its public page anyway).
    pub fn is_public(&self) -> bool {
        matches!(self, Self::Product(_))
    }

    /// Whether `user` (with `role`) may follow the channel: a shopper only
    /// their own user channels; an admin any; anyone a product; only an
    /// admin the admin channels.
    pub fn may_follow(&self, user: UserId, role: Role) -> bool {
        match self {
            Self::Orders(owner) | Self::Notifications(owner) => {
                *owner == user || role == Role::Admin
            }
            Self::Product(_) => true,
            Self::AdminOrders | Self::Health => role == Role::Admin,
        }
    }

    /// Whether the caller may follow the channel, as an answer: a guest (no
    /// principal) only a public channel (401 otherwise: a guest has to log
    /// in), a caller only what [`Self::may_follow`] allows (403). Every
    /// transport (the API's SSE, a WebSocket connection) asks this one check,
    /// so they refuse alike.
    pub fn check_follower(&self, principal: Option<&Principal>) -> Result<(), CoreError> {
        match principal {
            Some(principal) if !self.may_follow(principal.user_id, principal.role) => Err(
                CoreError::Forbidden(format!("channel {} is not yours to follow", self.name())),
            ),
            None if !self.is_public() => Err(CoreError::Unauthorized(format!(
                "log in to follow {}: send `Authorization: Bearer <token>` (or a ?ticket= from POST /api/v1/live/ticket)",
                self.name()
            ))),
            _ => Ok(()),
        }
    }
}

/// A message of a live channel, as a client is sent it. One message is
/// shared (`Arc`) by every connection it goes to, and written as JSON once
/// for all of them ([`LiveFrame::to_json`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveMessage {
    pub channel: String,
    /// Grows in commit order within the channel; may skip numbers.
    pub position: i64,
    pub at: Timestamp,
    pub data: serde_json::Value,
    /// This message's frame as JSON, made by the first connection that
    /// sends it.
    #[serde(skip)]
    json: OnceLock<Arc<str>>,
}

impl PartialEq for LiveMessage {
    fn eq(&self, other: &Self) -> bool {
        (&self.channel, self.position, self.at, &self.data)
            == (&other.channel, other.position, other.at, &other.data)
    }
}

impl LiveMessage {
    pub fn new(channel: String, position: i64, at: Timestamp, data: serde_json::Value) -> Self {
        Self {
            channel,
            position,
            at,
            data,
            json: OnceLock::new(),
        }
    }

    fn order_change(channel: &str, change: OrderChange) -> Self {
        Self::new(
            channel.to_owned(),
            change.position,
            change.at,
            serde_json::json!({
                "type": "order.status",
                "order_id": change.order_id,
                "user_id": change.user_id,
                "status": change.status.as_str(),
            }),
        )
    }

    fn notification(channel: &str, change: NotificationChange) -> Self {
        let notification = change.notification;
        Self::new(
            channel.to_owned(),
            change.position,
            notification.sent_at,
            serde_json::json!({
                "type": "notification",
                "via": notification.channel.as_str(),
                "kind": notification.kind.as_str(),
                "order_id": notification.order_id,
            }),
        )
    }

    fn product(channel: &str, product: &Product) -> Self {
        Self::new(
            channel.to_owned(),
            product.version,
            product.updated_at,
            serde_json::json!({
                "type": "product",
                "id": product.id,
                "sku": product.sku,
                "name": product.name,
                "price_cents": product.price_cents,
                "currency": product.currency.as_str(),
                "stock": product.stock,
            }),
        )
    }

    /// `admin:health` now, with this process's live `(connections,
    /// users)`; its position is the time in milliseconds.
    fn health(snapshot: HealthSnapshot, presence: &PresenceTally) -> Self {
        let at = chrono::Utc::now();
        Self::new(
            LiveChannel::Health.name(),
            at.timestamp_millis(),
            at,
            serde_json::json!({
                "type": "health",
                "consumer_lag": snapshot.consumer_lag,
                "partition_lag": snapshot.partition_lag,
                "dead_letters": snapshot.dead_letters,
                "outbox": snapshot.outbox,
                "live": {
                    "connections": presence.devices,
                    "users_online": presence.users,
                    "processes": presence.processes,
                    "users_by_devices": presence
                        .users_by_devices
                        .iter()
                        .map(|(devices, users)| (devices.to_string(), users))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                },
            }),
        )
    }
}

/// What the server sends a live client, on either transport: a JSON
/// object tagged by `type` (a WebSocket text message; the `data` of the
/// Server-Sent Event named after the type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveFrame {
    /// A channel is followed after `position`. `recovered: false` means
    /// the position the client asked for could not be continued from: the
    /// channel starts at its present instead, and the client should reload
    /// what it shows.
    Subscribed {
        channel: String,
        position: i64,
        recovered: bool,
    },
    /// A channel is no longer followed.
    Unsubscribed { channel: String },
    /// A message of a followed channel.
    Message(Arc<LiveMessage>),
    /// A request the server refused (a channel that is not yours, a name
    /// that is not a channel); the connection stays open. `problem` is a
    /// problem document, as an HTTP error would carry.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        problem: serde_json::Value,
    },
    /// The answer to a `ping` command.
    Pong,
    /// The last frame before the server closes the connection.
    Closing { reason: CloseReason, detail: String },
}

impl LiveFrame {
    /// The frame as JSON, as both transports send it. A message's JSON is
    /// made once and shared by every connection that sends it (a product
    /// change goes to thousands).
    pub fn to_json(&self) -> Arc<str> {
        match self {
            LiveFrame::Message(message) => message.json.get_or_init(|| frame_json(self)).clone(),
            other => frame_json(other),
        }
    }
}

fn frame_json(frame: &LiveFrame) -> Arc<str> {
    serde_json::to_string(frame).unwrap_or_default().into()
}

/// Why the server closed a live connection; each says what the client
/// should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The access token expired: connect again with a fresh one and the
    /// last positions; nothing is lost.
    TokenExpired,
    /// The session was logged out or revoked: log in again.
    LoggedOut,
    /// The client did not take its messages fast enough: reconnect with
    /// the last positions; nothing is lost.
    Slow,
    /// The server could not read a channel: reconnect with the last
    /// positions after a pause.
    Unavailable,
    /// This server process is stopping (a deploy, a restart): connect
    /// again, to another process, with the last positions; nothing is
    /// lost.
    Restarting,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenExpired => "token_expired",
            Self::LoggedOut => "logged_out",
            Self::Slow => "slow",
            Self::Unavailable => "unavailable",
            Self::Restarting => "restarting",
        }
    }
}

/// What a WebSocket client sends: a JSON object tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LiveCommand {
    /// Follow `channel` after `position` (the last one received), or from
    /// now without one. Subscribing again to a followed channel restarts
    /// it from the new position.
    Subscribe {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<i64>,
    },
    /// Stop following `channel`.
    Unsubscribe { channel: String },
    /// Asks for a `pong` frame (an application-level liveness check, for
    /// clients that cannot see WebSocket pings). A struct variant, so
    /// unknown fields are refused like the others'.
    Ping {},
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_commands_are_json_tagged_by_type() {
        let frame = LiveFrame::Message(Arc::new(LiveMessage::new(
            "orders:x".into(),
            7,
            chrono::DateTime::from_timestamp(0, 0).unwrap(),
            serde_json::json!({"status": "paid"}),
        )));
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(json["type"], "message");
        assert_eq!(json["position"], 7);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&frame.to_json()).unwrap(),
            json,
            "the shared JSON is the frame's"
        );
        assert_eq!(serde_json::from_value::<LiveFrame>(json).unwrap(), frame);
        let closing = LiveFrame::Closing {
            reason: CloseReason::Slow,
            detail: "d".into(),
        };
        assert_eq!(
            serde_json::to_value(&closing).unwrap(),
            serde_json::json!({"type": "closing", "reason": "slow", "detail": "d"})
        );

        let command: LiveCommand =
            serde_json::from_str(r#"{"type":"subscribe","channel":"orders:x","position":3}"#)
                .unwrap();
        assert_eq!(
            command,
            LiveCommand::Subscribe {
                channel: "orders:x".into(),
                position: Some(3)
            }
        );
        assert!(serde_json::from_str::<LiveCommand>(r#"{"type":"shout"}"#).is_err());
        assert!(
            serde_json::from_str::<LiveCommand>(r#"{"type":"ping","extra":1}"#).is_err(),
            "unknown fields are refused, not ignored"
        );
    }
}
