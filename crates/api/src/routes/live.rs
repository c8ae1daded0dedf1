//! The live channels over HTTP: Server-Sent Events (`GET /api/v1/live`),
//! WebSocket (`GET /api/v1/live/ws`), and the tickets browsers connect
//! with (`POST /api/v1/live/ticket`).
//!
//! Both transports carry the same JSON frames ([`LiveFrame`], tagged by
//! `type`), produced by one [`LiveConnection`] per client; this module only
//! moves them.
//!
//! - **SSE**: the client names its channels in the query
//!   (`?channels=orders:{its user id}`); each frame is an event named after
//!   its type. Each `subscribed` and `message` event's `id` is the position
//!   of *every* channel of the stream (`orders:…=5;…=9`), so the browser's
//!   `EventSource`, which sends back only the last id it saw
//!   (`Last-Event-ID`), resumes all of them: the server then sends exactly
//!   the messages after those positions (from the database) before the
//!   live ones. A channel that is not yours is 403 before the stream
//!   starts; a name that is not a channel, 422.
//! - **WebSocket**: the client sends `subscribe` / `unsubscribe` / `ping`
//!   commands (JSON text) and gets frames back; a refused subscription is
//!   an `error` frame and the connection stays. The server pings every
//!   [`PING_EVERY`] and drops a client that has not answered the previous
//!   ping. A closing connection sends its `closing` frame, then a close
//!   frame whose code says the same ([`close_code`]).
//! - **Auth**: the access token (`Authorization: Bearer`), or, for a browser
//!   (neither `EventSource` nor `WebSocket` can send that header), a
//!   single-use ticket from `POST /api/v1/live/ticket` in `?ticket=`, valid
//!   for 30 s. The connection then closes when the token expires or its
//!   session is logged out (see [`LiveConnection`]). Over SSE, a visitor
//!   without either may follow product channels (a product's stock and
//!   price are public): a storefront's product page moves for everyone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use futures::stream::{self, BoxStream, StreamExt};
use orderflow_core::CoreError;
use orderflow_core::services::auth::Principal;
use orderflow_core::services::live::{
    CloseReason, KNOWN_CHANNELS, LiveChannel, LiveCommand, LiveConnection, LiveFrame, MAX_CHANNELS,
    TICKET_TTL,
};
use orderflow_domain::ValidationError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::extract::{ApiQuery, Caller, bearer_token};
use crate::problem::{ApiError, ApiResult};

/// How often the server pings a WebSocket client.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// How long one frame may take to reach a WebSocket client's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest command a WebSocket client may send.
const MAX_COMMAND_BYTES: usize = 4096;
/// A WebSocket's read buffer: one command fits.
const SOCKET_BUFFER_BYTES: usize = 4096;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// Comma-separated channel names: `orders:{user id}` and
    /// `notifications:{user id}` (your own; an admin may follow anyone's),
    /// `product:{product id}` (anyone), `admin:orders` and `admin:health`
    /// (admins). At most 16.
    #[param(
        pattern = r"^((orders|notifications|product):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|admin:(orders|health))( *, *((orders|notifications|product):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|admin:(orders|health))){0,15}$"
    )]
    pub channels: String,
    /// A ticket from `POST /api/v1/live/ticket`, for a client that cannot
    /// send an `Authorization` header.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,128}$")]
    pub ticket: Option<String>,
    /// Where to resume, as the `Last-Event-ID` header says it
    /// (`channel=position;…`), for a browser's first connection: an
    /// `EventSource` cannot send the header, and a page knows the
    /// positions it was drawn at. The header wins when both are sent.
    #[param(
        pattern = r"^((orders|notifications|product):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}=[0-9]{1,18}|admin:(orders|health)=[0-9]{1,18})(;((orders|notifications|product):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}=[0-9]{1,18}|admin:(orders|health)=[0-9]{1,18})){0,15}$"
    )]
    pub last_event_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveSocketParams {
    /// A ticket from `POST /api/v1/live/ticket`, for a client that cannot
    /// send an `Authorization` header.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,128}$")]
    pub ticket: Option<String>,
}

