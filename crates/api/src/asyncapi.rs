//! The AsyncAPI 3.0 document of orderflow's event log, served at
//! `/asyncapi.json`: every topic, its key, and each event type's payload.
//!
//! Built from the domain's own definitions, never written by hand: the
//! payload schemas come from the schema derived on
//! [`EventData`] (one variant per event type), the topic of each type from
//! [`EventData::topic`] on [`EventData::examples`] (one event of each type,
//! also shown as the message's example), the topic list from
//! [`topics::ALL`], and the envelope from [`Envelope`]'s schema.
//!
//! Every message is a structured-mode CloudEvent: on Kafka the record value
//! is the event as JSON with `content-type: application/cloudevents+json`
//! (CloudEvents Kafka protocol binding), in the embedded log the same JSON
//! is the row. The live channels (`GET /api/v1/live`, Server-Sent
//! Events; `GET /api/v1/live/ws`, WebSocket) are HTTP operations and are
//! described in the OpenAPI document with their frame shapes.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use orderflow_domain::events::{Envelope, EventData, STRUCTURED_CONTENT_TYPE, topics};
use serde_json::{Map, Value, json};
use utoipa::{PartialSchema, ToSchema};

/// The Kafka headers every record carries, besides the value.
fn record_headers() -> Value {
    json!({
        "type": "object",
        "properties": {
            "content-type": {
                "type": "string",
                "const": STRUCTURED_CONTENT_TYPE,
                "description": "Structured content mode of the CloudEvents Kafka binding: the value is the whole event."
            },
            "traceparent": {"type": "string", "description": "W3C Trace Context, when the event has one."}
        },
        "required": ["content-type"]
    })
}

/// What each topic is for, for its channel's description.
fn topic_description(topic: &str) -> &'static str {
    match topic {
        topics::ORDER_EVENTS => {
            "An order's life: placed by the API, cleared or held by the fraud group (or an admin's review), then confirmed, rejected or failed by the orders group."
        }
        topics::STOCK_EVENTS => "The inventory group's answer to a placed order.",
        topics::PAYMENT_EVENTS => "The payment group's answer to reserved stock.",
        topics::USER_EVENTS => "Accounts: registrations.",
        topics::FAILED_MESSAGES => {
            "Dead letters: events a consumer group gave up on after its retries, with the original inside; `orderflow dlq replay` puts one back."
        }
        topics::FRAUD_ALERTS => {
            "The fraud group's alerts: the rule a shopper broke, the window of event time and the orders in it."
        }
        _ => "",
    }
}

/// An id usable as an AsyncAPI component key: `order.events` → `order_events`.
fn key(name: &str) -> String {
    name.replace('.', "_")
}

/// The per-type payload schemas of [`EventData`]'s derived schema, by type
/// name: each variant is `{type: <name>, data: <payload>}`.
fn payloads() -> BTreeMap<String, Value> {
    let schema = serde_json::to_value(EventData::schema()).expect("schemas serialize");
    let variants = schema["oneOf"].as_array().cloned().unwrap_or_default();
    variants
        .into_iter()
        .filter_map(|variant| {
            let name = variant["properties"]["type"]["enum"][0]
                .as_str()?
                .to_owned();
            Some((name, variant["properties"]["data"].clone()))
        })
        .collect()
}

/// The schemas the payloads refer to, kept under `components.schemas`:
/// utoipa writes `#/components/schemas/X` references, and that is where
/// AsyncAPI 3 keeps reusable schemas too, so they resolve unchanged.
fn schemas() -> Map<String, Value> {
    let mut named = Vec::new();
    EventData::schemas(&mut named);
    let mut out = Map::new();
    for (name, schema) in named {
        out.insert(
            name,
            serde_json::to_value(schema).expect("schemas serialize"),
        );
    }
    out.insert(
        Envelope::name().into_owned(),
        serde_json::to_value(Envelope::schema()).expect("schemas serialize"),
    );
    out
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
    &DOCUMENT
}

fn build() -> Value {
    let payloads = payloads();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for topic in topics::ALL {
        let mut channel_messages = Map::new();
        for example in EventData::examples()
            .into_iter()
            .filter(|e| e.topic() == topic)
        {
            let type_name = example.type_name();
            let id = key(type_name);
            let envelope = Envelope::new(example, None);
            let data = payloads.get(type_name).cloned().unwrap_or(Value::Null);
            messages.insert(
                id.clone(),
                json!({
                    "name": type_name,
                    "title": type_name,
                    "contentType": "application/cloudevents+json",
                    "headers": record_headers(),
                    "payload": {
                        "allOf": [
                            {"$ref": format!("#/components/schemas/{}", Envelope::name())},
                            {
                                "type": "object",
                                "properties": {
                                    "type": {"type": "string", "const": type_name},
                                    "data": data
                                }
                            }
                        ]
                    },
                    "bindings": {"kafka": {"key": {"type": "string", "format": "uuid", "description": "The user the event is about"}}},
                    "examples": [{"name": type_name, "payload": envelope.to_json()}]
                }),
            );
            channel_messages.insert(
                id.clone(),
                json!({"$ref": format!("#/components/messages/{id}")}),
            );
        }
        let channel = key(topic);
        channels.insert(
            channel.clone(),
            json!({
                "address": topic,
                "title": topic,
                "description": format!(
                    "{} Record key: the user id (the event's `partitionkey`), so one shopper's events keep their order within a partition.",
                    topic_description(topic)
                ),
                "messages": channel_messages,
                "bindings": {"kafka": {"topic": topic}}
            }),
        );
        let message_refs: Vec<Value> = channel_messages
            .keys()
            .map(|id| json!({"$ref": format!("#/channels/{channel}/messages/{id}")}))
            .collect();
        operations.insert(
            format!("send_{channel}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{channel}")},
                "summary": format!("orderflow publishes to {topic} (through the outbox and the relay on Kafka)."),
                "messages": message_refs
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "orderflow events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The event log of orderflow. Every message is a CloudEvents 1.0 event in structured mode: on Kafka the record value is the event as JSON and the `content-type` header is `application/cloudevents+json; charset=UTF-8` (CloudEvents Kafka protocol binding); the record key is the user id. Delivery is at least once: consumers skip event ids they already processed."
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The brokers of ORDERFLOW_KAFKA_BROKERS; topic names get ORDERFLOW_KAFKA_TOPIC_PREFIX in front."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_an_example_and_a_payload() {
        let payloads = payloads();
        let mut examples: Vec<&str> = EventData::examples()
            .iter()
            .map(EventData::type_name)
            .collect();
        examples.sort_unstable();
        let schema_types: Vec<&str> = payloads.keys().map(String::as_str).collect();
        assert_eq!(examples, schema_types);
        assert!(payloads.values().all(Value::is_object));
    }

    #[test]
    fn every_topic_is_a_channel_with_its_messages() {
        let doc = document();
        for topic in topics::ALL {
            let channel = &doc["channels"][key(topic)];
            assert_eq!(channel["address"], topic);
            assert!(
                !channel["messages"].as_object().unwrap().is_empty(),
                "{topic} has no messages"
            );
        }
        let placed = &doc["components"]["messages"]["orderflow_order_placed"];
        assert_eq!(
            placed["payload"]["allOf"][1]["properties"]["type"]["const"],
            "orderflow.order.placed"
        );
        assert!(
            placed["payload"]["allOf"][1]["properties"]["data"]["properties"]["items"].is_object()
        );
    }
}
