//! `GET /api/v1/live`: the live channels as Server-Sent Events.
//!
//! A client names its channels (`?channels=orders:{its user id}`) and gets,
//! per channel, every message in position order. Each event's `id` is the
//! position of *every* channel of the stream (`orders:…=5;…=9`), so the
//! browser's `EventSource`, which sends back only the last id it saw
//! (`Last-Event-ID`), resumes all of them: the server then sends exactly the
//! messages after those positions (from the database) before the live ones
//! ([`LiveHub::follow`]). The first event (`ready`) says where each channel
//! starts and whether the client's position could be continued from
//! (`recovered: false`: reload your state, then carry on).
//!
//! Not built yet (issue 13): WebSocket, tickets for `EventSource` (it cannot
//! send an `Authorization` header; today a client that can, such as
//! `fetch` with a reader, or a native app, uses the access token), closing
//! streams on logout or token expiry, and the channels other than
//! `orders:{user}`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures::stream::{self, BoxStream, StreamExt};
use orderflow_core::CoreError;
use orderflow_core::services::live::{Follower, LiveChannel, LiveMessage};
use orderflow_domain::ValidationError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{ApiQuery, Caller};
use crate::problem::ApiResult;

/// Channels one stream may follow.
pub const MAX_CHANNELS: usize = 16;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// Comma-separated channel names; today `orders:{user id}` (your own;
    /// an admin may follow anyone's). At most 16.
    #[param(pattern = r"^orders:[0-9a-fA-F-]{36}( *, *orders:[0-9a-fA-F-]{36}){0,15}$")]
    pub channels: String,
}

/// One message of a channel (the `data` of a `message` event).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveMessageView {
    pub channel: String,
    /// Grows in commit order within the channel (numbers may be skipped).
    pub position: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    /// For `orders:{user}`: `{"type": "order.status", "order_id", "status"}`,
    /// one message per step of the order's history.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Where one channel of the stream starts (in the `ready` event).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveChannelStart {
    pub channel: String,
    /// The position the stream continues after.
    pub position: i64,
    /// False when the position the client sent could not be continued from:
    /// the stream starts at the channel's present instead, and the client
    /// should reload what it shows.
    pub recovered: bool,
}

/// The `ready` event's data.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveReady {
    pub channels: Vec<LiveChannelStart>,
}

/// Follows live channels as Server-Sent Events: a `ready` event, then one
/// `message` event per channel message, each with the positions of every
/// channel as its `id` (send it back as `Last-Event-ID` to resume). A
/// channel that is not yours is 403; a name that is not a channel, 422.
#[utoipa::path(get, operation_id = "follow_live", path = "/api/v1/live", tag = "live", security(("bearer" = [])), params(LiveParams, ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: resumes every channel after it")), responses((status = 200, description = "An event stream (text/event-stream): `ready` (LiveReady), then `message` (LiveMessageView) events", content_type = "text/event-stream", body = LiveMessageView)))]
pub async fn follow(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<LiveParams>,
) -> ApiResult<Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>> {
    let channels = parse_channels(&params.channels).map_err(CoreError::from)?;
    for channel in &channels {
        if !channel.may_follow(principal.user_id, principal.role) {
            return Err(CoreError::Forbidden(format!(
                "channel {} is not yours to follow",
                channel.name()
            ))
            .into());
        }
    }
    let resume = match headers.get("last-event-id") {
        Some(value) => {
            parse_positions(value.to_str().unwrap_or_default()).map_err(CoreError::from)?
        }
        None => BTreeMap::new(),
    };
    let mut followers = Vec::with_capacity(channels.len());
    for channel in channels {
        let after = resume.get(&channel.name()).copied();
        followers.push(
            state
                .live
                .follow(channel, after)
                .await
                .map_err(CoreError::from)?,
        );
    }
    let mut positions: BTreeMap<String, i64> = followers
        .iter()
        .map(|f| (f.channel().to_owned(), f.position()))
        .collect();
    let ready = LiveReady {
        channels: followers
            .iter()
            .map(|f| LiveChannelStart {
                channel: f.channel().to_owned(),
                position: f.position(),
                recovered: f.recovered(),
            })
            .collect(),
    };
    let ready = Event::default()
        .event("ready")
        .id(format_positions(&positions))
        .json_data(&ready)
        .unwrap_or_default();
    let messages =
        stream::select_all(followers.into_iter().map(messages_of)).map(move |next| match next {
            Ok(message) => {
                positions.insert(message.channel.clone(), message.position);
                let view = LiveMessageView {
                    channel: message.channel,
                    position: message.position,
                    at: message.at,
                    data: message.data,
                };
                Event::default()
                    .event("message")
                    .id(format_positions(&positions))
                    .json_data(&view)
                    .unwrap_or_default()
            }
            // The stream ends after this (see `messages_of`); the client
            // reconnects with its last id and loses nothing.
            Err(error) => {
                tracing::warn!(%error, "live stream ended: reading the channel failed");
                Event::default()
                    .event("error")
                    .data("the server could not read the channel; reconnect to resume")
            }
        });
    let events = stream::once(async move { ready })
        .chain(messages)
        .map(Ok::<_, Infallible>)
        .boxed();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A follower's messages as a stream that ends after its first error.
fn messages_of(
    follower: Follower,
) -> BoxStream<'static, Result<LiveMessage, orderflow_core::ports::store::StoreError>> {
    stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        match follower.next().await {
            Ok(message) => Some((Ok(message), Some(follower))),
            Err(error) => Some((Err(error), None)),
        }
    })
    .boxed()
}