/// A frame of a live connection, on either transport: a JSON object whose
/// `type` is one of `subscribed` (`channel`, `position`, `recovered`),
/// `unsubscribed` (`channel`), `message` (`channel`, `position`, `at`,
/// `data`), `error` (`channel`, `problem`), `pong`, `closing` (`reason`:
/// `token_expired` | `logged_out` | `slow` | `unavailable` | `restarting`,
/// `detail`).
/// An `orders:{user}` or `admin:orders` message's `data` is `{"type":
/// "order.status", "order_id", "user_id", "status"}`, one per step of the
/// order's history; a `notifications:{user}` message's is `{"type":
/// "notification", "via": "email" | "sms" | "push", "kind", "order_id"}`,
/// one per notification sent; a
/// `product:{id}` message's is `{"type": "product", "id", "sku", "name",
/// "price_cents", "currency", "stock"}`, the product at version
/// `position` (a client that missed versions gets the newest);
/// `admin:health`'s is `{"type": "health", "consumer_lag": {group: lag},
/// "partition_lag": {group: {"topic/partition": lag}}, "dead_letters", "outbox", "live": {"connections", "users_online",
/// "processes", "users_by_devices": {devices: users}}}` every second
/// (position: the time in ms); with Redis the `live` counts are every API
/// process's, a shopper connected to two processes counting once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveFrameView {
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: Option<String>,
    /// Grows in commit order within the channel (numbers may be skipped).
    pub position: Option<i64>,
    pub recovered: Option<bool>,
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub problem: Option<serde_json::Value>,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

/// A command a WebSocket client sends: `{"type": "subscribe", "channel",
/// "position"?}`, `{"type": "unsubscribe", "channel"}` or `{"type":
/// "ping"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveCommandView {
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: Option<String>,
    /// Resume after this position (the last one received).
    pub position: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotParams {
    /// One channel name, as for `GET /api/v1/live`.
    #[param(
        pattern = r"^((orders|notifications|product):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|admin:(orders|health))$"
    )]
    pub channel: String,
    /// How many of the newest messages (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// A channel's newest messages and the position to subscribe after.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveSnapshotView {
    pub channel: String,
    /// Subscribe with this position (WebSocket `subscribe`, or SSE
    /// `Last-Event-ID: {channel}={position}`) to get what follows these
    /// messages, no more and no less.
    pub position: i64,
    /// Oldest first; each is a `message` frame's fields (`channel`,
    /// `position`, `at`, `data`). A state channel's is its one current
    /// state.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<serde_json::Value>,
}

/// Messages a snapshot returns when the request does not say.
const SNAPSHOT_DEFAULT: u32 = 50;
/// The most a snapshot returns.
const SNAPSHOT_MAX: u32 = 200;

/// A ticket to connect with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveTicket {
    /// Pass as `?ticket=` to `GET /api/v1/live` or `/api/v1/live/ws`; works
    /// once.
    pub ticket: String,
    pub expires_in_secs: u64,
}

/// Issues a single-use ticket for a browser's `EventSource` or
/// `WebSocket`, which cannot send the access token: valid once, for 30 s,
/// as the caller.
#[utoipa::path(post, operation_id = "issue_live_ticket", path = "/api/v1/live/ticket", tag = "live", security(("bearer" = [])), responses((status = 201, body = LiveTicket)))]
pub async fn ticket(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> ApiResult<(axum::http::StatusCode, Json<LiveTicket>)> {
    let ticket = state.live.issue_ticket(&principal).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(LiveTicket {
            ticket,
            expires_in_secs: TICKET_TTL.as_secs(),
        }),
    ))
}

/// A channel's newest messages (an event channel's last `limit`; a state
/// channel's current state) with the position to subscribe after, read in
/// one go: load the page from it, then subscribe with its position, and
/// nothing is missed or received twice. Who may read a channel is who may
/// follow it (403); a product that does not exist is 404.
#[utoipa::path(get, operation_id = "live_snapshot", path = "/api/v1/live/snapshot", tag = "live", security(("bearer" = [])), params(SnapshotParams), responses((status = 200, body = LiveSnapshotView)))]
pub async fn snapshot(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(params): ApiQuery<SnapshotParams>,
) -> ApiResult<Json<LiveSnapshotView>> {
    let channel = LiveChannel::parse(params.channel.trim()).ok_or_else(|| {
        CoreError::from(ValidationError::new(
            "channel",
            format!("not a channel (known: {KNOWN_CHANNELS})"),
        ))
    })?;
    if !channel.may_follow(principal.user_id, principal.role) {
        return Err(CoreError::Forbidden(format!(
            "channel {} is not yours to read",
            channel.name()
        ))
        .into());
    }
    let limit = match params.limit {
        None => SNAPSHOT_DEFAULT,
        Some(limit) if (1..=SNAPSHOT_MAX).contains(&limit) => limit,
        Some(_) => {
            return Err(CoreError::from(ValidationError::new(
                "limit",
                format!("must be 1 to {SNAPSHOT_MAX}"),
            ))
            .into());
        }
    };
    let snapshot = state.live.snapshot(channel, limit).await?;
    let messages = snapshot
        .messages
        .iter()
        .map(|message| serde_json::to_value(message).unwrap_or_default())
        .collect();
    Ok(Json(LiveSnapshotView {
        channel: snapshot.channel,
        position: snapshot.position,
        messages,
    }))
}

