//! Events: one envelope (CloudEvents 1.0 attributes) around typed payloads.
//!
//! The envelope's `key` decides the partition (the user id, so one
//! shopper's events keep their order; a product's id for its views) and `traceparent` carries the W3C trace
//! context across the log. On the wire an event is a structured-mode
//! CloudEvent in JSON: `{"specversion":"1.0","id":…,"type":…,"data":{…}}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fraud::Rule;
use crate::order::{OrderLine, OrderStatus};
use crate::{EventId, OrderId, ProductId, Timestamp, UserId};

/// Topic names (DESIGN.md §4).
pub mod topics {
    pub const ORDER_EVENTS: &str = "order.events";
    pub const STOCK_EVENTS: &str = "stock.events";
    pub const PAYMENT_EVENTS: &str = "payment.events";
    pub const USER_EVENTS: &str = "user.events";
    pub const FAILED_MESSAGES: &str = "failed.messages";
    pub const FRAUD_ALERTS: &str = "fraud.alerts";
    pub const PRODUCT_VIEWS: &str = "product.views";
    pub const ALL: [&str; 7] = [
        ORDER_EVENTS,
        STOCK_EVENTS,
        PAYMENT_EVENTS,
        USER_EVENTS,
        FAILED_MESSAGES,
        FRAUD_ALERTS,
        PRODUCT_VIEWS,
    ];
}

/// The `content-type` of an event in the structured JSON format: the Kafka
/// record header that marks structured mode (CloudEvents Kafka protocol
/// binding, section 3.2).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The `source` attribute of every event orderflow emits.
pub const SOURCE: &str = "urn:orderflow";

/// What happened, with the facts a consumer needs to act without a lookup
/// where that is cheap to carry.
///
/// The derived schema (one object per variant: `type` and its `data`) is
/// where the AsyncAPI document takes each event type's payload from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum EventData {
    #[serde(rename = "orderflow.order.placed")]
    OrderPlaced {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        items: Vec<OrderLine>,
        total_cents: i64,
        currency: String,
    },
    /// The fraud check found nothing (`approved_by` empty), or an admin
    /// approved the held order: stock may be reserved now.
    #[serde(rename = "orderflow.order.cleared")]
    OrderCleared {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        items: Vec<OrderLine>,
        total_cents: i64,
        currency: String,
        #[schema(value_type = Option<uuid::Uuid>)]
        approved_by: Option<UserId>,
    },
    /// The fraud check flagged the order: it waits for an admin's review.
    #[serde(rename = "orderflow.order.held")]
    OrderHeld {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        rule: Rule,
    },
    #[serde(rename = "orderflow.order.confirmed")]
    OrderConfirmed {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        items: Vec<OrderLine>,
        total_cents: i64,
        currency: String,
    },
    #[serde(rename = "orderflow.order.rejected")]
    OrderRejected {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        reason: String,
    },
    #[serde(rename = "orderflow.order.payment_failed")]
    OrderPaymentFailed {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        reason: String,
    },
    /// The shopper cancelled the order; its stock is back. `previous_status`
    /// says where it was: a `confirmed` one is refunded (a
    /// `payment.refund_requested` follows) and its points are taken back.
    #[serde(rename = "orderflow.order.cancelled")]
    OrderCancelled {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        previous_status: OrderStatus,
        total_cents: i64,
        currency: String,
    },
    #[serde(rename = "orderflow.stock.reserved")]
    StockReserved {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        total_cents: i64,
        currency: String,
    },
    #[serde(rename = "orderflow.stock.rejected")]
    StockRejected {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        #[schema(value_type = Option<uuid::Uuid>)]
        product_id: Option<ProductId>,
        reason: String,
    },
    #[serde(rename = "orderflow.payment.succeeded")]
    PaymentSucceeded {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        payment_id: String,
    },
    #[serde(rename = "orderflow.payment.failed")]
    PaymentFailed {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        reason: String,
    },
    /// A charge must be paid back: its order was cancelled after the charge,
    /// or the charge went through for an order cancelled meanwhile. The
    /// `payment` group refunds it, once (the provider's idempotency key is
    /// the order's).
    #[serde(rename = "orderflow.payment.refund_requested")]
    RefundRequested {
        #[schema(value_type = uuid::Uuid)]
        order_id: OrderId,
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        payment_id: String,
        amount_cents: i64,
        currency: String,
    },
    #[serde(rename = "orderflow.user.registered")]
    UserRegistered {
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        email: String,
        name: String,
    },
    /// A shopper broke a fraud rule: which one, the window (event time,
    /// `window_end` exclusive) and the orders in it, the flagged one last.
    #[serde(rename = "orderflow.fraud.alerted")]
    FraudAlerted {
        #[schema(value_type = uuid::Uuid)]
        user_id: UserId,
        rule: Rule,
        #[schema(value_type = String, format = DateTime)]
        window_start: Timestamp,
        #[schema(value_type = String, format = DateTime)]
        window_end: Timestamp,
        #[schema(value_type = Vec<uuid::Uuid>)]
        orders: Vec<OrderId>,
        /// The window's orders' total in `currency` (the rules' currency).
        total_cents: i64,
        currency: String,
    },
    /// Reads of one product that one API process counted in memory
    /// (write-behind) and flushed: `views` reads within one minute, the
    /// envelope's `time` being the last of them (event time; the trending
    /// windows bucket by it), and the visitor ids of the distinct readers
    /// among them (salted hashes, one salt per UTC day; a reader with many
    /// reads is one id). A minute with many readers is split over several
    /// events, the views on the first.
    #[serde(rename = "orderflow.product.viewed")]
    ProductViewed {
        #[schema(value_type = uuid::Uuid)]
        product_id: ProductId,
        views: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        viewers: Vec<String>,
    },
    /// A message a consumer group gave up on, with where it came from.
    #[serde(rename = "orderflow.message.failed")]
    MessageFailed {
        group: String,
        topic: String,
        partition: i32,
        offset: i64,
        error: String,
        attempts: u32,
        original: Box<Envelope>,
    },
}

