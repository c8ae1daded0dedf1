//! Live channels over Server-Sent Events (`GET /api/v1/live`), read with a
//! real SSE client (`eventsource-stream` over a streamed reqwest body), and
//! over WebSocket (`GET /api/v1/live/ws`, with `tokio-tungstenite`): an
//! order's whole life in order, resuming without gap or duplicate, who may
//! follow what, tickets, and the server closing a connection (logout, token
//! expiry, a slow client).

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use orderflow_api::routes::products::ProductView;

use crate::helpers::{Shopper, TestApp, assert_problem, spawn_app};

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// How long a test waits for an event that must come.
const PATIENCE: Duration = Duration::from_secs(10);

async fn open(
    app: &TestApp,
    token: &str,
    channels: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url("/api/v1/live"))
        .query(&[("channels", channels)])
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.unwrap()
}

async fn follow(app: &TestApp, token: &str, channels: &str, last_event_id: Option<&str>) -> Events {
    let response = open(app, token, channels, last_event_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an event stream"
    );
    response.bytes_stream().eventsource().boxed()
}

/// The next event that is not a keep-alive comment.
async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("a well-formed event")
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("JSON data")
}

/// [`follow`] from `position` on `channel`, as `Last-Event-ID` names it.
async fn follow_from(
    app: &TestApp,
    token: &str,
    channel: &str,
    position: impl std::fmt::Display,
) -> Events {
    follow(app, token, channel, Some(&format!("{channel}={position}"))).await
}

/// `shopper`'s own order channel.
fn orders_of(shopper: &Shopper) -> String {
    format!("orders:{}", shopper.id)
}

/// A fresh app and a shopper `name`, with the shopper's order channel.
async fn app_and_shopper(name: &str) -> (TestApp, Shopper, String) {
    let app = spawn_app().await;
    let shopper = app.shopper(name).await;
    let channel = orders_of(&shopper);
    (app, shopper, channel)
}

/// A fresh app selling `stock` of `sku` at `price_cents`, then a shopper
/// `name`, with the shopper's order channel.
async fn shop(
    sku: &str,
    price_cents: i64,
    stock: i64,
    name: &str,
) -> (TestApp, ProductView, Shopper, String) {
    let app = spawn_app().await;
    let product = app.create_product(sku, price_cents, stock).await;
    let shopper = app.shopper(name).await;
    let channel = orders_of(&shopper);
    (app, product, shopper, channel)
}