/// Follows live channels as Server-Sent Events: a `subscribed` event per
/// channel, then `message` events, each with the positions of every
/// channel as its `id` (send it back as `Last-Event-ID` to resume), and a
/// `closing` event before the server ends the stream. A channel that is
/// not yours is 403; a name that is not a channel, 422.
#[utoipa::path(get, operation_id = "follow_live", path = "/api/v1/live", tag = "live", security(("bearer" = [])), params(LiveParams, ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: resumes every channel after it")), responses((status = 200, description = "An event stream (text/event-stream); each event's data is a LiveFrameView", content_type = "text/event-stream", body = LiveFrameView)))]
pub async fn follow(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<LiveParams>,
) -> ApiResult<Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>> {
    let principal = caller(&state, &headers, params.ticket.as_deref()).await?;
    let channels = parse_channels(&params.channels).map_err(CoreError::from)?;
    for channel in &channels {
        channel.check_follower(principal.as_ref())?;
    }
    let resume = match (headers.get("last-event-id"), &params.last_event_id) {
        (Some(value), _) => {
            parse_positions(value.to_str().unwrap_or_default()).map_err(CoreError::from)?
        }
        (None, Some(value)) => parse_positions(value).map_err(CoreError::from)?,
        (None, None) => BTreeMap::new(),
    };
    let settings = state.live.connection_settings();
    let connection = match principal {
        Some(principal) => state.live.connect(principal, settings),
        None => state.live.connect_guest(settings),
    };
    for channel in channels {
        let name = channel.name();
        let position = resume.get(&name).copied();
        // Fits: the command queue holds twice MAX_CHANNELS.
        connection.command(LiveCommand::Subscribe {
            channel: name,
            position,
        });
    }
    let events = stream::unfold(
        (connection, BTreeMap::<String, i64>::new()),
        |(mut connection, mut positions)| async move {
            let frame = connection.next().await?;
            let event = sse_event(&frame, &mut positions);
            Some((event, (connection, positions)))
        },
    )
    .map(Ok::<_, Infallible>)
    .boxed();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A frame as an event named after its type; `subscribed` and `message`
/// events carry the positions so far as their id.
fn sse_event(frame: &LiveFrame, positions: &mut BTreeMap<String, i64>) -> Event {
    let (name, position) = match frame {
        LiveFrame::Subscribed {
            channel, position, ..
        } => ("subscribed", Some((channel, *position))),
        LiveFrame::Message(message) => ("message", Some((&message.channel, message.position))),
        LiveFrame::Unsubscribed { .. } => ("unsubscribed", None),
        LiveFrame::Error { .. } => ("error", None),
        LiveFrame::Pong => ("pong", None),
        LiveFrame::Closing { .. } => ("closing", None),
    };
    let mut event = Event::default().event(name);
    if let Some((channel, position)) = position {
        positions.insert(channel.clone(), position);
        event = event.id(format_positions(positions));
    }
    event.data(&*frame.to_json())
}

/// Follows live channels over a WebSocket: send `subscribe` /
/// `unsubscribe` / `ping` commands (LiveCommandView) as JSON text, receive
/// frames (LiveFrameView). Authenticate with the `Authorization` header or
/// a `?ticket=`.
#[utoipa::path(get, operation_id = "follow_live_socket", path = "/api/v1/live/ws", tag = "live", security(("bearer" = [])), params(LiveSocketParams), responses((status = 101, description = "Switching to the WebSocket protocol; text messages are JSON: LiveCommandView in, LiveFrameView out")))]
pub async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<LiveSocketParams>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let principal = caller(&state, &headers, params.ticket.as_deref())
        .await?
        .ok_or_else(missing_token)?;
    let connection = state
        .live
        .connect(principal, state.live.connection_settings());
    Ok(upgrade
        .max_message_size(MAX_COMMAND_BYTES)
        // tungstenite's defaults (128 KiB to read, 128 KiB gathered before
        // a write) cost an idle connection about 137 KiB of server memory
        // (docs/benchmarks/live-channels); commands are at most 4 KiB, and
        // each frame is flushed as it is sent.
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve_socket(socket, connection))
        .into_response())
}