impl EventData {
    /// The CloudEvents `type` attribute.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventData::OrderPlaced { .. } => "orderflow.order.placed",
            EventData::OrderCleared { .. } => "orderflow.order.cleared",
            EventData::OrderHeld { .. } => "orderflow.order.held",
            EventData::FraudAlerted { .. } => "orderflow.fraud.alerted",
            EventData::OrderConfirmed { .. } => "orderflow.order.confirmed",
            EventData::OrderRejected { .. } => "orderflow.order.rejected",
            EventData::OrderPaymentFailed { .. } => "orderflow.order.payment_failed",
            EventData::OrderCancelled { .. } => "orderflow.order.cancelled",
            EventData::RefundRequested { .. } => "orderflow.payment.refund_requested",
            EventData::StockReserved { .. } => "orderflow.stock.reserved",
            EventData::StockRejected { .. } => "orderflow.stock.rejected",
            EventData::PaymentSucceeded { .. } => "orderflow.payment.succeeded",
            EventData::PaymentFailed { .. } => "orderflow.payment.failed",
            EventData::UserRegistered { .. } => "orderflow.user.registered",
            EventData::ProductViewed { .. } => "orderflow.product.viewed",
            EventData::MessageFailed { .. } => "orderflow.message.failed",
        }
    }

    /// One event of every type, with made-up ids: the AsyncAPI document's
    /// examples, and how it learns each type's topic (a test checks that
    /// no variant of the schema is missing here).
    pub fn examples() -> Vec<EventData> {
        let user_id: UserId = "01950000-0000-7000-8000-000000000001"
            .parse()
            .expect("uuid");
        let order_id: OrderId = "01950000-0000-7000-8000-000000000002"
            .parse()
            .expect("uuid");
        let product_id: ProductId = "01950000-0000-7000-8000-000000000003"
            .parse()
            .expect("uuid");
        let items = vec![OrderLine {
            product_id,
            sku: "MUG-1".into(),
            name: "Mug".into(),
            quantity: 2,
            unit_price_cents: 1299,
            line_total_cents: 2598,
        }];
        let placed = EventData::OrderPlaced {
            order_id,
            user_id,
            items: items.clone(),
            total_cents: 2598,
            currency: "EUR".into(),
        };
        let mut original = Envelope::new(placed.clone(), None);
        original.id = "01950000-0000-7000-8000-000000000004"
            .parse()
            .expect("uuid");
        vec![
            placed,
            EventData::OrderCleared {
                order_id,
                user_id,
                items: items.clone(),
                total_cents: 2598,
                currency: "EUR".into(),
                approved_by: None,
            },
            EventData::OrderHeld {
                order_id,
                user_id,
                rule: Rule::OrdersPerWindow,
            },
            EventData::FraudAlerted {
                user_id,
                rule: Rule::OrdersPerWindow,
                window_start: chrono::DateTime::from_timestamp(1_764_590_400, 0).expect("time"),
                window_end: chrono::DateTime::from_timestamp(1_764_590_700, 0).expect("time"),
                orders: vec![order_id],
                total_cents: 2598,
                currency: "EUR".into(),
            },
            EventData::OrderConfirmed {
                order_id,
                user_id,
                items,
                total_cents: 2598,
                currency: "EUR".into(),
            },
            EventData::OrderRejected {
                order_id,
                user_id,
                reason: "out of stock".into(),
            },
            EventData::OrderPaymentFailed {
                order_id,
                user_id,
                reason: "card declined".into(),
            },
            EventData::OrderCancelled {
                order_id,
                user_id,
                previous_status: OrderStatus::Confirmed,
                total_cents: 2598,
                currency: "EUR".into(),
            },
            EventData::StockReserved {
                order_id,
                user_id,
                total_cents: 2598,
                currency: "EUR".into(),
            },
            EventData::StockRejected {
                order_id,
                user_id,
                product_id: Some(product_id),
                reason: "out of stock".into(),
            },
            EventData::PaymentSucceeded {
                order_id,
                user_id,
                payment_id: "pay_123".into(),
            },
            EventData::PaymentFailed {
                order_id,
                user_id,
                reason: "card declined".into(),
            },
            EventData::RefundRequested {
                order_id,
                user_id,
                payment_id: "pay_123".into(),
                amount_cents: 2598,
                currency: "EUR".into(),
            },
            EventData::UserRegistered {
                user_id,
                email: "ann@example.com".into(),
                name: "Ann".into(),
            },
            EventData::ProductViewed {
                product_id,
                views: 3,
                viewers: vec!["5d41402abc4b2a76b9719d911017c592".into()],
            },
            EventData::MessageFailed {
                group: "email".into(),
                topic: topics::ORDER_EVENTS.into(),
                partition: 3,
                offset: 42,
                error: "the email provider failed".into(),
                attempts: 5,
                original: Box::new(original),
            },
        ]
    }

    /// The topic this kind of event is published on.
    pub fn topic(&self) -> &'static str {
        match self {
            EventData::OrderPlaced { .. }
            | EventData::OrderCleared { .. }
            | EventData::OrderHeld { .. }
            | EventData::OrderConfirmed { .. }
            | EventData::OrderRejected { .. }
            | EventData::OrderPaymentFailed { .. }
            | EventData::OrderCancelled { .. } => topics::ORDER_EVENTS,
            EventData::StockReserved { .. } | EventData::StockRejected { .. } => {
                topics::STOCK_EVENTS
            }
            EventData::PaymentSucceeded { .. }
            | EventData::PaymentFailed { .. }
            | EventData::RefundRequested { .. } => topics::PAYMENT_EVENTS,
            EventData::UserRegistered { .. } => topics::USER_EVENTS,
            EventData::MessageFailed { .. } => topics::FAILED_MESSAGES,
            EventData::FraudAlerted { .. } => topics::FRAUD_ALERTS,
            EventData::ProductViewed { .. } => topics::PRODUCT_VIEWS,
        }
    }

    /// The partition key: the user the event is about (the product, for
    /// views), and the CloudEvents `subject`.
    fn key_and_subject(&self) -> (String, String) {
        match self {
            EventData::OrderPlaced {
                order_id, user_id, ..
            }
            | EventData::OrderCleared {
                order_id, user_id, ..
            }
            | EventData::OrderHeld {
                order_id, user_id, ..
            }
            | EventData::OrderConfirmed {
                order_id, user_id, ..
            }
            | EventData::OrderRejected {
                order_id, user_id, ..
            }
            | EventData::OrderPaymentFailed {
                order_id, user_id, ..
            }
            | EventData::OrderCancelled {
                order_id, user_id, ..
            }
            | EventData::RefundRequested {
                order_id, user_id, ..
            }
            | EventData::StockReserved {
                order_id, user_id, ..
            }
            | EventData::StockRejected {
                order_id, user_id, ..
            }
            | EventData::PaymentSucceeded {
                order_id, user_id, ..
            }
            | EventData::PaymentFailed {
                order_id, user_id, ..
            } => (user_id.to_string(), format!("orders/{order_id}")),
            EventData::UserRegistered { user_id, .. } | EventData::FraudAlerted { user_id, .. } => {
                (user_id.to_string(), format!("users/{user_id}"))
            }
            // One product's views stay in one partition, in order.
            EventData::ProductViewed { product_id, .. } => {
                (product_id.to_string(), format!("products/{product_id}"))
            }
            EventData::MessageFailed {
                original, group, ..
            } => (
                original.key.clone(),
                format!("groups/{group}/events/{}", original.id),
            ),
        }
    }
}

