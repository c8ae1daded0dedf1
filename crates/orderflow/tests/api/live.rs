//! Live channels over Server-Sent Events (`GET /api/v1/live`), read with a
//! real SSE client (`eventsource-stream` over a streamed reqwest body): an
//! order's whole life in order, resuming with `Last-Event-ID` without gap or
//! duplicate, and who may follow what.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, assert_problem, spawn_app};

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

#[tokio::test]
async fn a_shopper_follows_an_order_from_pending_to_confirmed() {
    let app = spawn_app().await;
    let product = app.create_product("LIVE-1", 1200, 5).await;
    let shopper = app.shopper("Live").await;
    let channel = format!("orders:{}", shopper.id);
    let mut events = follow(&app, &shopper.token, &channel, None).await;

    let ready = next(&mut events).await;
    assert_eq!(ready.event, "ready");
    assert_eq!(
        data(&ready)["channels"],
        serde_json::json!([{"channel": channel, "position": 0, "recovered": true}])
    );

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
    let app = spawn_app().await;
    let product = app.create_product("LIVE-2", 1200, 5).await;
    let shopper = app.shopper("Back").await;
    let channel = format!("orders:{}", shopper.id);
    let mut events = follow(&app, &shopper.token, &channel, None).await;
    next(&mut events).await; // ready
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
    let ready = next(&mut events).await;
    assert_eq!(
        data(&ready)["channels"][0],
        serde_json::json!({"channel": channel, "position": pending_position, "recovered": true})
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
    let mut events = follow(
        &app,
        &shopper.token,
        &channel,
        Some(&format!("{channel}=999999999")),
    )
    .await;
    let ready = data(&next(&mut events).await);
    assert_eq!(
        ready["channels"][0],
        serde_json::json!({"channel": channel, "position": last, "recovered": false})
    );
}

#[tokio::test]
async fn only_your_own_channels_and_only_channels() {
    let app = spawn_app().await;
    let ann = app.shopper("Ann").await;
    let bob = app.shopper("Bob").await;
    let bobs = format!("orders:{}", bob.id);

    assert_problem(open(&app, &ann.token, &bobs, None).await, 403, "forbidden").await;
    for bad in ["admin:orders", "orders:not-a-user", "", "nonsense"] {
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
    assert_eq!(next(&mut events).await.event, "ready");
}