#[tokio::test]
async fn a_shopper_follows_an_order_from_pending_to_confirmed() {
    let (app, product, shopper, channel) = shop("LIVE-1", 1200, 5, "Live").await;
    let mut events = follow(&app, &shopper.token, &channel, None).await;

    let subscribed = next(&mut events).await;
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(
        data(&subscribed),
        serde_json::json!({"type": "subscribed", "channel": channel, "position": 0, "recovered": true})
    );
    assert_eq!(subscribed.id, format!("{channel}=0"));

    let order = app.order_one(&shopper, product.id, 1).await;
    app.drain().await;

    let mut steps = Vec::new();
    let mut last = 0;
    for _ in 0..4 {
        let event = next(&mut events).await;
        assert_eq!(event.event, "message");
        let message = data(&event);
        let position = message["position"].as_i64().unwrap();
        assert!(position > last, "positions grow: {position} after {last}");
        last = position;
        assert_eq!(event.id, format!("{channel}={position}"));
        assert_eq!(message["channel"], channel);
        assert_eq!(message["data"]["type"], "order.status");
        assert_eq!(message["data"]["order_id"], order.id.to_string());
        steps.push(message["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(steps, ["pending", "reserved", "paid", "confirmed"]);
    assert_eq!(
        steps,
        app.history(&shopper.token, order.id).await,
        "the stream tells the order's history, step by step"
    );
}

#[tokio::test]
async fn a_client_that_reconnects_with_its_last_id_gets_exactly_what_it_missed() {
    let (app, product, shopper, channel) = shop("LIVE-2", 1200, 5, "Back").await;
    let mut events = follow(&app, &shopper.token, &channel, None).await;
    next(&mut events).await; // subscribed
    let order = app.order_one(&shopper, product.id, 1).await;
    let pending = next(&mut events).await;
    assert_eq!(data(&pending)["data"]["status"], "pending");
    let last_id = pending.id.clone();
    drop(events);

    // While the client is away, the order goes all the way.
    app.drain().await;
    assert_eq!(
        app.order(&shopper.token, order.id).await.status,
        "confirmed"
    );

    let mut events = follow(&app, &shopper.token, &channel, Some(&last_id)).await;
    let pending_position = data(&pending)["position"].as_i64().unwrap();
    let subscribed = data(&next(&mut events).await);
    assert_eq!(
        subscribed,
        serde_json::json!({"type": "subscribed", "channel": channel, "position": pending_position, "recovered": true})
    );
    let mut missed = Vec::new();
    let mut last = pending_position;
    for _ in 0..3 {
        let message = data(&next(&mut events).await);
        let position = message["position"].as_i64().unwrap();
        assert!(position > last, "in order, after the client's position");
        last = position;
        missed.push(message["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(missed, ["reserved", "paid", "confirmed"]);
    // Nothing more (no duplicate) through two database rechecks.
    assert!(
        tokio::time::timeout(Duration::from_millis(2_500), events.next())
            .await
            .is_err(),
        "no further event"
    );

    // A position this server never gave: start from the present, and say so.
    let mut events = follow_from(&app, &shopper.token, &channel, 999999999).await;
    let subscribed = data(&next(&mut events).await);
    assert_eq!(
        subscribed,
        serde_json::json!({"type": "subscribed", "channel": channel, "position": last, "recovered": false})
    );
}

/// A page knows where its channels stood when it was drawn, and an
/// `EventSource` cannot send `Last-Event-ID`: the same positions in the
/// query resume the same way.
#[tokio::test]
async fn a_page_resumes_from_the_positions_it_was_drawn_at() {
    let (app, product, shopper, channel) = shop("LIVE-Q", 900, 5, "Drawn").await;
    let order = app.order_one(&shopper, product.id, 1).await;
    let drawn_at = app
        .app
        .store
        .last_order_change(Some(shopper.id))
        .await
        .unwrap();
    // The order goes on before the page's stream is open.
    app.drain().await;
    assert_eq!(
        app.order(&shopper.token, order.id).await.status,
        "confirmed"
    );
    let response = app
        .http
        .get(app.url("/api/v1/live"))
        .query(&[
            ("channels", channel.as_str()),
            ("last_event_id", &format!("{channel}={drawn_at}")),
        ])
        .bearer_auth(&shopper.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource().boxed();
    let subscribed = data(&next(&mut events).await);
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(
            data(&next(&mut events).await)["data"]["status"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(missed, ["reserved", "paid", "confirmed"]);
    let bad = app
        .http
        .get(app.url("/api/v1/live"))
        .query(&[
            ("channels", channel.as_str()),
            ("last_event_id", "nonsense"),
        ])
        .bearer_auth(&shopper.token)
        .send()
        .await
        .unwrap();
    assert_problem(bad, 422, "validation").await;
}

#[tokio::test]
async fn only_your_own_channels_and_only_channels() {
    let app = spawn_app().await;
    let ann = app.shopper("Ann").await;
    let bob = app.shopper("Bob").await;
    let bobs = format!("orders:{}", bob.id);

    assert_problem(open(&app, &ann.token, &bobs, None).await, 403, "forbidden").await;
    let bobs_notes = format!("notifications:{}", bob.id);
    for theirs in [bobs_notes.as_str(), "admin:orders", "admin:health"] {
        assert_problem(open(&app, &ann.token, theirs, None).await, 403, "forbidden").await;
    }
    for bad in ["admin:everything", "orders:not-a-user", "", "nonsense"] {
        assert_problem(open(&app, &ann.token, bad, None).await, 422, "validation").await;
    }
    let mine = format!("orders:{}", ann.id);
    assert_problem(
        open(&app, &ann.token, &mine, Some("not an id")).await,
        422,
        "validation",
    )
    .await;
    let anonymous = app
        .http
        .get(app.url("/api/v1/live"))
        .query(&[("channels", mine.as_str())])
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;

    // An admin may follow a shopper's channel.
    let admin = app.admin_token().await;
    let mut events = follow(&app, &admin, &bobs, None).await;
    assert_eq!(next(&mut events).await.event, "subscribed");
}

/// `POST /api/v1/live/ticket`, as `token` when given.
async fn issue_ticket(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = app.http.post(app.url("/api/v1/live/ticket"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_ticket_opens_an_event_stream_once_without_the_token() {
    let (app, shopper, channel) = app_and_shopper("Ticket").await;
    let issued = issue_ticket(&app, Some(&shopper.token)).await;
    assert_eq!(issued.status(), StatusCode::CREATED);
    let issued: Value = issued.json().await.unwrap();
    let ticket = issued["ticket"].as_str().unwrap().to_owned();
    assert_eq!(issued["expires_in_secs"], 30);

    // What a browser's EventSource does: no Authorization header.
    let with_ticket = || {
        app.http
            .get(app.url("/api/v1/live"))
            .query(&[("channels", channel.as_str()), ("ticket", ticket.as_str())])
            .send()
    };
    let response = with_ticket().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource().boxed();
    assert_eq!(next(&mut events).await.event, "subscribed");

    assert_problem(with_ticket().await.unwrap(), 401, "unauthorized").await;
    let forged = app
        .http
        .get(app.url("/api/v1/live"))
        .query(&[("channels", channel.as_str()), ("ticket", "forged-ticket")])
        .send()
        .await
        .unwrap();
    assert_problem(forged, 401, "unauthorized").await;
    assert_problem(issue_ticket(&app, None).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn logging_out_closes_the_stream_with_a_reason() {
    let (app, shopper, channel) = app_and_shopper("Leaving").await;
    let mut events = follow(&app, &shopper.token, &channel, None).await;
    assert_eq!(next(&mut events).await.event, "subscribed");

    let logged_out = std::time::Instant::now();
    assert_eq!(
        app.logout(&shopper.token).await.status(),
        StatusCode::NO_CONTENT
    );
    let closing = next(&mut events).await;
    let waited = logged_out.elapsed();
    assert_eq!(closing.event, "closing");
    assert_eq!(data(&closing)["reason"], "logged_out");
    assert!(
        tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "nothing after the closing event"
    );
    // The connection checks once a second; the test allows for a slow
    // machine, and reports what it saw.
    eprintln!("closed {} ms after the logout", waited.as_millis());
}

#[tokio::test]
async fn anyone_follows_a_products_stock_and_price() {
    let (app, product, watcher, _) = shop("LIVE-P", 700, 5, "Watcher").await;
    let buyer = app.shopper("Buyer").await;
    let channel = format!("product:{}", product.id);
    let mut events = follow(&app, &watcher.token, &channel, None).await;
    let subscribed = data(&next(&mut events).await);
    assert_eq!(subscribed["position"], 1, "the product's version");

    // Another shopper's order reserves stock: the product's new state.
    app.order_one(&buyer, product.id, 2).await;
    app.drain().await;
    let reserved = data(&next(&mut events).await);
    assert_eq!(reserved["type"], "message");
    assert_eq!(reserved["data"]["type"], "product");
    assert_eq!(reserved["data"]["stock"], 3);
    let version = reserved["position"].as_i64().unwrap();
    assert!(version > 1);

    // An admin edit: the new price, at a newer version.
    let admin = app.admin_token().await;
    let edited = app
        .put_product(
            &admin,
            product.id,
            &serde_json::json!({"sku": "LIVE-P", "name": "Teapot", "price_cents": 800, "currency": "EUR", "stock": 3}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    let repriced = data(&next(&mut events).await);
    assert_eq!(repriced["data"]["price_cents"], 800);
    assert_eq!(repriced["data"]["name"], "Teapot");
    assert!(repriced["position"].as_i64().unwrap() > version);

    // A product that does not exist: the stream says so.
    let nowhere = format!("product:{}", uuid::Uuid::now_v7());
    let mut events = follow(&app, &watcher.token, &nowhere, None).await;
    let refused = data(&next(&mut events).await);
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["channel"], nowhere);
    assert_eq!(refused["problem"]["status"], 404);
}

/// Without a token or a ticket, a visitor follows product channels (the
/// storefront's product page) and nothing else.
#[tokio::test]
async fn a_guest_follows_a_product_and_nothing_else() {
    let app = spawn_app().await;
    let product = app.create_product("LIVE-G", 700, 5).await;
    let buyer = app.shopper("Buyer").await;
    let guest = |channels: String| {
        app.http
            .get(app.url("/api/v1/live"))
            .query(&[("channels", channels)])
            .send()
    };
    let response = guest(format!("product:{}", product.id)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource().boxed();
    assert_eq!(data(&next(&mut events).await)["type"], "subscribed");
    app.order_one(&buyer, product.id, 2).await;
    app.drain().await;
    let reserved = data(&next(&mut events).await);
    assert_eq!(reserved["data"]["stock"], 3, "{reserved}");

    for channel in [format!("orders:{}", buyer.id), "admin:orders".to_owned()] {
        let mixed = guest(format!("product:{},{channel}", product.id))
            .await
            .unwrap();
        assert_problem(mixed, 401, "unauthorized").await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_socket(app: &TestApp, token: Option<&str>, ticket: Option<&str>) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut url = app.url("/api/v1/live/ws").replacen("http://", "ws://", 1);
    if let Some(ticket) = ticket {
        url = format!("{url}?ticket={ticket}");
    }
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket handshake succeeds")
        .0
}

async fn send(socket: &mut Socket, command: Value) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::text(command.to_string()))
        .await
        .unwrap();
}

/// Sends a `subscribe` command for `channel`.
async fn subscribe(socket: &mut Socket, channel: &str) {
    send(
        socket,
        serde_json::json!({"type": "subscribe", "channel": channel}),
    )
    .await;
}

/// The next message, within [`PATIENCE`] (`expected` says what was due).
async fn next_message(
    socket: &mut Socket,
    expected: &str,
) -> tokio_tungstenite::tungstenite::Message {
    tokio::time::timeout(PATIENCE, socket.next())
        .await
        .expect(expected)
        .expect("the socket is open")
        .expect("a well-formed message")
}

/// The next JSON frame (pings and pongs are skipped).
async fn frame(socket: &mut Socket) -> Value {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = next_message(socket, "a frame within 10 s").await;
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_client_follows_its_orders_and_only_its_own() {
    let (app, product, ann, mine) = shop("LIVE-WS", 900, 5, "Ann").await;
    let bob = app.shopper("Bob").await;
    let mut socket = open_socket(&app, Some(&ann.token), None).await;

    subscribe(&mut socket, &orders_of(&bob)).await;
    let refused = frame(&mut socket).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["problem"]["status"], 403);
    subscribe(&mut socket, "admin:orders").await;
    assert_eq!(frame(&mut socket).await["problem"]["status"], 403);
    subscribe(&mut socket, "admin:everything").await;
    assert_eq!(frame(&mut socket).await["problem"]["status"], 422);
    send(&mut socket, serde_json::json!({"type": "dance"})).await;
    assert_eq!(frame(&mut socket).await["problem"]["status"], 422);

    subscribe(&mut socket, &mine).await;
    assert_eq!(
        frame(&mut socket).await,
        serde_json::json!({"type": "subscribed", "channel": mine, "position": 0, "recovered": true})
    );
    let order = app.order_one(&ann, product.id, 1).await;
    app.drain().await;
    let mut steps = Vec::new();
    let mut positions = Vec::new();
    for _ in 0..4 {
        let message = frame(&mut socket).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["channel"], mine);
        assert_eq!(message["data"]["order_id"], order.id.to_string());
        positions.push(message["position"].as_i64().unwrap());
        steps.push(message["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(steps, ["pending", "reserved", "paid", "confirmed"]);
    assert!(positions.is_sorted(), "in position order: {positions:?}");

    send(&mut socket, serde_json::json!({"type": "ping"})).await;
    assert_eq!(
        frame(&mut socket).await,
        serde_json::json!({"type": "pong"})
    );
    send(
        &mut socket,
        serde_json::json!({"type": "unsubscribe", "channel": mine}),
    )
    .await;
    assert_eq!(
        frame(&mut socket).await,
        serde_json::json!({"type": "unsubscribed", "channel": mine})
    );

    // Subscribing again after the first message replays the rest: the
    // same recovery as SSE's Last-Event-ID.
    send(
        &mut socket,
        serde_json::json!({"type": "subscribe", "channel": mine, "position": positions[0]}),
    )
    .await;
    assert_eq!(frame(&mut socket).await["position"], positions[0]);
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(frame(&mut socket).await["position"].as_i64().unwrap());
    }
    assert_eq!(replayed, positions[1..]);
}

#[tokio::test]
async fn a_websocket_needs_a_token_or_a_ticket_and_closes_on_logout() {
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app().await;
    let shopper = app.shopper("Socket").await;

    let anonymous =
        tokio_tungstenite::connect_async(app.url("/api/v1/live/ws").replacen("http", "ws", 1))
            .await;
    match anonymous {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected a 401 handshake, got {other:?}"),
    }

    let ticket: Value = issue_ticket(&app, Some(&shopper.token))
        .await
        .json()
        .await
        .unwrap();
    let mut socket = open_socket(&app, None, ticket["ticket"].as_str()).await;
    let channel = format!("orders:{}", shopper.id);
    subscribe(&mut socket, &channel).await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");

    assert_eq!(
        app.logout(&shopper.token).await.status(),
        StatusCode::NO_CONTENT
    );
    let closing = frame(&mut socket).await;
    assert_eq!(closing["type"], "closing");
    assert_eq!(closing["reason"], "logged_out");
    let close = next_message(&mut socket, "a close frame").await;
    match close {
        Message::Close(Some(close)) => {
            assert_eq!(u16::from(close.code), 4003);
            assert_eq!(close.reason.as_str(), "logged_out");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A process told to stop (SIGTERM, a deploy) closes its live streams
/// with `restarting` (WebSocket: close code 1012, "service restart"), so
/// its graceful shutdown ends and the clients reconnect elsewhere.
#[tokio::test]
async fn a_stopping_server_closes_live_streams_with_restarting() {
    use tokio_tungstenite::tungstenite::Message;
    let (app, shopper, channel) = app_and_shopper("Restart").await;
    let mut events = follow(&app, &shopper.token, &channel, None).await;
    assert_eq!(next(&mut events).await.event, "subscribed");
    let mut socket = open_socket(&app, Some(&shopper.token), None).await;
    subscribe(&mut socket, &channel).await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");

    let stopped = tokio::spawn(app.stop());
    let closing = next(&mut events).await;
    assert_eq!(closing.event, "closing");
    assert_eq!(data(&closing)["reason"], "restarting");
    let closing = frame(&mut socket).await;
    assert_eq!(closing["reason"], "restarting");
    match tokio::time::timeout(PATIENCE, socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(close))))) => {
            assert_eq!(u16::from(close.code), 1012);
            assert_eq!(close.reason.as_str(), "restarting");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("the server stops once its streams are closed")
        .unwrap();
}

/// The connection itself (what both transports drain): a client that does
/// not read is cut off as slow while a fast one on the same channel gets
/// every message, and a connection closes when its token expires.
#[tokio::test]
async fn a_slow_connection_is_cut_off_and_a_fast_one_loses_nothing() {
    use orderflow_core::services::live::{CloseReason, ConnectionSettings, LiveCommand, LiveFrame};
    let (app, product, shopper, channel) = shop("LIVE-SLOW", 500, 50, "Slow").await;
    let principal = app.app.auth.authenticate(&shopper.token).await.unwrap();
    let hub = &app.app.state.live;
    let subscribe = LiveCommand::Subscribe {
        channel: channel.clone(),
        position: None,
    };

    let mut slow = hub.connect(
        principal.clone(),
        ConnectionSettings {
            queue: 2,
            slow_after: Duration::from_millis(300),
            ..ConnectionSettings::default()
        },
    );
    let mut fast = hub.connect(principal.clone(), ConnectionSettings::default());
    assert!(slow.command(subscribe.clone()));
    assert!(fast.command(subscribe));
    assert!(matches!(
        fast.next().await,
        Some(LiveFrame::Subscribed { .. })
    ));

    let orders = 3;
    for _ in 0..orders {
        app.order_one(&shopper, product.id, 1).await;
    }
    app.drain().await;
    let mut statuses = Vec::new();
    while statuses.len() < orders * 4 {
        match tokio::time::timeout(PATIENCE, fast.next()).await {
            Ok(Some(LiveFrame::Message(message))) => {
                statuses.push(message.data["status"].as_str().unwrap().to_owned())
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "confirmed").count(),
        orders
    );

    // The slow one never read: its queue (2) filled and stayed full past
    // its 300 ms; the closing frame overtakes what is queued.
    tokio::time::sleep(Duration::from_secs(1)).await;
    match tokio::time::timeout(PATIENCE, slow.next()).await {
        Ok(Some(LiveFrame::Closing { reason, .. })) => assert_eq!(reason, CloseReason::Slow),
        other => panic!("expected the slow connection to close, got {other:?}"),
    }
    assert!(slow.next().await.is_none(), "nothing after closing");

    // A token that expires in a moment closes its connection then.
    let expiring = orderflow_core::services::auth::Principal {
        expires_at: chrono::Utc::now() + chrono::Duration::milliseconds(500),
        ..principal
    };
    let mut connection = hub.connect(expiring, ConnectionSettings::default());
    match tokio::time::timeout(PATIENCE, connection.next()).await {
        Ok(Some(LiveFrame::Closing { reason, .. })) => {
            assert_eq!(reason, CloseReason::TokenExpired)
        }
        other => panic!("expected the connection to close at expiry, got {other:?}"),
    }
}

#[tokio::test]
async fn admins_follow_the_pipeline_health_every_second() {
    let app = spawn_app().await;
    let shopper = app.shopper("Curious").await;
    let mut socket = open_socket(&app, Some(&shopper.token), None).await;
    subscribe(&mut socket, "admin:health").await;
    let refused = frame(&mut socket).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["problem"]["status"], 403);

    let admin = app.admin_token().await;
    let mut socket = open_socket(&app, Some(&admin), None).await;
    subscribe(&mut socket, "admin:health").await;
    let subscribed = frame(&mut socket).await;
    assert_eq!(subscribed["type"], "subscribed");
    let first = subscribed["position"].as_i64().unwrap();
    // The next snapshot, a second or so later (its position is its time).
    let health = frame(&mut socket).await;
    assert_eq!(health["type"], "message", "{health}");
    assert!(health["position"].as_i64().unwrap() > first);
    let data = &health["data"];
    assert_eq!(data["type"], "health");
    assert!(data["consumer_lag"].is_object(), "{data}");
    assert!(
        data["consumer_lag"]["email"].is_i64(),
        "lag per group: {data}"
    );
    // And per partition, adding up to the group's.
    let partitions = data["partition_lag"]["email"]
        .as_object()
        .expect("lag per partition");
    assert!(partitions.contains_key("order.events/0"), "{data}");
    assert_eq!(
        partitions
            .values()
            .map(|lag| lag.as_i64().unwrap())
            .sum::<i64>(),
        data["consumer_lag"]["email"].as_i64().unwrap()
    );
    assert_eq!(data["dead_letters"], 0);
    assert!(data["outbox"].is_null(), "no outbox without Kafka");
    assert!(
        data["live"]["connections"].as_i64().unwrap() >= 1,
        "this connection counts: {data}"
    );
    assert!(data["live"]["users_online"].as_i64().unwrap() >= 1);
    assert_eq!(data["live"]["processes"], 1, "one process: {data}");
    assert!(
        data["live"]["users_by_devices"]["1"].as_i64().unwrap() >= 1,
        "the admin has one device here: {data}"
    );
}

#[tokio::test]
async fn notifications_and_every_order_are_channels_too() {
    let (app, product, shopper, _) = shop("LIVE-N", 1200, 5, "Noted").await;
    // The welcome e-mail goes out before anyone follows.
    app.drain().await;
    let notes = format!("notifications:{}", shopper.id);
    let mut mine = follow(&app, &shopper.token, &notes, None).await;
    let subscribed = data(&next(&mut mine).await);
    assert_eq!(subscribed["type"], "subscribed");
    let welcome = subscribed["position"].as_i64().unwrap();
    assert!(
        welcome > 0,
        "the welcome e-mail is before the head: {subscribed}"
    );
    let admin = app.admin_token().await;
    let mut everyone = follow(&app, &admin, "admin:orders", None).await;
    assert_eq!(next(&mut everyone).await.event, "subscribed");

    let order = app.order_one(&shopper, product.id, 1).await;
    app.drain().await;

    // One notification per channel the confirmation went out on.
    let mut via = Vec::new();
    let mut last = welcome;
    for _ in 0..3 {
        let message = data(&next(&mut mine).await);
        assert_eq!(message["type"], "message", "{message}");
        let position = message["position"].as_i64().unwrap();
        assert!(position > last, "positions grow: {position} after {last}");
        last = position;
        assert_eq!(message["data"]["type"], "notification");
        assert_eq!(message["data"]["kind"], "order_confirmed");
        assert_eq!(message["data"]["order_id"], order.id.to_string());
        via.push(message["data"]["via"].as_str().unwrap().to_owned());
    }
    via.sort();
    assert_eq!(via, ["email", "push", "sms"]);

    // The admin sees the order's every step, with its shopper.
    let mut steps = Vec::new();
    for _ in 0..4 {
        let message = data(&next(&mut everyone).await);
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["channel"], "admin:orders");
        assert_eq!(message["data"]["order_id"], order.id.to_string());
        assert_eq!(message["data"]["user_id"], shopper.id.to_string());
        steps.push(message["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(steps, app.history(&shopper.token, order.id).await);

    // Back after the welcome: exactly the three, from the database.
    let mut again = follow_from(&app, &shopper.token, &notes, welcome).await;
    let resumed = data(&next(&mut again).await);
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(data(&next(&mut again).await)["position"].as_i64().unwrap());
    }
    assert_eq!(replayed.last(), Some(&last));
    assert!(replayed.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn a_snapshot_then_a_subscription_misses_nothing_and_repeats_nothing() {
    let (app, product, shopper, channel) = shop("LIVE-S", 700, 50, "Snap").await;
    let other = app.shopper("Other").await;
    let snapshot = |token: String, channel: String, limit: Option<&'static str>| {
        let request = app
            .http
            .get(app.url("/api/v1/live/snapshot"))
            .bearer_auth(token)
            .query(&[("channel", channel)]);
        match limit {
            Some(limit) => request.query(&[("limit", limit)]),
            None => request,
        }
        .send()
    };

    let first = app.order_one(&shopper, product.id, 1).await;
    app.drain().await;
    let taken = snapshot(shopper.token.clone(), channel.clone(), None)
        .await
        .unwrap();
    assert_eq!(taken.status(), StatusCode::OK);
    let taken: Value = taken.json().await.unwrap();
    let messages = taken["messages"].as_array().unwrap();
    let statuses: Vec<&str> = messages
        .iter()
        .map(|m| m["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, app.history(&shopper.token, first.id).await);
    let position = taken["position"].as_i64().unwrap();
    assert_eq!(
        messages.last().unwrap()["position"].as_i64(),
        Some(position)
    );
    let newest_two = snapshot(shopper.token.clone(), channel.clone(), Some("2"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        newest_two["messages"].as_array().unwrap().as_slice(),
        &messages[messages.len() - 2..],
        "the newest two, oldest first"
    );

    // Subscribed after the snapshot's position: the next order's steps
    // only, none of the first's again.
    let mut events = follow_from(&app, &shopper.token, &channel, position).await;
    assert_eq!(data(&next(&mut events).await)["recovered"], true);
    let second = app.order_one(&shopper, product.id, 1).await;
    app.drain().await;
    let message = data(&next(&mut events).await);
    assert!(message["position"].as_i64().unwrap() > position);
    assert_eq!(message["data"]["order_id"], second.id.to_string());
    assert_eq!(message["data"]["status"], "pending");

    // A product's snapshot is its state; who may read is who may follow.
    let products = snapshot(other.token.clone(), format!("product:{}", product.id), None)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let state = &products["messages"][0];
    assert_eq!(state["data"]["stock"], 48, "{products}");
    assert_eq!(products["position"], state["position"]);
    let forbidden = |token: String, channel: String| {
        let answer = snapshot(token, channel, None);
        async move { assert_problem(answer.await.unwrap(), 403, "forbidden").await }
    };
    forbidden(other.token.clone(), channel.clone()).await;
    forbidden(other.token.clone(), "admin:orders".into()).await;
    assert_problem(
        snapshot(shopper.token.clone(), channel.clone(), Some("0"))
            .await
            .unwrap(),
        422,
        "validation",
    )
    .await;
    assert_problem(
        snapshot(
            other.token.clone(),
            format!("product:{}", uuid::Uuid::now_v7()),
            None,
        )
        .await
        .unwrap(),
        404,
        "not-found",
    )
    .await;
}