/// An event with its CloudEvents attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: EventId,
    pub source: String,
    pub time: Timestamp,
    pub subject: String,
    /// Partition key; not a CloudEvents attribute but carried as the
    /// `partitionkey` extension (CloudEvents "Partitioning" extension).
    pub key: String,
    /// W3C trace context of the request that caused the event.
    pub traceparent: Option<String>,
    pub data: EventData,
}

/// Decoding failures: the one error type of event encoding.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("event is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event is missing attribute `{0}`")]
    Missing(&'static str),
    #[error("unsupported specversion {0}")]
    SpecVersion(String),
}

impl Envelope {
    /// A new event now, with a fresh UUID v7 id.
    pub fn new(data: EventData, traceparent: Option<String>) -> Self {
        let (key, subject) = data.key_and_subject();
        Self {
            id: uuid::Uuid::now_v7(),
            source: SOURCE.to_owned(),
            time: chrono::Utc::now(),
            subject,
            key,
            traceparent,
            data,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.data.type_name()
    }

    pub fn topic(&self) -> &'static str {
        self.data.topic()
    }

    /// Structured-mode CloudEvents JSON.
    pub fn to_json(&self) -> Value {
        let tagged = serde_json::to_value(&self.data).expect("event payloads always serialize");
        let data = tagged.get("data").cloned().unwrap_or(Value::Null);
        let mut object = Map::new();
        object.insert("specversion".into(), "1.0".into());
        object.insert("id".into(), self.id.to_string().into());
        object.insert("type".into(), self.type_name().into());
        object.insert("source".into(), self.source.clone().into());
        object.insert("time".into(), self.time.to_rfc3339().into());
        object.insert("subject".into(), self.subject.clone().into());
        object.insert("datacontenttype".into(), "application/json".into());
        object.insert("partitionkey".into(), self.key.clone().into());
        if let Some(traceparent) = &self.traceparent {
            object.insert("traceparent".into(), traceparent.clone().into());
        }
        object.insert("data".into(), data);
        Value::Object(object)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).expect("JSON values always serialize")
    }

    pub fn from_json(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(mut object) = value else {
            return Err(EnvelopeError::Missing("specversion"));
        };
        let mut take_str = |name: &'static str| -> Result<String, EnvelopeError> {
            match object.remove(name) {
                Some(Value::String(s)) => Ok(s),
                _ => Err(EnvelopeError::Missing(name)),
            }
        };
        let spec = take_str("specversion")?;
        if spec != "1.0" {
            return Err(EnvelopeError::SpecVersion(spec));
        }
        let id = take_str("id")?
            .parse()
            .map_err(|_| EnvelopeError::Missing("id"))?;
        let type_name = take_str("type")?;
        let source = take_str("source")?;
        let time = chrono::DateTime::parse_from_rfc3339(&take_str("time")?)
            .map_err(|_| EnvelopeError::Missing("time"))?
            .with_timezone(&chrono::Utc);
        let subject = take_str("subject").unwrap_or_default();
        let key = take_str("partitionkey").unwrap_or_default();
        let traceparent = take_str("traceparent").ok();
        let data = object.remove("data").unwrap_or(Value::Null);
        let mut tagged = Map::new();
        tagged.insert("type".into(), Value::String(type_name));
        tagged.insert("data".into(), data);
        let data: EventData = serde_json::from_value(Value::Object(tagged))?;
        Ok(Self {
            id,
            source,
            time,
            subject,
            key,
            traceparent,
            data,
        })
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::from_json(serde_json::from_slice(bytes)?)
    }
}