fn parse_channels(list: &str) -> Result<Vec<LiveChannel>, ValidationError> {
    let mut channels: Vec<LiveChannel> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let channel = LiveChannel::parse(name).ok_or_else(|| {
            ValidationError::new(
                "channels",
                format!("{name:?} is not a channel (known: orders:{{user id}})"),
            )
        })?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    if channels.is_empty() {
        return Err(ValidationError::new(
            "channels",
            "name at least one channel",
        ));
    }
    if channels.len() > MAX_CHANNELS {
        return Err(ValidationError::new(
            "channels",
            format!("at most {MAX_CHANNELS} channels per stream"),
        ));
    }
    Ok(channels)
}

/// An event id: `channel=position` per channel, joined by `;`.
fn format_positions(positions: &BTreeMap<String, i64>) -> String {
    positions
        .iter()
        .map(|(channel, position)| format!("{channel}={position}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_positions(id: &str) -> Result<BTreeMap<String, i64>, ValidationError> {
    let bad = || {
        ValidationError::new(
            "Last-Event-ID",
            format!("{id:?} is not an id this server sent (channel=position;…)"),
        )
    };
    let mut positions = BTreeMap::new();
    for part in id.split(';').filter(|p| !p.is_empty()) {
        let (channel, position) = part.rsplit_once('=').ok_or_else(bad)?;
        let position: i64 = position.parse().map_err(|_| bad())?;
        if position < 0 {
            return Err(bad());
        }
        positions.insert(channel.to_owned(), position);
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_the_event_id() {
        let mut positions = BTreeMap::new();
        positions.insert(
            "orders:0190f0e4-8a9b-7cc3-9a44-1b2c3d4e5f60".to_owned(),
            5_i64,
        );
        positions.insert("orders:0190f0e4-8a9b-7cc3-9a44-1b2c3d4e5f61".to_owned(), 0);
        let id = format_positions(&positions);
        assert_eq!(parse_positions(&id).unwrap(), positions);
        assert!(parse_positions("").unwrap().is_empty());
        for bad in ["orders:x", "orders:x=minus", "orders:x=-1"] {
            assert!(parse_positions(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_lists_are_checked() {
        let user = "0190f0e4-8a9b-7cc3-9a44-1b2c3d4e5f60";
        let one = parse_channels(&format!("orders:{user}, orders:{user}")).unwrap();
        assert_eq!(one.len(), 1, "a channel named twice is followed once");
        assert!(parse_channels("").is_err());
        assert!(parse_channels("admin:orders").is_err());
        assert!(parse_channels("orders:not-a-uuid").is_err());
    }
}