/// Moves frames out and commands in until either side ends.
async fn serve_socket(socket: WebSocket, mut connection: LiveConnection) {
    let (mut sink, mut incoming) = socket.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut unanswered_ping = false;
    loop {
        let outgoing: Vec<Message> = tokio::select! {
            frame = connection.next() => match frame {
                Some(frame @ LiveFrame::Closing { reason, .. }) => {
                    let _ = send(&mut sink, text(&frame)).await;
                    let close = CloseFrame {
                        code: close_code(reason),
                        reason: reason.as_str().into(),
                    };
                    let _ = send(&mut sink, Message::Close(Some(close))).await;
                    return;
                }
                Some(frame) => vec![text(&frame)],
                None => return,
            },
            received = incoming.next() => match received {
                Some(Ok(Message::Text(command))) => match serde_json::from_str::<LiveCommand>(&command) {
                    Ok(command) => {
                        if connection.command(command) {
                            continue;
                        }
                        vec![error_frame(ApiError::Status {
                            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                            detail: "too many commands in flight; wait for the answers".into(),
                        })]
                    }
                    Err(error) => vec![error_frame(ApiError::BadJson(format!(
                        "a command is {{\"type\": \"subscribe\" | \"unsubscribe\" | \"ping\", ...}}: {error}"
                    )))],
                },
                Some(Ok(Message::Binary(_))) => vec![error_frame(ApiError::BadJson(
                    "commands are JSON text messages, not binary".into(),
                ))],
                Some(Ok(Message::Pong(_))) => {
                    unanswered_ping = false;
                    continue;
                }
                // Pings are answered by the socket itself.
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            _ = ping.tick() => {
                if unanswered_ping {
                    tracing::debug!("live socket dropped: the client did not answer a ping");
                    return;
                }
                unanswered_ping = true;
                vec![Message::Ping(Default::default())]
            }
        };
        for message in outgoing {
            if send(&mut sink, message).await.is_err() {
                return;
            }
        }
    }
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

async fn send(sink: &mut Sink, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn text(frame: &LiveFrame) -> Message {
    Message::Text((*frame.to_json()).into())
}

fn error_frame(error: ApiError) -> Message {
    text(&LiveFrame::Error {
        channel: None,
        problem: error.problem().to_json(),
    })
}

/// The WebSocket close code for a reason (4000–4999 are the
/// application's): 4001 token expired, 4003 logged out, 4008 slow, 1011
/// unavailable.
pub fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::TokenExpired => 4001,
        CloseReason::LoggedOut => 4003,
        CloseReason::Slow => 4008,
        CloseReason::Unavailable => 1011,
        // RFC 6455 "Service Restart": the client reconnects.
        CloseReason::Restarting => 1012,
    }
}

/// The caller of a live request: a ticket when one is given, else the
/// bearer token; none at all is a guest (public channels only).
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Option<Principal>, CoreError> {
    if let Some(ticket) = ticket {
        return state.live.redeem_ticket(ticket).await.map(Some);
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = bearer_token(value)
        .ok_or_else(|| CoreError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    state.auth.authenticate(token).await.map(Some)
}

fn missing_token() -> CoreError {
    CoreError::Unauthorized(
        "missing Authorization: Bearer token (or a ?ticket= from POST /api/v1/live/ticket)".into(),
    )
}

fn parse_channels(list: &str) -> Result<Vec<LiveChannel>, ValidationError> {
    let mut channels: Vec<LiveChannel> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let channel = LiveChannel::parse(name).ok_or_else(|| {
            ValidationError::new(
                "channels",
                format!("{name:?} is not a channel (known: {KNOWN_CHANNELS})"),
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
        assert!(parse_channels("admin:everything").is_err());
        assert!(parse_channels("orders:not-a-uuid").is_err());
        let every_kind =
            format!("orders:{user},notifications:{user},product:{user},admin:orders,admin:health");
        assert_eq!(parse_channels(&every_kind).unwrap().len(), 5);
    }

    #[test]
    fn events_carry_every_channel_position_as_their_id() {
        let mut positions = BTreeMap::new();
        let subscribed = LiveFrame::Subscribed {
            channel: "orders:a".into(),
            position: 3,
            recovered: true,
        };
        let _ = sse_event(&subscribed, &mut positions);
        let message = LiveFrame::Message(std::sync::Arc::new(
            orderflow_core::services::live::LiveMessage::new(
                "orders:b".into(),
                9,
                chrono::Utc::now(),
                serde_json::json!({}),
            ),
        ));
        let _ = sse_event(&message, &mut positions);
        assert_eq!(format_positions(&positions), "orders:a=3;orders:b=9");
        let _ = sse_event(&LiveFrame::Pong, &mut positions);
        assert_eq!(
            positions.len(),
            2,
            "frames without a position leave the id alone"
        );
    }
}