/// A W3C Trace Context `traceparent` (version `00`):
/// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
///
/// Kept here, free of any tracing library, because the envelope carries it
/// across the log and both the API (which starts the trace) and the
/// consumers (which continue it) read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent`; `None` for anything malformed, for another
    /// version than `00`, or for the all-zero ids the spec declares invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some()
            || version != "00"
            || !hex(trace, 32)
            || !hex(parent, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let parsed = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            parent_id: u64::from_str_radix(parent, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// The trace id as 32 lowercase hex digits (what log lines and trace
    /// back ends show).
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }
}

/// A trace id shown as 32 lowercase hex digits, written where it goes (a
/// log line, a span's field) rather than into a `String` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex(pub u128);

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:032x}` of a u128 goes digit by digit through `core::fmt`;
        // every request's span and every handled event show one.
        let mut digits = [0u8; 32];
        hex::encode_to_slice(self.0.to_be_bytes(), &mut digits)
            .expect("16 bytes are 32 hex digits");
        f.write_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// The structured-mode CloudEvent [`Envelope::to_json`] writes, with any
/// `data`; the AsyncAPI document narrows `type` and `data` per event type.
impl utoipa::PartialSchema for Envelope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        let string = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .description(Some(
                "A CloudEvents 1.0 event in the structured JSON format (application/cloudevents+json).",
            ))
            .property("specversion", string("Always 1.0.").enum_values(Some(["1.0"])))
            .property(
                "id",
                string("UUID v7: ids sort by creation time; a consumer skips an id it processed.")
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
            )
            .property("type", string("The event type, e.g. orderflow.order.placed."))
            .property("source", string("Always urn:orderflow.").enum_values(Some([SOURCE])))
            .property(
                "time",
                string("When it happened (RFC 3339).")
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .property("subject", string("What it is about: orders/{id}, users/{id}, groups/{group}/events/{id}."))
            .property("datacontenttype", string("Always application/json.").enum_values(Some(["application/json"])))
            .property("partitionkey", string("CloudEvents Partitioning extension: the record key, the user id."))
            .property("traceparent", string("W3C Trace Context of the request that caused the event (Distributed Tracing extension)."))
            .property("data", ObjectBuilder::new().schema_type(Type::Object))
            .required("specversion")
            .required("id")
            .required("type")
            .required("source")
            .required("time")
            .required("subject")
            .required("datacontenttype")
            .required("partitionkey")
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for Envelope {
    fn name() -> std::borrow::Cow<'static, str> {
        "CloudEvent".into()
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Envelope::from_json(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_round_trips_and_rejects_invalid_ids() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).expect("valid");
        assert_eq!(
            parsed.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            super::TraceIdHex(0xab).to_string(),
            "000000000000000000000000000000ab",
            "zero-padded to 32 digits"
        );
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), text);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "garbage",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    use super::*;
    use uuid::Uuid;

    #[test]
    fn envelope_round_trips_as_a_structured_cloudevent() {
        let user_id = Uuid::now_v7();
        let order_id = Uuid::now_v7();
        let event = Envelope::new(
            EventData::StockReserved {
                order_id,
                user_id,
                total_cents: 1299,
                currency: "EUR".into(),
            },
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        );
        let json = event.to_json();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "orderflow.stock.reserved");
        assert_eq!(json["data"]["total_cents"], 1299);
        assert_eq!(json["partitionkey"], user_id.to_string());
        assert_eq!(json["subject"], format!("orders/{order_id}"));
        let back = Envelope::from_slice(&event.to_bytes()).unwrap();
        assert_eq!(
            back,
            Envelope {
                time: back.time,
                ..event.clone()
            }
        );
        assert_eq!(back.time.timestamp_micros(), event.time.timestamp_micros());
        assert_eq!(back.topic(), topics::STOCK_EVENTS);
    }

    #[test]
    fn dead_letters_carry_the_original() {
        let original = Envelope::new(
            EventData::UserRegistered {
                user_id: Uuid::now_v7(),
                email: "a@b.c".into(),
                name: "A".into(),
            },
            None,
        );
        let failed = Envelope::new(
            EventData::MessageFailed {
                group: "email".into(),
                topic: topics::USER_EVENTS.into(),
                partition: 3,
                offset: 7,
                error: "smtp down".into(),
                attempts: 5,
                original: Box::new(original.clone()),
            },
            None,
        );
        assert_eq!(failed.topic(), topics::FAILED_MESSAGES);
        assert_eq!(failed.key, original.key);
        let back = Envelope::from_slice(&failed.to_bytes()).unwrap();
        let EventData::MessageFailed {
            original: back_original,
            attempts,
            ..
        } = back.data
        else {
            panic!("wrong type");
        };
        assert_eq!(attempts, 5);
        assert_eq!(back_original.id, original.id);
    }

    #[test]
    fn bad_events_are_refused_with_a_reason() {
        assert!(matches!(
            Envelope::from_slice(b"{}"),
            Err(EnvelopeError::Missing("specversion"))
        ));
        assert!(matches!(
            Envelope::from_slice(b"nope"),
            Err(EnvelopeError::Json(_))
        ));
        let mut json = Envelope::new(
            EventData::UserRegistered {
                user_id: Uuid::now_v7(),
                email: "a@b.c".into(),
                name: "A".into(),
            },
            None,
        )
        .to_json();
        json["type"] = "orderflow.unknown".into();
        assert!(Envelope::from_json(json).is_err());
    }
}
